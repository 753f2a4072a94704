"""The backend contract: how the instances of one gateway group are replaced.

A group is a set of stable *slots* (``prod-eu/2``). A slot keeps its identity while the
container, pod or process behind it is replaced. Every call states an end result and is safe to
repeat: ``ensure_image(slot, image)`` on a slot that already runs ``image`` and is ready returns
at once, so a resumed run can repeat any call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


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


@runtime_checkable
class Backend(Protocol):
    """One gateway group's instances on some runtime (local sandbox, docker, kubernetes)."""

    group: str

    async def list_slots(self) -> list[SlotInfo]:
        """Every slot of the group, in a stable order."""
        ...

    async def ensure_image(
        self, slot_id: str, image: str, *, ready_timeout_s: float, fence: str | None = None
    ) -> SlotInfo:
        """Bring ``slot_id`` to ``image`` and return once it is ready.

        ``fence`` (``"<run>:<token>"``) is the driver's fencing token: a runtime that can check
        it refuses changes from a driver whose token is older than one it has seen.

        Idempotent. Raises ``NotReadyError`` when the replacement is not ready within
        ``ready_timeout_s`` (the slot is then left on its previous, serving instance where the
        runtime allows it), ``TemporaryError`` for faults worth retrying and ``PermanentError``
        otherwise.
        """
        ...

    async def preflight(self) -> list[str]:
        """Warnings about the group's set-up that real users hit (probes, grace periods...)."""
        ...

    async def close(self) -> None:
        """Release clients and connections."""
        ...


async def ensure_batch(
    backend: Backend, slot_ids: Sequence[str], image: str, *, ready_timeout_s: float
) -> list[SlotInfo]:
    """Bring several slots to ``image`` at once; the first failure is raised after all settle."""
    results = await asyncio.gather(
        *(backend.ensure_image(s, image, ready_timeout_s=ready_timeout_s) for s in slot_ids),
        return_exceptions=True,
    )
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return [r for r in results if isinstance(r, SlotInfo)]
