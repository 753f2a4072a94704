"""The sandbox's gateway processes and its observed truth.

The fleet starts and stops simulator processes on request (from the local backend, through the
control API) and keeps its own registry of slots: which instance serves each slot and which
version that instance *observably* runs (its ``Server`` header and ``apisix_node_info``), how many
times each slot was replaced and restored. The registry never takes a version from what it was
asked to run, so a report that compares it with the engine's record is a real check.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from .frontdoor import Member
from .spec import SandboxSpec, version_of_image

log = logging.getLogger(__name__)

SIGNALS = {"SIGQUIT": signal.SIGQUIT, "SIGTERM": signal.SIGTERM, "SIGKILL": signal.SIGKILL}
HANDOVER_TIMEOUT_S = 2.0  # see Fleet._wait_handed_over
HANDOVER_POLL_S = 0.02
OBSERVER = {"User-Agent": "sandbox-fleet/1"}
"""The fleet's own requests to an instance are not user traffic (simulator.PROBE_AGENTS)."""
SANDBOX_TAG_ENV = "UPGRADE_BOT_SANDBOX"  # see tagged_processes


class FleetError(Exception):
    """A request the fleet cannot carry out; ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Instance:
    id: str
    slot: str
    group: str
    image: str
    version: str
    host: str
    proxy_port: int
    status_port: int
    metrics_port: int
    pid: int = 0
    state: str = "starting"  # starting | running | stopping | exited
    exit_code: int | None = None
    stop_signal: str | None = None
    served_before_ready: int = 0
    started_at: float = field(default_factory=time.time)

    @property
    def proxy_url(self) -> str:
        return f"http://{self.host}:{self.proxy_port}"

    @property
    def status_url(self) -> str:
        return f"http://{self.host}:{self.status_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}"

    def public(self) -> dict[str, object]:
        data = asdict(self)
        data["endpoints"] = {
            "proxy": self.proxy_url,
            "status": self.status_url,
            "metrics": self.metrics_url,
        }
        return data


@dataclass
class SlotRecord:
    id: str
    group: str
    current: str | None = None
    """ID of the instance that serves the slot."""
    version: str | None = None
    """Observed version of the current instance."""
    image: str | None = None
    history: list[str] = field(default_factory=list)
    replacements: int = 0
    restorations: int = 0
    served_before_ready: int = 0

    def truth(self, served_before_ready: int, pid: int | None) -> dict[str, object]:
        """The slot as ``sandbox status`` shows it (pre-ready count and pid as observed now)."""
        return {
            "id": self.id,
            "group": self.group,
            "version": self.version,
            "image": self.image,
            "history": list(self.history),
            "replacements": self.replacements,
            "restorations": self.restorations,
            "served_before_ready": served_before_ready,
            "instance": self.current,
            "pid": pid,
        }


class Fleet:
    """Gateway processes of every group, and the registry of what they observably run."""

    def __init__(
        self,
        spec: SandboxSpec,
        *,
        cp_url: str | None,
        host: str = "127.0.0.1",
        tag: str | None = None,
    ) -> None:
        self.spec = spec
        self.cp_url = cp_url
        self.host = host
        self.tag = tag
        """Marks every instance process (``SANDBOX_TAG_ENV``), so that ``tagged_processes``
        finds them even after the daemon that started them has died."""
        self.instances: dict[str, Instance] = {}
        self.slots: dict[str, SlotRecord] = {}
        self._procs: dict[str, asyncio.subprocess.Process] = {}
        self._ids = itertools.count(1)
        self._session: aiohttp.ClientSession | None = None
        self._lock = asyncio.Lock()
        for group in spec.groups:
            for slot_id in spec.slot_ids(group):
                self.slots[slot_id] = SlotRecord(id=slot_id, group=group)

    async def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=5),
                connector=aiohttp.TCPConnector(force_close=True),
            )
        return self._session

    # --- bringing the fleet up and down -------------------------------------------------

    async def start_initial(self, ready_timeout_s: float = 60.0) -> None:
        """One ready instance per slot on the spec's version."""
        image = self.spec.image_for(self.spec.version)
        started = [await self.start_instance(slot_id, image) for slot_id in self.slots]
        await asyncio.gather(*(self.wait_ready(i.id, ready_timeout_s) for i in started))
        for inst in started:
            await self.activate(inst.slot, inst.id)

    async def shutdown(self) -> None:
        await asyncio.gather(
            *(
                self.stop_instance(i.id, "SIGQUIT", timeout_s=10)
                for i in list(self.instances.values())
                if i.state in ("starting", "running")
            ),
            return_exceptions=True,
        )
        if self._session is not None:
            await self._session.close()

    # --- instances ------------------------------------------------------------------------

    async def start_instance(self, slot_id: str, image: str) -> Instance:
        if slot_id not in self.slots:
            raise FleetError(f"no slot '{slot_id}' in this sandbox", status=404)
        try:
            version = version_of_image(image)
        except ValueError as exc:
            raise FleetError(str(exc)) from None
        slot = self.slots[slot_id]
        inst = Instance(
            id=f"{slot_id.replace('/', '-')}-{next(self._ids)}",
            slot=slot_id,
            group=slot.group,
            image=image,
            version=version,
            host=self.host,
            # Port 0: each listener binds a free port itself and reports it (no race between
            # picking a port and binding it).
            proxy_port=0,
            status_port=0,
            metrics_port=0,
        )
        fault = self.spec.fault_for(version, int(slot_id.rsplit("/", 1)[1]))
        args = [
            sys.executable,
            "-m",
            "upgrade_bot.sandbox.simulator",
            "--instance-id",
            inst.id,
            "--slot",
            slot_id,
            "--group",
            slot.group,
            "--version",
            version,
            "--product",
            self.spec.product,
            "--host",
            self.host,
            "--proxy-port",
            str(inst.proxy_port),
            "--status-port",
            str(inst.status_port),
            "--metrics-port",
            str(inst.metrics_port),
            "--ready-delay",
            str(self.spec.ready_delay_s),
            "--latency-ms",
            str(self.spec.latency_ms),
            "--faults",
            json.dumps(fault.knobs()),
            "--metrics-refresh",
            str(self.spec.metrics_refresh_for(version)),
        ]
        if self.cp_url:
            args += [
                "--cp-url",
                self.cp_url,
                "--gateway-group-id",
                slot.group,
                "--heartbeat-interval",
                str(self.spec.heartbeat_interval_s),
            ]
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=None,
            start_new_session=True,  # a Ctrl-C on the daemon's terminal must not reach gateways
            env={**os.environ, SANDBOX_TAG_ENV: self.tag} if self.tag else None,
        )
        inst.pid = proc.pid
        self._procs[inst.id] = proc
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), timeout=30)
            if not line:
                raise FleetError(f"instance {inst.id} exited before listening", status=500)
            try:
                listening = json.loads(line)
                inst.proxy_port = int(listening["proxy_port"])
                inst.status_port = int(listening["status_port"])
                inst.metrics_port = int(listening["metrics_port"])
            except (ValueError, KeyError):
                raise FleetError(f"instance {inst.id} did not report its ports", 500) from None
        except (TimeoutError, FleetError):
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            inst.state = "exited"
            raise
        inst.state = "running"
        # Known (to the front door, the control API) only once its ports are.
        self.instances[inst.id] = inst
        asyncio.get_running_loop().create_task(self._reap(inst.id, proc))
        log.info("started %s (%s) for %s", inst.id, image, slot_id)
        return inst

    async def _reap(self, inst_id: str, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        with contextlib.suppress(Exception):
            await proc.stdout.read()  # drain so the child never blocks on a full pipe
        code = await proc.wait()
        inst = self.instances[inst_id]
        inst.state = "exited"
        inst.exit_code = code

    async def is_ready(self, inst_id: str) -> bool:
        inst = self.instances[inst_id]
        if inst.state != "running":
            return False
        try:
            session = await self._http()
            async with session.get(inst.status_url + "/status/ready") as resp:
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def wait_ready(self, inst_id: str, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if await self.is_ready(inst_id):
                return True
            await asyncio.sleep(0.05)
        return False

    async def stop_instance(
        self, inst_id: str, signal_name: str, timeout_s: float = 30
    ) -> Instance:
        inst = self._instance(inst_id)
        proc = self._procs.get(inst_id)
        if inst.state == "exited" or proc is None:
            return inst
        if signal_name not in SIGNALS:
            raise FleetError(f"unknown signal '{signal_name}'; expected one of {sorted(SIGNALS)}")
        await self._collect_stats(inst)
        inst.state = "stopping"  # out of the front doors' members: no new request picks it
        inst.stop_signal = signal_name
        if signal_name != "SIGKILL":
            await self._wait_handed_over(inst)
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(SIGNALS[signal_name])
        try:
            await asyncio.wait_for(proc.wait(), timeout=timeout_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        inst.state = "exited"
        inst.exit_code = proc.returncode
        self._fold_stats(inst)
        log.info("stopped %s with %s (exit %s)", inst.id, signal_name, proc.returncode)
        return inst

    async def _wait_handed_over(self, inst: Instance) -> None:
        """Wait (briefly) until the requests a front door already sent this way have arrived.

        A front door may have picked the instance just before it left the members: the
        connection is open, the request not read yet. A stop closes such a connection as idle
        (aiohttp's shutdown, like nginx's, closes connections that carry no request), and the
        client gets a reset that neither SIGQUIT nor SIGTERM should cause. So the signal waits
        for two readings, ``HANDOVER_POLL_S`` apart, of no connection without a request in
        progress ("waiting" in ``apisix_nginx_http_current_connections``). Requests being
        handled are left alone: SIGQUIT drains them and SIGTERM cuts them.
        """
        deadline = time.monotonic() + HANDOVER_TIMEOUT_S
        quiet = 0
        while quiet < 2 and time.monotonic() < deadline:
            waiting = await self._waiting_connections(inst)
            if waiting is None:
                return  # it does not answer: nothing to hand over
            quiet = quiet + 1 if waiting == 0 else 0
            if quiet < 2:
                await asyncio.sleep(HANDOVER_POLL_S)

    async def _waiting_connections(self, inst: Instance) -> int | None:
        try:
            session = await self._http()
            async with session.get(inst.metrics_url + "/apisix/prometheus/metrics") as resp:
                text = await resp.text()
        except (aiohttp.ClientError, TimeoutError):
            return None
        for family in text_string_to_metric_families(text):
            if family.name == "apisix_nginx_http_current_connections":
                for sample in family.samples:
                    if sample.labels.get("state") == "waiting":
                        return int(sample.value)
        return None

    async def _collect_stats(self, inst: Instance) -> None:
        try:
            session = await self._http()
            async with session.get(inst.status_url + "/sandbox/stats") as resp:
                stats = await resp.json()
            inst.served_before_ready = int(stats.get("served_before_ready", 0))
        except (aiohttp.ClientError, TimeoutError, ValueError):
            pass

    def _fold_stats(self, inst: Instance) -> None:
        slot = self.slots[inst.slot]
        slot.served_before_ready += inst.served_before_ready
        inst.served_before_ready = 0  # folded once

    def _instance(self, inst_id: str) -> Instance:
        try:
            return self.instances[inst_id]
        except KeyError:
            raise FleetError(f"no instance '{inst_id}'", status=404) from None

    # --- the registry ---------------------------------------------------------------------

    async def observe_version(self, inst: Instance) -> str:
        """The version an instance shows from outside: Server header and apisix_node_info."""
        session = await self._http()
        async with session.get(inst.proxy_url + "/", headers=OBSERVER) as resp:
            server = resp.headers.get("Server", "")
        async with session.get(inst.metrics_url + "/apisix/prometheus/metrics") as resp:
            text = await resp.text()
        node_version = None
        for family in text_string_to_metric_families(text):
            if family.name == "apisix_node_info":
                for sample in family.samples:
                    node_version = sample.labels.get("version")
        header_version = server.partition("/")[2] or None
        if header_version != node_version:
            raise FleetError(
                f"instance {inst.id} shows Server '{server}' but apisix_node_info "
                f"version '{node_version}'",
                status=500,
            )
        if header_version is None:
            raise FleetError(f"instance {inst.id} shows no version", status=500)
        return header_version

    async def activate(self, slot_id: str, inst_id: str) -> dict[str, object]:
        """Make ``inst_id`` the instance of ``slot_id`` and record the change.

        Like a container runtime, the fleet does what it is told: whether the instance was
        ready is the caller's readiness check to judge (a TCP-only check hands over early)."""
        async with self._lock:
            slot = self.slots.get(slot_id)
            if slot is None:
                raise FleetError(f"no slot '{slot_id}'", status=404)
            inst = self._instance(inst_id)
            if inst.slot != slot_id:
                raise FleetError(f"instance {inst_id} belongs to {inst.slot}, not {slot_id}")
            previous = slot.current
            if previous == inst_id:
                return {"slot": slot_id, "previous": previous, "changed": False}
            await self._collect_stats(inst)
            version = await self.observe_version(inst)
            if slot.version is not None and version != slot.version:
                if version in slot.history:
                    slot.restorations += 1
                else:
                    slot.replacements += 1
            if version not in slot.history:
                slot.history.append(version)
            slot.current, slot.version, slot.image = inst_id, version, inst.image
            return {"slot": slot_id, "previous": previous, "changed": True, "version": version}

    def live_instances(self, slot_id: str) -> list[Instance]:
        return [
            i
            for i in self.instances.values()
            if i.slot == slot_id and i.state in ("starting", "running")
        ]

    def members(self, group: str) -> Sequence[Member]:
        """What the group's front door may send traffic to: every live instance of the group."""
        return [
            Member(id=i.id, proxy_url=i.proxy_url, status_url=i.status_url)
            for i in self.instances.values()
            if i.group == group and i.state == "running"
        ]

    async def describe_slot(self, slot_id: str) -> dict[str, object]:
        slot = self.slots.get(slot_id)
        if slot is None:
            raise FleetError(f"no slot '{slot_id}'", status=404)
        current = self.instances.get(slot.current) if slot.current else None
        return {
            "id": slot.id,
            "group": slot.group,
            "image": slot.image,
            "version": slot.version,
            "ready": bool(current and await self.is_ready(current.id)),
            "current": current.public() if current else None,
            "instances": [i.public() for i in self.live_instances(slot_id)],
            "replacements": slot.replacements,
            "restorations": slot.restorations,
        }

    async def truth(self) -> list[dict[str, object]]:
        """``sandbox status`` slots: the registry, with live pre-ready counts folded in."""
        out = []
        for slot in self.slots.values():
            live = self.live_instances(slot.id)
            for inst in live:
                await self._collect_stats(inst)
            out.append(
                slot.truth(
                    slot.served_before_ready + sum(i.served_before_ready for i in live),
                    self.instances[slot.current].pid if slot.current else None,
                )
            )
        return out


def tagged_processes(tag: str) -> list[int]:
    """Live instance processes started by a ``Fleet(tag=tag)``, found by their environment.

    Unlike a list of pids kept in a file, this never names a stranger that reused a pid.
    Linux only (``/proc``); elsewhere it finds nothing.
    """
    marker = f"\0{SANDBOX_TAG_ENV}={tag}\0".encode()
    found = []
    with contextlib.suppress(OSError):
        entries = [e for e in os.listdir("/proc") if e.isdigit()]
        for entry in entries:
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    environ = b"\0" + f.read()
                with open(f"/proc/{entry}/stat", "rb") as f:
                    zombie = f.read().rpartition(b")")[2].split()[:1] == [b"Z"]
            except OSError:
                continue
            if marker in environ and not zombie:
                found.append(int(entry))
    return found


def kill_orphans(pids: Sequence[int]) -> None:
    """Last resort when the daemon died: signal instance processes it left behind."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
