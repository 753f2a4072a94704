"""The Socket Mode half of the stand-in: the websocket an app opens after apps.connections.open.

Protocol, as Slack documents it ("Using Socket Mode", docs.slack.dev/apis/events-api/
using-socket-mode) and slack_sdk's clients expect it:

* ``apps.connections.open`` hands out a one-time URL (``ws://127.0.0.1:P/link/?ticket=…&app_id=…``
  here, ``wss://wss-primary.slack.com/link/?ticket=…`` on Slack); a ticket works once.
* On connect the server sends ``{"type": "hello", "num_connections", "debug_info",
  "connection_info": {"app_id"}}``.
* Each delivery is an envelope ``{"envelope_id", "type": "slash_commands" | "interactive" |
  "events_api", "payload", "accepts_response_payload"}``; events carry ``retry_attempt`` and
  ``retry_reason`` too. The app acks with ``{"envelope_id", "payload"?}``; slash commands (and
  modal submissions) may put their response in that ``payload``.
* Slack waits 3 seconds for an ack. An unacked Events API envelope is redelivered, as a new
  envelope with ``retry_attempt`` 1, 2, 3 and ``retry_reason: "timeout"`` (Slack spaces retries
  out; here they follow at once); an unacked command or interaction is simply lost (the user
  sees ``operation_timeout``), so :meth:`SocketModeServer.deliver` raises :class:`AckTimeout`.
* ``{"type": "disconnect", "reason": "refresh_requested" | "warning" | "link_disabled"}`` tells the
  app to fetch a new URL and reconnect; the server then closes the old socket (after the client
  has, or a grace period).

With several connections open, Slack picks one per envelope; this server uses the newest.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from .recorder import Recorder
from .workspace import Workspace

ENVELOPE_TYPES = ("slash_commands", "interactive", "events_api")
ACK_TIMEOUT_S = 3.0  # Slack's documented acknowledgement deadline
EVENT_RETRIES = 3  # Slack retries an unacknowledged event up to three times


class AckTimeout(Exception):
    """The app did not acknowledge an envelope in time."""


class NotConnected(Exception):
    """No app was connected over Socket Mode in time to receive an envelope."""


@dataclass
class Connection:
    """One open websocket from the app."""

    seq: int
    ws: web.WebSocketResponse
    opened_at: float
    closed: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Delivery:
    """One envelope pushed to the app, with every attempt and the ack."""

    type: str
    payload: dict[str, Any]
    envelopes: list[dict[str, Any]] = field(default_factory=list)
    ack: dict[str, Any] | None = None  # the whole ack message
    acked_envelope_id: str | None = None
    delivered_at: float = 0.0
    acked_at: float | None = None

    @property
    def ack_payload(self) -> dict[str, Any] | None:
        """The ``payload`` of the ack (None when the app acked without one)."""
        return None if self.ack is None else self.ack.get("payload")


class SocketModeServer:
    """Serves ``/link/`` and pushes envelopes to the connected app."""

    def __init__(
        self,
        workspace: Workspace,
        recorder: Recorder,
        *,
        ack_timeout: float = ACK_TIMEOUT_S,
        connect_timeout: float = 10.0,
        event_retries: int = EVENT_RETRIES,
    ) -> None:
        self.ws = workspace
        self.recorder = recorder
        self.ack_timeout = ack_timeout
        self.connect_timeout = connect_timeout
        self.event_retries = event_retries
        self.deliveries: list[Delivery] = []
        self.connections_opened = 0
        # Called with (delivery) after an ack; the stub applies Slack's reaction to it there.
        self.on_ack: Callable[[Delivery], None] | None = None
        self._tickets: set[str] = set()
        self._connections: list[Connection] = []
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._changed = asyncio.Condition()

    # -- connections --------------------------------------------------------------------------

    def issue_url(self, base_ws_url: str) -> str:
        """A fresh one-time websocket URL (what apps.connections.open returns)."""
        ticket = str(uuid.uuid4())
        self._tickets.add(ticket)
        return f"{base_ws_url}/link/?ticket={ticket}&app_id={self.ws.app_id}"

    @property
    def open_connections(self) -> list[Connection]:
        """Connections whose socket is still open, oldest first."""
        return [c for c in self._connections if not c.ws.closed and not c.closed.is_set()]

    @property
    def connected(self) -> bool:
        """Whether an app is connected."""
        return bool(self.open_connections)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_connected(self, within: float | None = None, *, after: int = 0) -> Connection:
        """Wait up to ``within`` seconds (default ``connect_timeout``) for an open connection
        numbered above ``after`` (``connections_opened`` as seen earlier, to wait for a
        *re*-connection); raises :class:`NotConnected` on timeout."""
        timeout = self.connect_timeout if within is None else within

        def ready() -> Connection | None:
            fresh = [c for c in self.open_connections if c.seq > after]
            return fresh[-1] if fresh else None

        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(lambda: ready() is not None)
        except TimeoutError:
            raise NotConnected(f"no Socket Mode connection within {timeout:.1f}s") from None
        conn = ready()
        assert conn is not None
        return conn

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """``GET /link/?ticket=…``: upgrade, say hello, then read acks until the socket closes."""
        ticket = request.query.get("ticket", "")
        if ticket not in self._tickets:
            return web.Response(status=401, text="invalid_ticket")
        self._tickets.discard(ticket)  # one-time, like Slack's
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self.connections_opened += 1
        conn = Connection(self.connections_opened, ws, time.time())
        self._connections.append(conn)
        await ws.send_str(
            json.dumps(
                {
                    "type": "hello",
                    "num_connections": len(self.open_connections),
                    "debug_info": {
                        "host": f"applink-stub-{conn.seq}",
                        "build_number": 1,
                        "approximate_connection_time": 18060,
                    },
                    "connection_info": {"app_id": self.ws.app_id},
                }
            )
        )
        await self._notify()
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    self._on_text(msg.data)
        finally:
            conn.closed.set()
            self._connections = [c for c in self._connections if c is not conn]
            await self._notify()
        return ws

    def _on_text(self, data: str) -> None:
        try:
            message = json.loads(data)
        except ValueError:
            return  # Slack ignores what it cannot parse
        if not isinstance(message, dict):
            return
        future = self._pending.get(str(message.get("envelope_id")))
        if future is not None and not future.done():
            future.set_result(message)

    # -- deliveries ---------------------------------------------------------------------------

    async def deliver(
        self,
        type: str,
        payload: dict[str, Any],
        *,
        ack_timeout: float | None = None,
        retries: int | None = None,
        accepts_response_payload: bool | None = None,
        connect_timeout: float | None = None,
    ) -> dict[str, Any] | None:
        """Push one envelope and wait for its ack; returns the ack's ``payload``.

        Waits for a connection first (up to ``connect_timeout``, default the server's). Events
        are redelivered on timeout (``retries``, default 3); a late ack of an earlier attempt
        still counts. Raises :class:`AckTimeout` or :class:`NotConnected`.
        """
        delivery = await self.deliver_envelope(
            type,
            payload,
            ack_timeout=ack_timeout,
            retries=retries,
            accepts_response_payload=accepts_response_payload,
            connect_timeout=connect_timeout,
        )
        return delivery.ack_payload

    async def deliver_envelope(
        self,
        type: str,
        payload: dict[str, Any],
        *,
        ack_timeout: float | None = None,
        retries: int | None = None,
        accepts_response_payload: bool | None = None,
        connect_timeout: float | None = None,
    ) -> Delivery:
        """As :meth:`deliver`, returning the whole :class:`Delivery` record."""
        if type not in ENVELOPE_TYPES:
            raise ValueError(f"envelope type must be one of {ENVELOPE_TYPES}, not {type!r}")
        ack_timeout = self.ack_timeout if ack_timeout is None else ack_timeout
        if retries is None:
            retries = self.event_retries if type == "events_api" else 0
        if accepts_response_payload is None:
            accepts_response_payload = type == "slash_commands" or (
                type == "interactive"
                and payload.get("type") in ("view_submission", "block_suggestion")
            )
        delivery = Delivery(type, payload, delivered_at=time.time())
        self.deliveries.append(delivery)
        # Recorded now, completed once acked, so the record keeps the order things happened in:
        # the person acted before the app answered (the app may post before its ack is sent).
        call = self.recorder.record("socket", type, payload, None, status=102, acked=False)
        loop = asyncio.get_running_loop()
        acked: asyncio.Future[dict[str, Any]] = loop.create_future()
        try:
            for attempt in range(retries + 1):
                envelope: dict[str, Any] = {
                    "envelope_id": str(uuid.uuid4()),
                    "type": type,
                    "payload": payload,
                    "accepts_response_payload": accepts_response_payload,
                }
                if type == "events_api":
                    envelope["retry_attempt"] = attempt
                    envelope["retry_reason"] = "timeout" if attempt else ""
                delivery.envelopes.append(envelope)
                # Every attempt's id resolves the same future: a late ack still counts.
                self._pending[envelope["envelope_id"]] = acked
                await self._send(envelope, connect_timeout)
                with contextlib.suppress(TimeoutError):
                    ack = await asyncio.wait_for(asyncio.shield(acked), ack_timeout)
                    delivery.ack = ack
                    delivery.acked_envelope_id = ack.get("envelope_id")
                    delivery.acked_at = time.time()
                    break
        finally:
            for env in delivery.envelopes:
                self._pending.pop(env["envelope_id"], None)
            if not acked.done():
                acked.cancel()
        call.response = delivery.ack_payload
        call.status = 200 if delivery.ack is not None else 408
        call.extra.update(
            envelope_ids=[e["envelope_id"] for e in delivery.envelopes],
            acked=delivery.ack is not None,
        )
        if delivery.ack is None:
            raise AckTimeout(
                f"{type} envelope not acknowledged after {len(delivery.envelopes)} attempt(s) "
                f"of {ack_timeout:.1f}s"
            )
        if self.on_ack is not None:
            self.on_ack(delivery)
        return delivery

    async def _send(self, envelope: dict[str, Any], connect_timeout: float | None) -> None:
        """Send on the newest open connection, waiting for one if the app is reconnecting."""
        wait = self.connect_timeout if connect_timeout is None else connect_timeout
        deadline = time.monotonic() + wait
        while True:
            conn = await self.wait_connected(max(0.0, deadline - time.monotonic()))
            try:
                await conn.ws.send_str(json.dumps(envelope))
                return
            except (ConnectionError, RuntimeError):
                # The socket closed between the check and the send: wait for the next one.
                conn.closed.set()
                await self._notify()

    async def disconnect(self, reason: str = "refresh_requested", *, grace: float = 2.0) -> None:
        """Ask every connected app to reconnect, then close the old sockets.

        The client is given ``grace`` seconds to close on its own (slack_sdk closes the old
        session while it reconnects); whatever is still open then is closed by the server.
        """
        conns = self.open_connections
        for conn in conns:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await conn.ws.send_str(
                    json.dumps(
                        {
                            "type": "disconnect",
                            "reason": reason,
                            "debug_info": {"host": f"applink-stub-{conn.seq}"},
                        }
                    )
                )
        self.recorder.record("socket", "disconnect", {"reason": reason}, None)
        for conn in conns:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(conn.closed.wait(), grace)
            if not conn.ws.closed:
                await conn.ws.close(code=1000, message=reason.encode())

    async def close(self) -> None:
        """Close every socket (the server is going away)."""
        for conn in list(self._connections):
            if not conn.ws.closed:
                await conn.ws.close(code=1001, message=b"server shutdown")
        self._tickets.clear()
