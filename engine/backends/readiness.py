"""When is a new gateway instance ready to take traffic? The probes a group can choose.

Real gateways do not all offer the same signal (DESIGN.md §10):

* ``status``: ``GET /status/ready`` on the status listener. APISIX serves it from 3.13
  (apache/apisix ``docs/en/latest/status-api.md``: 200 once every worker has its configuration,
  503 otherwise); API7's gateway only when ``status_endpoint`` is enabled in its config.
* ``proxy``: a request through the instance's proxy port, ready when the answer is expected.
  A gateway without its routes answers ``404 Route Not Found``; by default any status but 404
  and 5xx counts.
* ``tcp``: the proxy port accepts a connection. It is what the vendor Helm charts ship as
  their readiness probe (``tcpSocket`` on port 9080: api7/api7-helm-chart ``charts/gateway``
  3.10.12 and apache/apisix-helm-chart ``charts/apisix`` 2.14.0, rendered in
  tests/fixtures/vendor-charts) and it is weak: a gateway accepts connections
  before it has its routes, so preflight warns.
* ``healthcheck`` (containers): the container's own healthcheck, probed by the Docker backend.

The probes here need the instance's endpoints (``SlotInfo.endpoints``: ``proxy`` and
``status`` base URLs).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from ..config import (
    HealthcheckReadiness,
    ProxyReadiness,
    Readiness,
    StatusReadiness,
    TcpReadiness,
)
from ..readiness import describe, preflight_warnings

__all__ = ["Probe", "describe", "preflight_warnings", "probe_once", "wait_ready"]

PROBE_USER_AGENT = "upgrade-bot-readiness/1"
"""Sent with every HTTP probe, so that a gateway's access log tells probes from users."""
PROBE_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class Probe:
    """One look at an instance."""

    ready: bool
    detail: str
    """What was seen: ``200 from /status/ready``, ``connection refused``..."""


def expected(readiness: ProxyReadiness, status: int) -> bool:
    if readiness.expect_status:
        return status in readiness.expect_status
    return status != 404 and status < 500


async def probe_once(
    readiness: Readiness, endpoints: dict[str, str], client: httpx.AsyncClient
) -> Probe:
    """Probe once; never raises for an instance that is down, it is just not ready."""
    match readiness:
        case StatusReadiness(path=path):
            return await _http(client, _endpoint(endpoints, "status"), path, None, _is_200)
        case ProxyReadiness(path=path, host=host):
            return await _http(
                client,
                _endpoint(endpoints, "proxy"),
                path,
                host,
                lambda status: expected(readiness, status),
            )
        case TcpReadiness():
            return await _tcp(_endpoint(endpoints, "proxy"))
        case HealthcheckReadiness():
            raise ValueError("the healthcheck readiness is probed by the container backend")
    raise TypeError(f"unknown readiness {readiness!r}")


async def wait_ready(
    readiness: Readiness,
    endpoints: dict[str, str],
    timeout_s: float,
    *,
    poll_interval_s: float = 0.2,
) -> Probe:
    """Probe until ready or ``timeout_s`` has passed; the last probe tells which."""
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=PROBE_TIMEOUT_S) as client:
        while True:
            last = await probe_once(readiness, endpoints, client)
            if last.ready or time.monotonic() >= deadline:
                return last
            await asyncio.sleep(poll_interval_s)


def _is_200(status: int) -> bool:
    return status == 200


def _endpoint(endpoints: dict[str, str], name: str) -> str:
    url = endpoints.get(name)
    if not url:
        raise ValueError(f"the instance has no {name} endpoint to probe")
    return url


async def _http(
    client: httpx.AsyncClient,
    base: str,
    path: str,
    host: str | None,
    ok: Callable[[int], bool],
) -> Probe:
    headers = {"User-Agent": PROBE_USER_AGENT}
    if host:
        headers["Host"] = host
    try:
        resp = await client.get(base.rstrip("/") + path, headers=headers)
    except httpx.TransportError as exc:
        return Probe(False, f"GET {path}: {type(exc).__name__}")
    return Probe(ok(resp.status_code), f"{resp.status_code} from GET {path}")


async def _tcp(base: str) -> Probe:
    parts = urlsplit(base)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), PROBE_TIMEOUT_S)
    except (TimeoutError, OSError) as exc:
        return Probe(False, f"TCP {host}:{port}: {type(exc).__name__}")
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass
    return Probe(True, f"TCP {host}:{port} accepted")
