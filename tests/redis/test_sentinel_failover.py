"""A run carries on through a Sentinel failover: the primary killed with SIGKILL mid-group.

Real processes throughout: a primary and its replica (redis-server, passwords on both), three
sentinels (``redis-server --sentinel``, password-protected too), a sandbox fleet serving traffic,
and the engine built by ``engine_for`` from the REDIS_URL a user would write
(``redis+sentinel://s1,s2,s3/mymaster/0``) with REDIS_PASSWORD and REDIS_SENTINEL_PASSWORD.
Once the sandbox has observably replaced the first slot of the first group, the primary is
killed. The sentinels promote the replica; the driver, which met the outage, must find the new
primary by itself and finish: run completed, every slot replaced exactly once (the sandbox's own
counts), an audit stream that tells each replacement once, one lease token.

The second case makes the replica miss the primary's last writes before the kill (SIGSTOP on
the replica, so replication lags; then the kill, then SIGCONT): the writes the primary
acknowledged in that window are lost with it, as Redis documents for asynchronous replication.
The record goes back in time under the driver's feet; it must notice (its revision is refused),
reload, and redo what was lost without replacing a slot twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from upgrade_bot.engine import COMPLETED
from upgrade_bot.engine.adapters.store import RedisStore, StoreUnavailable
from upgrade_bot.engine.config import load_config
from upgrade_bot.sandbox import manage
from upgrade_bot.sandbox.spec import SandboxSpec, group_names
from upgrade_bot.wiring import engine_for

from ..support import Sandboxes, eventually
from .servers import SentinelCluster, make_tls_files
from .test_tls_and_acl import exercise

pytestmark = [pytest.mark.traffic, pytest.mark.timeout(300)]

OLD, NEW = "3.8.0", "3.8.1"
GROUPS = group_names(2)
INSTANCES = 2
# As in tests/engine/test_redis_outage.py: short windows, loose thresholds (the verdict is not
# what this test is about; a loaded machine's latency spikes must not fail a group).
SANDBOX_DEFAULTS: dict[str, Any] = {
    "rollout": {"batch_size": 1, "ready_timeout_s": 60, "baseline_window_s": 2, "settle_s": 2},
    "thresholds": {"min_requests": 20, "p99_factor": 10, "p99_slack_ms": 500},
    "observation": {"window_s": 1, "checkin_interval_s": 1},
    "smoke": {"path": "/smoke", "expect_status": [200], "count": 2},
}
DEADLINE_S = 180.0  # for the whole run; it takes ~30 s on an idle machine
DATA_PASSWORD = "data-n0de-Pa55"
SENTINEL_PASSWORD = "sent1nel-Pa55"


@pytest.fixture
def cluster(tmp_path: Path) -> Any:
    cluster = SentinelCluster(
        tmp_path / "redis", password=DATA_PASSWORD, sentinel_password=SENTINEL_PASSWORD
    )
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.mark.parametrize("lose_writes", [False, True], ids=["failover", "failover-losing-writes"])
async def test_a_run_finishes_after_the_primary_is_killed_mid_group(
    lose_writes: bool,
    cluster: SentinelCluster,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="upgrade_bot.engine.runner")
    # The sandbox writes REDIS_URL into its bot configuration (and starts no Redis of its own).
    monkeypatch.setenv("REDIS_URL", cluster.url)
    spec = SandboxSpec(
        groups=GROUPS, instances=INSTANCES, version=OLD, cp_version=NEW, rate_per_s=100.0
    )
    handle = await Sandboxes(tmp_path).up(spec, defaults=SANDBOX_DEFAULTS)
    try:
        config = load_config(handle.config_path)
        assert config.redis_url == cluster.url
        first_primary = cluster.primary.port

        async def truth() -> dict[str, Any]:
            return await asyncio.to_thread(manage.status, handle.dir)

        killer = Killer(cluster, lose_writes)
        async with engine_for(
            config,
            config_dir=handle.dir,
            redis_url=cluster.url,
            environ=cluster.environ,
            identity="failover-test",
            checkpoint=killer.checkpoint,
        ) as engine:
            run = await engine.start(
                NEW, requester="failover-test", approval_mode="auto", acknowledge_changelog=True
            )
            driver = asyncio.create_task(engine.drive(run.id, until_human=False))
            try:

                async def primary_killed() -> bool:
                    if driver.done():
                        raise AssertionError(f"the run ended before the kill: {driver.result()}")
                    return killer.killed

                await eventually(primary_killed, "the primary killed", within=120)
                killed_truth = {s["id"]: s for s in (await truth())["slots"]}
                new_primary = await asyncio.to_thread(cluster.wait_failover, 90)
                assert new_primary != first_primary
                result = await asyncio.wait_for(asyncio.shield(driver), DEADLINE_S)
            finally:
                if not driver.done():
                    driver.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await driver

            assert result.reason == "finished"
            assert result.run.state == COMPLETED, (result.run.state, result.run.reason)
            stored = await engine.status(run.id)
            events = [e for _, e in await engine.feed.events(run.id)]

        assert any("store unavailable" in r.getMessage() for r in caplog.records), (
            "the driver never met the failover: the test proved nothing"
        )
        assert stored.state == COMPLETED
        # Killed mid-group: the first group's first slot was replaced, its second one not yet
        # (without lost writes) or already (its outcome is among the writes lost).
        first, second = (killed_truth[f"{GROUPS[0]}/{i}"]["replacements"] for i in range(2))
        assert (first, second) == ((1, 1) if lose_writes else (1, 0)), killed_truth
        if lose_writes:
            # The save met at the kill names the revision the primary had acknowledged; on the
            # promoted replica, which never got the last saves, it is refused as stale, and the
            # driver carries on from the older record it finds there: it replaces the second
            # slot again, as far as it knows, which the backend finds already done.
            lost = killer.acknowledged_rev - killer.revs_after[0]
            assert lost == Killer.LOST_SAVES, (killer.acknowledged_rev, killer.revs_after)
            assert killer.acts_before.count(SECOND_SLOT_REPLACED) == 1, killer.acts_before
            assert killer.acts_after.count(SECOND_SLOT_REPLACED) == 1, killer.acts_after

        # The sandbox's observed truth: every slot replaced once, never restored.
        observed = await truth()
        slot_ids = [f"{g}/{i}" for g in GROUPS for i in range(INSTANCES)]
        slots = {s["id"]: s for s in observed["slots"]}
        assert sorted(slots) == sorted(slot_ids)
        for slot_id in slot_ids:
            s = slots[slot_id]
            assert (s["version"], s["replacements"], s["restorations"]) == (NEW, 1, 0), s
            assert s["history"] == [OLD, NEW], s
        assert observed["traffic"]["failed"] == 0, observed["traffic"]

        # The audit stream on the new primary: one replacement per slot, one completion.
        replaced = Counter(e["slot"] for e in events if e["type"] == "slot_replaced")
        assert replaced == Counter(slot_ids), replaced
        assert [e["type"] for e in events].count("run_completed") == 1
        for _, s in stored.slots():
            assert (s.current_version, s.replacements, s.restorations) == (NEW, 1, 0), s
    finally:
        await asyncio.to_thread(manage.down, handle.dir)


FIRST_SLOT_REPLACED = f"{GROUPS[0]}:replace:{GROUPS[0]}/0#1"  # the runner's effect keys
SECOND_SLOT_REPLACED = f"{GROUPS[0]}:replace:{GROUPS[0]}/1#1"


class Killer:
    """Kills the primary at a runner boundary (``Engine``'s ``checkpoint``): once the outcome of
    the first slot's replacement is saved, just before the next save, which then meets the dead
    primary: mid-group, the first group's second slot still to come.

    With ``lose_writes``, the replica is cut off right after that save instead (stopped, its link
    closed), the primary acknowledges ``LOST_SAVES`` more saves that the replica never gets (the
    outcome of the second slot's replacement among them), and the kill takes them along.
    """

    LOST_SAVES = 2

    def __init__(self, cluster: SentinelCluster, lose_writes: bool) -> None:
        self.cluster = cluster
        self.lose_writes = lose_writes
        self.armed = False  # the first slot's replacement is done; its outcome is to be saved
        self.ready = False  # that outcome is saved: kill (or cut the replica off) now
        self.killed = False
        self.saves_while_cut_off = 0
        self.acknowledged_rev = 0  # the primary had acknowledged this revision when killed
        self.revs_after: list[int] = []  # the revisions the driver saved on after the kill
        self.acts_before: list[str] = []
        self.acts_after: list[str] = []

    def checkpoint(self, name: str, detail: str) -> None:
        if name == "before_act":
            (self.acts_after if self.killed else self.acts_before).append(detail)
        if self.killed:
            if name == "before_save":
                self.revs_after.append(int(detail.removeprefix("rev")))
            return
        if name == "after_act" and detail == FIRST_SLOT_REPLACED:
            self.armed = True
        elif name == "after_save" and self.armed and not self.ready:
            self.ready = True
            if self.lose_writes:
                self.cluster.pause_replica()
        elif name == "after_save" and self.ready:
            self.saves_while_cut_off += 1
        elif name == "before_save" and self.ready:
            if self.lose_writes and self.saves_while_cut_off < self.LOST_SAVES:
                return
            self.cluster.kill_primary()  # SIGKILL; returns once it is gone (milliseconds)
            if self.lose_writes:
                self.cluster.resume_replica()
            self.killed = True
            self.acknowledged_rev = int(detail.removeprefix("rev"))


async def test_tls_throughout_with_rediss_sentinel(tmp_path: Path) -> None:
    """``rediss+sentinel://``: sentinels and data nodes on TLS only, passwords on both; every
    store operation works, and again on the promoted replica after the primary is killed."""
    tls = await asyncio.to_thread(make_tls_files, tmp_path / "tls")
    cluster = SentinelCluster(
        tmp_path / "redis", password=DATA_PASSWORD, sentinel_password=SENTINEL_PASSWORD, tls=tls
    )
    await asyncio.to_thread(cluster.start)
    try:
        assert cluster.url.startswith("rediss+sentinel://")
        for wrong in ("REDIS_PASSWORD", "REDIS_SENTINEL_PASSWORD"):
            env = {**cluster.environ, wrong: "wr0ng-Pa55"}
            refused = RedisStore.from_url(cluster.url, environ=env, socket_timeout=5.0)
            try:
                with pytest.raises(StoreUnavailable) as caught:
                    await asyncio.wait_for(refused.ping(), 30)
            finally:
                await refused.close()
            message = str(caught.value)
            assert "via sentinels" in message and "refused the credentials" in message, message
            assert "wr0ng-Pa55" not in message and DATA_PASSWORD not in message
            assert SENTINEL_PASSWORD not in message

        store = RedisStore.from_url(cluster.url, environ=cluster.environ)
        try:
            await exercise(store, "before-failover")
            await asyncio.to_thread(cluster.kill_primary)
            promoted = await asyncio.to_thread(cluster.wait_failover, 90)
            await eventually(ping_ok(store), "the store on the promoted replica", within=60)
            await exercise(store, "after-failover")
            assert cluster.primary_ports() == {promoted}
        finally:
            await store.close()
    finally:
        await asyncio.to_thread(cluster.stop)


def ping_ok(store: RedisStore) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        try:
            await store.ping()
        except StoreUnavailable:
            return False
        return True

    return check
