"""Steady, open-loop HTTP traffic generator that never retries.

Requests are launched on a fixed schedule (``rate_per_s`` in total, interleaved evenly
over the target groups), each as its own asyncio task, whether or not earlier requests
have finished: a stalled backend does not lower the offered rate.

Every request is classified exactly once:

* ``ok``           answered with a status < 500 (2xx/3xx/4xx);
* ``requests_5xx`` answered 5xx BY A GATEWAY (``Server`` header starts with ``APISIX/`` or
  ``API7/``): the release's own errors;
* ``failed``       connection refused/reset, timeout, any client error, a broken body, or a
  5xx WITHOUT a gateway ``Server`` header (i.e. from the front door): what the replacement
  process itself caused.

``total == ok + requests_5xx + failed`` and, after ``stop()``, ``total == launched``.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from upgrade_bot.sandbox.frontdoor import no_retry_session

GATEWAY_SERVER_PREFIXES = ("APISIX/", "API7/")
OUTCOMES = ("ok", "requests_5xx", "failed")


def classify_response(status: int, server_header: str | None) -> str:
    """Outcome of an answered request: ``ok``, ``requests_5xx`` or ``failed``."""
    if status < 500:
        return "ok"
    if server_header is not None and server_header.startswith(GATEWAY_SERVER_PREFIXES):
        return "requests_5xx"
    return "failed"


@dataclass
class _Bucket:
    ok: int = 0
    requests_5xx: int = 0
    failed: int = 0
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.ok + self.requests_5xx + self.failed


def _p99(latencies: list[float]) -> float | None:
    if not latencies:
        return None
    ordered = sorted(latencies)
    return round(ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)], 3)


class TrafficGenerator:
    """Open-loop GET traffic to one front door per gateway group; no retries."""

    def __init__(
        self,
        targets: Mapping[str, str],
        rate_per_s: float,
        timeout_s: float = 5.0,
        path: str = "/",
    ) -> None:
        if not targets:
            raise ValueError("at least one target is required")
        if rate_per_s <= 0 or timeout_s <= 0:
            raise ValueError("rate_per_s and timeout_s must be positive")
        self.targets = dict(targets)
        self.rate_per_s = rate_per_s
        self.timeout_s = timeout_s
        self.path = path if path.startswith("/") else "/" + path
        self._groups = list(self.targets)
        self._urls = {g: base.rstrip("/") + self.path for g, base in self.targets.items()}
        self._buckets: dict[tuple[str, int], _Bucket] = {}
        self._totals: dict[str, Counter[str]] = {g: Counter() for g in self._groups}
        self._failure_reasons: Counter[str] = Counter()
        self._launched = 0
        self._launched_by_group: Counter[str] = Counter()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._scheduler: asyncio.Task[None] | None = None
        self._started_at: float | None = None
        self._stopped_at: float | None = None

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        if self._session is not None or self._stopped_at is not None:
            raise RuntimeError("a TrafficGenerator runs once; create a new one")
        # limit=0: an open loop must not queue behind a connection-pool limit.
        self._session = no_retry_session(
            connector=aiohttp.TCPConnector(limit=0, limit_per_host=0),
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=self.timeout_s),
        )
        self._started_at = time.time()
        self._scheduler = asyncio.create_task(self._schedule(), name="traffic-scheduler")

    async def stop(self) -> None:
        """Stop launching, wait for every in-flight request to finish and be counted."""
        scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None:
            scheduler.cancel()
            await asyncio.gather(scheduler, return_exceptions=True)
        if self._stopped_at is None and self._started_at is not None:
            self._stopped_at = time.time()
        while self._in_flight:
            await asyncio.gather(*list(self._in_flight), return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> TrafficGenerator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def run_for(self, seconds: float) -> dict[str, Any]:
        """Start, offer traffic for ``seconds``, stop; returns ``counts()``."""
        await self.start()
        try:
            await asyncio.sleep(seconds)
        finally:
            await self.stop()
        return self.counts()

    # ---------------------------------------------------------------- scheduling

    async def _schedule(self) -> None:
        loop = asyncio.get_running_loop()
        interval = 1.0 / self.rate_per_s
        t0 = loop.time()
        k = 0
        while True:
            now = loop.time()
            # Launch everything that is due, even if the loop fell behind (open loop).
            while t0 + k * interval <= now:
                self._launch(self._groups[k % len(self._groups)])
                k += 1
            await asyncio.sleep(t0 + k * interval - now)

    def _launch(self, group: str) -> None:
        self._launched += 1
        self._launched_by_group[group] += 1
        task = asyncio.create_task(self._one(group))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _one(self, group: str) -> None:
        wall = time.time()
        started = time.perf_counter()
        outcome, reason = "failed", "cancelled"
        try:
            outcome, reason = await self._request(self._urls[group])
        finally:
            # Recorded even if cancelled, so that total always equals launched.
            self._record(group, wall, (time.perf_counter() - started) * 1000.0, outcome, reason)

    async def _request(self, url: str) -> tuple[str, str]:
        session = self._session
        if session is None:
            return "failed", "generator stopped"
        try:
            async with session.get(url, allow_redirects=False) as resp:
                await resp.read()
                outcome = classify_response(resp.status, resp.headers.get("Server"))
                if outcome == "ok":
                    return outcome, ""
                if outcome == "requests_5xx":
                    return outcome, f"HTTP {resp.status} from gateway"
                front_door = resp.headers.get("X-Front-Door")
                origin = f"front door {front_door}" if front_door else "a non-gateway server"
                return outcome, f"HTTP {resp.status} from {origin}"
        except TimeoutError:
            return "failed", "timeout"
        except Exception as exc:
            return "failed", type(exc).__name__

    def _record(
        self, group: str, wall: float, latency_ms: float, outcome: str, reason: str
    ) -> None:
        bucket = self._buckets.get((group, int(wall)))
        if bucket is None:
            bucket = self._buckets[(group, int(wall))] = _Bucket()
        setattr(bucket, outcome, getattr(bucket, outcome) + 1)
        bucket.latencies_ms.append(latency_ms)
        self._totals[group][outcome] += 1
        if outcome != "ok":
            self._failure_reasons[f"{outcome}: {reason}"] += 1

    # ------------------------------------------------------------------- results

    @property
    def launched(self) -> int:
        return self._launched

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def launched_by_group(self) -> dict[str, int]:
        return {g: self._launched_by_group[g] for g in self._groups}

    def elapsed_s(self) -> float:
        """Seconds between start() and stop() (or now, while running)."""
        if self._started_at is None:
            return 0.0
        return (self._stopped_at or time.time()) - self._started_at

    def counts(self) -> dict[str, Any]:
        """Completed requests: totals and ``by_group``; in-flight ones are not included."""
        by_group: dict[str, dict[str, int]] = {}
        for g in self._groups:
            c = self._totals[g]
            by_group[g] = {k: c[k] for k in OUTCOMES}
            by_group[g]["total"] = sum(by_group[g][k] for k in OUTCOMES)
        result: dict[str, Any] = {
            k: sum(by_group[g][k] for g in self._groups) for k in ("total", *OUTCOMES)
        }
        result["by_group"] = by_group
        return result

    def failure_reasons(self) -> dict[str, int]:
        """Non-ok outcomes by reason, e.g. ``{"failed: HTTP 502 from front door fd-a": 3}``."""
        return dict(self._failure_reasons)

    def series(self, group: str | None = None) -> list[dict[str, Any]]:
        """Per-second buckets (by launch second, gaps filled) for one group or all groups.

        Each: ``{"t", "total", "ok", "requests_5xx", "failed", "p99_ms"}``; ``p99_ms`` is over
        every request launched in that second (failed ones included), None when empty.
        """
        if group is not None and group not in self._totals:
            raise KeyError(group)
        merged: dict[int, _Bucket] = {}
        for (g, t), bucket in self._buckets.items():
            if group is not None and g != group:
                continue
            m = merged.setdefault(t, _Bucket())
            m.ok += bucket.ok
            m.requests_5xx += bucket.requests_5xx
            m.failed += bucket.failed
            m.latencies_ms.extend(bucket.latencies_ms)
        if not merged:
            return []
        out: list[dict[str, Any]] = []
        for t in range(min(merged), max(merged) + 1):
            b = merged.get(t, _Bucket())
            out.append(
                {
                    "t": t,
                    "total": b.total,
                    "ok": b.ok,
                    "requests_5xx": b.requests_5xx,
                    "failed": b.failed,
                    "p99_ms": _p99(b.latencies_ms),
                }
            )
        return out


__all__ = ["GATEWAY_SERVER_PREFIXES", "TrafficGenerator", "classify_response"]
