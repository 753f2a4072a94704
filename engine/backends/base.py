"""The backend contract: how the instances of one gateway group are replaced.

A group is a set of stable *slots* (``prod-eu/2``). A slot keeps its identity while the
container, pod or process behind it is replaced.

**Readiness.** A slot is *ready* when the instance serving it passes the runtime's readiness
check (the sandbox's ``/status/ready``, a container healthcheck or probe, a pod's Ready
condition) and takes the slot's traffic. A call that brings a slot to an image returns only once
the slot is ready on that image, or raises ``NotReadyError`` after ``ready_timeout_s``; the slot
then keeps serving from its previous instance wherever the runtime allows it.

**Fencing.** Every changing call carries the driver's fencing token, ``fence`` =
``"<run id>:<token>"``. A runtime that can remember it (the sandbox, an annotation on a
Deployment) refuses a change whose token is older than one it has seen, with
``PermanentError``; the runner also checks its lease before each effect, which is all the
protection a runtime without such a place gets.

**Idempotence.** Every call states an end result and is safe to repeat: bringing a slot that
already runs the image and is ready returns at once (tidying what an interrupted attempt left
behind); a replacement left by an interrupted attempt is reused, never doubled. So a run resumed
after a crash at any point repeats its last call without replacing anything twice.

**Errors.** SDK errors become the engine's: ``TemporaryError`` (worth retrying later),
``PermanentError`` (``NotReadyError`` among them) otherwise.

A backend brings a whole group (or some of its slots) to an image with :meth:`ensure_group`.
Runtimes that roll a workload as a whole (a Kubernetes Deployment, a Helm release) implement it
themselves; runtimes that replace one slot at a time subclass :class:`PerSlotRollout`,
implement its ``ensure_image`` and inherit the one shared loop.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol, runtime_checkable

from ..errors import PermanentError, TemporaryError


@dataclass(frozen=True)
class SlotInfo:
    """What a backend observes about one slot."""

    id: str
    image: str
    version: str | None
    ready: bool
    digest: str | None = None
    endpoints: dict[str, str] = field(default_factory=dict)
    """Base URLs of the instance behind the slot: ``proxy``, ``status``, ``metrics``."""
    hostname: str | None = None
    """The host name (or instance id) the instance behind the slot reports to the control
    plane: a pod's name, a container's host name. None when the runtime cannot tell."""


class SlotStep(StrEnum):
    """What happened to a slot during a group rollout."""

    STARTED = "started"
    READY = "ready"
    FAILED = "failed"


@dataclass(frozen=True)
class SlotProgress:
    """One slot's news during :meth:`Backend.ensure_group`."""

    slot_id: str
    step: SlotStep
    info: SlotInfo | None = None
    """The slot as observed once ready (``READY``)."""
    error: TemporaryError | PermanentError | None = None
    """Why the slot did not get there (``FAILED``)."""


Progress = Callable[[SlotProgress], None]


@dataclass(frozen=True)
class Rollout:
    """How far :meth:`Backend.ensure_group` brought the slots it was asked for."""

    ready: dict[str, SlotInfo]
    """Slots on the image and ready, in the order asked."""
    failed: dict[str, TemporaryError | PermanentError]
    """Slots that did not get there, and why."""
    pending: tuple[str, ...] = ()
    """Slots not started: the rollout was paused, or stopped at a failure. Calling
    ``ensure_group`` again continues with them."""
    paused: bool = False
    """The rollout stopped because a pause was asked for."""

    @property
    def complete(self) -> bool:
        return not self.failed and not self.pending


@runtime_checkable
class Backend(Protocol):
    """One gateway group's instances on some runtime (local sandbox, docker, kubernetes)."""

    group: str

    async def list_slots(self) -> list[SlotInfo]:
        """Every slot of the group, in a stable order."""
        ...

    async def ensure_group(
        self,
        image: str,
        *,
        slots: Sequence[str] | None = None,
        ready_timeout_s: float,
        fence: str | None = None,
        parallel: int = 1,
        progress: Progress | None = None,
        pause: asyncio.Event | None = None,
    ) -> Rollout:
        """Bring ``slots`` (default: every slot of the group) to ``image``, each ready.

        ``ready_timeout_s`` applies to each slot. ``parallel`` is how many slots may be
        replaced at once. ``progress`` hears of each slot as it starts, becomes ready or
        fails. Once ``pause`` is set, no further slot starts (a runtime that rolls as a
        whole pauses its rollout, e.g. Kubernetes' ``spec.paused``); slots in flight finish.
        After a slot fails no further slot starts either. The slots left are ``pending``.

        Resumable: calling again with the same arguments continues, since slots already on
        ``image`` and ready return at once. Per-slot errors are reported in the result; only
        unexpected errors escape.
        """
        ...

    async def preflight(self) -> list[str]:
        """Warnings about the group's set-up that real users hit (probes, grace periods...)."""
        ...

    async def close(self) -> None:
        """Release clients and connections."""
        ...


class PerSlotRollout(ABC):
    """``ensure_group`` for per-slot runtimes: the one loop over ``ensure_image``.

    A per-slot backend subclasses it and implements ``list_slots`` and ``ensure_image``.
    """

    @abstractmethod
    async def list_slots(self) -> list[SlotInfo]:
        """Every slot of the group, in a stable order."""

    @abstractmethod
    async def ensure_image(
        self, slot_id: str, image: str, *, ready_timeout_s: float, fence: str | None = None
    ) -> SlotInfo:
        """Bring ``slot_id`` to ``image`` and return once it is ready (see the module's
        contract on readiness, fencing and idempotence); errors as ``ensure_group`` reports
        them per slot."""

    async def ensure_group(
        self,
        image: str,
        *,
        slots: Sequence[str] | None = None,
        ready_timeout_s: float,
        fence: str | None = None,
        parallel: int = 1,
        progress: Progress | None = None,
        pause: asyncio.Event | None = None,
    ) -> Rollout:
        """See :meth:`Backend.ensure_group`."""
        order = list(slots) if slots is not None else [s.id for s in await self.list_slots()]
        queue = list(order)
        ready: dict[str, SlotInfo] = {}
        failed: dict[str, TemporaryError | PermanentError] = {}

        def report(news: SlotProgress) -> None:
            if progress is not None:
                progress(news)

        async def worker() -> None:
            while queue and not failed and not (pause is not None and pause.is_set()):
                slot_id = queue.pop(0)
                report(SlotProgress(slot_id, SlotStep.STARTED))
                try:
                    info = await self.ensure_image(
                        slot_id, image, ready_timeout_s=ready_timeout_s, fence=fence
                    )
                except (TemporaryError, PermanentError) as exc:
                    failed[slot_id] = exc
                    report(SlotProgress(slot_id, SlotStep.FAILED, error=exc))
                else:
                    ready[slot_id] = info
                    report(SlotProgress(slot_id, SlotStep.READY, info=info))

        await asyncio.gather(*(worker() for _ in range(max(1, min(parallel, len(queue))))))
        return Rollout(
            ready={s: ready[s] for s in order if s in ready},
            failed={s: failed[s] for s in order if s in failed},
            pending=tuple(queue),
            paused=bool(queue) and pause is not None and pause.is_set(),
        )
