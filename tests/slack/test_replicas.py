"""Several replicas of the bot, as the Helm chart runs them: real ``upgrade-bot serve`` processes
sharing a real Redis and the Slack stand-in, over a real sandbox fleet.

- The replica driving a run is killed with ``kill -9`` in the middle of a group: another takes
  the run over within the lease's TTL, no slot is replaced twice, no Slack message is posted
  twice — and the logs of both (JSON, DEBUG) hold none of the secrets they were given.
- The replica driving a run gets SIGTERM while an instance is starting: it exits within its
  grace, having given its lease up, so another carries on at once instead of after the TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

from upgrade_bot.engine.adapters.store import RedisStore
from upgrade_bot.engine.config import load_config
from upgrade_bot.sandbox.spec import Fault

from .harness import (
    BOB,
    CHANNEL,
    Harness,
    completed,
    gate_messages,
    poll,
    serve_process,
    stand_in,
    start_and_acknowledge,
)

pytestmark = pytest.mark.traffic


def set_store(bot: Harness, **store: Any) -> None:
    path = bot.handle.config_path
    data = yaml.safe_load(path.read_text())
    data["store"] = {**(data.get("store") or {}), **store}
    path.write_text(yaml.safe_dump(data))


def acl_user(redis_url: str, user: str, password: str) -> str:
    """A Redis ACL user with a password (as production Redis has), and the URL that uses it."""
    with redis.Redis.from_url(redis_url) as admin:
        admin.execute_command("ACL", "SETUSER", user, "on", f">{password}", "~*", "&*", "+@all")
    return redis_url.replace("redis://", f"redis://{user}:{password}@", 1)


@contextlib.asynccontextmanager
async def store_of(bot: Harness):  # type: ignore[no-untyped-def]
    config = load_config(bot.handle.config_path)
    store = RedisStore.from_url(bot.handle.redis_url, prefix=config.store.key_prefix)
    try:
        yield store
    finally:
        await store.close()


REPLICAS = ("bot-a", "bot-b")


@contextlib.asynccontextmanager
async def replicas(bot: Harness, logs: dict[str, Path], env: dict[str, str]):  # type: ignore[no-untyped-def]
    """Two ``serve`` processes, bot-a and bot-b: name → (process, ops URL)."""
    async with contextlib.AsyncExitStack() as stack:
        procs = {
            name: await stack.enter_async_context(
                serve_process(bot, logs[name], identity=name, env=env)
            )
            for name in REPLICAS
        }
        yield procs


async def holder(store: RedisStore, run_id: str) -> str | None:
    lease = await store.lease_holder(run_id)
    return lease["holder"] if lease else None


async def held_by(store: RedisStore, run_id: str, identity: str) -> bool:
    return await holder(store, run_id) == identity


async def record(store: RedisStore, run_id: str) -> dict[str, Any]:
    loaded = await store.load(run_id)
    assert loaded is not None
    return loaded[0]


def replaced(data: dict[str, Any], group: str) -> int:
    g = next(g for g in data["groups"] if g["name"] == group)
    return sum(1 for s in g["slots"] if s["status"] == "done")


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus text exposition (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        if key == name or (want and key == f"{name}{{{want}}}"):
            return float(value)
    return 0.0


async def approve_gates(bot: Harness, groups: list[str]) -> None:
    for group in groups:
        gate = await poll(lambda g=group: bot.open_gate(g), f"the gate of {group}", 120)
        await bot.stub.users.click(BOB, CHANNEL, gate, "gate_approve")
        await poll(lambda g=gate: bot.decided(g["ts"]), f"the gate of {group} decided")


def each_slot_replaced_once(bot: Harness) -> dict[str, tuple[str, int]]:
    return {s["id"]: (s["version"], s["replacements"]) for s in bot.handle.status()["slots"]}


async def test_a_replica_killed_mid_group_is_taken_over_within_the_lease_ttl(
    tmp_path: Path,
) -> None:
    ttl = 5.0
    async with stand_in(tmp_path, groups=2, instances=3, production=False) as bot:
        set_store(bot, lease_ttl_s=ttl)
        password = secrets.token_urlsafe(18)
        env = {
            "REDIS_URL": acl_user(bot.handle.redis_url, "upgrade-bot", password),
            "UPGRADE_BOT_LOG_FORMAT": "json",
            "UPGRADE_BOT_LOG_LEVEL": "DEBUG",
        }
        logs = {name: tmp_path / f"{name}.log" for name in REPLICAS}
        async with store_of(bot) as store, replicas(bot, logs, env) as procs:
            run_id = await start_and_acknowledge(bot)

            async def mid_group() -> str | None:
                data = await record(store, run_id)
                who = await holder(store, run_id)
                return who if who and 1 <= replaced(data, "prod-eu") < 3 else None

            driver = await poll(mid_group, "the first group half done")
            survivor = "bot-b" if driver == "bot-a" else "bot-a"
            procs[driver][0].send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
            await procs[driver][0].wait()

            # The survivor takes the run once the dead one's lease lapses: within the TTL (and
            # its next one-second look), not "eventually".
            await poll(
                lambda: held_by(store, run_id, survivor),
                f"{survivor} to take the run over",
                ttl + 3,
            )
            took = time.monotonic() - killed_at
            await approve_gates(bot, ["prod-eu", "prod-us"])
            await completed(bot)

            async with httpx.AsyncClient(base_url=procs[survivor][1]) as ops:
                text = (await ops.get("/metrics")).text
                ready = await ops.get("/readyz")
        assert took <= ttl + 3.0
        assert metric(text, "upgrade_bot_lease_takeovers_total") == 1.0
        assert metric(text, "upgrade_bot_runs_finished_total", state="completed") == 1.0
        assert metric(text, "upgrade_bot_gate_wait_seconds_count") >= 1.0
        assert metric(text, "upgrade_bot_step_duration_seconds_count", step="slot_replace") >= 3
        assert (
            metric(
                text,
                "upgrade_bot_slack_api_calls_total",
                method="chat.postMessage",
                outcome="ok",
            )
            >= 1
        )
        assert ready.status_code == 200, ready.text
        assert set(each_slot_replaced_once(bot).values()) == {("3.8.1", 1)}
        assert len(bot.run_messages()) == 1
        assert len(gate_messages(bot)) == 2
        assert bot.postings_are_unique(), "a message was posted twice"

        # Logs: one JSON object per line, with the run (and group) ids, and no secret.
        ws = bot.stub.workspace
        cp_key = (
            Path(
                yaml.safe_load(bot.handle.config_path.read_text())["control_plane"]["api_key_file"]
            )
            .read_text()
            .strip()
        )
        given = {
            "bot token": ws.bot_token,
            "app token": ws.app_token,
            "signing secret": ws.signing_secret,
            "Redis password": password,
            "control plane key": cp_key,
        }
        lines = [json.loads(x) for f in logs.values() for x in f.read_text().splitlines() if x]
        about_run = [x for x in lines if x.get("run") == run_id]
        assert any(x.get("group") == "prod-eu" for x in about_run), "no line names its group"
        assert any(x["level"] == "DEBUG" for x in lines)
        for name, value in given.items():
            for path in logs.values():
                assert value not in path.read_text(), f"the {name} is in {path.name}"


async def test_sigterm_mid_replacement_hands_the_run_over_at_once(tmp_path: Path) -> None:
    ttl, grace = 60.0, 3.0
    faults = {"3.8.1": Fault(slow_start_s=6.0)}
    async with stand_in(tmp_path, groups=1, instances=3, production=False, faults=faults) as bot:
        set_store(bot, lease_ttl_s=ttl)
        env = {"UPGRADE_BOT_SHUTDOWN_GRACE_S": str(grace)}
        logs = {name: tmp_path / f"{name}.log" for name in REPLICAS}
        async with store_of(bot) as store, replicas(bot, logs, env) as procs:
            run_id = await start_and_acknowledge(bot)

            async def starting_instance() -> str | None:
                data = await record(store, run_id)
                pending = data.get("pending") or {}
                who = await holder(store, run_id)
                return who if who and pending.get("kind") == "ensure_slots" else None

            driver = await poll(starting_instance, "an instance being replaced")
            survivor = "bot-b" if driver == "bot-a" else "bot-a"
            proc, ops_url = procs[driver]
            async with httpx.AsyncClient(base_url=ops_url) as ops:
                assert (await ops.get("/readyz")).status_code == 200
            proc.send_signal(signal.SIGTERM)
            # It exits within its grace (plus the interpreter's own exit), cleanly...
            assert await asyncio.wait_for(proc.wait(), grace + 5.0) == 0
            # ...having let the lease go: the other replica has the run long before the TTL.
            await poll(lambda: held_by(store, run_id, survivor), f"{survivor} to carry on", 15)
            await approve_gates(bot, ["prod-eu"])
            await completed(bot)
        log = logs[driver].read_text()
        assert "abandoned on stop" in log, log[-3000:]
        assert "stopped; unfinished runs resume" in log
        assert set(each_slot_replaced_once(bot).values()) == {("3.8.1", 1)}
        assert bot.postings_are_unique(), "a message was posted twice"
