"""RedisStore against real redis-server processes: CAS, fencing, locks, outbox, durability.

Every test starts its own server on a free loopback port with its data in a temporary folder;
expiry is shown with short TTLs and polling, never with fixed sleeps.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from upgrade_bot.engine import errors
from upgrade_bot.engine.adapters.store import (
    GLOBAL,
    Fence,
    Fenced,
    GroupBusy,
    RedisStore,
    RunExists,
    RunNotFound,
    StaleRecord,
    StoreUnavailable,
)
from upgrade_bot.engine.errors import TemporaryError
from upgrade_bot.redis_server import RedisServer, free_port

from ..support import eventually

pytestmark = pytest.mark.timeout(60)

PREFIX = "t"


# --- fixtures and helpers --------------------------------------------------------------------


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path / "redis").start()
    yield srv
    srv.stop()


@pytest.fixture
async def store(server: RedisServer) -> AsyncIterator[RedisStore]:
    s = RedisStore.from_url(server.url, prefix=PREFIX)
    yield s
    await s.close()


@pytest.fixture
async def raw(server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """A plain client, to look at keys and TTLs behind the store's back."""
    client = aioredis.Redis.from_url(server.url, decode_responses=True)
    yield client
    await client.aclose()


def ev(kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, **fields}


async def types(store: RedisStore, run_id: str) -> list[str]:
    return [e["type"] for _, e in await store.events(run_id)]


async def new_run(
    store: RedisStore, run_id: str = "r1", groups: tuple[str, ...] = ("g1",), at: float = 1000.0
) -> int:
    return await store.create_run(
        run_id, {"state": "new", "n": 0}, [ev("created", run=run_id)], list(groups), at
    )


# --- runs and records ------------------------------------------------------------------------


def test_errors_are_the_engine_errors() -> None:
    """The engine core cannot import this adapter: it catches the engine.errors classes."""
    assert issubclass(StaleRecord, errors.StaleRecord)
    assert issubclass(RunNotFound, errors.StaleRecord)
    assert issubclass(Fenced, errors.Fenced)
    assert issubclass(RunExists, errors.RunExists)
    assert GroupBusy is errors.GroupBusy
    assert StoreUnavailable is errors.StoreUnavailable
    assert issubclass(StoreUnavailable, TemporaryError)
    assert all(issubclass(e, errors.EngineError) for e in (StaleRecord, Fenced, RunExists))


async def test_create_load_and_indexes(store: RedisStore, raw: aioredis.Redis) -> None:
    assert await store.load("r1") is None
    assert await new_run(store, "r1", ("g1", "g2")) == 1
    assert await store.load("r1") == ({"state": "new", "n": 0}, 1)
    assert await types(store, "r1") == ["created"]
    assert await store.lock_holder("g1") == "r1"
    assert await store.lock_holder("g2") == "r1"
    assert await store.lock_holder("g3") is None
    assert await store.active_runs() == ["r1"]
    assert await store.history() == ["r1"]
    # the stored layout other tools (and people with redis-cli) rely on
    assert await raw.get("t:lock:group:g1") == "r1"
    assert await raw.ttl("t:lock:group:g1") == -1
    assert (await raw.get("t:run:r1")).startswith('{"rev":1,"record":')
    with pytest.raises(errors.RunExists, match="r1"):
        await new_run(store, "r1", ())
    with pytest.raises(ValueError, match="reserved"):
        await new_run(store, GLOBAL, ())


async def test_cas_two_writers_one_wins(server: RedisServer, store: RedisStore) -> None:
    other = RedisStore.from_url(server.url, prefix=PREFIX)
    try:
        await new_run(store)
        rev = 1
        for round_ in range(20):
            a = store.save(
                "r1",
                {"by": "a", "round": round_},
                expected_rev=rev,
                fence=None,
                events=[ev("saved", by="a", round=round_)],
            )
            b = other.save(
                "r1",
                {"by": "b", "round": round_},
                expected_rev=rev,
                fence=None,
                events=[ev("saved", by="b", round=round_)],
            )
            results = await asyncio.gather(a, b, return_exceptions=True)
            wins = [r for r in results if isinstance(r, int)]
            losses = [r for r in results if isinstance(r, StaleRecord)]
            assert wins == [rev + 1] and len(losses) == 1, results
            assert losses[0].actual_rev in (rev, rev + 1)
            winner = "a" if results[0] == rev + 1 else "b"
            rev += 1
            record, loaded_rev = await store.load("r1")  # type: ignore[misc]
            assert (record, loaded_rev) == ({"by": winner, "round": round_}, rev)
            last = (await store.events("r1"))[-1][1]
            assert last == ev("saved", by=winner, round=round_)
        # one event per round: the loser's never reached the stream
        assert await types(store, "r1") == ["created"] + ["saved"] * 20
    finally:
        await other.close()


async def test_refused_save_appends_nothing(store: RedisStore) -> None:
    await new_run(store)
    with pytest.raises(errors.StaleRecord) as stale:
        await store.save("r1", {"x": 1}, expected_rev=7, fence=None, events=[ev("lost")])
    assert (stale.value.expected_rev, stale.value.actual_rev) == (7, 1)
    fence = await store.acquire_lease("r1", "bot-a", 30)
    assert fence is not None
    await store.release_lease(fence)
    with pytest.raises(Fenced):
        await store.save("r1", {"x": 2}, expected_rev=1, fence=fence, events=[ev("lost")])
    with pytest.raises(Fenced):
        await store.append_events("r1", [ev("lost")], fence=fence)
    with pytest.raises(RunNotFound):
        await store.save("nope", {"x": 3}, expected_rev=1, fence=None, events=[ev("lost")])
    with pytest.raises(RunNotFound):
        await store.append_events("nope", [ev("lost")])
    assert await store.load("r1") == ({"state": "new", "n": 0}, 1)
    assert await types(store, "r1") == ["created"]
    assert await store.events("nope") == []
    # and an accepted save writes record and events together
    assert await store.save("r1", {"x": 4}, expected_rev=1, fence=None, events=[ev("a"), ev("b")])
    assert await store.load("r1") == ({"x": 4}, 2)
    assert await types(store, "r1") == ["created", "a", "b"]


async def test_resent_write_is_applied_once(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """redis-py re-sends a command whose reply was lost; the op key makes that harmless."""
    await new_run(store)
    monkeypatch.setattr(store, "_op_key", lambda: "t:op:fixed")
    for _ in range(2):
        rev = await store.save("r1", {"x": 1}, expected_rev=1, fence=None, events=[ev("once")])
        assert rev == 2
    assert await types(store, "r1") == ["created", "once"]
    # a different op (a new key) is a new write, refused by the revision check
    monkeypatch.setattr(store, "_op_key", lambda: "t:op:other")
    with pytest.raises(StaleRecord):
        await store.save("r1", {"x": 1}, expected_rev=1, fence=None, events=[ev("twice")])


# --- leases and fencing ----------------------------------------------------------------------


async def test_other_identity_waits_for_expiry_then_fences(store: RedisStore) -> None:
    await new_run(store)
    a = await store.acquire_lease("r1", "bot-a", 30)
    assert a is not None and a.holder == "bot-a"
    assert await store.acquire_lease("r1", "bot-b", 30) is None
    holder = await store.lease_holder("r1")
    assert holder is not None
    assert (holder["holder"], holder["token"]) == ("bot-a", a.token)
    assert 0 < holder["ttl_s"] <= 30
    rev = await store.save("r1", {"by": "a"}, expected_rev=1, fence=a, events=[ev("a1")])
    assert rev == 2
    # A freezes: its lease is left to expire (shortened so the test does not wait 30 s)
    assert await store.renew_lease(a, 0.3)

    async def b_acquires() -> Fence | None:
        return await store.acquire_lease("r1", "bot-b", 30)

    b = await eventually(b_acquires)
    assert b.token > a.token
    assert not await store.check_fence(a) and await store.check_fence(b)
    # A wakes up: every write is refused as fenced, even one with a stale revision
    with pytest.raises(errors.Fenced, match="bot-b"):
        await store.save("r1", {"by": "a"}, expected_rev=2, fence=a, events=[ev("a2")])
    with pytest.raises(Fenced):
        await store.save("r1", {"by": "a"}, expected_rev=1, fence=a, events=[ev("a2")])
    assert not await store.renew_lease(a, 30)
    await store.release_lease(a)  # must not release B's lease
    assert (await store.lease_holder("r1") or {}).get("holder") == "bot-b"
    assert await store.save("r1", {"by": "b"}, expected_rev=2, fence=b, events=[ev("b1")]) == 3
    assert await types(store, "r1") == ["created", "a1", "b1"]
    assert await store.renew_lease(b, 30)
    await store.release_lease(b)
    assert await store.lease_holder("r1") is None


async def test_same_identity_reclaims_at_once(store: RedisStore) -> None:
    await new_run(store)
    old = await store.acquire_lease("r1", "bot-1", 30)
    assert old is not None
    # the same bot restarted: it takes its run back without waiting for the expiry
    new = await store.acquire_lease("r1", "bot-1", 30)
    assert new is not None and new.token > old.token
    with pytest.raises(Fenced):
        await store.save("r1", {"s": "old"}, expected_rev=1, fence=old, events=[])
    assert not await store.renew_lease(old, 30)
    assert await store.save("r1", {"s": "new"}, expected_rev=1, fence=new, events=[]) == 2
    # a user command (no fence) is still accepted on the revision check alone
    assert await store.save("r1", {"s": "user"}, expected_rev=2, fence=None, events=[]) == 3


# --- group locks -----------------------------------------------------------------------------


async def test_busy_group_refuses_the_whole_run(store: RedisStore) -> None:
    await new_run(store, "r1", ("g1", "g2"))
    with pytest.raises(GroupBusy, match=r"\br1\b") as busy:
        await new_run(store, "r2", ("g3", "g2"))
    assert (busy.value.group, busy.value.run_id) == ("g2", "r1")
    # all or nothing: no lock, record, event or index entry for r2
    assert await store.lock_holder("g3") is None
    assert await store.load("r2") is None
    assert await store.events("r2") == []
    assert await store.active_runs() == ["r1"]
    assert await store.history() == ["r1"]


async def test_finish_releases_locks_and_starts_retention(
    store: RedisStore, raw: aioredis.Redis
) -> None:
    await new_run(store, "r1", ("g1", "g2"))
    fence = await store.acquire_lease("r1", "bot", 30)
    assert fence is not None
    await store.set_cursor("slack", "r1", (await store.events("r1"))[0][0])
    await store.finish("r1")
    assert await store.lock_holder("g1") is None and await store.lock_holder("g2") is None
    assert await store.active_runs() == []
    assert await store.history() == ["r1"]  # still listed until the retention
    retention_ms = 90 * 86400 * 1000
    ttls = {k: await raw.pttl(f"t:{k}:r1") for k in ("run", "audit", "cursors", "fence")}
    assert all(0 < ttl <= retention_ms for ttl in ttls.values()), ttls
    # idempotent: a second finish changes nothing, and does not push the expiry back
    await store.finish("r1")
    assert await raw.pttl("t:run:r1") <= ttls["run"]
    # the group is free for the next run; finishing r1 again leaves r2's lock alone
    await new_run(store, "r2", ("g2",))
    await store.finish("r1")
    assert await store.lock_holder("g2") == "r2"
    # a finished run's record stays readable (and writable) until it expires
    assert await store.save("r1", {"note": 1}, expected_rev=1, fence=None, events=[]) == 2
    assert 0 < await raw.pttl("t:run:r1") <= ttls["run"]


async def test_finished_run_expires_after_retention(server: RedisServer) -> None:
    store = RedisStore.from_url(server.url, prefix=PREFIX, retention_s=0.3)
    try:
        await new_run(store, "r1", ("g1",), at=time.time())
        await store.finish("r1")

        async def gone() -> bool:
            return await store.load("r1") is None and await store.events("r1") == []

        await eventually(gone)
        # the history forgets runs created before the retention, when asked with `now`
        assert await store.history() == ["r1"]
        assert await store.history(now=time.time() + 1) == []
    finally:
        await store.close()


async def test_break_lock_is_audited_in_both_streams(store: RedisStore) -> None:
    await new_run(store, "r1", ("g1",))
    assert await store.break_lock("g1", user="alice", reason="bot host lost", now=123.5) == "r1"
    assert await store.lock_holder("g1") is None
    expected = {
        "type": "lock_broken",
        "group": "g1",
        "run_id": "r1",
        "user": "alice",
        "reason": "bot host lost",
        "at": 123.5,
    }
    assert [e for _, e in await store.events(GLOBAL)] == [expected]
    assert (await store.events("r1"))[-1][1] == expected
    # nothing left to break; the group can be taken again
    assert await store.break_lock("g1", user="alice", reason="again", now=124.0) is None
    assert len(await store.events(GLOBAL)) == 1
    await new_run(store, "r2", ("g1",))
    assert await store.lock_holder("g1") == "r2"


# --- events, cursors, de-dup -----------------------------------------------------------------


async def test_cursors_never_move_back_and_resume_after(store: RedisStore) -> None:
    await new_run(store)
    ids = await store.append_events("r1", [ev(f"e{i}") for i in range(5)])
    assert len(ids) == 5
    all_ids = [i for i, _ in await store.events("r1")]
    assert all_ids[1:] == ids
    assert await store.get_cursor("slack", "r1") == "0-0"
    assert await store.set_cursor("slack", "r1", ids[2]) == ids[2]
    assert await store.set_cursor("slack", "r1", ids[0]) == ids[2]  # refused: backwards
    assert await store.set_cursor("slack", "r1", ids[2]) == ids[2]
    assert await store.get_cursor("slack", "r1") == ids[2]
    assert await store.get_cursor("cli", "r1") == "0-0"  # cursors are per consumer
    resumed = await store.events("r1", after=await store.get_cursor("slack", "r1"))
    assert [i for i, _ in resumed] == ids[3:]
    assert [e["type"] for _, e in resumed] == ["e3", "e4"]
    assert [i for i, _ in await store.events("r1", after=ids[0], count=2)] == ids[1:3]
    # ids compare as numbers, not strings ("9-0" < "10-0")
    assert await store.set_cursor("cli", "r1", "9-0") == "9-0"
    assert await store.set_cursor("cli", "r1", "10-0") == "10-0"
    assert await store.set_cursor("cli", "r1", "9-99") == "10-0"
    with pytest.raises(ValueError):
        await store.set_cursor("cli", "r1", "latest")
    with pytest.raises(ValueError):
        await store.events("r1", after="$")


async def test_global_stream_and_cursor(store: RedisStore) -> None:
    first = await store.audit_global(ev("config_reloaded", user="bob", at=1.0))
    second = await store.audit_global(ev("lock_broken", user="bob", at=2.0))
    assert [i for i, _ in await store.events(GLOBAL)] == [first, second]
    assert [e["type"] for _, e in await store.events(GLOBAL, after=first)] == ["lock_broken"]
    await store.set_cursor("slack", GLOBAL, first)
    assert await store.get_cursor("slack", GLOBAL) == first
    assert [i for i, _ in await store.events(GLOBAL, after=first)] == [second]


async def test_first_time_dedupes_until_expiry(store: RedisStore) -> None:
    assert await store.first_time("slack:evt-1")
    assert not await store.first_time("slack:evt-1")
    assert await store.first_time("slack:evt-2")
    assert await store.first_time("short", ttl_s=0.3)
    assert not await store.first_time("short", ttl_s=0.3)

    async def again() -> bool:
        return await store.first_time("short", ttl_s=30)

    await eventually(again)


async def test_history_and_active_runs_order(store: RedisStore) -> None:
    now = 10_000_000.0
    await new_run(store, "old", (), at=now - 100 * 86400)
    await new_run(store, "mid", (), at=now - 10)
    await new_run(store, "new", (), at=now)
    assert await store.history() == ["new", "mid", "old"]
    assert await store.history(limit=2) == ["new", "mid"]
    assert await store.active_runs() == ["old", "mid", "new"]
    assert await store.history(now=now) == ["new", "mid"]  # "old" is past the 90 days


# --- durability and availability -------------------------------------------------------------


async def test_everything_survives_kill_9_of_redis(tmp_path: Path) -> None:
    data = tmp_path / "redis"
    server = RedisServer(data).start()
    store = RedisStore.from_url(server.url, prefix=PREFIX)
    try:
        await new_run(store, "r1", ("g1", "g2"))
        fence = await store.acquire_lease("r1", "bot-1", 60)
        assert fence is not None
        rev = await store.save("r1", {"step": 2}, expected_rev=1, fence=fence, events=[ev("s")])
        ids = [i for i, _ in await store.events("r1")]
        await store.set_cursor("slack", "r1", ids[0])
        assert await store.first_time("evt-1")
        await store.audit_global(ev("hello"))

        await asyncio.to_thread(server.kill)  # SIGKILL: no shutdown, no final flush
        server = await asyncio.to_thread(RedisServer(data, port=server.port).start)

        # the same store reconnects (and re-loads its scripts into the fresh server)
        assert await store.load("r1") == ({"step": 2}, rev)
        assert [i for i, _ in await store.events("r1")] == ids
        assert await store.get_cursor("slack", "r1") == ids[0]
        assert await store.lock_holder("g1") == "r1" and await store.lock_holder("g2") == "r1"
        assert await store.active_runs() == ["r1"]
        assert await store.check_fence(fence)
        assert not await store.first_time("evt-1")
        assert len(await store.events(GLOBAL)) == 1
        assert await store.save("r1", {"step": 3}, expected_rev=rev, fence=fence, events=[]) == 3
        with pytest.raises(GroupBusy):
            await new_run(store, "r2", ("g2",))
    finally:
        await store.close()
        await asyncio.to_thread(server.stop)


async def test_unreachable_redis_message_has_no_password() -> None:
    port = free_port()  # nothing listens here
    secret = "hunter2-very-secret"
    store = RedisStore.from_url(f"redis://admin:{secret}@127.0.0.1:{port}/0", prefix=PREFIX)
    try:
        calls: list[Callable[[], Awaitable[object]]] = [
            store.ping,
            lambda: store.load("r1"),
            lambda: store.save("r1", {}, expected_rev=1, fence=None, events=[]),
        ]
        for call in calls:
            with pytest.raises(StoreUnavailable) as caught:
                await call()
            exc = caught.value
            assert isinstance(exc, TemporaryError)
            assert f"Redis at 127.0.0.1:{port} is unreachable" in str(exc)
            for text in (str(exc), repr(exc), str(exc.__cause__), repr(exc.__cause__)):
                assert secret not in text
    finally:
        await store.close()


async def test_redis_going_away_is_temporary(server: RedisServer, store: RedisStore) -> None:
    await new_run(store)
    await asyncio.to_thread(server.kill)
    with pytest.raises(StoreUnavailable, match="unreachable"):
        await store.load("r1")
    with pytest.raises(TemporaryError):
        await store.acquire_lease("r1", "bot", 30)


async def test_wrong_password_is_named_without_the_password(
    server: RedisServer, raw: aioredis.Redis
) -> None:
    await raw.config_set("requirepass", "right-secret-123")
    store = RedisStore.from_url(f"redis://:wrong-secret-456@127.0.0.1:{server.port}/0")
    try:
        with pytest.raises(StoreUnavailable, match="credentials") as caught:
            await store.ping()
        for text in (str(caught.value), str(caught.value.__cause__)):
            assert "wrong-secret-456" not in text and "right-secret-123" not in text
    finally:
        await store.close()
    good = RedisStore.from_url(f"redis://:right-secret-123@127.0.0.1:{server.port}/0")
    try:
        await good.ping()
    finally:
        await good.close()
