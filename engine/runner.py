"""The driver of a run: load, decide, save, act, save the outcome — until a human is needed.

IO comes in through ports (the store, the effect performer, the clock), so this module stays
free of IO libraries. One driver per run: it holds the run's lease and carries its fencing token
into every save; a driver that lost the lease (frozen, partitioned) has its writes refused and
stops. Every boundary calls ``checkpoint(name)``, so tests can crash the driver at any of them.

Stopping (a bot told to exit, SIGTERM): ``stop()`` makes every driver return at its next step
boundary — never inside a save — and give its lease up, so that another replica carries on at
once instead of after the lease's TTL. An effect under way is waited for until ``abandon()``;
then it is cancelled, and the next driver performs it again, as after a crash (the effect was
saved as pending before it started).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from . import logctx
from .config import Config
from .decide import Command, Decision, Event, Failure, Outcome, Tick, decide
from .errors import (
    EngineError,
    Fenced,
    PermanentError,
    StaleRecord,
    StoreUnavailable,
    TemporaryError,
)
from .model import PAUSED, WAITING, Pending, Run
from .schema import Unresumable, load_run
from .store import Fence, Store

log = logging.getLogger(__name__)
T = TypeVar("T")


class Clock(Protocol):
    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class Performer(Protocol):
    async def perform(self, run: Run, effect: Pending, fence: Fence | None) -> Outcome | Failure:
        """Carry out ``effect`` as the holder of ``fence``; every error becomes a ``Failure``."""
        ...


class LeaseLost(EngineError):
    """This driver no longer holds the run (another took over): it must stop at once."""


class LeaseBusy(EngineError):
    """Another bot instance drives this run (``holder``: its identity, when known)."""

    def __init__(self, message: str, holder: str | None = None) -> None:
        super().__init__(message)
        self.holder = holder


@dataclass
class DriveResult:
    run: Run
    reason: str  # finished | waiting | paused | stopped


class _Abandoned(Exception):
    """The effect under way was cancelled because the driver is stopping."""


def no_checkpoint(name: str, detail: str) -> None:
    """Production: boundaries are no-ops. Tests pass a function that crashes at one of them.

    ``name`` is the boundary (before_save, after_save, before_act, after_act);
    ``detail`` tells one occurrence from another (the record revision, the effect key).
    """


class Runner:
    def __init__(
        self,
        *,
        store: Store,
        performer: Performer,
        config: Config,
        identity: str,
        clock: Clock | None = None,
        lease_ttl_s: float | None = None,
        poll_interval_s: float = 0.5,
        checkpoint: Callable[[str, str], None] = no_checkpoint,
        store_outage_s: float = 600.0,
    ) -> None:
        self.store = store
        self.performer = performer
        self.config = config
        self.identity = identity
        self.clock = clock or SystemClock()
        self.lease_ttl_s = lease_ttl_s or config.store.lease_ttl_s
        self.poll_interval_s = poll_interval_s
        self.checkpoint = checkpoint
        self.store_outage_s = store_outage_s
        self._stopping = asyncio.Event()
        self._abandon = asyncio.Event()

    # --- stopping -----------------------------------------------------------------------------

    def stop(self) -> None:
        """Every driver returns ("stopped") at its next step boundary and releases its lease."""
        self._stopping.set()

    def abandon(self) -> None:
        """Effects still under way are cancelled (after ``stop``, when the grace runs out)."""
        self._stopping.set()
        self._abandon.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    # --- loading and saving -----------------------------------------------------------------

    async def _store(self, op: Callable[[], Awaitable[T]]) -> T:
        """A store call that waits out a Redis outage (restart, failover) instead of failing."""
        delay = 0.2
        deadline = self.clock.now() + self.store_outage_s
        while True:
            try:
                return await op()
            except StoreUnavailable as exc:
                if self.clock.now() >= deadline:
                    raise
                log.warning("store unavailable (%s); retrying in %.1fs", exc, delay)
                await self.clock.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def load(self, run_id: str) -> tuple[Run, int]:
        loaded = await self._store(lambda: self.store.load(run_id))
        if loaded is None:
            raise EngineError(f"no run '{run_id}'")
        data, rev = loaded
        return load_run(data), rev

    async def _save(self, run_id: str, decision: Decision, rev: int, fence: Fence | None) -> int:
        self.checkpoint("before_save", f"rev{rev}")
        new_rev: int = await self._store(
            lambda: self.store.save(
                run_id,
                decision.run.to_dict(),
                expected_rev=rev,
                fence=fence,
                events=list(decision.events),
            )
        )
        self.checkpoint("after_save", f"rev{rev}")
        if decision.run.terminal:
            await self._store(lambda: self.store.finish(run_id))
        return new_rev

    async def apply(self, run_id: str, event: Event, *, fence: Fence | None = None) -> Decision:
        """Decide and save one event, retrying on concurrent writes (the record is re-read)."""
        for _ in range(50):
            run, rev = await self.load(run_id)
            decision = decide(run, event, self.clock.now(), self.config)
            if decision.run == run and not decision.events:
                return decision
            try:
                await self._save(run_id, decision, rev, fence)
                return decision
            except StaleRecord:
                continue
        raise TemporaryError(f"run {run_id} is being changed too often; try again")

    async def command(self, run_id: str, command: Command) -> Decision:
        """A person's request (approve, pause, …) applied from any process, no lease needed."""
        return await self.apply(run_id, command)

    # --- driving ----------------------------------------------------------------------------

    async def acquire(self, run_id: str, *, wait_s: float = 0.0) -> _Lease:
        """Take the run's lease; with ``wait_s``, wait that long for another holder's to lapse."""
        deadline = self.clock.now() + wait_s
        while True:
            fence = await self._store(
                lambda: self.store.acquire_lease(run_id, self.identity, self.lease_ttl_s)
            )
            if fence is not None:
                return _Lease(run_id, fence)
            if self.clock.now() >= deadline:
                holder = await self._store(lambda: self.store.lease_holder(run_id))
                name = holder.get("holder") if holder else "another driver"
                raise LeaseBusy(f"run {run_id} is driven by {name}", holder=name)
            await self.clock.sleep(min(1.0, self.lease_ttl_s / 4))

    async def drive(
        self,
        run_id: str,
        *,
        until_human: bool = True,
        lease_wait_s: float = 0.0,
        on_acquired: Callable[[str], None] | None = None,
    ) -> DriveResult:
        """Drive ``run_id`` until it ends or (with ``until_human``) waits for a person.
        ``on_acquired`` is called once the lease is held (the bot counts takeovers with it)."""
        if self.stopping:
            raise LeaseBusy(f"run {run_id} not taken: this driver is stopping")
        lease = await self.acquire(run_id, wait_s=lease_wait_s)
        if on_acquired is not None:
            on_acquired(run_id)
        renewer = asyncio.create_task(self._renew(lease))
        try:
            with logctx.bound(run=run_id):
                return await self._drive(lease, until_human)
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await renewer
            if not lease.lost.is_set():
                with contextlib.suppress(Exception):
                    await self.store.release_lease(lease.fence)

    async def _renew(self, lease: _Lease) -> None:
        while True:
            await self.clock.sleep(self.lease_ttl_s / 3)
            fence = lease.fence
            try:
                if await self.store.renew_lease(fence, self.lease_ttl_s):
                    continue
                if await self._retake(lease, fence):
                    continue
                lease.lost.set()
                return
            except TemporaryError:
                continue  # Redis blip: the next try may succeed before the TTL runs out

    async def _retake(self, lease: _Lease, refused: Fence) -> bool:
        """The store no longer takes ``refused`` (our lease token): is the run still ours?

        A lease lapses when Redis is down for longer than its TTL. If nobody took it meanwhile,
        this driver takes it back (a new token, in ``lease.fence``) and carries on; held by
        anyone else, even our own identity, we are the stale one. Both the renewer and a refused
        write may notice the lapse: one re-take at a time, so the token kept is the newest.
        """
        async with lease.retaking:
            if lease.lost.is_set():
                return False
            if lease.fence != refused:
                return True  # already taken back (by the renewer, or by another write)
            if await self._store(lambda: self.store.lease_holder(lease.run_id)) is not None:
                return False
            # A lease handed out after ours means another driver ran meanwhile (and perhaps
            # finished and let go): then we are the stale one, even though nobody holds it now.
            if await self._store(lambda: self.store.newest_token(lease.run_id)) != refused.token:
                return False
            fence = await self._store(
                lambda: self.store.acquire_lease(lease.run_id, self.identity, self.lease_ttl_s)
            )
            if fence is None:
                return False
            log.warning("run %s: the lease had lapsed and nobody held it: taken back", lease.run_id)
            lease.fence = fence
            return True

    async def _drive(self, lease: _Lease, until_human: bool) -> DriveResult:
        run_id = lease.run_id
        while True:
            if lease.lost.is_set():
                raise LeaseLost(f"lost the lease on run {run_id}")
            run, rev = await self.load(run_id)
            if run.terminal:
                if not await self._store(lambda: self.store.check_fence(lease.fence)):
                    # Another driver finished it while this one was away (frozen, cut off).
                    lease.lost.set()
                    raise LeaseLost(f"lost the lease on run {run_id}; another driver ended it")
                await self._store(lambda: self.store.finish(run_id))
                return DriveResult(run, "finished")
            if self.stopping:
                return DriveResult(run, "stopped")
            now = self.clock.now()
            decision = decide(run, Tick(), now, self.config)
            fence = lease.fence
            try:
                if decision.run != run or decision.events:
                    rev = await self._save(run_id, decision, rev, fence)
            except StaleRecord:
                continue  # a command landed meanwhile: decide again on the fresh record
            except Fenced:
                if await self._retake(lease, fence):
                    continue  # the lease had lapsed and is ours again: decide afresh
                lease.lost.set()
                raise LeaseLost(f"another driver holds run {run_id}") from None
            run = decision.run
            if decision.effects:
                try:
                    await self._act(lease, run, decision.effects[0])
                except _Abandoned:
                    return DriveResult(run, "stopped")
                continue
            if run.terminal:
                return DriveResult(run, "finished")
            if until_human and run.state in (WAITING, PAUSED):
                return DriveResult(run, "waiting" if run.state == WAITING else "paused")
            wait = self.poll_interval_s
            if decision.wake_at is not None:
                wait = max(0.0, min(wait, decision.wake_at - now))
            await self.clock.sleep(wait)  # at most poll_interval_s: stop is seen soon

    async def _perform(self, run: Run, effect: Pending, fence: Fence) -> Outcome | Failure:
        """The effect, unless ``abandon()`` cuts it short (then ``_Abandoned``)."""
        slots = effect.args.get("slots")
        with logctx.bound(
            group=effect.args.get("group"),
            slot=",".join(slots) if isinstance(slots, list) else None,
        ):
            work = asyncio.ensure_future(self.performer.perform(run, effect, fence))
        abandon = asyncio.ensure_future(self._abandon.wait())
        try:
            await asyncio.wait({work, abandon}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            abandon.cancel()
            if not work.done():
                work.cancel()
            await asyncio.gather(work, abandon, return_exceptions=True)
        if work.cancelled():
            if self._abandon.is_set():
                log.warning(
                    "run %s: %s abandoned on stop; the next driver redoes it", run.id, effect.key
                )
                raise _Abandoned(effect.key)
            raise asyncio.CancelledError
        return work.result()

    async def _act(self, lease: _Lease, run: Run, effect: Pending) -> None:
        run_id = lease.run_id
        fence = lease.fence
        if not await self._store(lambda: self.store.check_fence(fence)) and not (
            await self._retake(lease, fence)
        ):
            lease.lost.set()
            raise LeaseLost(f"another driver holds run {run_id}; not acting")
        detail = f"{effect.key}#{effect.attempt}"
        self.checkpoint("before_act", detail)
        result = await self._perform(run, effect, lease.fence)
        self.checkpoint("after_act", detail)
        while True:
            fence = lease.fence
            try:
                await self.apply(run_id, result, fence=fence)
                break
            except Fenced:
                # Refused: the lease lapsed during the effect (a long Redis outage), or another
                # driver took the run. Only in the first case is the outcome still ours to save.
                if not await self._retake(lease, fence):
                    lease.lost.set()
                    raise LeaseLost(f"another driver holds run {run_id}") from None


@dataclass
class _Lease:
    run_id: str
    fence: Fence
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    retaking: asyncio.Lock = field(default_factory=asyncio.Lock)


async def resolve_outcome(coro: Awaitable[Any], key: str) -> Outcome | Failure:
    """Run an adapter call and turn its result or error into the event ``decide`` expects."""
    try:
        result = await coro
    except TemporaryError as exc:
        return Failure(key=key, error=str(exc), temporary=True, delay_s=exc.delay_s)
    except PermanentError as exc:
        return Failure(key=key, error=str(exc), temporary=False)
    return Outcome(key=key, result=result)


__all__ = [
    "DriveResult",
    "LeaseBusy",
    "LeaseLost",
    "Runner",
    "SystemClock",
    "Tick",
    "Unresumable",
    "resolve_outcome",
]
