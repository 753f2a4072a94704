"""The emulated cluster set up for ``upgrade-bot demo --backend kubernetes``.

Each gateway group is a Helm release of the vendor's APISIX chart (``CHART_DIR``) in its own
namespace, installed by Helm's engine into the emulated cluster; a front door per group stands
in for its Service and steady traffic goes through them. The bot is configured with the
``kubernetes`` backend (default strategy ``helm``: the releases are Helm-managed), a backup hook
that saves the releases' records, and no control plane (plain APISIX).

The observed truth the demo's report compares with the engine's record comes from the cluster:
each replica position's version from its pod's ``Server`` header, and per Deployment the
versions its completed rollouts ran (the controller's record).
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import helm_python as helm
import httpx
import yaml

from ...redis_server import RedisServer, stop_from_pidfile
from .. import manage
from ..spec import Fault, SandboxSpec
from ..traffic import TrafficGenerator
from . import CHART_DIR
from .cluster import EmulatedCluster
from .controller import is_ready

RELEASE = "apisix"
"""Release name in each group's namespace; the chart then names its Deployment ``apisix``."""
CHART = CHART_DIR / "apisix-2.14.0"
SELECTOR = {"app.kubernetes.io/name": "apisix", "app.kubernetes.io/instance": RELEASE}
TAG_TEMPLATE = "{version}-ubuntu"  # the chart's image tags: apache/apisix:3.16.0-ubuntu


def release_values(spec: SandboxSpec) -> dict[str, Any]:
    return {
        # SOURCE.md: without the etcd subchart.
        "etcd": {"enabled": False},
        "externalEtcd": {"host": ["http://etcd:2379"]},
        "replicaCount": spec.instances,
        "image": {"repository": "apache/apisix", "tag": TAG_TEMPLATE.format(version=spec.version)},
        # The chart then probes httpGet /status/ready (templates/deployment.yaml).
        "apisix": {"deployment": {"role_traditional": {"config_provider": "yaml"}}},
    }


class KubeSandbox:
    """What ``rehearse`` needs of a sandbox: ``dir``, ``config_path``, ``redis_url``,
    ``status()`` (observed truth and traffic) and ``down()``."""

    def __init__(self, directory: Path, spec: SandboxSpec, *, scale: float = 0.05) -> None:
        self.dir = directory.resolve()
        self.spec = spec
        self.cluster = EmulatedCluster(scale=scale, faults=dict(spec.faults))
        self.kubeconfig = self.dir / "kubeconfig"
        self.config_path = self.dir / "config.yaml"
        self.redis_url = ""
        self._redis = False
        self._traffic: TrafficGenerator | None = None
        self.front_doors: dict[str, str] = {}

    def up(self, timeout_s: float = 120) -> KubeSandbox:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cluster.start()
        try:
            self._up(timeout_s)
        except BaseException:
            self.down()
            raise
        return self

    def _up(self, timeout_s: float) -> None:
        self.cluster.kubeconfig(self.kubeconfig)
        self.redis_url = os.environ.get("REDIS_URL", "")
        if not self.redis_url:
            self.redis_url = RedisServer(self.dir / manage.REDIS_DIR).start_detached().url
            self._redis = True
        values = release_values(self.spec)
        for group in self.spec.groups:
            cfg = helm.Config(kubeconfig_path=str(self.kubeconfig), namespace=group)
            try:
                cfg.install(str(CHART), RELEASE, values, namespace=group)
            finally:
                cfg.close()
        deadline = time.monotonic() + timeout_s
        while not all(self._ready(g) for g in self.spec.groups):
            if time.monotonic() > deadline:
                raise manage.SandboxError(f"the gateways were not ready within {timeout_s:g}s")
            time.sleep(0.1)
        for group in self.spec.groups:
            self.front_doors[group] = self.cluster.front_door(group, group, SELECTOR)

        async def start_traffic() -> TrafficGenerator:
            traffic = TrafficGenerator(self.front_doors, rate_per_s=self.spec.rate_per_s)
            await traffic.start()
            return traffic

        self._traffic = self.cluster.run(start_traffic())
        manage.write_changelog(self.dir / manage.CHANGELOG_FILE, self.spec.version)
        self.config_path.write_text(
            "# Written by `upgrade-bot demo --backend kubernetes` for its emulated cluster.\n"
            + yaml.safe_dump(self.bot_config(), sort_keys=False)
        )

    def _ready(self, group: str) -> bool:
        pods = [
            p
            for p in self.cluster.pods(group, SELECTOR)
            if not p["metadata"].get("deletionTimestamp")
        ]
        return len(pods) == self.spec.instances and all(is_ready(p) for p in pods)

    def bot_config(self) -> dict[str, Any]:
        local = manage.bot_config(
            self.spec, {"control_url": "", "cp_url": ""}, self.redis_url, self.kubeconfig, None
        )
        backups = self.dir / "backups" / "helm-{run_id}.json"
        return {
            "groups": [
                {
                    "name": group,
                    "production": group.startswith("prod"),
                    "backend": {
                        "type": "kubernetes",
                        "namespace": group,
                        "deployment": RELEASE,
                        "kubeconfig": str(self.kubeconfig),
                        "poll_interval_s": 0.2,
                    },
                    "image": {"repository": "apache/apisix", "tag_template": TAG_TEMPLATE},
                }
                for group in self.spec.groups
            ],
            "redis_url": self.redis_url,
            "changelog": manage.CHANGELOG_FILE,
            "backup": {
                "type": "command",
                "command": [
                    sys.executable,
                    "-m",
                    "upgrade_bot.sandbox.kube.backup",
                    "--kubeconfig",
                    str(self.kubeconfig),
                    "--namespaces",
                    ",".join(self.spec.groups),
                    "--out",
                    str(backups),
                ],
                "artifact": str(backups),
                "timeout_s": 60,
            },
            "metrics": local["metrics"],
            "defaults": local["defaults"],
            "slack": local["slack"],
        }

    def status(self) -> dict[str, Any]:
        """``sandbox status``'s shape: ``traffic`` counts and ``slots`` as the cluster shows
        them (versions from the pods' ``Server`` headers, rollouts from the controller)."""
        assert self._traffic is not None
        traffic = self.cluster.call(self._traffic.counts)
        controller = self.cluster.controller
        slots = []
        with httpx.Client(timeout=5) as client:
            for group in self.spec.groups:
                pods = sorted(
                    (
                        p
                        for p in self.cluster.pods(group, SELECTOR)
                        if not p["metadata"].get("deletionTimestamp")
                    ),
                    key=lambda p: (p["metadata"]["creationTimestamp"], p["metadata"]["name"]),
                )
                history = self.cluster.call(
                    lambda g=group: list(controller.history.get((g, RELEASE), []))
                )
                before_ready = self.cluster.call(
                    lambda g=group: controller.served_before_ready.get((g, RELEASE), 0)
                )
                replacements = restorations = 0
                for i, version in enumerate(history[1:], start=1):
                    if version in history[:i]:
                        restorations += 1
                    else:
                        replacements += 1
                for i in range(self.spec.instances):
                    slots.append(
                        {
                            "id": f"{group}/{i}",
                            "group": group,
                            "version": _observed_version(client, pods[i])
                            if i < len(pods)
                            else None,
                            "history": history,
                            "replacements": replacements,
                            "restorations": restorations,
                            # Counted per Deployment (pods come and go): shown on its first slot.
                            "served_before_ready": before_ready if i == 0 else 0,
                        }
                    )
        return {"traffic": traffic, "slots": slots}

    def releases(self) -> dict[str, list[dict[str, Any]]]:
        """Each group's Helm release history (revision, status), for the report."""
        out = {}
        for group in self.spec.groups:
            cfg = helm.Config(kubeconfig_path=str(self.kubeconfig), namespace=group)
            try:
                out[group] = [
                    {"revision": h["revision"], "status": h["status"]} for h in cfg.history(RELEASE)
                ]
            finally:
                cfg.close()
        return out

    def down(self) -> None:
        if self._traffic is not None:
            with contextlib.suppress(Exception):
                self.cluster.run(self._traffic.stop())
            self._traffic = None
        self.cluster.stop()
        if self._redis:
            stop_from_pidfile(self.dir / manage.REDIS_DIR)
            self._redis = False


def _observed_version(client: httpx.Client, pod: dict[str, Any]) -> str | None:
    ip = (pod.get("status") or {}).get("podIP")
    if not ip:
        return None
    try:
        server = client.get(
            f"http://{ip}:9080/", headers={"User-Agent": "sandbox-fleet/1"}
        ).headers.get("Server", "")
    except httpx.HTTPError:
        return None
    return server.partition("/")[2] or None


class KubeSandboxProcess:
    """A :class:`KubeSandbox` in a child process, for the demo.

    The demo runs the bot in its own process; with the cluster, its front doors and the traffic
    generator on a thread of that process, a busy bot (drawing a chart, say) holds the GIL long
    enough on a loaded machine to make the traffic time out, which would be counted as failed
    requests the upgrade never caused. In a process of its own the cluster keeps its pace, as the
    local sandbox's daemon does. Same interface as ``KubeSandbox``; calls block.
    """

    def __init__(self, directory: Path, spec: SandboxSpec, *, start_timeout_s: float = 180):
        self.dir = directory.resolve()
        self.spec = spec
        self.start_timeout_s = start_timeout_s
        self.config_path = self.dir / "config.yaml"
        self.redis_url = ""
        self._conn: Connection | None = None
        self._proc: Any = None

    def up(self) -> KubeSandboxProcess:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        data = dataclasses.asdict(self.spec)
        self._proc = context.Process(
            target=_serve_child, args=(child, str(self.dir), data), name="kube-sandbox"
        )
        self._proc.start()
        child.close()
        if not self._conn.poll(self.start_timeout_s):
            self.down()
            raise manage.SandboxError(
                f"the emulated cluster did not come up within {self.start_timeout_s:g}s"
            )
        self.redis_url = self._receive()
        return self

    def _receive(self) -> Any:
        assert self._conn is not None
        try:
            kind, value = self._conn.recv()
        except EOFError:
            raise manage.SandboxError("the emulated cluster's process ended") from None
        if kind == "error":
            raise manage.SandboxError(f"the emulated cluster failed: {value}")
        return value

    def _ask(self, what: str) -> Any:
        assert self._conn is not None
        self._conn.send(what)
        return self._receive()

    def status(self) -> dict[str, Any]:
        return dict(self._ask("status"))

    def releases(self) -> dict[str, list[dict[str, Any]]]:
        return dict(self._ask("releases"))

    def down(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._ask("down")
            self._conn.close()
            self._conn = None
        if self._proc is not None:
            self._proc.join(60)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join(10)
            self._proc = None


def _serve_child(conn: Connection, directory: str, data: dict[str, Any]) -> None:
    """The child process: bring the sandbox up, then answer the parent until ``down`` (or until
    the parent is gone)."""
    data["faults"] = {v: Fault(**f) for v, f in data.get("faults", {}).items()}
    sandbox = KubeSandbox(Path(directory), SandboxSpec(**data))
    try:
        sandbox.up()
    except Exception as exc:
        conn.send(("error", str(exc) or type(exc).__name__))
        return
    conn.send(("ok", sandbox.redis_url))
    try:
        while True:
            try:
                what = conn.recv()
            except EOFError:
                return
            try:
                if what == "down":
                    sandbox.down()
                    conn.send(("ok", None))
                    return
                conn.send(("ok", sandbox.status() if what == "status" else sandbox.releases()))
            except Exception as exc:
                conn.send(("error", str(exc) or type(exc).__name__))
    finally:
        sandbox.down()
