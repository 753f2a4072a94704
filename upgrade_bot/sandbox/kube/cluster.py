"""The emulated cluster on its own thread: API server, controller, front doors.

The official ``kubernetes`` client and Helm's engine block while they wait for the API server,
so the server never runs on the caller's event loop (DESIGN.md §9): :class:`EmulatedCluster`
starts a thread with its own loop, serves the API on ``http://127.0.0.1:<port>`` and hands out a
kubeconfig that points at it (any token is accepted).

A *front door* stands in for a Service: a round-robin load balancer over the ready,
non-terminating pods a label selector picks (``sandbox.frontdoor.FrontDoor``), so traffic can
be sent through a rollout and its failures counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import threading
from collections.abc import Callable, Coroutine, Iterable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import yaml
from kmock import Server

from ..fleet import kill_orphans, tagged_processes
from ..frontdoor import FrontDoor, Member
from ..spec import Fault
from .api import KINDS, ApiError, KubeAPI, Obj, parse_label_selector
from .controller import METRICS_PORT, PODS, PROXY_PORT, STATUS_PORT, Controller, is_ready

T = TypeVar("T")

PLURALS = {kind: gvp for gvp, (kind, _, _) in KINDS.items()}
"""Kind -> ``group/version/plural`` (what ``apply`` needs to store a manifest)."""


class EmulatedCluster:
    """One Kubernetes API with its controller; start once, share, stop."""

    def __init__(
        self,
        *,
        scale: float = 0.05,
        faults: dict[str, Fault] | None = None,
        ready_delay_s: float = 0.5,
        latency_ms: float = 20.0,
        ip_prefix: str | None = None,
    ) -> None:
        self.scale = scale
        # Pods listen on their own loopback addresses; two clusters on one machine (two test
        # workers) must not share them.
        ip_prefix = ip_prefix or f"127.{100 + os.getpid() % 150}"
        self.api = KubeAPI()
        self.controller = Controller(
            self.api,
            scale=scale,
            faults=faults,
            ready_delay_s=ready_delay_s,
            latency_ms=latency_ms,
            ip_prefix=ip_prefix,
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: Server | None = None
        self._front_doors: list[FrontDoor] = []
        self._stop: asyncio.Event | None = None
        self.url = ""

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self, timeout_s: float = 30) -> EmulatedCluster:
        # Pods a killed earlier cluster on the same addresses left behind would hold them.
        kill_orphans(tagged_processes(self.controller.tag))
        started: Future[str] = Future()
        self._thread = threading.Thread(
            target=self._main, args=(started,), name="emulated-cluster", daemon=True
        )
        self._thread.start()
        self.url = started.result(timeout_s)
        return self

    def _main(self, started: Future[str]) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve(started))
        finally:
            loop.close()

    async def _serve(self, started: Future[str]) -> None:
        self._stop = asyncio.Event()
        try:
            async with self.api, Server(self.api) as server:
                self._server = server
                controller = asyncio.create_task(self.controller.run())
                started.set_result(f"http://{server.host}:{server.port}")
                try:
                    await self._stop.wait()
                finally:
                    await self.controller.stop()  # the pods' processes first, whatever happens
                    controller.cancel()
                    for door in self._front_doors:
                        with contextlib.suppress(Exception):
                            await door.stop()
        except BaseException as exc:
            if not started.done():
                started.set_exception(exc)
            raise

    def stop(self) -> None:
        if self._loop is None or self._stop is None or self._thread is None:
            return
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=60)
        self._loop = self._stop = self._thread = None
        kill_orphans(tagged_processes(self.controller.tag))

    def __enter__(self) -> EmulatedCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the cluster's loop (where the store lives) and return its result."""

        async def wrapper() -> T:
            return fn()

        return self.run(wrapper())

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float = 60) -> T:
        assert self._loop is not None, "the cluster is not started"
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)

    # --- what tests and the demo need -------------------------------------------------------

    def kubeconfig(
        self, path: Path, *, context: str = "emulated", namespace: str = "default"
    ) -> Path:
        """A kubeconfig for this cluster (``server: http://…``, a token that is never checked)."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": context, "cluster": {"server": self.url}}],
            "users": [{"name": "upgrade-bot", "user": {"token": "emulated"}}],
            "contexts": [
                {
                    "name": context,
                    "context": {"cluster": context, "user": "upgrade-bot", "namespace": namespace},
                }
            ],
            "current-context": context,
        }
        path.write_text(yaml.safe_dump(config))
        return path

    def apply(self, manifests: Iterable[Obj], namespace: str) -> list[Obj]:
        """Create (or replace) objects as ``kubectl apply`` would, bypassing RBAC rules."""

        def do() -> list[Obj]:
            out = []
            for m in manifests:
                if not m:
                    continue
                gvp = PLURALS[m["kind"]]
                ns = namespace if KINDS[gvp][1] else None
                key = (gvp, ns, m["metadata"]["name"])
                if key in self.api.store:
                    out.append(self.api.replace(key, copy.deepcopy(m), None))
                else:
                    out.append(self.api.create(gvp, ns, copy.deepcopy(m)))
            return out

        return self.call(do)

    def load_manifests(self, path: Path) -> list[Obj]:
        return [m for m in yaml.safe_load_all(path.read_text()) if m]

    def get(self, kind: str, namespace: str | None, name: str) -> Obj | None:
        def do() -> Obj | None:
            try:
                return self.api.get((PLURALS[kind], namespace, name))
            except ApiError:
                return None

        return self.call(do)

    def pods(self, namespace: str, selector: dict[str, str]) -> list[Obj]:
        match = parse_label_selector(",".join(f"{k}={v}" for k, v in selector.items()))
        return self.call(
            lambda: [
                copy.deepcopy(p)
                for p in self.api.objects(PODS, namespace)
                if match(p["metadata"].get("labels") or {})
            ]
        )

    def refuse(self, verb: str, plural: str, code: int) -> None:
        """Answer ``code`` (403: as missing RBAC would) to ``verb`` on ``plural`` from now on."""
        self.call(lambda: self.api.refuse.__setitem__((verb, plural), code))

    def allow_all(self) -> None:
        self.call(self.api.refuse.clear)

    def set_fault(self, version: str, fault: Fault | None) -> None:
        def do() -> None:
            if fault is None:
                self.controller.faults.pop(version, None)
            else:
                self.controller.faults[version] = fault

        self.call(do)

    def members(self, namespace: str, selector: dict[str, str]) -> Sequence[Member]:
        """Endpoints of a Service with ``selector``: ready pods not being deleted. Called on
        the cluster's loop (by a front door)."""
        match = parse_label_selector(",".join(f"{k}={v}" for k, v in selector.items()))
        out = []
        for p in self.api.objects(PODS, namespace):
            if not match(p["metadata"].get("labels") or {}) or p["metadata"].get(
                "deletionTimestamp"
            ):
                continue
            ip = (p.get("status") or {}).get("podIP")
            if ip and is_ready(p):
                out.append(
                    Member(
                        id=p["metadata"]["name"],
                        proxy_url=f"http://{ip}:{PROXY_PORT}",
                        status_url=f"http://{ip}:{STATUS_PORT}",
                    )
                )
        return out

    def front_door(self, name: str, namespace: str, selector: dict[str, str]) -> str:
        """Start a Service-like front door over the pods ``selector`` picks; its URL."""

        async def do() -> str:
            door = FrontDoor(
                name,
                lambda: self.members(namespace, selector),
                health_check="tcp",
                health_interval_s=0.1,
                health_timeout_s=5.0,
            )
            await door.start()
            self._front_doors.append(door)
            return door.url

        return self.run(do())


def endpoints_of(pod: Obj) -> dict[str, str]:
    ip = (pod.get("status") or {}).get("podIP")
    if not ip:
        return {}
    return {
        "proxy": f"http://{ip}:{PROXY_PORT}",
        "status": f"http://{ip}:{STATUS_PORT}",
        "metrics": f"http://{ip}:{METRICS_PORT}",
    }
