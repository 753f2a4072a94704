"""The driver of a run: load, decide, save, act, save the outcome — until a human is needed.

IO comes in through ports (the store, the effect performer, the clock), so this module stays
free of IO libraries. One driver per run: it holds the run's lease and carries its fencing token
into every save; a driver that lost the lease (frozen, partitioned) has its writes refused and
stops. Every boundary calls ``checkpoint(name)``, so tests can crash the driver at any of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from .config import Config
from .decide import Command, Decision, Event, Failure, Outcome, Tick, decide
from .errors import EngineError, Fenced, PermanentError, StaleRecord, TemporaryError
from .model import PAUSED, WAITING, Pending, Run
from .schema import Unresumable, load_run

log = logging.getLogger(__name__)


class Clock(Protocol):
    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def __init__(self) -> None:
        import time

        self._time = time.time

    def now(self) -> float:
        return self._time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class Performer(Protocol):
    async def perform(self, run: Run, effect: Pending, fence: Any) -> Outcome | Failure: ...


class LeaseLost(EngineError):
    """This driver no longer holds the run (another took over): it must stop at once."""


class LeaseBusy(EngineError):
    """Another bot instance drives this run."""


@dataclass
class DriveResult:
    run: Run
    reason: str  # finished | waiting | paused | lost


def no_checkpoint(name: str) -> None:
    """Production: boundaries are no-ops. Tests pass a function that crashes at one of them."""


class Runner:
    def __init__(
        self,
        *,
        store: Any,
        performer: Performer,
        config: Config,
        identity: str,
        clock: Clock | None = None,
        lease_ttl_s: float | None = None,
        poll_interval_s: float = 0.5,
        checkpoint: Callable[[str], None] = no_checkpoint,
        schema_check: Callable[[dict[str, Any]], Run] | None = None,
    ) -> None:
        self.store = store
        self.performer = performer
        self.config = config
        self.identity = identity
        self.clock = clock or SystemClock()
        self.lease_ttl_s = lease_ttl_s or config.store.lease_ttl_s
        self.poll_interval_s = poll_interval_s
        self.checkpoint = checkpoint
        self.schema_check = schema_check

    # --- loading and saving -----------------------------------------------------------------

    async def load(self, run_id: str) -> tuple[Run, int]:
        loaded = await self.store.load(run_id)
        if loaded is None:
            raise EngineError(f"no run '{run_id}'")
        data, rev = loaded
        return load_run(data), rev

    async def _save(self, run_id: str, decision: Decision, rev: int, fence: Any) -> int:
        self.checkpoint("before_save")
        new_rev: int = await self.store.save(
            run_id,
            decision.run.to_dict(),
            expected_rev=rev,
            fence=fence,
            events=list(decision.events),
        )
        self.checkpoint("after_save")
        if decision.run.terminal:
            await self.store.finish(run_id)
        return new_rev

    async def apply(self, run_id: str, event: Event, *, fence: Any = None) -> Decision:
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

    async def drive(self, run_id: str, *, until_human: bool = True) -> DriveResult:
        """Drive ``run_id`` until it ends or (with ``until_human``) waits for a person."""
        fence = await self.store.acquire_lease(run_id, self.identity, self.lease_ttl_s)
        if fence is None:
            holder = await self.store.lease_holder(run_id)
            raise LeaseBusy(f"run {run_id} is driven by {holder and holder.get('holder')}")
        lost = asyncio.Event()
        renewer = asyncio.create_task(self._renew(fence, lost))
        try:
            return await self._drive(run_id, fence, lost, until_human)
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await renewer
            if not lost.is_set():
                with contextlib.suppress(Exception):
                    await self.store.release_lease(fence)

    async def _renew(self, fence: Any, lost: asyncio.Event) -> None:
        while True:
            await asyncio.sleep(self.lease_ttl_s / 3)
            try:
                if not await self.store.renew_lease(fence, self.lease_ttl_s):
                    lost.set()
                    return
            except TemporaryError:
                continue  # Redis blip: the TTL leaves room for the next try

    async def _drive(
        self, run_id: str, fence: Any, lost: asyncio.Event, until_human: bool
    ) -> DriveResult:
        while True:
            if lost.is_set():
                raise LeaseLost(f"lost the lease on run {run_id}")
            run, rev = await self.load(run_id)
            if run.terminal:
                await self.store.finish(run_id)
                return DriveResult(run, "finished")
            now = self.clock.now()
            decision = decide(run, Tick(), now, self.config)
            try:
                if decision.run != run or decision.events:
                    rev = await self._save(run_id, decision, rev, fence)
            except StaleRecord:
                continue  # a command landed meanwhile: decide again on the fresh record
            except Fenced:
                raise LeaseLost(f"another driver holds run {run_id}") from None
            run = decision.run
            if decision.effects:
                await self._act(run_id, run, decision.effects[0], fence)
                continue
            if run.terminal:
                return DriveResult(run, "finished")
            if until_human and run.state in (WAITING, PAUSED):
                return DriveResult(run, "waiting" if run.state == WAITING else "paused")
            wait = self.poll_interval_s
            if decision.wake_at is not None:
                wait = max(0.0, min(wait, decision.wake_at - now))
            await self.clock.sleep(wait)

    async def _act(self, run_id: str, run: Run, effect: Pending, fence: Any) -> None:
        if not await self.store.check_fence(fence):
            raise LeaseLost(f"another driver holds run {run_id}; not acting")
        self.checkpoint("before_act")
        result = await self.performer.perform(run, effect, fence)
        self.checkpoint("after_act")
        try:
            await self.apply(run_id, result, fence=fence)
        except Fenced:
            raise LeaseLost(f"another driver holds run {run_id}") from None
        self.checkpoint("after_outcome")


async def resolve_outcome(coro: Any, key: str) -> Outcome | Failure:
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
