"""The rules a real gateway's failures need beyond 5xx and p99: 404s from an instance without its
configuration, other 4xx, and one instance misbehaving while its peers are fine."""

from __future__ import annotations

from upgrade_bot.engine.config import Thresholds
from upgrade_bot.engine.metrics import (
    InstanceSample,
    InstanceSummary,
    Snapshot,
    Summary,
    summarize,
    window,
)
from upgrade_bot.engine.verdict import Phase, judge

T = Thresholds()


def instance(
    name: str, requests: int = 300, e5xx: int = 0, e404: int = 0, p99: float = 50.0
) -> InstanceSummary:
    return InstanceSummary(name, requests, e5xx, e404, p99)


def summary(
    requests: int = 1000,
    e404: int = 0,
    other_4xx: int = 0,
    instances: tuple[InstanceSummary, ...] = (),
) -> Summary:
    if instances:
        requests = sum(i.requests for i in instances)
        e404 = sum(i.errors_404 for i in instances)
    e5xx = sum(i.errors_5xx for i in instances)
    e4xx = e404 + other_4xx
    return Summary(
        requests=requests,
        errors_5xx=e5xx,
        errors_4xx=e4xx,
        ratio_5xx=e5xx / requests,
        ratio_4xx=e4xx / requests,
        p50_ms=20.0,
        p95_ms=40.0,
        p99_ms=50.0,
        duration_s=60.0,
        rate_per_s=requests / 60,
        errors_404=e404,
        ratio_404=e404 / requests,
        instances=instances,
    )


def test_an_instance_without_its_routes_fails_the_404_rule_that_5xx_alone_passes() -> None:
    # A third of the traffic meets a new instance that answers 404 Route Not Found.
    v = judge(summary(), summary(e404=333), T)
    assert v.phase is Phase.FAIL
    assert v.reasons == ("404 ratio 33.3% after vs 0.0% before (limit 2.0%)",)


def test_the_404_limit_is_relative_to_a_fleet_that_normally_answers_404() -> None:
    normal = summary(e404=300)  # 30% of requests hit no route, before and after
    assert judge(normal, summary(e404=320), T).phase is Phase.PASS
    v = judge(normal, summary(e404=601), T)
    assert v.phase is Phase.FAIL
    assert v.reasons == ("404 ratio 60.1% after vs 30.0% before (limit 60.0%)",)


def test_a_404_surge_on_too_few_requests_is_inconclusive_not_failed() -> None:
    v = judge(summary(requests=300), summary(requests=100, e404=50), T)
    assert v.phase is Phase.INCONCLUSIVE
    assert "404 ratio 50.0% after vs 0.0% before (limit 2.0%), too few requests to fail" in (
        v.reasons
    )


def test_other_4xx_have_their_own_rule_and_a_pass_says_nothing_of_either() -> None:
    v = judge(summary(other_4xx=20), summary(other_4xx=150), T)
    assert v.phase is Phase.FAIL
    assert v.reasons == ("4xx (other than 404) ratio 15.0% after vs 2.0% before (limit 10.0%)",)
    quiet = judge(summary(), summary(e404=5, other_4xx=5), T)
    assert quiet.phase is Phase.PASS
    assert not any("404" in r or "4xx" in r for r in quiet.reasons), quiet.reasons


def test_one_erroring_instance_fails_the_group_while_the_total_is_within_limits() -> None:
    # 2% 5xx on one of three instances: 0.67% overall, under the 1% limit.
    after = summary(
        instances=(
            instance("prod-eu/0"),
            instance("prod-eu/1@http://x:1", e5xx=6),
            instance("prod-eu/2"),
        )
    )
    assert after.ratio_5xx < T.max_5xx_ratio
    v = judge(summary(), after, T)
    assert v.phase is Phase.FAIL
    assert v.reasons == ("instance prod-eu/1: 5xx ratio 2.0% vs 0.0% on its 2 peers (limit 1.0%)",)


def test_a_slow_instance_or_one_without_routes_is_named_too() -> None:
    slow = summary(instances=(instance("a"), instance("b", p99=400.0), instance("c", p99=60.0)))
    v = judge(summary(), slow, T)
    assert v.phase is Phase.FAIL
    assert "instance b: p99 400 ms vs 60 ms on its 2 peers (limit 110 ms)" in v.reasons
    lost = summary(instances=(instance("a"), instance("b"), instance("c", e404=300)))
    reasons = judge(summary(), lost, T).reasons
    assert "instance c: 404 ratio 100.0% vs 0.0% on its 2 peers (limit 2.0%)" in reasons


def test_no_outlier_when_every_instance_errs_alike_or_an_instance_saw_too_little() -> None:
    alike = summary(instances=tuple(instance(n, e5xx=6) for n in "abc"))
    assert not any("instance" in r for r in judge(summary(), alike, T).reasons)
    little = summary(instances=(instance("a"), instance("b"), instance("c", requests=20, e5xx=5)))
    assert not any("instance c" in r for r in judge(summary(), little, T).reasons)


def test_windows_split_by_instance_and_count_404s_apart() -> None:
    before = Snapshot(0.0, (InstanceSample("a", requests=100, s4xx=10, s404=4),))
    after = Snapshot(
        10.0,
        (
            InstanceSample("a", requests=300, s4xx=30, s404=14, s5xx=2),
            InstanceSample("b", requests=50, s4xx=50, s404=50),
        ),
    )
    s = summarize(window(before, after))
    assert (s.requests, s.errors_4xx, s.errors_404) == (250, 70, 60)
    assert s.ratio_404 == 60 / 250
    assert [(i.id, i.requests, i.errors_5xx, i.errors_404) for i in s.instances] == [
        ("a", 200, 2, 10),
        ("b", 50, 0, 50),
    ]


def test_a_summary_round_trips_and_one_saved_before_the_split_still_loads() -> None:
    s = summary(instances=(instance("a", e404=3), instance("b", p99=70.0)))
    assert Summary.from_dict(s.to_dict()) == s
    old = s.to_dict()
    for key in ("errors_404", "ratio_404", "instances"):
        del old[key]
    loaded = Summary.from_dict(old)
    assert (loaded.errors_404, loaded.instances) == (0, ())
