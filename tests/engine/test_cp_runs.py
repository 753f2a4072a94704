"""Whole runs on a sandbox fleet with its control-plane stand-in.

* API7 EE (a CP configured): each group is verified on the CP after its replacements, its view
  recorded beside the runtime's; the config freeze says once that it cannot be verified (the
  Admin API returns no revision).
* Plain APISIX (no CP configured): the freeze follows the instances' own
  ``apisix_etcd_modify_indexes{key="max_modify_index"}``; a configuration change during the run
  pauses it and says what changed.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import httpx
import pytest

from upgrade_bot.engine import COMPLETED, PAUSED
from upgrade_bot.engine.adapters.freeze import NOT_VERIFIABLE_API7
from upgrade_bot.engine.config import load_config
from upgrade_bot.wiring import engine_for

from ..support import Sandboxes, eventually, fleet_spec

pytestmark = [pytest.mark.traffic, pytest.mark.timeout(240)]

NEW = "3.8.1"
FAST: dict[str, Any] = {
    "rollout": {"batch_size": 2, "ready_timeout_s": 60, "baseline_window_s": 2, "settle_s": 2},
    "thresholds": {"min_requests": 10, "p99_factor": 10, "p99_slack_ms": 500},
    "observation": {"window_s": 1, "checkin_interval_s": 1},
    "smoke": {"path": "/smoke", "expect_status": [200], "count": 2},
}
DEADLINE_S = 150.0


async def test_an_api7_run_is_verified_on_the_cp_and_says_the_freeze_is_not_verifiable(
    sandboxes: Sandboxes,
) -> None:
    spec = fleet_spec(groups=1, instances=2, rate_per_s=30.0)
    handle = await sandboxes.up(spec, defaults=FAST)
    config = load_config(handle.config_path)
    assert config.control_plane is not None and config.groups[0].gateway_group == spec.groups[0]

    async with engine_for(config, config_dir=handle.dir, redis_url=handle.redis_url) as engine:
        run = await engine.start(
            NEW,
            requester="cp-test",
            approval_mode="auto",
            acknowledge_changelog=True,
        )
        result = await asyncio.wait_for(engine.drive(run.id, until_human=False), DEADLINE_S)
        events = [e for _, e in await engine.feed.events(run.id)]

    assert result.run.state == COMPLETED, result.run.reason
    (verified,) = [e for e in events if e["type"] == "cp_verified"]
    assert verified["status"] == "ok"
    view = verified["view"]
    assert (view["healthy"], view["expected"], view["target"]) == (2, 2, NEW)
    assert view["excluded"] == 2  # the two replaced instances, still listed by the CP
    assert result.run.groups[0].control_plane == view
    freeze = [e for e in events if e["type"] == "precheck" and e["check"] == "config_freeze"]
    assert [(e["status"], e["note"]) for e in freeze] == [("skipped", NOT_VERIFIABLE_API7)]
    assert not [e for e in events if e["type"] == "config_changed"]


async def test_a_config_change_during_a_plain_apisix_run_pauses_it(sandboxes: Sandboxes) -> None:
    spec = fleet_spec(groups=2, instances=2, rate_per_s=30.0)
    handle = await sandboxes.up(spec, defaults=FAST)
    # plain APISIX: no control plane in the bot's configuration (the sandbox's stand-in still
    # delivers configuration to the instances, as etcd would)
    config = load_config(handle.config_path).model_copy(update={"control_plane": None})

    async with engine_for(config, config_dir=handle.dir, redis_url=handle.redis_url) as engine:
        run = await engine.start(
            NEW,
            requester="cp-test",
            approval_mode="auto",
            acknowledge_changelog=True,
        )
        driver = asyncio.create_task(engine.drive(run.id, until_human=True))
        try:

            async def frozen() -> bool:
                if driver.done():
                    raise AssertionError(f"the run stopped before its freeze: {driver.result()}")
                return (await engine.status(run.id)).config_revision is not None

            await eventually(frozen, "the freeze to start", within=60)
            started_at = (await engine.status(run.id)).config_revision
            async with httpx.AsyncClient(timeout=30) as http:
                resp = await http.post(
                    handle.cp_url + "/sandbox/config/bump", json={"gateway_group": spec.groups[0]}
                )
                resp.raise_for_status()
            result = await asyncio.wait_for(asyncio.shield(driver), DEADLINE_S)
        finally:
            if not driver.done():
                driver.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await driver
        events = [e for _, e in await engine.feed.events(run.id)]

    assert started_at == 0
    assert result.run.state == PAUSED, result.run.reason
    assert result.run.reason == (
        "configuration changed during the freeze (revision 0 → 1); check the change, then resume"
    )
    (changed,) = [e for e in events if e["type"] == "config_changed"]
    assert (changed["before"], changed["after"]) == (0, 1)
    (started,) = [e for e in events if e["type"] == "freeze_started"]
    assert started["revision"] == 0
    assert not [
        e
        for e in events
        if e["type"] == "precheck" and e["status"] == "skipped" and e["check"] == "config_freeze"
    ]
    # the CP steps are skipped with one visible note each
    assert [e["note"] for e in events if e["type"] == "cp_verified"] == [
        "no control plane configured: instances are not checked on a CP"
    ]
