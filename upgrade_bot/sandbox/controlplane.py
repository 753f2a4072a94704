"""A stand-in for the API7 Enterprise control plane (the dashboard's Admin API), for the sandbox.

Every shape is taken from a vendor source; committed samples of each (tests/fixtures/api7/) are
checked against what this stand-in answers.

* **Authentication** — every ``/api/*`` call carries a dashboard token in ``X-API-KEY`` (api7/adc
  ``libs/backend-api7/src/index.ts`` @1c37ce48 sets that header). A missing or wrong key answers
  ``401 {"message": ...}``.
* ``GET /api/version`` → ``{"value": "3.2.14.6"}``: a plain string, ``"dev"`` on development
  builds (adc ``BackendAPI7.version``, same file).
* ``GET /api/gateway_groups`` (``search``, ``page``, ``page_size``, ``order_by`` ∈ created_at |
  updated_at, default updated_at; ``direction`` asc | desc, default desc) → ``{"list": [...],
  "total": N}``; ``GET /api/gateway_groups/{id}`` → ``{"value": {...}}``; items ``id``, ``name``,
  ``desc``, ``labels``, ``created_at``, ``updated_at``, ``config.group_type``. Source: API7 EE
  Admin API reference, api7/docs.apiseven.com
  ``enterprise_versioned_docs/version-3.2.14.6/reference/admin-api.json`` @faf96f0e.
* ``GET /api/instances`` (``gateway_group_id``, ``status``, ``search``, ``page``, ``page_size``,
  ``order_by`` ∈ created_at | last_heartbeat_time, default last_heartbeat_time; ``direction``,
  default desc) → items ``id``, ``hostname``, ``ip``, ``gateway_group_id``, ``version``,
  ``ports``, ``last_heartbeat_time``, ``created_at``, ``status``, ``cores`` (same reference,
  ``listInstances``). With the default order the list reshuffles at every heartbeat, as it would
  on a real CP; a client must ask for a stable order.
* ``POST /api/dataplane/heartbeat`` with the data plane's own fields ``instance_id``,
  ``hostname``, ``ip``, ``version``, ``ports``, ``conf_server_revision`` (a string) and ``cores``
  (same reference, ``DataplaneHeartbeat``, also in the 3.2.14.3 reference).
* **Status by heartbeat age** — the CP's own judgement, documented in the same reference and in
  ``version-3.2.14.6/key-concepts/gateway-groups.md``: *Healthy* (heartbeats arrive and the
  configuration revision is delivered); *OutOfSync* (heartbeats arrive, the instance's
  ``conf_server_revision`` is behind the group's); *LostConnection* (no heartbeat for more than
  30 s — the key-concepts page; the reference says 2 minutes); *Offline* (more than 2 hours); an
  offline instance is removed after 7 days. The durations are constructor arguments so that tests
  and demos can shorten them.

Sandbox-only, stated as such:

* The heartbeat names its gateway group with a ``gateway_group`` query parameter (an id or a
  name). A real data plane is placed in its group by the certificate it presents to the
  dp-manager over mTLS, and gets its configuration there too; here the heartbeat's answer,
  ``{"value": {"conf_server_revision": "<n>"}}``, stands in for that channel.
* ``POST /sandbox/config/bump`` with ``{"gateway_group"}`` (an operator changing configuration)
  and ``PUT /sandbox/version`` with ``{"version"}`` (the control plane itself upgraded).
"""

from __future__ import annotations

import hmac
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

HEALTHY = "Healthy"
OUT_OF_SYNC = "OutOfSync"
LOST_CONNECTION = "LostConnection"
OFFLINE = "Offline"
STATUSES = (HEALTHY, OUT_OF_SYNC, LOST_CONNECTION, OFFLINE)

DEFAULT_DASHBOARD_PORT = 7080
DEFAULT_LOST_AFTER_S = 30.0  # key-concepts/gateway-groups.md: not detected for more than 30 s
DEFAULT_OFFLINE_AFTER_S = 2 * 3600.0  # documented: not detected for more than 2 hours
DEFAULT_REMOVE_AFTER_S = 7 * 86400.0  # documented: an offline instance is removed after 7 days
DEFAULT_PAGE_SIZE = 20
GROUP_TYPE = "API7EE_GATEWAY_3.2"  # the reference's only config.group_type
_IDS = uuid.UUID("5b8e1c1e-4d0a-4e8e-9a51-0c2f7a1e3d11")


def group_id_for(name: str) -> str:
    """The stand-in's id of the group named ``name``: UUID-shaped like the reference's example
    ("86fb9981-d9d2-4555-9df8-91ae92129335"), and stable across restarts."""
    return str(uuid.uuid5(_IDS, name))


@dataclass
class GatewayGroup:
    id: str
    name: str
    created_at: int
    updated_at: int
    revision: int = 0


@dataclass
class InstanceRecord:
    """One data-plane instance as the control plane knows it from its heartbeats."""

    id: str
    hostname: str
    ip: str
    version: str
    gateway_group_id: str
    conf_server_revision: str
    last_heartbeat_time: float
    created_at: float
    ports: list[int] = field(default_factory=list)
    cores: int = 1


class ControlPlaneState:
    """Everything the stand-in knows; plain methods, so tests can drive it without HTTP.

    ``clock`` returns epoch seconds; inject a fake one to age heartbeats without sleeping.
    Thread-safe (one lock), so a test may touch it while a server thread serves it.
    ``gateway_groups`` are names; each gets an id (:func:`group_id_for`).
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
        self._groups: dict[str, GatewayGroup] = {}
        self._instances: dict[str, InstanceRecord] = {}
        for name in gateway_groups:
            self.add_group(name)

    # --- mutations -------------------------------------------------------------------------

    def add_group(self, name: str, group_id: str | None = None) -> GatewayGroup:
        """The group named ``name``, created when new."""
        with self._lock:
            for g in self._groups.values():
                if g.name == name:
                    return g
            now = int(self.clock())
            g = GatewayGroup(
                id=group_id or group_id_for(name), name=name, created_at=now, updated_at=now
            )
            self._groups[g.id] = g
            return g

    def group(self, id_or_name: str) -> GatewayGroup | None:
        with self._lock:
            if id_or_name in self._groups:
                return self._groups[id_or_name]
            return next((g for g in self._groups.values() if g.name == id_or_name), None)

    def heartbeat(
        self,
        instance_id: str,
        hostname: str,
        ip: str,
        version: str,
        gateway_group: str,
        conf_server_revision: str = "0",
        ports: Iterable[int] = (9080,),
        cores: int = 1,
        now: float | None = None,
    ) -> str:
        """Record a heartbeat; returns the group's current revision (what the DP should load)."""
        now = self.clock() if now is None else now
        with self._lock:
            group = self.group(gateway_group) or self.add_group(gateway_group)
            old = self._instances.get(instance_id)
            self._instances[instance_id] = InstanceRecord(
                id=instance_id,
                hostname=hostname,
                ip=ip,
                version=version,
                gateway_group_id=group.id,
                conf_server_revision=conf_server_revision,
                last_heartbeat_time=now,
                created_at=old.created_at if old else now,
                ports=list(ports),
                cores=cores,
            )
            return str(group.revision)

    def bump_config(self, gateway_group: str) -> int:
        """Simulate a configuration change in a group; returns its new revision."""
        with self._lock:
            group = self.group(gateway_group) or self.add_group(gateway_group)
            group.revision += 1
            group.updated_at = int(self.clock())
            return group.revision

    def set_version(self, version: str) -> None:
        with self._lock:
            self.version = version

    def forget(self, instance_id: str) -> bool:
        """Drop an instance record (as the real CP does after ``remove_after_s``)."""
        with self._lock:
            return self._instances.pop(instance_id, None) is not None

    # --- queries ---------------------------------------------------------------------------

    def config_revision(self, gateway_group: str) -> int | None:
        with self._lock:
            group = self.group(gateway_group)
            return group.revision if group else None

    def gateway_groups(self) -> list[GatewayGroup]:
        with self._lock:
            return sorted(self._groups.values(), key=lambda g: (g.created_at, g.id))

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
            group = self._groups.get(instance.gateway_group_id)
            current = group.revision if group else 0
        if instance.conf_server_revision != str(current):
            return OUT_OF_SYNC
        return HEALTHY

    def instances(
        self, gateway_group: str | None = None, now: float | None = None
    ) -> list[InstanceRecord]:
        """Known instances (of one group, by id or name, or all), oldest first; prunes
        long-gone ones."""
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
            group_id = None
            if gateway_group is not None:
                group = self.group(gateway_group)
                group_id = group.id if group else gateway_group
            found = [
                i
                for i in self._instances.values()
                if group_id is None or i.gateway_group_id == group_id
            ]
        return sorted(found, key=lambda i: (i.created_at, i.id))

    def view(self, instance: InstanceRecord, now: float | None = None) -> dict[str, Any]:
        """The JSON shape of one instance in ``GET /api/instances`` (``listInstances``)."""
        return {
            "id": instance.id,
            "hostname": instance.hostname,
            "ip": instance.ip,
            "gateway_group_id": instance.gateway_group_id,
            "version": instance.version,
            "ports": instance.ports,
            "last_heartbeat_time": int(instance.last_heartbeat_time),
            "created_at": int(instance.created_at),
            "status": self.status_of(instance, now),
            "cores": instance.cores,
        }

    def group_view(self, group: GatewayGroup) -> dict[str, Any]:
        """The JSON shape of one gateway group (``listGatewayGroup`` / ``getGatewayGroup``)."""
        return {
            "id": group.id,
            "name": group.name,
            "desc": "",
            "labels": {},
            "created_at": group.created_at,
            "updated_at": group.updated_at,
            "config": {"group_type": GROUP_TYPE},
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


def _page(request: web.Request, items: list[Any]) -> tuple[list[Any], int]:
    page = _positive_int(request.query.get("page"), "page", 1)
    page_size = _positive_int(request.query.get("page_size"), "page_size", DEFAULT_PAGE_SIZE)
    start = (page - 1) * page_size
    return items[start : start + page_size], len(items)


def _choice(request: web.Request, name: str, allowed: tuple[str, ...], default: str) -> str:
    value = request.query.get(name) or default
    if name == "direction":
        value = value.lower()
    if value not in allowed:
        raise _bad_request(f"{name} must be one of {', '.join(allowed)}")
    return value


async def get_version(request: web.Request) -> web.Response:
    return web.json_response({"value": request.app[STATE_KEY].version})


async def list_gateway_groups(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    order_by = _choice(request, "order_by", ("created_at", "updated_at"), "updated_at")
    desc = _choice(request, "direction", ("asc", "desc"), "desc") == "desc"
    search = (request.query.get("search") or "").lower()
    groups = [g for g in state.gateway_groups() if search in g.name.lower() or search == g.id]
    groups.sort(key=lambda g: (getattr(g, order_by), g.id), reverse=desc)
    items, total = _page(request, [state.group_view(g) for g in groups])
    return web.json_response({"total": total, "list": items})


async def get_gateway_group(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    group_id = request.match_info["group"]
    group = next((g for g in state.gateway_groups() if g.id == group_id), None)
    if group is None:
        return _error(404, f"gateway group {group_id} not found")
    return web.json_response({"value": state.group_view(group)})


async def list_instances(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    order_by = _choice(
        request, "order_by", ("created_at", "last_heartbeat_time"), "last_heartbeat_time"
    )
    desc = _choice(request, "direction", ("asc", "desc"), "desc") == "desc"
    status = request.query.get("status") or None
    if status is not None and status not in STATUSES:
        raise _bad_request(f"status must be one of {', '.join(STATUSES)}")
    search = (request.query.get("search") or "").lower()
    now = state.clock()
    group = request.query.get("gateway_group_id") or None
    views = [state.view(i, now) for i in state.instances(group, now=now)]
    views = [
        v
        for v in views
        if (status is None or v["status"] == status)
        and (not search or search in v["hostname"].lower() or search in v["id"].lower())
    ]
    views.sort(key=lambda v: (v[order_by], v["id"]), reverse=desc)
    items, total = _page(request, views)
    return web.json_response({"total": total, "list": items})


async def post_heartbeat(request: web.Request) -> web.Response:
    body = await _json_object(request)
    if isinstance(body, web.Response):
        return body
    group = request.query.get("gateway_group")
    if not group:
        return _error(400, "the sandbox needs ?gateway_group= (a real DP's mTLS certificate)")
    for key in ("instance_id", "hostname", "ip", "version", "conf_server_revision"):
        if not isinstance(body.get(key), str) or not body[key]:
            return _error(400, f"'{key}' (string) is required")
    ports = body.get("ports")
    if not isinstance(ports, list) or not ports or not all(isinstance(p, int) for p in ports):
        return _error(400, "'ports' (a non-empty list of integers) is required")
    cores = body.get("cores", 1)
    if not isinstance(cores, int) or isinstance(cores, bool):
        return _error(400, "'cores' must be an integer")
    current = request.app[STATE_KEY].heartbeat(
        instance_id=body["instance_id"],
        hostname=body["hostname"],
        ip=body["ip"],
        version=body["version"],
        gateway_group=group,
        conf_server_revision=body["conf_server_revision"],
        ports=ports,
        cores=cores,
    )
    return web.json_response({"value": {"conf_server_revision": current}})


async def post_config_bump(request: web.Request) -> web.Response:
    body = await _json_object(request)
    if isinstance(body, web.Response):
        return body
    group = body.get("gateway_group")
    if not isinstance(group, str) or not group:
        return _error(400, "'gateway_group' (string) is required")
    revision = request.app[STATE_KEY].bump_config(group)
    return web.json_response({"value": {"gateway_group": group, "revision": revision}})


async def put_version(request: web.Request) -> web.Response:
    body = await _json_object(request)
    if isinstance(body, web.Response):
        return body
    version = body.get("version")
    if not isinstance(version, str) or not version:
        return _error(400, "'version' (string) is required")
    request.app[STATE_KEY].set_version(version)
    return web.json_response({"value": version})


def make_app(state: ControlPlaneState) -> web.Application:
    app = web.Application(middlewares=[_auth])
    app[STATE_KEY] = state
    app.add_routes(
        [
            web.get("/api/version", get_version),
            web.get("/api/gateway_groups", list_gateway_groups),
            web.get("/api/gateway_groups/{group}", get_gateway_group),
            web.get("/api/instances", list_instances),
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
