"""The event feed: how consumers (the Slack notifier, the CLI transcript) read runs' events.

Domain events are entries of each run's durable audit stream. A consumer keeps a delivery
cursor per run in the store and resumes from it; replicas of the bot share events and cursors,
and one at a time delivers a consumer's events (a lease). Slack's retries and duplicates are
recognised by their delivery identity, and the run record remembers where its Slack message
lives, so that a restarted bot edits that message instead of posting another.
"""

from __future__ import annotations

from .errors import StaleRecord, UnknownRun
from .runner import Clock
from .schema import load_run
from .store import Fence, Store, StoredEvent


class EventFeed:
    """Cursors, consumer leases, delivery de-dup and message attachment, on the store."""

    def __init__(self, store: Store, *, identity: str, clock: Clock, lease_ttl_s: float) -> None:
        self.store = store
        self.identity = identity
        self.clock = clock
        self.lease_ttl_s = lease_ttl_s
        self._consumer_fences: dict[str, Fence] = {}
        self._consumer_renewed: dict[str, float] = {}

    # --- reading ------------------------------------------------------------------------------

    async def events(self, run_id: str, after: str = "0-0") -> list[StoredEvent]:
        """The run's events after the id ``after`` (exclusive), oldest first."""
        return list(await self.store.events(run_id, after=after))

    async def cursor(self, consumer: str, run_id: str) -> str:
        """Where ``consumer`` (the Slack notifier, a transcript) stopped reading a run's events."""
        return str(await self.store.get_cursor(consumer, run_id))

    async def advance_cursor(self, consumer: str, run_id: str, event_id: str) -> None:
        """Record that ``consumer`` has delivered everything up to ``event_id`` (never back)."""
        await self.store.set_cursor(consumer, run_id, event_id)

    # --- one delivering replica per consumer --------------------------------------------------

    async def hold_consumer(self, consumer: str) -> bool:
        """Whether this bot is the one delivering ``consumer``'s events now. Replicas share the
        events and cursors; one at a time delivers them (a lease, renewed on each call, with
        the runs' TTL: the same identity takes it back at once after a restart, another
        replica after the TTL)."""
        ttl = self.lease_ttl_s
        now = self.clock.now()
        fence = self._consumer_fences.get(consumer)
        if fence is not None and now - self._consumer_renewed.get(consumer, 0.0) < ttl / 3:
            return True  # renewed recently: nobody else can have it yet
        if fence is None or not await self.store.renew_lease(fence, ttl):
            fence = await self.store.acquire_lease(f"consumer:{consumer}", self.identity, ttl)
        if fence is None:
            self._consumer_fences.pop(consumer, None)
            return False
        self._consumer_fences[consumer] = fence
        self._consumer_renewed[consumer] = now
        return True

    async def release_consumer(self, consumer: str) -> None:
        """Hand delivery over at once (a bot stopping gracefully)."""
        fence = self._consumer_fences.pop(consumer, None)
        if fence is not None:
            await self.store.release_lease(fence)

    # --- Slack deliveries and messages --------------------------------------------------------

    async def first_delivery(self, key: str) -> bool:
        """True the first time ``key`` (a Slack delivery's identity) is seen: retries and
        duplicates of a delivery then have no second effect."""
        return bool(await self.store.first_time(f"delivery:{key}"))

    async def attach_message(self, run_id: str, channel: str, thread_ts: str) -> None:
        """Remember where the run's Slack message lives (so a restarted bot edits it)."""
        for _ in range(20):
            loaded = await self.store.load(run_id)
            if loaded is None:
                raise UnknownRun(run_id)
            data, rev = loaded
            run = load_run(data).with_(channel=channel, thread_ts=thread_ts)
            try:
                await self.store.save(
                    run_id, run.to_dict(), expected_rev=rev, fence=None, events=[]
                )
                return
            except StaleRecord:
                continue
