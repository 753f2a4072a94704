"""The verdict against injected faults of random size, on real sandbox traffic.

Each fault's size is drawn from a printed, replayable seed (``VERDICT_SEED=<n>`` replays a run),
at least 2x away from the threshold the verdict applies: above it the verdict must fail, below it
pass, and the increase the metrics measured must match what was injected. Four groups are
measured at once (before, replace, after) through the scraping source, as the engine does:

* ``errors``: the 5xx ratio (limit 1 % on a clean baseline); tolerance 4 standard deviations
  of the ratio on the window's request count, plus 0.5 percentage points;
* ``latency``: added upstream latency against the p99 limit (1.5 x p99 before + 20 ms); the
  p99 is interpolated in APISIX's histogram buckets, so the tolerance is one bucket on either
  side (the widths of the buckets holding p99 before and after);
* ``not found``: the 404 ratio (limit 2 %), tolerance as for errors;
* a healthy release passes.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import random
import time
from typing import Any

import httpx
import pytest

from upgrade_bot.engine.adapters.scrape import ScrapeSource
from upgrade_bot.engine.backends.local import LocalBackend
from upgrade_bot.engine.config import Thresholds
from upgrade_bot.engine.metrics import Summary
from upgrade_bot.engine.verdict import Phase, judge
from upgrade_bot.sandbox.simulator import LATENCY_BUCKETS_MS
from upgrade_bot.sandbox.spec import Fault

from ..support import Sandboxes, eventually, fleet_spec

pytestmark = [pytest.mark.traffic, pytest.mark.timeout(300)]

T = Thresholds()
WINDOW_REQUESTS = 500
"""Requests each window waits for (about 7 s at the fleet's rate)."""
SEED = int(os.environ.get("VERDICT_SEED") or random.SystemRandom().randrange(2**31))


def draw(rng: random.Random) -> dict[str, tuple[str, float]]:
    """Per fault kind: above or below its threshold, and the size injected."""
    sizes = {}
    for kind, above, below in (
        ("errors", (0.04, 0.08), (0.0, 0.0025)),  # limit 1 %
        ("latency", (150.0, 300.0), (0.0, 10.0)),  # limit ~ 92 ms on a ~48 ms baseline p99
        ("not_found", (0.07, 0.14), (0.0, 0.005)),  # limit 2 %
    ):
        side = rng.choice(["above", "below"])
        low, high = above if side == "above" else below
        sizes[kind] = (side, rng.uniform(low, high))
    return sizes


def bucket_width(ms: float) -> float:
    bounds = (0.0, *LATENCY_BUCKETS_MS)
    for low, high in itertools.pairwise(bounds):
        if low < ms <= high:
            return high - low
    return math.inf


async def test_the_verdict_fails_exactly_when_an_injected_fault_crosses_its_threshold(
    sandboxes: Sandboxes,
) -> None:
    print(f"VERDICT_SEED={SEED}")
    sizes = draw(random.Random(SEED))
    faults = {
        "3.8.1": Fault(error_ratio=sizes["errors"][1]),
        "3.8.2": Fault(added_latency_ms=sizes["latency"][1]),
        "3.8.3": Fault(not_found_ratio=sizes["not_found"][1]),
    }
    spec = fleet_spec(groups=4, instances=1, rate_per_s=300.0, faults=faults)
    handle = await sandboxes.up(spec)
    targets = dict(zip(spec.groups, ("3.8.1", "3.8.2", "3.8.3", "3.8.4"), strict=True))
    backends = {g: LocalBackend(g, handle.control_url) for g in spec.groups}
    async with httpx.AsyncClient(timeout=30) as http:
        source = ScrapeSource(backends, http, time.time)

        async def window() -> dict[str, Summary]:
            marks = {g: await source.mark(g) for g in spec.groups}

            async def measured() -> dict[str, Summary] | None:
                out = {g: await source.summarize(g, marks[g]) for g in spec.groups}
                return out if all(s.requests >= WINDOW_REQUESTS for s in out.values()) else None

            return await eventually(measured, f"{WINDOW_REQUESTS} requests per group", within=120)

        try:
            before = await window()
            await asyncio.gather(
                *(
                    backends[g].ensure_group(spec.image_for(v), ready_timeout_s=60)
                    for g, v in targets.items()
                )
            )
            after = await window()
        finally:
            for backend in backends.values():
                await backend.close()

    verdicts = {g: judge(before[g], after[g], T) for g in spec.groups}
    reasons = {g: v.reasons for g, v in verdicts.items()}
    why = f"VERDICT_SEED={SEED} sizes={sizes} verdicts={reasons}"
    errors, latency, not_found, healthy = spec.groups
    for group, kind in ((errors, "errors"), (latency, "latency"), (not_found, "not_found")):
        expected = Phase.FAIL if sizes[kind][0] == "above" else Phase.PASS
        assert verdicts[group].phase is expected, why
    assert verdicts[healthy].phase is Phase.PASS, why

    def ratio_tolerance(ratio: float, n: int) -> float:
        return 4 * math.sqrt(max(ratio, 0.001) * (1 - ratio) / n) + 0.005

    injected = sizes["errors"][1]
    measured = after[errors].ratio_5xx - before[errors].ratio_5xx
    assert abs(measured - injected) <= ratio_tolerance(injected, after[errors].requests), why
    injected = sizes["not_found"][1]
    measured = after[not_found].ratio_404 - before[not_found].ratio_404
    assert abs(measured - injected) <= ratio_tolerance(injected, after[not_found].requests), why
    p99_before, p99_after = before[latency].p99_ms, after[latency].p99_ms
    assert p99_before is not None and p99_after is not None
    measured_ms = p99_after - p99_before
    tolerance = bucket_width(p99_before) + bucket_width(p99_after)
    assert abs(measured_ms - sizes["latency"][1]) <= tolerance, why

    # The same windows judged with a minimum sample they do not reach: inconclusive, never fail.
    few: dict[str, Any] = {"min_requests": max(s.requests for s in after.values()) + 1}
    strict = T.model_copy(update=few)
    for group in spec.groups:
        assert judge(before[group], after[group], strict).phase is not Phase.FAIL
    assert judge(before[healthy], after[healthy], strict).phase is Phase.INCONCLUSIVE
