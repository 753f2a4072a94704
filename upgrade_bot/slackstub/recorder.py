"""The stub's record of everything that happened, in order, and its on-demand faults.

Every Web API call is recorded (``kind="api"``: method, params without the token, time, response,
HTTP status); so are the envelopes pushed over Socket Mode with the app's ack (``kind="socket"``),
signed HTTP deliveries made through a sender that was given the stub (``kind="http"``), and
posts to ``response_url`` (``kind="response_url"``). Tests read ``stub.calls`` (Web API only) or
``stub.timeline`` (all of it); ``GET /_stub/calls`` serves the same list as JSON.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Call:
    """One recorded interaction."""

    seq: int
    kind: str  # "api" | "socket" | "http" | "response_url"
    method: str  # a Web API method, an envelope type, or "response_url"
    params: dict[str, Any]
    timestamp: float
    response: Any
    status: int = 200
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether the call succeeded (``"ok": true``, or an ack for deliveries)."""
        if isinstance(self.response, dict) and "ok" in self.response:
            return bool(self.response["ok"])
        return 200 <= self.status < 300

    @property
    def error(self) -> str | None:
        """The Slack error code of a failed Web API call."""
        if isinstance(self.response, dict) and not self.response.get("ok", True):
            return self.response.get("error")
        return None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, as ``GET /_stub/calls`` serves it."""
        return {
            "seq": self.seq,
            "kind": self.kind,
            "method": self.method,
            "params": self.params,
            "timestamp": self.timestamp,
            "response": self.response,
            "status": self.status,
            **({"extra": self.extra} if self.extra else {}),
        }


class Recorder:
    """An append-only, ordered list of :class:`Call`."""

    def __init__(self) -> None:
        self.timeline: list[Call] = []

    def record(
        self,
        kind: str,
        method: str,
        params: dict[str, Any],
        response: Any,
        status: int = 200,
        **extra: Any,
    ) -> Call:
        """Append one entry and return it."""
        call = Call(len(self.timeline) + 1, kind, method, params, time.time(), response, status)
        call.extra = extra
        self.timeline.append(call)
        return call

    def calls(self, method: str | None = None) -> list[Call]:
        """Web API calls, optionally of one method, in order."""
        return [c for c in self.timeline if c.kind == "api" and method in (None, c.method)]


@dataclass(frozen=True)
class Fault:
    """A canned failure for the next call of one method."""

    error: str
    status: int = 200
    retry_after: int | None = None  # set for HTTP 429 "ratelimited"
    lose_answer: bool = False
    """The call is carried out, then the connection drops before the answer is sent."""

    def body(self) -> dict[str, Any]:
        """The JSON body Slack would send."""
        return {"ok": False, "error": self.error}

    def headers(self) -> dict[str, str]:
        """The extra headers Slack would send (``Retry-After`` on 429)."""
        return {} if self.retry_after is None else {"Retry-After": str(self.retry_after)}


class Faults:
    """Queues of one-shot failures, per method (``"*"`` matches any method)."""

    def __init__(self) -> None:
        self._queues: dict[str, deque[Fault]] = defaultdict(deque)

    def add(self, method: str, fault: Fault, times: int = 1) -> None:
        """Make the next ``times`` calls of ``method`` fail with ``fault``."""
        for _ in range(times):
            self._queues[method].append(fault)

    def take(self, method: str) -> Fault | None:
        """The fault for this call, consumed; None when the call should proceed."""
        for key in (method, "*"):
            if self._queues.get(key):
                return self._queues[key].popleft()
        return None

    def pending(self) -> dict[str, int]:
        """How many faults are still queued, per method."""
        return {k: len(q) for k, q in self._queues.items() if q}
