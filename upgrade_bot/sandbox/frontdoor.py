"""Health-checking round-robin HTTP load balancer in front of one gateway group.

The sandbox's stand-in for a Kubernetes Service or a cloud load balancer: clients send
their traffic to one stable address while gateway instances are replaced behind it.

It must never hide a failure the replacement caused, so its retry rule is narrow:

* a request is retried on another healthy member ONLY when the connect to the chosen
  member failed (``aiohttp.ClientConnectorError``: refused, unreachable), i.e. before any
  byte of the request was sent. That member is marked unhealthy at once;
* a request a member may have received (reset after send, server disconnected, timeout,
  broken body, ...) is never retried: the front door answers 502 (connection error) or
  504 (timeout) itself;
* with no healthy member it answers 503.

Responses the front door generates itself carry ``X-Front-Door: <name>``, a JSON body
``{"error": "..."}`` and a ``Server`` header naming the front door (never ``APISIX/...``),
so that clients can tell them from gateway answers.

aiohttp's client silently retries idempotent requests once after a connection reset or
disconnect (RFC 9112 "retrying requests"); that would hide exactly the failures we measure,
so it is switched off on every session built here (see ``no_retry_session``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

log = logging.getLogger(__name__)

FRONT_DOOR_HEADER = "X-Front-Door"
FRONT_DOOR_SERVER = "upgrade-bot-front-door"

# RFC 9110 section 7.6.1 connection-specific fields, plus the legacy ones proxies drop.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)


HEALTH_CHECKS = ("status", "proxy", "tcp")
"""How members are checked, as the group's runtime would (a Service follows the pods'
readiness probe): ``/status/ready`` answers 200, a proxied request is answered with neither 404
nor 5xx, or the proxy port accepts a connection."""
HEALTH_AGENT = {"User-Agent": "sandbox-front-door/1"}


def _status_ok(status: int) -> bool:
    return status == 200


def _proxy_ok(status: int) -> bool:
    return status != 404 and status < 500


@dataclass(frozen=True)
class Member:
    """One gateway instance: ``proxy_url`` takes traffic, ``status_url`` answers readiness."""

    id: str
    proxy_url: str  # base URL, e.g. http://127.0.0.1:9080
    status_url: str  # base URL, e.g. http://127.0.0.1:7085 (checked at /status/ready)


def no_retry_session(**kwargs: Any) -> aiohttp.ClientSession:
    """An aiohttp ClientSession that never re-sends a request on its own.

    aiohttp (3.10+) retries idempotent methods once after ``ClientOSError`` or
    ``ServerDisconnectedError``; the only switch is the private ``_retry_connection``
    attribute (aiohttp's own test client flips it the same way). If a future aiohttp
    removes the attribute, this fails loudly instead of silently retrying.
    """
    if "_retry_connection" not in aiohttp.ClientSession.ATTRS:
        raise RuntimeError(
            "aiohttp no longer has ClientSession._retry_connection; "
            "check how to disable its automatic request retry"
        )
    session = aiohttp.ClientSession(**kwargs)
    session._retry_connection = False
    return session


def _connection_tokens(headers: CIMultiDictProxy[str]) -> set[str]:
    tokens: set[str] = set()
    for value in headers.getall("Connection", []):
        tokens.update(t.strip().lower() for t in value.split(",") if t.strip())
    return tokens


def _end_to_end(headers: CIMultiDictProxy[str], also_drop: Iterable[str]) -> CIMultiDict[str]:
    drop = HOP_BY_HOP | _connection_tokens(headers) | {h.lower() for h in also_drop}
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in drop)


class _MemberState:
    __slots__ = ("epoch", "healthy", "task")

    def __init__(self) -> None:
        self.healthy = False  # unhealthy until its first 200
        self.epoch = 0  # bumped by mark-down; older health-check results are discarded
        self.task: asyncio.Task[None] | None = None


class FrontDoor:
    """Round-robin HTTP load balancer over the healthy members of one gateway group."""

    def __init__(
        self,
        name: str,
        members: Callable[[], Sequence[Member]],
        host: str = "127.0.0.1",
        port: int = 0,
        health_interval_s: float = 0.2,
        upstream_timeout_s: float = 10.0,
        health_timeout_s: float = 1.0,
        health_check: str = "status",
    ) -> None:
        if health_interval_s <= 0 or upstream_timeout_s <= 0 or health_timeout_s <= 0:
            raise ValueError("intervals and timeouts must be positive")
        if health_check not in HEALTH_CHECKS:
            raise ValueError(f"health_check must be one of {', '.join(HEALTH_CHECKS)}")
        self.health_check = health_check
        self.name = name
        self._members_fn = members
        self._host = host
        self._port = port
        self.health_interval_s = health_interval_s
        self.upstream_timeout_s = upstream_timeout_s
        self.health_timeout_s = health_timeout_s
        self._states: dict[Member, _MemberState] = {}
        self._last_members: list[Member] = []
        self._rr = 0
        self._stats = {
            "forwarded": 0,
            "retried_refused": 0,
            "refused": 0,
            "answered_502": 0,
            "answered_503": 0,
            "answered_504": 0,
        }
        self._runner: web.ServerRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._health_session: aiohttp.ClientSession | None = None
        self._supervisor: asyncio.Task[None] | None = None

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError(f"front door {self.name} already started")
        self._session = no_retry_session(
            connector=aiohttp.TCPConnector(force_close=True, limit=0),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            # forward only the headers the client sent: no aiohttp defaults added
            skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
        )
        self._health_session = no_retry_session(
            connector=aiohttp.TCPConnector(force_close=True, limit=0),
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        self._reconcile()
        self._supervisor = asyncio.create_task(self._supervise(), name=f"frontdoor-{self.name}")
        runner = web.ServerRunner(
            web.Server(self._handle), shutdown_timeout=self.upstream_timeout_s + 1.0
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._host, self._port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            await self._stop_health()
            raise
        self._runner = runner
        self._port = runner.addresses[0][1]
        log.info("front door %s listening on %s", self.name, self.url)

    async def stop(self) -> None:
        """Stop listening, let in-flight requests finish, stop health checks."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        await self._stop_health()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _stop_health(self) -> None:
        tasks = [t for t in (self._supervisor, *(s.task for s in self._states.values())) if t]
        self._supervisor = None
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._states.clear()
        if self._health_session is not None:
            await self._health_session.close()
            self._health_session = None

    async def __aenter__(self) -> FrontDoor:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self._port}"

    def stats(self) -> dict[str, int]:
        """Counters. Every client request ends in exactly one of forwarded / answered_5xx.

        ``retried_refused`` counts refused connects followed by another attempt;
        ``refused`` counts all refused connects (including a last one that ended in 503).
        """
        return dict(self._stats)

    def healthy_members(self) -> list[Member]:
        """Current members whose last health check returned 200 (and not marked down since)."""
        return [m for m in self._current_members() if self._is_healthy(m)]

    # ----------------------------------------------------------- health checks

    def _current_members(self) -> list[Member]:
        try:
            members = list(dict.fromkeys(self._members_fn()))
        except Exception:
            log.exception("front door %s: members() failed; keeping the last list", self.name)
            return list(self._last_members)
        self._last_members = members
        return members

    def _is_healthy(self, member: Member) -> bool:
        state = self._states.get(member)
        return state is not None and state.healthy

    def _reconcile(self) -> None:
        current = set(self._current_members())
        for member in list(self._states):
            if member not in current:
                state = self._states.pop(member)
                if state.task is not None:
                    state.task.cancel()
        for member in current:
            if member not in self._states:
                state = _MemberState()
                self._states[member] = state
                state.task = asyncio.create_task(
                    self._watch(member, state), name=f"frontdoor-{self.name}-{member.id}"
                )

    async def _supervise(self) -> None:
        while True:
            await asyncio.sleep(self.health_interval_s)
            self._reconcile()

    async def _watch(self, member: Member, state: _MemberState) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            epoch = state.epoch
            ok = await self._check(member)
            if state.epoch == epoch:  # a mark-down during the check wins over its result
                if ok != state.healthy:
                    log.info(
                        "front door %s: member %s %s",
                        self.name,
                        member.id,
                        "healthy" if ok else "unhealthy",
                    )
                state.healthy = ok
            elapsed = loop.time() - started
            await asyncio.sleep(max(0.0, self.health_interval_s - elapsed))

    async def _check(self, member: Member) -> bool:
        """The member's health as the group's runtime judges it (``health_check``)."""
        if self.health_check == "tcp":
            url = URL(member.proxy_url)
            try:
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection(url.host, url.port), self.health_timeout_s
                )
            except (OSError, TimeoutError):
                return False
            writer.close()
            return True
        if self.health_check == "proxy":
            url, ok = member.proxy_url.rstrip("/") + "/", _proxy_ok
        else:
            url, ok = member.status_url.rstrip("/") + "/status/ready", _status_ok
        session = self._health_session
        if session is None:
            return False
        try:
            async with session.get(
                url,
                headers=HEALTH_AGENT,
                timeout=aiohttp.ClientTimeout(total=self.health_timeout_s),
            ) as resp:
                await resp.read()
                return ok(resp.status)
        except Exception:
            return False

    def _mark_down(self, member: Member) -> None:
        state = self._states.get(member)
        if state is not None:
            state.healthy = False
            state.epoch += 1

    # ----------------------------------------------------------------- proxying

    def _pick(self, exclude: set[Member]) -> Member | None:
        candidates = [m for m in self.healthy_members() if m not in exclude]
        if not candidates:
            return None
        member = candidates[self._rr % len(candidates)]
        self._rr += 1
        return member

    def _own_response(self, status: int, error: str) -> web.Response:
        self._stats[f"answered_{status}"] += 1
        return web.json_response(
            {"error": error},
            status=status,
            headers={FRONT_DOOR_HEADER: self.name, "Server": FRONT_DOOR_SERVER},
        )

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        body = await request.read()
        headers = _end_to_end(request.headers, also_drop=("Content-Length",))
        forwarded_for = request.headers.get("X-Forwarded-For")
        remote = request.remote or ""
        headers["X-Forwarded-For"] = f"{forwarded_for}, {remote}" if forwarded_for else remote
        tried: set[Member] = set()
        while True:
            member = self._pick(tried)
            if member is None:
                if tried:
                    return self._own_response(503, "no healthy member (all tried refused)")
                return self._own_response(503, "no healthy member")
            if tried:
                self._stats["retried_refused"] += 1
            tried.add(member)
            try:
                response = await self._forward(member, request, headers, body)
            except aiohttp.ClientConnectorError as exc:
                # Nothing was sent: safe to try another member.
                self._stats["refused"] += 1
                self._mark_down(member)
                log.info(
                    "front door %s: connect to %s failed (%s); marked unhealthy",
                    self.name,
                    member.id,
                    exc,
                )
                continue
            except TimeoutError:
                return self._own_response(
                    504, f"upstream {member.id} timed out after {self.upstream_timeout_s}s"
                )
            except (aiohttp.ClientError, OSError) as exc:
                return self._own_response(
                    502, f"upstream {member.id} connection error: {type(exc).__name__}: {exc}"
                )
            except Exception as exc:
                log.exception(
                    "front door %s: unexpected error forwarding to %s", self.name, member.id
                )
                return self._own_response(
                    502, f"upstream {member.id} unexpected error: {type(exc).__name__}"
                )
            self._stats["forwarded"] += 1
            return response

    async def _forward(
        self,
        member: Member,
        request: web.BaseRequest,
        headers: CIMultiDict[str],
        body: bytes,
    ) -> web.Response:
        session = self._session
        if session is None:
            raise RuntimeError("front door not started")
        url = URL(member.proxy_url.rstrip("/") + request.raw_path, encoded=True)
        async with session.request(
            request.method,
            url,
            headers=headers,
            data=body if body else None,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=self.upstream_timeout_s),
        ) as upstream:
            payload = await upstream.read()
            out_headers = _end_to_end(upstream.headers, also_drop=("Content-Length",))
            return web.Response(
                status=upstream.status, reason=upstream.reason, body=payload, headers=out_headers
            )


__all__ = ["FRONT_DOOR_HEADER", "FRONT_DOOR_SERVER", "FrontDoor", "Member", "no_retry_session"]
