"""A stand-in for the API7 Enterprise control plane (the dashboard's HTTP API), for the sandbox.

What it mimics, and where each shape comes from:

* **Authentication** — every ``/api/*`` call carries a dashboard token in the ``X-API-KEY`` header
  (API7 docs, "Obtain a Token from the Dashboard"; real tokens look like ``a7ee-…``). A missing or
  wrong key answers ``401 {"message": "..."}``; errors are ``{"message": ...}`` as in the Admin API.
* **Response envelopes** — a single resource is ``{"value": {...}}``; a list is
  ``{"total": N, "list": [...]}`` (unwrapped), paginated with ``page`` (from 1) and ``page_size``;
  ``total`` counts every match, not just the page (API7 EE Admin API conventions).
* **Instance status** — the documented gateway-instance statuses (API7 EE "Gateway Instances"):
  *Healthy*; *Only Heartbeat* — heartbeats arrive but configuration delivery failed — which this
  stand-in calls ``OutOfSync`` and derives from a config revision the instance has not reported
  yet; *Lost Connection* — no heartbeat for more than 30 s but less than 2 h; *Offline* — no
  heartbeat for more than 2 h; an offline instance is removed after 7 days. Those three durations
  are the defaults of :class:`ControlPlaneState` (``lost_after_s``, ``offline_after_s``,
  ``remove_after_s``) and can be shortened for demos and tests.

Chosen here, for want of a public reference:

* ``GET /api/version`` answers ``{"value": {"version": "3.8.0"}}`` (the single-resource envelope).
* The instance list is served at ``GET /api/instances?gateway_group_id=G`` (the group filter is
  optional: without it every instance is listed) and also at the path the real Admin API is known
  to use, ``GET /api/gateway_groups/{G}/instances``. Items carry ``id``, ``hostname``, ``ip``,
  ``version``, ``status``, ``gateway_group_id``, ``config_revision`` (what the instance last
  reported) and ``last_heartbeat_time`` (integer epoch seconds, as API7 stamps its resources).
  They are ordered by ``id``, so pages are stable.
* ``GET /api/gateway_groups/{G}/config_revision`` answers ``{"value": {"gateway_group_id": G,
  "config_revision": N}}``; N starts at 0 and grows by one per configuration change, so a bot can
  tell whether someone changed configuration during an upgrade freeze (API7's upgrade guides ask
  for no configuration change while upgrading). An unknown group answers 404.
* Sandbox-only endpoints, without authentication, used by the local fleet and tests:
  ``POST /api/dataplane/heartbeat`` with ``{"id", "hostname", "ip", "version",
  "gateway_group_id", "config_revision"}`` answering ``{"config_revision": <group's current>}``
  (real gateways talk to a separate dp-manager over mTLS instead); ``POST /sandbox/config/bump``
  with ``{"gateway_group_id"}`` (an operator changing configuration); ``PUT /sandbox/version``
  with ``{"version"}`` (the control plane itself upgraded).
"""

from __future__ import annotations

import hmac
import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

HEALTHY = "Healthy"
OUT_OF_SYNC = "OutOfSync"  # API7's "Only Heartbeat"
LOST_CONNECTION = "LostConnection"
OFFLINE = "Offline"
STATUSES = (HEALTHY, OUT_OF_SYNC, LOST_CONNECTION, OFFLINE)

DEFAULT_DASHBOARD_PORT = 7080
DEFAULT_LOST_AFTER_S = 30.0  # documented: not detected for more than 30 seconds
DEFAULT_OFFLINE_AFTER_S = 2 * 3600.0  # documented: not detected for more than 2 hours
DEFAULT_REMOVE_AFTER_S = 7 * 86400.0  # documented: an offline instance is removed after 7 days
DEFAULT_PAGE_SIZE = 20


@dataclass
class InstanceRecord:
    """One data-plane instance as the control plane knows it from its heartbeats."""

    id: str
    hostname: str
    ip: str
    version: str
    gateway_group_id: str
    config_revision: int
    last_heartbeat_time: float
    first_seen_time: float


class ControlPlaneState:
    """Everything the stand-in knows; plain methods, so tests can drive it without HTTP.

    ``clock`` returns epoch seconds; inject a fake one to age heartbeats without sleeping.
    Thread-safe (one lock), so a test may touch it while a server thread serves it.
    """

    def __init__(
        self,
        version: str = "3.8.0",
        api_key: str = "a7ee-sandbox",
        clock: Callable[[], float] = time.time,
        *,
        lost_after_s: float = DEFAULT_LOST_AFTER_S,
        offline_after_s: float = DEFAULT_OFFLINE_AFTER_S,
        remove_after_s: float | None = DEFAULT_REMOVE_AFTER_S,
        gateway_groups: Iterable[str] = (),
    ) -> None:
        if not 0 < lost_after_s < offline_after_s:
            raise ValueError("expected 0 < lost_after_s < offline_after_s")
        if remove_after_s is not None and remove_after_s <= offline_after_s:
            raise ValueError("remove_after_s must be longer than offline_after_s")
        self.version = version
        self.api_key = api_key
        self.clock = clock
        self.lost_after_s = lost_after_s
        self.offline_after_s = offline_after_s
        self.remove_after_s = remove_after_s
        self._lock = threading.RLock()
        self._revisions: dict[str, int] = {g: 0 for g in gateway_groups}
        self._instances: dict[str, InstanceRecord] = {}

    # --- mutations -------------------------------------------------------------------------

    def heartbeat(
        self,
        id: str,
        hostname: str,
        ip: str,
        version: str,
        gateway_group_id: str,
        config_revision: int = 0,
        now: float | None = None,
    ) -> int:
        """Record a heartbeat; returns the group's current config revision (for the instance)."""
        now = self.clock() if now is None else now
        with self._lock:
            current = self._revisions.setdefault(gateway_group_id, 0)
            old = self._instances.get(id)
            self._instances[id] = InstanceRecord(
                id=id,
                hostname=hostname,
                ip=ip,
                version=version,
                gateway_group_id=gateway_group_id,
                config_revision=config_revision,
                last_heartbeat_time=now,
                first_seen_time=old.first_seen_time if old else now,
            )
            return current

    def bump_config(self, gateway_group_id: str) -> int:
        """Simulate a configuration change in a group; returns its new revision."""
        with self._lock:
            self._revisions[gateway_group_id] = self._revisions.get(gateway_group_id, 0) + 1
            return self._revisions[gateway_group_id]

    def set_version(self, version: str) -> None:
        with self._lock:
            self.version = version

    def forget(self, instance_id: str) -> bool:
        """Drop an instance record (as the real CP does after ``remove_after_s``)."""
        with self._lock:
            return self._instances.pop(instance_id, None) is not None

    # --- queries ---------------------------------------------------------------------------

    def config_revision(self, gateway_group_id: str) -> int | None:
        with self._lock:
            return self._revisions.get(gateway_group_id)

    def gateway_groups(self) -> list[str]:
        with self._lock:
            return sorted(self._revisions)

    def instance(self, instance_id: str) -> InstanceRecord | None:
        with self._lock:
            return self._instances.get(instance_id)

    def status_of(self, instance: InstanceRecord, now: float | None = None) -> str:
        now = self.clock() if now is None else now
        age = now - instance.last_heartbeat_time
        if age > self.offline_after_s:
            return OFFLINE
        if age > self.lost_after_s:
            return LOST_CONNECTION
        with self._lock:
            current = self._revisions.get(instance.gateway_group_id, 0)
        if instance.config_revision < current:
            return OUT_OF_SYNC
        return HEALTHY

    def instances(
        self, gateway_group_id: str | None = None, now: float | None = None
    ) -> list[InstanceRecord]:
        """Known instances (of one group, or all), ordered by id; prunes long-gone ones."""
        now = self.clock() if now is None else now
        with self._lock:
            if self.remove_after_s is not None:
                gone = [
                    i.id
                    for i in self._instances.values()
                    if now - i.last_heartbeat_time > self.remove_after_s
                ]
                for instance_id in gone:
                    del self._instances[instance_id]
            found = [
                i
                for i in self._instances.values()
                if gateway_group_id is None or i.gateway_group_id == gateway_group_id
            ]
        return sorted(found, key=lambda i: i.id)

    def view(self, instance: InstanceRecord, now: float | None = None) -> dict[str, Any]:
        """The JSON shape of one instance in ``/api/instances``."""
        return {
            "id": instance.id,
            "hostname": instance.hostname,
            "ip": instance.ip,
            "version": instance.version,
            "status": self.status_of(instance, now),
            "gateway_group_id": instance.gateway_group_id,
            "config_revision": instance.config_revision,
            "last_heartbeat_time": int(instance.last_heartbeat_time),
        }

    def check_api_key(self, presented: str | None) -> bool:
        if not presented:
            return False
        return hmac.compare_digest(presented.encode(), self.api_key.encode())


# --- HTTP ------------------------------------------------------------------------------------

STATE_KEY = web.AppKey("controlplane_state", ControlPlaneState)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"message": message}, status=status)


@web.middleware
async def _auth(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every ``/api/*`` route needs the dashboard key, except the sandbox's heartbeat."""
    path = request.path
    if path.startswith("/api/") and path != "/api/dataplane/heartbeat":
        state = request.app[STATE_KEY]
        if not state.check_api_key(request.headers.get("X-API-KEY")):
            return _error(401, "unauthorized: a valid X-API-KEY header is required")
    return await handler(request)


async def _json_object(request: web.Request) -> dict[str, Any] | web.Response:
    try:
        body = await request.json()
    except ValueError:
        return _error(400, "the request body is not JSON")
    if not isinstance(body, dict):
        return _error(400, "expected a JSON object")
    return body


def _bad_request(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(
        text=json.dumps({"message": message}), content_type="application/json"
    )


def _positive_int(raw: str | None, name: str, default: int) -> int:
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _bad_request(f"{name} must be an integer") from None
    if value < 1:
        raise _bad_request(f"{name} must be >= 1")
    return value


async def get_version(request: web.Request) -> web.Response:
    return web.json_response({"value": {"version": request.app[STATE_KEY].version}})


def _list_instances(request: web.Request, gateway_group_id: str | None) -> web.Response:
    state = request.app[STATE_KEY]
    page = _positive_int(request.query.get("page"), "page", 1)
    page_size = _positive_int(request.query.get("page_size"), "page_size", DEFAULT_PAGE_SIZE)
    now = state.clock()
    found = state.instances(gateway_group_id, now=now)
    start = (page - 1) * page_size
    items = [state.view(i, now) for i in found[start : start + page_size]]
    return web.json_response({"total": len(found), "list": items})


async def list_instances(request: web.Request) -> web.Response:
    return _list_instances(request, request.query.get("gateway_group_id") or None)


async def list_group_instances(request: web.Request) -> web.Response:
    return _list_instances(request, request.match_info["group"])


async def get_config_revision(request: web.Request) -> web.Response:
    group = request.match_info["group"]
    revision = request.app[STATE_KEY].config_revision(group)
    if revision is None:
        return _error(404, f"gateway group '{group}' not found")
    return web.json_response({"value": {"gateway_group_id": group, "config_revision": revision}})


async def post_heartbeat(request: web.Request) -> web.Response:
    body = await _json_object(request)
    if isinstance(body, web.Response):
        return body
    instance_id = body.get("id")
    group = body.get("gateway_group_id")
    if not isinstance(instance_id, str) or not instance_id:
        return _error(400, "'id' (string) is required")
    if not isinstance(group, str) or not group:
        return _error(400, "'gateway_group_id' (string) is required")
    revision = body.get("config_revision", 0)
    if revision is None:
        revision = 0
    if not isinstance(revision, int) or isinstance(revision, bool):
        return _error(400, "'config_revision' must be an integer")
    current = request.app[STATE_KEY].heartbeat(
        id=instance_id,
        hostname=str(body.get("hostname") or instance_id),
        ip=str(body.get("ip") or request.remote or ""),
        version=str(body.get("version") or ""),
        gateway_group_id=group,
        config_revision=revision,
    )
    return web.json_response({"config_revision": current})


async def post_config_bump(request: web.Request) -> web.Response:
    body = await _json_object(request)
    if isinstance(body, web.Response):
        return body
    group = body.get("gateway_group_id")
    if not isinstance(group, str) or not group:
        return _error(400, "'gateway_group_id' (string) is required")
    revision = request.app[STATE_KEY].bump_config(group)
    return web.json_response({"value": {"gateway_group_id": group, "config_revision": revision}})


async def put_version(request: web.Request) -> web.Response:
    body = await _json_object(request)
    if isinstance(body, web.Response):
        return body
    version = body.get("version")
    if not isinstance(version, str) or not version:
        return _error(400, "'version' (string) is required")
    request.app[STATE_KEY].set_version(version)
    return web.json_response({"value": {"version": version}})


def make_app(state: ControlPlaneState) -> web.Application:
    app = web.Application(middlewares=[_auth])
    app[STATE_KEY] = state
    app.add_routes(
        [
            web.get("/api/version", get_version),
            web.get("/api/instances", list_instances),
            web.get("/api/gateway_groups/{group}/instances", list_group_instances),
            web.get("/api/gateway_groups/{group}/config_revision", get_config_revision),
            web.post("/api/dataplane/heartbeat", post_heartbeat),
            web.post("/sandbox/config/bump", post_config_bump),
            web.put("/sandbox/version", put_version),
        ]
    )
    return app


async def serve_control_plane(
    state: ControlPlaneState, host: str = "127.0.0.1", port: int = 0
) -> tuple[web.AppRunner, int]:
    """Serve the stand-in on ``host:port`` (0: a free port); returns the runner and the port.

    Stop it with ``await runner.cleanup()``.
    """
    runner = web.AppRunner(make_app(state), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = runner.addresses[0][1]
    return runner, int(bound)
