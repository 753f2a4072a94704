"""Watching a group's metrics while it is replaced, on a real sandbox fleet under traffic.

The new release errs on half its requests and starts slowly (so that each replacement takes a
while and the instances replaced before it serve meanwhile). The watch before the group's last
slot sees the errors and pauses the run there: that slot is never touched, and the rollback
restores the others with no failed request.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from upgrade_bot.engine import PAUSED, ROLLED_BACK, Command
from upgrade_bot.engine.config import load_config
from upgrade_bot.sandbox.spec import parse_fault
from upgrade_bot.wiring import engine_for

from ..support import Sandboxes, fleet_spec

pytestmark = [pytest.mark.traffic, pytest.mark.timeout(300)]

WATCHED: dict[str, Any] = {
    "rollout": {
        "batch_size": 1,
        "ready_timeout_s": 30,
        "baseline_window_s": 2.0,
        "settle_s": 2.0,
        "watch_min_requests": 40,
    },
    "thresholds": {"min_requests": 40},
    "smoke": {"path": "/smoke", "expect_status": [200], "count": 2},
    "approval": {"required": 1, "expiry_s": 3600},
}


async def test_a_release_failing_mid_group_is_halted_before_its_next_slot(
    sandboxes: Sandboxes, tmp_path: Path
) -> None:
    (version, errors), (_, slow) = (
        parse_fault("3.8.1=errors:0.5"),
        parse_fault("3.8.1=slow-start:1.5"),
    )
    spec = fleet_spec(
        groups=1, instances=3, rate_per_s=120.0, faults={version: errors.merged(slow)}
    )
    handle = await sandboxes.up(spec, defaults=WATCHED)
    config = load_config(handle.config_path)
    traffic_before = handle.status()["traffic"]

    async with engine_for(config, config_dir=handle.dir, redis_url=handle.redis_url) as engine:
        run = await engine.start(
            "3.8.1", requester="ci", approval_mode="auto", acknowledge_changelog=True
        )
        halted = await engine.drive(run.id)
        assert halted.run.state == PAUSED, halted.run.reason
        assert halted.run.reason.startswith(
            "metrics watched during the replacement of prod-eu failed after "
        ), halted.run.reason
        assert "5xx ratio" in halted.run.reason
        truth = {s["id"]: s for s in handle.status()["slots"]}
        # The slot after the watch was never touched.
        done = halted.run.group("prod-eu").watch["done"]
        assert 1 <= done <= 2
        untouched = [f"prod-eu/{i}" for i in range(done, 3)]
        assert all(truth[s]["replacements"] == 0 for s in untouched), truth
        assert all(truth[f"prod-eu/{i}"]["replacements"] == 1 for i in range(done)), truth

        await engine.command(run.id, Command(action="rollback", user="ci"))
        ended = await engine.drive(run.id)

    assert ended.run.state == ROLLED_BACK, ended.run.reason
    assert ended.run.reason.startswith("rollback requested by ci while paused: metrics watched")
    after = handle.status()
    assert {s["id"]: s["version"] for s in after["slots"]} == {
        f"prod-eu/{i}": "3.8.0" for i in range(3)
    }
    assert after["traffic"]["failed"] == traffic_before["failed"] == 0
