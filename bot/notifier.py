"""Turns a run's durable events into Slack messages: one run message in the channel, edited in
place, and everything else in its thread.

Delivery is exactly-once in effect: the notifier reads each run's audit stream from its own
cursor in Redis, and every message it posts carries Slack message ``metadata`` naming what it is
for. A notifier that died between posting and moving its cursor finds the message in the thread
on restart and does not post it again. Edits are throttled per message and made at milestones, so
the number of Web API calls per group stays flat as groups grow.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from upgrade_bot.engine import FINAL_KINDS, Engine, EventKind, Run, kind_of, logctx

from . import charts, render
from .settings import SlackSettings

log = logging.getLogger(__name__)

CONSUMER = "slack"
UNREACHABLE = (aiohttp.ClientError, OSError, TimeoutError)
"""Slack could not be reached (or its answer was lost): not a refusal, try again."""
TERMINAL_EVENTS = FINAL_KINDS
RUN_STATE_EVENTS = frozenset(
    {
        EventKind.GROUP_STARTED,
        EventKind.GATE_OPENED,
        EventKind.GATE_DECIDED,
        EventKind.GATE_EXPIRED,
        EventKind.PAUSED,
        EventKind.RESUMED,
        EventKind.HELD,
        EventKind.HOLD_ENDED,
        EventKind.ROLLBACK_STARTED,
        EventKind.OBSERVATION_STARTED,
        EventKind.CHANGELOG,
        EventKind.CHANGELOG_ACKNOWLEDGED,
        EventKind.CONFIG_CHANGED,
        EventKind.SLOT_RESTORED,
        *TERMINAL_EVENTS,
    }
)
"""Events after which the run message is edited."""
GATE_EVENTS = frozenset(
    {EventKind.APPROVAL_RECORDED, EventKind.GATE_DECIDED, EventKind.GATE_EXPIRED}
)
"""Events after which the gate message is edited."""


def quarter_milestone(done: int, total: int) -> bool:
    """True when ``done`` crosses a quarter of ``total`` (1/4, 1/2, 3/4, all)."""
    if total <= 0:
        return False
    return any(done == math.ceil(total * k / 4) for k in (1, 2, 3, 4))


@dataclass
class _Thread:
    run_id: str
    channel: str
    ts: str
    index: dict[str, str] = field(default_factory=dict)
    """Metadata key ('run', 'group:prod-eu', 'gate:<id>', 'event:<id>') → message ts."""
    rendered: dict[str, str] = field(default_factory=dict)
    edited_at: dict[str, float] = field(default_factory=dict)
    dirty: set[str] = field(default_factory=set)
    gates: dict[str, dict[str, Any]] = field(default_factory=dict)
    decisions: dict[str, dict[str, Any]] = field(default_factory=dict)
    posted: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Events whose thread post may need re-rendering (the changelog after acknowledgement)."""
    done: bool = False


class Notifier:
    def __init__(
        self,
        engine: Engine,
        client: AsyncWebClient,
        settings: SlackSettings,
        *,
        approvers_of: Callable[[str], list[str]],
        escalation_of: Callable[[str], str | None] = lambda group: None,
        clock: Callable[[], float] = time.monotonic,
        observe: Callable[[Run, dict[str, Any]], None] | None = None,
    ) -> None:
        self.engine = engine
        self.client = client
        self.settings = settings
        self.approvers_of = approvers_of
        self.escalation_of = escalation_of
        self.clock = clock
        self.observe = observe
        """Told of each event once it is delivered (the bot's metrics)."""
        self.threads: dict[str, _Thread] = {}
        self._attaching = asyncio.Lock()
        self.watch: set[str] = set()
        self.failures: dict[str, int] = {}

    # --- the loop -------------------------------------------------------------------------

    async def run_forever(self, stop: asyncio.Event, interval_s: float = 0.3) -> None:
        """Deliver until ``stop``. With several replicas of the bot, one notifier at a time
        delivers (the others stand by, so that no message is posted by two of them)."""
        for run in await self.engine.history(50):
            self.watch.add(run.id)  # catch up on runs whose last events were never delivered
        delivering = False
        try:
            while not stop.is_set():
                try:
                    holding = await self.engine.feed.hold_consumer(CONSUMER)
                    if holding != delivering:
                        log.info("notifier %s", "delivering" if holding else "standing by")
                        self.threads.clear()  # what another replica did meanwhile is unknown
                        delivering = holding
                    if holding:
                        await self.deliver_all()
                except Exception:  # one bad pass must not stop notifications for good
                    log.exception("notifier pass failed")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), interval_s)
        finally:
            if delivering:
                with contextlib.suppress(Exception):
                    await self.engine.feed.release_consumer(CONSUMER)

    async def deliver_all(self) -> None:
        self.watch.update(await self.engine.active())
        for run_id in sorted(self.watch):
            with logctx.bound(run=run_id):
                finished = await self.deliver(run_id)
            if finished:
                self.watch.discard(run_id)

    async def deliver(self, run_id: str) -> bool:
        """Deliver what is new for one run; True once everything up to its end is delivered."""
        cursor = await self.engine.feed.cursor(CONSUMER, run_id)
        events = await self.engine.feed.events(run_id, after=cursor)
        thread = self.threads.get(run_id)
        if not events and thread is not None and not thread.dirty:
            return thread.done  # nothing new: no need to read the record
        run = await self.engine.status(run_id)
        if thread is None and run.thread_ts and not run.terminal:
            # A restarted bot: attach now, so that edits an earlier life left undone (a gate
            # decided while it was down) are made without waiting for the run's next event.
            thread = await self._thread(run)
        if thread is not None:
            await self._flush(run, thread)
        if not events:
            return run.terminal and (thread is None or not thread.dirty)
        for event_id, event in events:
            try:
                thread = await self._handle(run, event_id, event)
            except UNREACHABLE as exc:
                # The post may have landed with its answer lost: read the thread again before
                # the retry, so that a message that did land is found by its metadata.
                self.threads.pop(run_id, None)
                log.warning("Slack unreachable for run %s (%s); will retry", run_id, exc)
                return False
            except SlackApiError as exc:
                error = exc.response.get("error")
                self.failures[event_id] = self.failures.get(event_id, 0) + 1
                if self.failures[event_id] < 5:
                    log.warning(
                        "Slack refused %s for run %s: %s; will retry",
                        event.get("type"),
                        run_id,
                        error,
                    )
                    return False
                log.error("giving up on %s for run %s: %s", event.get("type"), run_id, error)
            if self.observe is not None:
                with contextlib.suppress(Exception):  # metrics never stop a delivery
                    self.observe(run, event)
            await self.engine.feed.advance_cursor(CONSUMER, run_id, event_id)
            self.failures.pop(event_id, None)
        if thread is not None:
            await self._flush(run, thread)
        return False

    # --- one event ------------------------------------------------------------------------

    async def _handle(self, run: Run, event_id: str, event: dict[str, Any]) -> _Thread:
        thread = await self._thread(run)
        kind = kind_of(event)
        group = event.get("group")
        if kind == EventKind.GROUP_STARTED and group:
            await self._post_once(thread, f"group:{group}", render.group_progress(run, group))
        elif kind in (EventKind.SLOT_REPLACED, EventKind.SLOT_RESTORED) and group:
            if kind == EventKind.SLOT_RESTORED or quarter_milestone(
                event.get("done", 0), event.get("total", 0)
            ):
                thread.dirty.add(f"group:{group}")
        elif kind == EventKind.GATE_OPENED:
            thread.gates[event["gate"]] = event
            await self._post_once(
                thread, f"gate:{event['gate']}", self._gate_message(run, event), notify=True
            )
        if kind in GATE_EVENTS and event.get("gate"):
            if kind in (EventKind.GATE_DECIDED, EventKind.GATE_EXPIRED):
                thread.decisions[event["gate"]] = event
            thread.dirty.add(f"gate:{event['gate']}")
        message = self._event_message(run, event_id, event)
        if message is not None:
            await self._post_once(thread, f"event:{event_id}", message)
            if kind == EventKind.CHANGELOG:
                thread.posted[f"event:{event_id}"] = event
        if kind == EventKind.METRICS_SUMMARY and group and self.settings.charts:
            await self._upload_chart(thread, run, group)
        if kind == EventKind.CHANGELOG_ACKNOWLEDGED:
            thread.dirty.update(
                k for k, e in thread.posted.items() if e["type"] == EventKind.CHANGELOG
            )
        if kind in TERMINAL_EVENTS:
            thread.done = True
        if kind in RUN_STATE_EVENTS:
            thread.dirty.add("run")
            if group:
                thread.dirty.add(f"group:{group}")
        return thread

    def _event_message(
        self, run: Run, event_id: str, event: dict[str, Any]
    ) -> render.Message | None:
        group = event.get("group") or (run.gate.group if run.gate else None)
        return render.event_message(
            event,
            run=run,
            event_id=event_id,
            approvers=self.approvers_of(group) if group else [],
            escalation_mention=event.get("escalation_mention")
            or (self.escalation_of(group) if group else None),
            command=self.settings.command,
        )

    def _gate_message(self, run: Run, opened: dict[str, Any]) -> render.Message:
        return render.gate_message(
            run,
            opened,
            approvers=self.approvers_of(opened["group"]),
            reactions=self.settings.reactions,
        )

    # --- messages -------------------------------------------------------------------------

    async def _thread(self, run: Run) -> _Thread:
        """The run's message and thread: found (after a restart) or posted, exactly once."""
        thread = self.threads.get(run.id)
        if thread is not None:
            return thread
        async with self._attaching:  # the notifier's pass and a reaction's lookup, one at a time
            thread = self.threads.get(run.id)
            return thread if thread is not None else await self._attach(run)

    async def _attach(self, run: Run) -> _Thread:
        channel = run.channel or self.settings.channel
        ts = run.thread_ts or await self._find_run_message(channel, run.id)
        if ts is None:
            message = render.run_message(run)
            resp = await self.client.chat_postMessage(
                channel=channel,
                text=message.text,
                blocks=_blocks(message),
                metadata=message.metadata,
            )
            ts = resp["ts"]
            channel = resp.get("channel", channel)
        if run.thread_ts != ts:
            await self.engine.feed.attach_message(run.id, channel, ts)
        thread = _Thread(run.id, channel, ts)
        await self._index_thread(thread)
        await self._recall(thread)
        self.threads[run.id] = thread
        return thread

    async def _find_run_message(self, channel: str, run_id: str) -> str | None:
        resp = await self.client.conversations_history(
            channel=channel, limit=200, include_all_metadata=True
        )
        for msg in resp.get("messages", []):
            meta = msg.get("metadata") or {}
            if (
                meta.get("event_type") == render.META_RUN
                and (meta.get("event_payload") or {}).get("run_id") == run_id
            ):
                return str(msg["ts"])
        return None

    async def _index_thread(self, thread: _Thread) -> None:
        resp = await self.client.conversations_replies(
            channel=thread.channel, ts=thread.ts, include_all_metadata=True, limit=1000
        )
        for msg in resp.get("messages", []):
            key = _metadata_key(msg.get("metadata"))
            if key and msg["ts"] != thread.ts:
                thread.index[key] = str(msg["ts"])
            for shared in msg.get("files") or []:  # charts carry no metadata: their file name
                thread.index[f"file:{shared.get('name')}"] = str(msg["ts"])

    async def _upload_chart(self, thread: _Thread, run: Run, group: str) -> None:
        """The group's chart, once, in the thread. A chart is evidence to look at, not a step
        of the run: when Slack refuses it the bot says so in its log and goes on."""
        name = charts.filename(run, group)
        if f"file:{name}" in thread.index:
            return
        png = await asyncio.to_thread(charts.group_chart, run, group)
        if png is None:
            return
        title = charts.title(run, run.group(group))
        try:
            await self.client.files_upload_v2(
                channel=thread.channel,
                thread_ts=thread.ts,
                file=png,
                filename=name,
                title=title,
                alt_txt=f"{title}: 5xx ratio and p99 latency before and after, against the limits",
                request_file_info=False,
            )
        except SlackApiError as exc:
            log.warning(
                "Slack refused the chart of %s in run %s (%s); going on without it",
                group,
                run.id,
                exc.response.get("error"),
            )
        thread.index[f"file:{name}"] = "uploaded"

    async def _recall(self, thread: _Thread) -> None:
        """What edits to earlier messages need, read back from the run's events: after a
        restart the gates and the changelog were posted by an earlier life, yet a decision or
        an acknowledgement must still update them in place. Decided gates are edited once more
        in case the earlier life died before it edited them."""
        acknowledged = False
        for event_id, event in await self.engine.feed.events(thread.run_id):
            kind = kind_of(event)
            if kind == EventKind.GATE_OPENED:
                thread.gates[event["gate"]] = event
            elif kind in (EventKind.GATE_DECIDED, EventKind.GATE_EXPIRED) and event.get("gate"):
                thread.decisions[event["gate"]] = event
            elif kind == EventKind.CHANGELOG:
                thread.posted[f"event:{event_id}"] = event
            acknowledged = acknowledged or kind == EventKind.CHANGELOG_ACKNOWLEDGED
        thread.dirty.update(f"gate:{gate}" for gate in thread.decisions)
        if acknowledged:
            thread.dirty.update(thread.posted)

    async def _post_once(
        self, thread: _Thread, key: str, message: render.Message, *, notify: bool = False
    ) -> str:
        if key in thread.index:
            return thread.index[key]
        resp = await self.client.chat_postMessage(
            channel=thread.channel,
            thread_ts=thread.ts,
            text=message.text,
            blocks=_blocks(message),
            metadata=_with_key(message, key),
            reply_broadcast=False,
        )
        thread.index[key] = str(resp["ts"])
        thread.rendered[key] = _fingerprint(message)
        thread.edited_at[key] = self.clock()
        return thread.index[key]

    async def _flush(self, run: Run, thread: _Thread) -> None:
        """Edit what changed, never one message more than once per min_edit_interval_s."""
        now = self.clock()
        for key in sorted(thread.dirty):
            last = thread.edited_at.get(key)
            if last is not None and now - last < self.settings.min_edit_interval_s:
                continue
            message = self._render(run, thread, key)
            thread.dirty.discard(key)
            if message is None:
                continue
            ts = thread.ts if key == "run" else thread.index.get(key)
            if ts is None or thread.rendered.get(key) == _fingerprint(message):
                continue
            try:
                await self.client.chat_update(
                    channel=thread.channel,
                    ts=ts,
                    text=message.text,
                    blocks=_blocks(message),
                    metadata=_with_key(message, key) if key != "run" else message.metadata,
                )
            except SlackApiError as exc:
                self._edit_refused(thread, key, str(exc.response.get("error")))
                continue
            except UNREACHABLE as exc:
                self._edit_refused(thread, key, f"unreachable: {type(exc).__name__}")
                continue
            self.failures.pop(f"{thread.run_id}/{key}", None)
            thread.rendered[key] = _fingerprint(message)
            thread.edited_at[key] = now

    def _edit_refused(self, thread: _Thread, key: str, error: str) -> None:
        """A refused edit is tried again on a later pass (a gate that is never edited would keep
        its buttons), and given up after a few refusals like a refused post."""
        failure = f"{thread.run_id}/{key}"
        self.failures[failure] = self.failures.get(failure, 0) + 1
        if self.failures[failure] < 5:
            thread.dirty.add(key)
            log.warning(
                "Slack refused the edit of %s in run %s: %s; will retry", key, thread.run_id, error
            )
        else:
            log.error("giving up on the edit of %s in run %s: %s", key, thread.run_id, error)

    def _render(self, run: Run, thread: _Thread, key: str) -> render.Message | None:
        if key == "run":
            return render.run_message(run)
        kind, _, name = key.partition(":")
        if kind == "group":
            return render.group_progress(run, name)
        if kind == "gate":
            opened = thread.gates.get(name)
            if opened is None:
                return None
            if run.gate is not None and run.gate.id == name and run.gate.decision is None:
                return self._gate_message(run, opened)  # still open: show approvals so far
            if run.gate is not None and run.gate.id == name:
                return render.gate_decided(run, run.gate)
            return render.gate_decided(run, thread.decisions.get(name, opened))
        if kind == "event" and key in thread.posted:
            return self._event_message(run, name, thread.posted[key])
        return None

    async def gate_at(self, channel: str, ts: str) -> tuple[str, str] | None:
        """(run_id, gate_id) of the gate message at ``ts``, for reactions. A bot restarted
        since the gate was posted attaches to the threads of its recent runs to find it."""
        found = self._gate_known(channel, ts)
        if found is not None:
            return found
        runs = {r.id: r for r in await self.engine.history(20)}
        for run_id in await self.engine.active():  # an active run older than the 20 newest
            if run_id not in runs:
                runs[run_id] = await self.engine.status(run_id)
        for run in runs.values():
            if run.id not in self.threads and run.thread_ts:
                if (run.channel or self.settings.channel) == channel:
                    await self._thread(run)
        return self._gate_known(channel, ts)

    def _gate_known(self, channel: str, ts: str) -> tuple[str, str] | None:
        for thread in self.threads.values():
            if thread.channel != channel:
                continue
            for key, message_ts in thread.index.items():
                if message_ts == ts and key.startswith("gate:"):
                    return thread.run_id, key.removeprefix("gate:")
        return None


def _blocks(message: render.Message) -> list[dict[str, Any]]:
    return message.block_dicts()


def _metadata_key(meta: dict[str, Any] | None) -> str | None:
    if not meta:
        return None
    payload = meta.get("event_payload") or {}
    return payload.get("key") if isinstance(payload.get("key"), str) else None


def _with_key(message: render.Message, key: str) -> dict[str, Any]:
    base = (
        message.metadata.to_dict()
        if message.metadata is not None
        else {"event_type": render.META_EVENT, "event_payload": {}}
    )
    return {
        "event_type": base["event_type"],
        "event_payload": {**base.get("event_payload", {}), "key": key},
    }


def _fingerprint(message: render.Message) -> str:
    return json.dumps([message.text, _blocks(message)], sort_keys=True)
