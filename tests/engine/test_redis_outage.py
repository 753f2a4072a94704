"""A run carries on through a Redis crash: SIGKILL mid-run, restart on the same files and port.

The test starts its own Redis (append-only file in its own folder) and hands it to the sandbox
through ``REDIS_URL``, so the sandbox's bot configuration points at it. An auto-approved run is
driven in-process; once the sandbox has observably replaced the first slot, Redis is killed
with SIGKILL (no flush, as in a crash) and started again on the same folder and port as soon
as the port refuses connections and the driver has met the outage. The run must still
complete, with every slot replaced exactly once (the sandbox's own registry says so), no
request failed, and an audit stream that tells each replacement exactly once.

In the second case Redis stays down until the driver's (short) lease has lapsed: the driver
must take its lapsed lease back and carry on. That relies on Redis 7 writing expiry times to the
append-only file as absolute times (a lease expires while the server is down).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from upgrade_bot.engine import COMPLETED
from upgrade_bot.engine.config import load_config
from upgrade_bot.redis_server import RedisServer
from upgrade_bot.sandbox import manage
from upgrade_bot.sandbox.spec import SandboxSpec, group_names
from upgrade_bot.wiring import engine_for

from ..support import Sandboxes, eventually

pytestmark = [pytest.mark.traffic, pytest.mark.timeout(300)]

OLD, NEW = "3.8.0", "3.8.1"
GROUPS = group_names(2)
INSTANCES = 2
# Short windows so the run takes seconds. The verdict is not what this test is about: the
# thresholds are loose enough that a loaded machine's latency spikes do not fail a group.
SANDBOX_DEFAULTS: dict[str, Any] = {
    "rollout": {
        "batch_size": 1,
        "ready_timeout_s": 60,
        "baseline_window_s": 2,
        "settle_s": 2,
    },
    "thresholds": {"min_requests": 20, "p99_factor": 10, "p99_slack_ms": 500},
    "observation": {"window_s": 1, "checkin_interval_s": 1},
    "smoke": {"path": "/smoke", "expect_status": [200], "count": 2},
}
DEADLINE_S = 180.0  # for the whole run; it takes ~30 s on an idle machine


def refuses_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


@pytest.fixture
def redis_servers(tmp_path: Path) -> Iterator[list[RedisServer]]:
    """Every server the test starts; whatever still runs is stopped afterwards."""
    servers: list[RedisServer] = []
    yield servers
    for server in servers:
        server.stop()


@pytest.mark.parametrize(
    "lease_ttl_s",
    [
        pytest.param(None, id="brief-outage"),
        pytest.param(2.0, id="outage-outlasts-the-lease"),
    ],
)
async def test_run_completes_through_a_redis_crash(
    lease_ttl_s: float | None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    redis_servers: list[RedisServer],
) -> None:
    caplog.set_level(logging.WARNING, logger="upgrade_bot.engine.runner")
    redis_dir = tmp_path / "redis"
    first = RedisServer(redis_dir).start()
    redis_servers.append(first)
    port = first.port
    monkeypatch.setenv("REDIS_URL", first.url)

    spec = SandboxSpec(
        groups=GROUPS, instances=INSTANCES, version=OLD, cp_version=NEW, rate_per_s=100.0
    )
    handle = await Sandboxes(tmp_path).up(spec, defaults=SANDBOX_DEFAULTS)
    try:
        assert handle.redis_url == first.url, "the sandbox must use the test's own Redis"
        config = load_config(handle.config_path)
        assert config.redis_url == first.url
        if lease_ttl_s is not None:
            config = config.model_copy(
                update={"store": config.store.model_copy(update={"lease_ttl_s": lease_ttl_s})}
            )

        async def truth() -> dict[str, Any]:
            return await asyncio.to_thread(manage.status, handle.dir)

        async with engine_for(
            config, config_dir=handle.dir, redis_url=handle.redis_url, identity="outage-test"
        ) as engine:
            run = await engine.start(
                NEW, requester="outage-test", approval_mode="auto", acknowledge_changelog=True
            )
            driver = asyncio.create_task(engine.drive(run.id, until_human=False))
            try:
                first_slot = f"{GROUPS[0]}/0"

                async def first_slot_replaced() -> bool:
                    if driver.done():  # .result() raises what stopped the driver, if anything
                        raise AssertionError(f"the run ended before the crash: {driver.result()}")
                    slots = {s["id"]: s for s in (await truth())["slots"]}
                    return bool(slots[first_slot]["replacements"] >= 1)

                await eventually(first_slot_replaced, f"{first_slot} replaced", within=90)
                assert not driver.done()

                # The crash: no flush, no goodbye to clients.
                await asyncio.to_thread(first.kill)
                killed_at = time.time()
                await eventually(
                    lambda: asyncio.to_thread(refuses_connections, port),
                    f"port {port} refusing connections",
                    within=30,
                )

                async def driver_met_the_outage() -> bool:
                    return any("store unavailable" in r.getMessage() for r in caplog.records)

                await eventually(driver_met_the_outage, "the driver retrying the store", within=60)
                if lease_ttl_s is not None:
                    # Stay down until the lease (renewed at most lease_ttl_s ago) has lapsed.
                    lapsed_at = killed_at + lease_ttl_s + 1.0
                    await eventually(
                        lambda: asyncio.sleep(0, time.time() > lapsed_at),
                        "the lease lapsing",
                        within=60,
                    )
                assert not driver.done(), "the driver gave up during the outage"

                second = RedisServer(redis_dir, port=port)
                redis_servers.append(second)
                await asyncio.to_thread(second.start)

                result = await asyncio.wait_for(asyncio.shield(driver), DEADLINE_S)
            finally:
                if not driver.done():
                    driver.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await driver

            assert result.reason == "finished"
            assert result.run.state == COMPLETED, (result.run.state, result.run.reason)
            events = [e for _, e in await engine.feed.events(run.id)]
            stored = await engine.status(run.id)
            raw = aioredis.Redis.from_url(second.url, decode_responses=True)
            try:
                tokens = int(await raw.get(f"{config.store.key_prefix}:fence:{run.id}"))
            finally:
                await raw.aclose()

        assert stored.state == COMPLETED
        # Lease tokens handed out: one, unless the lease lapsed and the driver took it back.
        assert tokens == (1 if lease_ttl_s is None else 2), tokens

        # The sandbox's observed truth: every slot replaced once, never restored.
        observed = await truth()
        slot_ids = [f"{g}/{i}" for g in GROUPS for i in range(INSTANCES)]
        slots = {s["id"]: s for s in observed["slots"]}
        assert sorted(slots) == sorted(slot_ids)
        for slot_id in slot_ids:
            s = slots[slot_id]
            assert (s["version"], s["replacements"], s["restorations"]) == (NEW, 1, 0), s
            assert s["history"] == [OLD, NEW], s
        traffic = observed["traffic"]
        assert traffic["total"] > 0
        assert traffic["failed"] == 0, traffic

        # The audit stream: one replacement per slot, one completion.
        replaced = Counter(e["slot"] for e in events if e["type"] == "slot_replaced")
        assert replaced == Counter(slot_ids), replaced
        assert [e["type"] for e in events].count("run_completed") == 1

        # The engine's record agrees with the sandbox.
        for _, s in stored.slots():
            assert (s.current_version, s.replacements, s.restorations) == (NEW, 1, 0), s
    finally:
        await asyncio.to_thread(manage.down, handle.dir)
