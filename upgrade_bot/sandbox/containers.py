"""The sandbox's gateways as containers on a Docker host (``SandboxSpec.backend == "docker"``).

The fleet builds one image per version (no registry: ``FROM scratch`` with the version and its
fault knobs in the image's own ``ENV`` — the bot never reads them, it sees a release behave),
and starts one container per slot the way docker-compose would: named ``PROJECT-GROUP-N`` and
labelled ``com.docker.compose.project``/``service``/``container-number``. The gateway simulator
runs with the host's Python and the project mounted read-only at the same paths.

Two ways to lay the group out: each container on its own address in the bridge network (a
replacement can start beside the old one), or each publishing fixed host ports (``fixed_ports``:
the old one must stop first).

It then watches the containers, never the bot: the front doors' members are the running
containers of each group, and the registry of what each slot observably runs (``Server`` header
and ``apisix_node_info``), how often it was replaced and restored, comes from looking at them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import logging
import sys
from pathlib import Path
from typing import Any

import aiohttp
import docker
import docker.errors

from ..redis_server import free_port
from .fleet import SlotRecord
from .frontdoor import Member
from .spec import SandboxSpec

log = logging.getLogger(__name__)

PROXY_PORT, STATUS_PORT, METRICS_PORT = 9080, 7085, 9091
PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
NUMBER_LABEL = "com.docker.compose.container-number"
RETIRED = (".upgrade-bot-prev", ".upgrade-bot-discard")
"""Names the Docker backend gives containers it takes out of their slot (engine.backends.docker)."""
SOURCE_ROOT = Path(__file__).resolve().parents[2]
"""The folder holding the ``upgrade_bot`` package, mounted into the containers."""


def image_repository(spec: SandboxSpec) -> str:
    """Fully qualified for containers, so that no engine goes looking for it in a registry."""
    if spec.backend != "docker":
        return spec.repository
    first = spec.repository.split("/", 1)[0]
    qualified = "." in first or ":" in first or first == "localhost"
    return spec.repository if qualified else f"localhost/{spec.repository}"


def image_versions(spec: SandboxSpec) -> list[str]:
    """The versions a rehearsal may ask for: the fleet's, the next patches and minor, the
    control plane's and every version with a fault knob."""
    major, minor, patch = (int(p) for p in spec.version.split("."))
    versions = [f"{major}.{minor}.{p}" for p in range(patch, patch + 4)]
    versions += [f"{major}.{minor + 1}.0", f"{major}.{minor + 1}.1"]
    versions += [v for v in (spec.cp_version, *spec.faults) if v]
    return list(dict.fromkeys(versions))


def dockerfile(spec: SandboxSpec, version: str) -> str:
    """The image of ``version``: its fault knobs are in its own ENV, so every container of it
    has them (a fault on one slot only, ``KIND@N``, cannot be said by an image)."""
    fault = spec.fault_for(version)
    if fault.only_slot is not None:
        raise ValueError(
            f"the fault of {version} is for one slot only (@{fault.only_slot}): containers of "
            "one image all behave alike; use the fault without @N on the docker backend"
        )
    knobs = json.dumps(fault.knobs(), separators=(",", ":"))
    return (
        "FROM scratch\n"
        f"ENV GATEWAY_VERSION={version} GATEWAY_PRODUCT={spec.product} GATEWAY_FAULTS='{knobs}'\n"
        f'LABEL org.opencontainers.image.version="{version}"\n'
    )


def mounts() -> dict[str, dict[str, str]]:
    """The host's Python and the project, read-only at the same paths."""
    paths = ["/usr", "/lib", "/lib64", "/etc/ssl", sys.base_prefix, sys.prefix, str(SOURCE_ROOT)]
    return {p: {"bind": p, "mode": "ro"} for p in dict.fromkeys(paths) if Path(p).exists()}


def container_project(directory: Path) -> str:
    """The compose-like project name of the sandbox in ``directory`` (one per folder)."""
    return "sbx" + hashlib.sha1(str(directory.resolve()).encode()).hexdigest()[:8]



class ContainerFleet:
    """The sandbox's gateway containers, and the registry of what they observably run."""

    def __init__(
        self, spec: SandboxSpec, *, docker_host: str, project: str, poll_s: float = 0.2
    ) -> None:
        self.spec = spec
        self.project = project
        self.poll_s = poll_s
        self.client = docker.DockerClient(base_url=docker_host, timeout=120)
        self.instances: dict[str, Any] = {}  # the process fleet's; containers have no pids here
        self.slots: dict[str, SlotRecord] = {}
        self._members: dict[str, list[Member]] = {g: [] for g in spec.groups}
        self._current: dict[str, str] = {}  # slot -> container id seen serving it
        self._pre_ready: dict[str, tuple[str, int]] = {}  # container id -> (slot, count)
        self._inspected: dict[str, dict[str, Any]] = {}
        self._watcher: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    # --- bringing the fleet up and down -------------------------------------------------

    async def start_initial(self, ready_timeout_s: float = 60.0) -> None:
        await asyncio.to_thread(self._remove_all)  # left by an earlier sandbox of this project
        await asyncio.to_thread(self._build_images)
        image = f"{image_repository(self.spec)}:{self.spec.version}"
        for group in self.spec.groups:
            for n in range(1, self.spec.instances + 1):
                await asyncio.to_thread(self._run, group, n, image)
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=5),
            connector=aiohttp.TCPConnector(force_close=True),
        )
        await self._look()
        self._watcher = asyncio.create_task(self._watch(), name="container-fleet")

    def _build_images(self) -> None:
        for version in image_versions(self.spec):
            text = dockerfile(self.spec, version).encode()
            # POST /build (Engine API "ImageBuild"); rm=True leaves no build container behind.
            self.client.images.build(
                fileobj=io.BytesIO(text), tag=f"{image_repository(self.spec)}:{version}", rm=True
            )

    def _run(self, group: str, number: int, image: str) -> None:
        name = f"{self.project}-{group}-{number}"
        python = sys.executable
        ports = None
        if self.spec.fixed_ports:
            ports = {
                f"{p}/tcp": ("127.0.0.1", free_port())
                for p in (PROXY_PORT, STATUS_PORT, METRICS_PORT)
            }
        # POST /containers/create + /start ("ContainerCreate", "ContainerStart"), the way
        # docker-compose creates a service's containers (its labels, one name per number).
        self.client.containers.run(
            image,
            command=[python, "-m", "upgrade_bot.sandbox.simulator"],
            name=name,
            detach=True,
            init=True,  # catatonit forwards SIGQUIT/SIGTERM to the gateway
            volumes=mounts(),
            ports=ports,
            environment={
                "PYTHONPATH": str(SOURCE_ROOT),
                "GATEWAY_INSTANCE_ID": name,
                "GATEWAY_SLOT": name,
                "GATEWAY_GROUP": group,
                "GATEWAY_HOST": "0.0.0.0",
                "GATEWAY_PROXY_PORT": str(PROXY_PORT),
                "GATEWAY_STATUS_PORT": str(STATUS_PORT),
                "GATEWAY_METRICS_PORT": str(METRICS_PORT),
                "GATEWAY_READY_DELAY": str(self.spec.ready_delay_s),
                "GATEWAY_LATENCY_MS": str(self.spec.latency_ms),
            },
            labels={
                PROJECT_LABEL: self.project,
                SERVICE_LABEL: group,
                NUMBER_LABEL: str(number),
            },
            stop_signal="SIGQUIT",
            restart_policy={"Name": "on-failure", "MaximumRetryCount": 3},
            healthcheck={
                "test": ["CMD", python, "-m", "upgrade_bot.sandbox.probe"],
                "interval": 1_000_000_000,
                "timeout": 3_000_000_000,
                "retries": 1,
            },
        )
        self.slots[f"{group}/{name}"] = SlotRecord(id=f"{group}/{name}", group=group)

    async def shutdown(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        if self._session is not None:
            await self._session.close()
        await asyncio.to_thread(self._remove_all)
        await asyncio.to_thread(self.client.close)

    def _remove_all(self) -> None:
        for c in self.client.containers.list(
            all=True, filters={"label": f"{PROJECT_LABEL}={self.project}"}
        ):
            with contextlib.suppress(docker.errors.NotFound):
                c.remove(force=True)  # DELETE /containers/{id}?force=true

    # --- watching -------------------------------------------------------------------------

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await self._look()
            except Exception:  # a daemon hiccup must not stop the watching
                log.exception("looking at the containers failed")

    def _running(self) -> list[dict[str, Any]]:
        found = self.client.api.containers(filters={"label": f"{PROJECT_LABEL}={self.project}"})
        running = {entry["Id"] for entry in found}
        for stale in set(self._inspected) - running:
            del self._inspected[stale]  # stopped: a restart may give it another address
        docs = []
        for entry in found:
            cid = entry["Id"]
            if cid not in self._inspected:
                with contextlib.suppress(docker.errors.NotFound):
                    self._inspected[cid] = self.client.api.inspect_container(cid)
            if cid in self._inspected:
                docs.append({**self._inspected[cid], "ListedName": entry["Names"][0].lstrip("/")})
        return docs

    async def _look(self) -> None:
        docs = await asyncio.to_thread(self._running)
        members: dict[str, list[Member]] = {g: [] for g in self.spec.groups}
        for doc in docs:
            group = doc["Config"]["Labels"].get(SERVICE_LABEL)
            if group not in members:
                continue
            urls = endpoints(doc)
            # A container the bot has retired (renamed out of its slot before its stop signal)
            # gets no new requests, as a compose DNS name moves to the new container; the
            # bot's drain wait lets what it has in flight finish. Members are known by
            # container ID, so a rename keeps a member's health.
            if not doc["ListedName"].endswith(RETIRED):
                members[group].append(
                    Member(id=doc["Id"][:12], proxy_url=urls["proxy"], status_url=urls["status"])
                )
            await self._observe(group, doc, urls)
        self._members = members

    async def _observe(self, group: str, doc: dict[str, Any], urls: dict[str, str]) -> None:
        """Fold what one running container shows into the registry."""
        slot_id = f"{group}/{_env(doc, 'GATEWAY_SLOT')}"
        slot = self.slots.setdefault(slot_id, SlotRecord(id=slot_id, group=group))
        stats = await self._get_json(urls["status"] + "/sandbox/stats")
        if stats is not None:
            self._pre_ready[doc["Id"]] = (slot_id, int(stats.get("served_before_ready", 0)))
        if doc["ListedName"] != _env(doc, "GATEWAY_SLOT"):
            return  # a replacement starting beside, or a kept one: not the slot's (yet)
        if self._current.get(slot_id) == doc["Id"]:
            return
        version = await self._observed_version(urls)
        if version is None:
            return
        if slot.version is not None and version != slot.version:
            if version in slot.history:
                slot.restorations += 1
            else:
                slot.replacements += 1
        if version not in slot.history:
            slot.history.append(version)
        slot.current, slot.version = doc["Id"][:12], version
        slot.image = doc["Config"]["Image"]
        self._current[slot_id] = doc["Id"]

    async def _observed_version(self, urls: dict[str, str]) -> str | None:
        """The version a ready container shows: its Server header, agreeing with
        ``apisix_node_info``; None while it is not ready or the two disagree."""
        session = self._session
        if session is None:
            return None
        try:
            async with session.get(urls["status"] + "/status/ready") as resp:
                if resp.status != 200:
                    return None
            async with session.get(urls["proxy"] + "/") as resp:
                server = resp.headers.get("Server", "")
            async with session.get(urls["metrics"] + "/apisix/prometheus/metrics") as resp:
                text = await resp.text()
        except (aiohttp.ClientError, TimeoutError):
            return None
        version = server.partition("/")[2] or None
        marker = f'version="{version}"'
        node_info = [line for line in text.splitlines() if line.startswith("apisix_node_info")]
        return version if version and any(marker in line for line in node_info) else None

    async def _get_json(self, url: str) -> dict[str, Any] | None:
        if self._session is None:
            return None
        try:
            async with self._session.get(url) as resp:
                data = await resp.json()
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    # --- what the daemon asks -------------------------------------------------------------

    def members(self, group: str) -> list[Member]:
        return list(self._members.get(group, []))

    async def truth(self) -> list[dict[str, object]]:
        out = []
        for slot in self.slots.values():
            pre_ready = sum(n for s, n in self._pre_ready.values() if s == slot.id)
            out.append(slot.truth(pre_ready, None))
        return out


def endpoints(doc: dict[str, Any]) -> dict[str, str]:
    """Listener URLs of a sandbox container: its published host ports, else its address."""
    net = doc.get("NetworkSettings") or {}
    published = net.get("Ports") or {}
    address = net.get("IPAddress") or next(
        (n.get("IPAddress") for n in (net.get("Networks") or {}).values() if n.get("IPAddress")),
        "127.0.0.1",
    )
    out = {}
    for name, port in (("proxy", PROXY_PORT), ("status", STATUS_PORT), ("metrics", METRICS_PORT)):
        binding = next((b for b in published.get(f"{port}/tcp") or [] if b.get("HostPort")), None)
        out[name] = (
            f"http://127.0.0.1:{binding['HostPort']}" if binding else f"http://{address}:{port}"
        )
    return out


def _env(doc: dict[str, Any], key: str) -> str:
    for entry in doc["Config"].get("Env") or []:
        k, _, v = entry.partition("=")
        if k == key:
            return v
    return ""
