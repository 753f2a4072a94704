"""The store port: what the runner, the Engine API and the event feed need from storage.

The engine core talks to storage only through :class:`Store`; the Redis implementation lives in
``engine.adapters.store`` and is injected by the composition root. Errors are the engine's own:
``StaleRecord`` (a compare-and-set lost), ``Fenced`` (a stale lease token), ``RunExists``,
``GroupBusy`` and ``StoreUnavailable`` (a ``TemporaryError``: try again later).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

Record = dict[str, Any]
"""A run record as saved: ``Run.to_dict()``."""

StoredEvent = tuple[str, dict[str, Any]]
"""One entry of a run's audit stream: its id (``<ms>-<seq>``, ordered) and the event."""


@dataclass(frozen=True)
class Fence:
    """Proof of holding a run's lease: writes are refused once ``token`` is not current."""

    run_id: str
    holder: str
    token: int

    @property
    def lease_value(self) -> str:
        """The exact value of the lease key while this fence is current."""
        return f"{self.token}:{self.holder}"


class Store(Protocol):
    """Run records (compare-and-set), audit streams, cursors, leases, group locks, de-dup."""

    # --- runs

    async def create_run(
        self,
        run_id: str,
        record: Record,
        events: Sequence[dict[str, Any]],
        groups: Sequence[str],
        created_at: float,
    ) -> int:
        """Create the run with its first events and lock its groups, all or nothing.

        Raises ``RunExists`` or ``GroupBusy`` (then nothing is written). Returns revision 1.
        """
        ...

    async def load(self, run_id: str) -> tuple[Record, int] | None:
        """The run's record and revision, or None if there is no such run."""
        ...

    async def save(
        self,
        run_id: str,
        record: Record,
        *,
        expected_rev: int,
        fence: Fence | None,
        events: Sequence[dict[str, Any]] = (),
    ) -> int:
        """Write the record as revision ``expected_rev + 1`` together with its events.

        Raises ``Fenced`` when ``fence`` is given and no longer current (checked first), and
        ``StaleRecord`` when the record is not at ``expected_rev``. ``fence=None`` is for
        people's requests, which rely on the revision check alone.
        """
        ...

    async def finish(self, run_id: str) -> None:
        """Release the run's group locks, mark it inactive, start its retention. Idempotent."""
        ...

    async def history(self, limit: int = 20, now: float | None = None) -> list[str]:
        """Run ids, newest first (with ``now``, forgetting those past the retention)."""
        ...

    async def active_runs(self) -> list[str]:
        """Unfinished run ids, oldest first."""
        ...

    # --- audit streams and delivery cursors

    async def events(self, run_id: str, after: str = "0-0", count: int = 1000) -> list[StoredEvent]:
        """Events of the run after the id ``after`` (exclusive), oldest first."""
        ...

    async def audit_global(self, event: dict[str, Any]) -> str:
        """Append to the global audit stream (actions not tied to one run)."""
        ...

    async def get_cursor(self, consumer: str, run_id: str) -> str:
        """The last event id ``consumer`` has handled in the run's stream ("0-0" if none)."""
        ...

    async def set_cursor(self, consumer: str, run_id: str, event_id: str) -> str:
        """Move the consumer's cursor to ``event_id``, never backwards."""
        ...

    # --- leases (one driver per run; also one delivering replica per feed consumer)

    async def acquire_lease(self, run_id: str, identity: str, ttl_s: float) -> Fence | None:
        """Take the lease with a new token, or None if another identity holds it."""
        ...

    async def renew_lease(self, fence: Fence, ttl_s: float) -> bool:
        """Extend the lease to ``ttl_s`` from now; False if it is no longer exactly ours."""
        ...

    async def release_lease(self, fence: Fence) -> None:
        """Give the lease up (no-op if it is no longer ours)."""
        ...

    async def check_fence(self, fence: Fence) -> bool:
        """True while ``fence`` is the current lease of its run."""
        ...

    async def newest_token(self, run_id: str) -> int:
        """The highest token ever handed out for the run (0 before the first lease)."""
        ...

    async def lease_holder(self, run_id: str) -> dict[str, Any] | None:
        """``{"holder", "token", "ttl_s"}`` of the current lease, or None."""
        ...

    # --- group locks

    async def lock_holder(self, group: str) -> str | None:
        """The run id holding the group's lock, or None."""
        ...

    async def break_lock(self, group: str, *, user: str, reason: str, now: float) -> str | None:
        """Break-glass: delete the group's lock (audited); returns the former holder."""
        ...

    # --- de-duplication

    async def first_time(self, key: str, ttl_s: float = 86400) -> bool:
        """True the first time ``key`` is seen within ``ttl_s``, False afterwards."""
        ...
