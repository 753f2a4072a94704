"""Pure metric arithmetic: quantiles, windows across restarts, verdict rules at their edges."""

from __future__ import annotations

import json
import math

import pytest

from upgrade_bot.engine.config import Thresholds
from upgrade_bot.engine.metrics import (
    InstanceSample,
    Snapshot,
    Summary,
    merge_buckets,
    quantile,
    summarize,
    window,
)
from upgrade_bot.engine.verdict import RULES, Finding, Phase, Verdict, judge, worst

INF = math.inf
T = Thresholds()  # runbook defaults: 1% floor, x2, p99 x1.5 + 20 ms, 200 requests


# --- quantile ------------------------------------------------------------------------------

# 10 observations <= 10 ms, 20 in (10, 20], 10 in (20, 50], none above
H = ((10.0, 10), (20.0, 30), (50.0, 40), (INF, 40))


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        (0.1, 4.0),  # rank 4 in the lowest bucket, which starts at 0: 10 * 4/10
        (0.25, 10.0),  # rank 10 is exactly the lowest bucket's count
        (0.5, 15.0),  # rank 20: 10 + (20 - 10) * (20 - 10) / 20
        (0.75, 20.0),  # rank 30: the top of the second bucket
        (0.99, 48.8),  # rank 39.6: 20 + 30 * (39.6 - 30) / 10
        (1.0, 50.0),
    ],
)
def test_quantile_interpolates_like_histogram_quantile(q: float, expected: float) -> None:
    assert quantile(q, H) == pytest.approx(expected)


def test_quantile_in_the_inf_bucket_is_the_highest_finite_bound() -> None:
    buckets = ((10.0, 10), (100.0, 10), (INF, 20))  # half the observations above 100 ms
    assert quantile(0.5, buckets) == pytest.approx(10.0)
    assert quantile(0.51, buckets) == 100.0
    assert quantile(0.99, buckets) == 100.0


def test_quantile_with_apisix_buckets() -> None:
    bounds = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000, 60000)
    # 300 requests, all between 5 and 10 ms
    buckets = [(float(b), 0 if b < 10 else 300) for b in bounds] + [(INF, 300)]
    assert quantile(0.99, buckets) == pytest.approx(5 + 5 * 0.99)
    assert quantile(0.5, buckets) == pytest.approx(7.5)


def test_quantile_none_without_observations() -> None:
    assert quantile(0.99, ()) is None
    assert quantile(0.99, ((10.0, 0), (INF, 0))) is None
    assert quantile(0.99, ((INF, 5),)) is None  # no finite bound to report


def test_quantile_tolerates_unsorted_input_and_a_missing_inf_bucket() -> None:
    assert quantile(0.5, ((50.0, 40), (INF, 40), (10.0, 10), (20.0, 30))) == pytest.approx(15.0)
    # the elided APISIX docs sample has no +Inf line: the highest bucket stands in for it
    assert quantile(0.5, ((10.0, 10), (20.0, 20))) == pytest.approx(10.0)


def test_quantile_rank_zero_does_not_divide_by_zero() -> None:
    assert quantile(0.0, ((1.0, 0), (5.0, 4), (INF, 4))) == 0.0


@pytest.mark.parametrize("q", [-0.01, 1.01, math.nan])
def test_quantile_rejects_q_outside_0_1(q: float) -> None:
    with pytest.raises(ValueError):
        quantile(q, H)


def test_merge_buckets_adds_equal_layouts_and_steps_over_missing_bounds() -> None:
    a = ((10.0, 1), (20.0, 3), (INF, 4))
    b = ((10.0, 2), (20.0, 2), (INF, 5))
    assert merge_buckets([a, b]) == ((10.0, 3), (20.0, 5), (INF, 9))
    c = ((15.0, 7), (INF, 7))  # another layout: its count at 10 is 0, at 20 is 7
    assert merge_buckets([a, c]) == ((10.0, 1), (15.0, 8), (20.0, 10), (INF, 11))
    assert merge_buckets([]) == ()


# --- windows -------------------------------------------------------------------------------


def sample(
    iid: str,
    ok: int = 0,
    err: int = 0,
    *,
    fast: int | None = None,
    version: str | None = "3.8.1",
    c4xx: int = 0,
) -> InstanceSample:
    """``ok`` 200s and ``err`` 500s (and ``c4xx`` 404s); ``fast`` of them took <= 10 ms,
    the rest (10, 100]."""
    n = ok + err + c4xx
    fast = n if fast is None else fast
    return InstanceSample(
        instance_id=iid,
        requests=n,
        s2xx=ok,
        s4xx=c4xx,
        s5xx=err,
        buckets=((10.0, fast), (100.0, n), (INF, n)),
        latency_sum=5.0 * fast + 50.0 * (n - fast),
        latency_count=n,
        version=version,
    )


def snap(at: float, *samples: InstanceSample) -> Snapshot:
    return Snapshot(taken_at=at, instances=samples)


def test_window_is_the_per_instance_counter_delta() -> None:
    before = snap(100.0, sample("a", 100, 1, fast=90), sample("b", 50, fast=50))
    after = snap(130.0, sample("a", 160, 4, fast=140), sample("b", 90, fast=80))
    w = window(before, after)
    assert w.duration_s == 30.0
    assert (w.requests, w.s2xx, w.s5xx) == (60 + 3 + 40, 60 + 40, 3)
    assert w.buckets == ((10.0, 50 + 30), (100.0, 63 + 40), (INF, 103))
    assert w.latency_count == 103
    assert w.latency_sum == pytest.approx(5.0 * 80 + 50.0 * 23)
    assert {d.instance_id: d.requests for d in w.instances} == {"a": 63, "b": 40}
    assert w.appeared == () and w.restarted == ()


def test_window_counts_a_new_instance_from_zero_and_ignores_a_gone_one() -> None:
    before = snap(0.0, sample("old", 1000, 50))
    after = snap(10.0, sample("new", 30, 2))
    w = window(before, after)
    assert (w.requests, w.s5xx) == (32, 2)
    assert w.appeared == ("new",)


def test_window_counts_a_restarted_instance_from_zero() -> None:
    # the process restarted: counters lower than before, so everything now is new
    before = snap(0.0, sample("a", 500, 5), sample("b", 100))
    after = snap(10.0, sample("a", 40, 1), sample("b", 120))
    w = window(before, after)
    assert w.restarted == ("a",)
    assert {d.instance_id: (d.requests, d.s5xx) for d in w.instances} == {
        "a": (41, 1),
        "b": (20, 0),
    }
    assert (w.requests, w.s5xx) == (61, 1)


def test_window_one_decreased_counter_is_enough_to_see_a_restart() -> None:
    before = snap(0.0, sample("a", 100, 10))
    after = snap(10.0, sample("a", 200, 3))  # more requests, fewer 5xx: a restart
    w = window(before, after)
    assert w.restarted == ("a",)
    assert (w.requests, w.s5xx) == (203, 3)


def test_window_a_version_change_under_the_same_id_is_a_restart() -> None:
    before = snap(0.0, sample("gw-0", 100, version="3.8.1"))
    after = snap(10.0, sample("gw-0", 300, version="3.9.0"))
    w = window(before, after)
    assert w.restarted == ("gw-0",)
    assert w.requests == 300


def test_window_rejects_snapshots_in_the_wrong_order() -> None:
    with pytest.raises(ValueError, match="precedes"):
        window(snap(10.0), snap(5.0))


def test_window_of_identical_snapshots_is_empty() -> None:
    s = snap(1.0, sample("a", 10, 1))
    w = window(s, s)
    assert (w.requests, w.duration_s, w.latency_count) == (0, 0.0, 0)
    summary = summarize(w)
    assert (summary.ratio_5xx, summary.rate_per_s, summary.p99_ms) == (0.0, 0.0, None)


def test_samples_and_snapshots_are_hashable() -> None:
    s = snap(1.0, sample("a", 10, 1))
    assert hash(s) == hash(snap(1.0, sample("a", 10, 1)))


# --- summaries -----------------------------------------------------------------------------


def test_summarize() -> None:
    before = snap(0.0, sample("a", 0))
    after = snap(20.0, sample("a", 180, 10, c4xx=10, fast=100))
    s = summarize(window(before, after))
    assert (s.requests, s.errors_5xx, s.errors_4xx) == (200, 10, 10)
    assert (s.ratio_5xx, s.ratio_4xx) == (0.05, 0.05)
    assert s.rate_per_s == 10.0 and s.duration_s == 20.0
    assert s.p50_ms == pytest.approx(10.0)  # rank 100 = the top of the 10 ms bucket
    assert s.p95_ms == pytest.approx(10 + 90 * (190 - 100) / 100)
    assert s.p99_ms == pytest.approx(10 + 90 * (198 - 100) / 100)


def test_summary_and_verdict_round_trip_through_json() -> None:
    s = Summary(
        requests=250,
        errors_5xx=3,
        errors_4xx=1,
        ratio_5xx=0.012,
        ratio_4xx=0.004,
        p50_ms=4.5,
        p95_ms=None,
        p99_ms=9.95,
        duration_s=30.0,
        rate_per_s=8.33,
    )
    assert Summary.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    v = Verdict(Phase.FAIL, ("5xx ratio 21.3% after vs 0.0% before (limit 1.0%)",))
    data = json.loads(json.dumps(v.to_dict()))
    assert data["phase"] == "fail"
    assert Verdict.from_dict(data) == v
    assert Summary.from_dict({**s.to_dict(), "future_field": 1}) == s
    with pytest.raises(ValueError, match="p99_ms"):
        Summary.from_dict({k: v for k, v in s.to_dict().items() if k != "p99_ms"})
    with pytest.raises(ValueError):
        Verdict.from_dict({"phase": "maybe"})
    with pytest.raises(ValueError):
        Verdict.from_dict({"reasons": []})


# --- phases --------------------------------------------------------------------------------


def test_phases_rank_best_to_worst() -> None:
    assert Phase.PASS < Phase.INCONCLUSIVE < Phase.FAIL
    assert Phase.FAIL > Phase.PASS and Phase.PASS <= Phase.PASS
    assert sorted([Phase.FAIL, Phase.PASS, Phase.INCONCLUSIVE]) == [
        Phase.PASS,
        Phase.INCONCLUSIVE,
        Phase.FAIL,
    ]


def test_worst() -> None:
    assert worst(Phase.PASS) is Phase.PASS
    assert worst(Phase.PASS, Phase.PASS) is Phase.PASS
    assert worst(Phase.PASS, Phase.INCONCLUSIVE) is Phase.INCONCLUSIVE
    assert worst(Phase.INCONCLUSIVE, Phase.FAIL, Phase.PASS) is Phase.FAIL
    with pytest.raises(ValueError):
        worst()


# --- verdict rules -------------------------------------------------------------------------


def summary(requests: int = 1000, errors_5xx: int = 0, p99: float | None = 10.0) -> Summary:
    return Summary(
        requests=requests,
        errors_5xx=errors_5xx,
        errors_4xx=0,
        ratio_5xx=errors_5xx / requests if requests else 0.0,
        ratio_4xx=0.0,
        p50_ms=None if p99 is None else p99 / 2,
        p95_ms=p99,
        p99_ms=p99,
        duration_s=60.0,
        rate_per_s=requests / 60.0,
    )


def test_healthy_pass_explains_both_checks() -> None:
    v = judge(summary(), summary(errors_5xx=1, p99=12.0), T)
    assert v.phase is Phase.PASS
    assert v.reasons == (
        "5xx ratio 0.10% after vs 0.0% before (limit 1.0%)",
        "p99 12 ms after vs 10 ms before (limit 35 ms)",
    )


def test_5xx_absolute_floor_at_and_just_past() -> None:
    # before is clean, so the limit is max_5xx_ratio = 1%: 10 of 1000 passes, 11 fails
    assert judge(summary(), summary(errors_5xx=10), T).phase is Phase.PASS
    v = judge(summary(), summary(errors_5xx=11), T)
    assert v.phase is Phase.FAIL
    assert v.reasons == ("5xx ratio 1.1% after vs 0.0% before (limit 1.0%)",)


def test_5xx_relative_limit_at_and_just_past() -> None:
    # 2% before: the limit is 2 x 2% = 4% (above the 1% floor): 40 of 1000 passes, 41 fails
    before = summary(errors_5xx=20)
    assert judge(before, summary(errors_5xx=40), T).phase is Phase.PASS
    v = judge(before, summary(errors_5xx=41), T)
    assert v.phase is Phase.FAIL
    assert v.reasons == ("5xx ratio 4.1% after vs 2.0% before (limit 4.0%)",)


def test_5xx_reason_reads_like_the_runbook() -> None:
    v = judge(summary(), summary(errors_5xx=213), T)
    assert v.reasons == ("5xx ratio 21.3% after vs 0.0% before (limit 1.0%)",)


def test_p99_limit_at_and_just_past() -> None:
    # 1.5 x 10 ms + 20 ms = 35 ms
    assert judge(summary(p99=10.0), summary(p99=35.0), T).phase is Phase.PASS
    v = judge(summary(p99=10.0), summary(p99=35.01), T)
    assert v.phase is Phase.FAIL
    assert v.reasons == ("p99 35 ms after vs 10 ms before (limit 35 ms)",)
    v = judge(summary(p99=9.0), summary(p99=212.0), T)
    assert v.reasons == ("p99 212 ms after vs 9 ms before (limit 33.5 ms)",)


def test_both_rules_broken_lists_both() -> None:
    v = judge(summary(p99=10.0), summary(errors_5xx=300, p99=500.0), T)
    assert v.phase is Phase.FAIL
    assert [r.split()[0] for r in v.reasons] == ["5xx", "p99"]


def test_min_requests_at_and_just_below() -> None:
    n = T.min_requests
    assert judge(summary(n), summary(n), T).phase is Phase.PASS
    v = judge(summary(n), summary(n - 1), T)
    assert v.phase is Phase.INCONCLUSIVE
    assert v.reasons == (f"only {n - 1} requests after (need {n})",)
    v = judge(summary(n - 1), summary(n), T)
    assert v.phase is Phase.INCONCLUSIVE
    assert v.reasons == (f"only {n - 1} requests before (need {n})",)
    assert judge(summary(0, p99=None), summary(0, p99=None), T).phase is Phase.INCONCLUSIVE


def test_too_few_requests_after_never_fails_nor_passes() -> None:
    # every request failed, but 50 requests are too few to judge either way
    v = judge(summary(), summary(50, errors_5xx=50, p99=900.0), T)
    assert v.phase is Phase.INCONCLUSIVE
    assert v.reasons[0] == "only 50 requests after (need 200)"
    assert "too few requests to fail" in v.reasons[1]


def test_errors_fail_on_a_large_after_window_even_with_a_small_baseline() -> None:
    v = judge(summary(0, p99=None), summary(500, errors_5xx=100), T)
    assert v.phase is Phase.FAIL
    assert v.reasons == (
        "5xx ratio 20.0% after vs 0.0% before (limit 1.0%)",
        "only 0 requests before (need 200)",
        "p99 unknown before (no latency observations)",
    )


def test_latency_needs_both_windows_to_fail() -> None:
    v = judge(summary(100, p99=10.0), summary(1000, p99=500.0), T)
    assert v.phase is Phase.INCONCLUSIVE
    assert v.reasons == (
        "only 100 requests before (need 200)",
        "p99 500 ms after vs 10 ms before (limit 35 ms), too few requests to fail",
    )


def test_unknown_p99_is_inconclusive() -> None:
    v = judge(summary(), summary(p99=None), T)
    assert v.phase is Phase.INCONCLUSIVE
    assert v.reasons == ("p99 unknown after (no latency observations)",)


def test_judge_uses_the_groups_thresholds() -> None:
    strict = Thresholds(
        max_5xx_ratio=0.0,
        max_5xx_ratio_factor=1.0,
        p99_factor=1.0,
        p99_slack_ms=0.0,
        min_requests=10,
    )
    assert judge(summary(10), summary(10), strict).phase is Phase.PASS
    assert judge(summary(10), summary(10, errors_5xx=1), strict).phase is Phase.FAIL
    assert judge(summary(10, p99=10.0), summary(10, p99=10.5), strict).phase is Phase.FAIL


def test_a_new_rule_is_one_function_and_the_verdict_is_the_worst_finding() -> None:
    def saturation(before: Summary, after: Summary, t: Thresholds) -> Finding:
        if after.rate_per_s > 2 * before.rate_per_s:
            return Finding(Phase.INCONCLUSIVE, ("traffic doubled during the window",))
        return Finding(Phase.PASS, ("traffic steady",))

    rules = (*RULES, saturation)
    steady = judge(summary(), summary(), T, rules)
    assert steady.phase is Phase.PASS and steady.reasons[-1] == "traffic steady"
    doubled = judge(summary(), summary(3000), T, rules)
    assert doubled.phase is Phase.INCONCLUSIVE
    assert doubled.reasons == ("traffic doubled during the window",)
    # A failing built-in rule still wins, with the new rule's doubt after its reason.
    failing = judge(summary(), summary(3000, errors_5xx=300), T, rules)
    assert failing.phase is Phase.FAIL
    assert failing.reasons == (
        "5xx ratio 10.0% after vs 0.0% before (limit 1.0%)",
        "traffic doubled during the window",
    )
