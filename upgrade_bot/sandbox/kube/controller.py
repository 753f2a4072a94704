"""The emulated cluster's Deployment controller and kubelet.

The controller does what kube-controller-manager's Deployment controller does for a
``RollingUpdate`` (https://kubernetes.io/docs/concepts/workloads/controllers/deployment/): one
ReplicaSet per pod template (named by a hash of the template, label ``pod-template-hash``,
annotation ``deployment.kubernetes.io/revision``), new pods while ``maxSurge`` allows, old pods
deleted while ``maxUnavailable`` allows, nothing while ``spec.paused``; status with
``observedGeneration``, ``replicas``/``updatedReplicas``/``readyReplicas``/``availableReplicas``
and the ``Available``/``Progressing`` conditions, ``ProgressDeadlineExceeded`` once no progress
was made for ``progressDeadlineSeconds``.

The kubelet runs each pod's gateway container as a gateway simulator process listening on the
pod's own loopback address (``127.10.x.y``) on the container's ports (proxy 9080, status 7085,
prometheus 9091), probes it with the readiness probe the pod declares (``tcpSocket`` or
``httpGet``, its delays and thresholds), and on deletion runs the preStop ``sleep``, then stops
the process with SIGQUIT (the APISIX image's ``STOPSIGNAL``: apache/apisix-docker
``debian/Dockerfile``) and SIGKILL after ``terminationGracePeriodSeconds``.

Every duration the manifests declare is multiplied by ``scale`` (e.g. 0.05: a 30 s preStop
sleep takes 1.5 s), so that rehearsals are quick while keeping the vendor charts' proportions.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import json
import logging
import math
import os
import re
import shlex
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from ..fleet import SANDBOX_TAG_ENV
from ..spec import Fault, version_of_image
from .api import KubeAPI, Obj, now_iso

log = logging.getLogger(__name__)

DEPLOYMENTS, REPLICASETS, PODS = "apps/v1/deployments", "apps/v1/replicasets", "v1/pods"
PROXY_PORT, STATUS_PORT, METRICS_PORT = 9080, 7085, 9091
REVISION = "deployment.kubernetes.io/revision"
DEFAULT_DEADLINE_S = 600  # DeploymentSpec.progressDeadlineSeconds default


def digest_of(image: str) -> str:
    """The emulated registry's digest of an image reference (no registry here)."""
    return "sha256:" + hashlib.sha256(image.encode()).hexdigest()


def template_hash(template: Obj) -> str:
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]


def resolve_percent(value: Any, total: int, round_up: bool) -> int:
    """``maxSurge``/``maxUnavailable``: an int or a percentage of the replicas (surge rounds
    up, unavailable down, as the Deployment controller does)."""
    if isinstance(value, str) and value.endswith("%"):
        exact = int(value[:-1]) * total / 100
        return math.ceil(exact) if round_up else math.floor(exact)
    return int(value)


def is_ready(pod: Obj) -> bool:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return cond.get("status") == "True"
    return False


def owned_by(obj: Obj, owner: Obj) -> bool:
    return any(
        ref.get("uid") == owner["metadata"]["uid"]
        for ref in obj["metadata"].get("ownerReferences") or []
    )


def _owner_ref(owner: Obj) -> dict[str, Any]:
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": True,
    }


@dataclass
class _Progress:
    signature: tuple[Any, ...] = ()
    since: float = field(default_factory=time.monotonic)
    paused: bool = False


@dataclass
class PodRuntime:
    """What the kubelet keeps about one pod it runs."""

    ip: str
    process: asyncio.subprocess.Process | None = None
    task: asyncio.Task[None] | None = None
    version: str | None = None


class Controller:
    def __init__(
        self,
        api: KubeAPI,
        *,
        scale: float = 0.05,
        faults: dict[str, Fault] | None = None,
        ready_delay_s: float = 0.5,
        latency_ms: float = 20.0,
        tick_s: float = 0.05,
        ip_prefix: str = "127.10",
    ) -> None:
        self.api = api
        self.scale = scale
        self.faults = faults or {}
        self.ready_delay_s = ready_delay_s
        self.latency_ms = latency_ms
        self.tick_s = tick_s
        self.ip_prefix = ip_prefix
        self.tag = f"kube-{ip_prefix}"
        """Marks every pod process (``fleet.SANDBOX_TAG_ENV``), so that one left behind by a
        killed cluster is found and stopped by the next one on the same addresses."""
        self.pods: dict[tuple[str | None, str], PodRuntime] = {}
        self.history: dict[tuple[str | None, str], list[str]] = {}
        """Per Deployment (namespace, name): the versions its pods ran, one entry per completed
        rollout — the cluster's own record, independent of any client's."""
        self.served_before_ready: dict[tuple[str | None, str], int] = {}
        """Per Deployment: requests its pods answered before they were ready (the simulator's
        own count, read from each pod before it stops)."""
        self._progress: dict[str, _Progress] = {}
        self._next_ip = 1
        self._stopping = False
        self._session: aiohttp.ClientSession | None = None

    # --- lifecycle --------------------------------------------------------------------------

    async def run(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2))
        try:
            while not self._stopping:
                try:
                    self.reconcile()
                except Exception:  # a bad object must not stop the cluster
                    log.exception("controller pass failed")
                await asyncio.sleep(self.tick_s)
        finally:
            await self._session.close()

    async def stop(self) -> None:
        self._stopping = True
        for rt in list(self.pods.values()):
            if rt.task is not None:
                rt.task.cancel()
        for rt in list(self.pods.values()):
            if rt.process is not None and rt.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    rt.process.kill()
                with contextlib.suppress(Exception):
                    await rt.process.wait()

    # --- the Deployment controller ----------------------------------------------------------

    def reconcile(self) -> None:
        deployments = self.api.objects(DEPLOYMENTS)
        for d in deployments:
            self._reconcile_deployment(d)
        self._collect_garbage(deployments)
        for (ns, name), rt in list(self.pods.items()):
            if rt.task is None and (PODS, ns, name) in self.api.store:
                rt.task = asyncio.get_running_loop().create_task(self._pod_life(ns, name, rt))
        for gvp, ns, name in list(self.api.store):
            if gvp == PODS and (ns, name) not in self.pods:
                self.pods[(ns, name)] = PodRuntime(ip=self._allocate_ip())

    def _reconcile_deployment(self, d: Obj) -> None:
        ns = d["metadata"].get("namespace")
        spec = d.get("spec") or {}
        desired = int(spec.get("replicas", 1))
        template = spec.get("template") or {}
        h = template_hash(template)
        rss = [rs for rs in self.api.objects(REPLICASETS, ns) if owned_by(rs, d)]
        new_rs = next(
            (rs for rs in rss if rs["metadata"].get("labels", {}).get("pod-template-hash") == h),
            None,
        )
        paused = bool(spec.get("paused"))
        if new_rs is None and not paused:
            new_rs = self._create_rs(d, template, h, rss)
        elif new_rs is not None and not paused:
            self._bump_revision(d, new_rs, rss)
        pods = [p for p in self.api.objects(PODS, ns) if any(owned_by(p, rs) for rs in rss)]
        if new_rs is not None:
            pods += [p for p in self.api.objects(PODS, ns) if owned_by(p, new_rs) and p not in pods]
        live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        new_pods = [p for p in live if new_rs is not None and owned_by(p, new_rs)]
        old_pods = [p for p in live if p not in new_pods]
        if not paused and new_rs is not None:
            self._roll(d, spec, desired, new_rs, new_pods, old_pods, live)
        self._write_status(d, desired, new_pods, old_pods, live, paused)

    def _create_rs(self, d: Obj, template: Obj, h: str, rss: list[Obj]) -> Obj:
        revision = 1 + max(
            (int(rs["metadata"].get("annotations", {}).get(REVISION, 0)) for rs in rss), default=0
        )
        labels = {**(template.get("metadata") or {}).get("labels", {}), "pod-template-hash": h}
        rs = {
            "metadata": {
                "name": f"{d['metadata']['name']}-{h}",
                "labels": labels,
                "annotations": {REVISION: str(revision)},
                "ownerReferences": [_owner_ref(d)],
            },
            "spec": {
                "replicas": 0,
                "selector": {"matchLabels": labels},
                "template": {
                    **copy.deepcopy(template),
                    "metadata": {**copy.deepcopy(template.get("metadata") or {}), "labels": labels},
                },
            },
        }
        return self.api.create(REPLICASETS, d["metadata"].get("namespace"), rs)

    def _bump_revision(self, d: Obj, new_rs: Obj, rss: list[Obj]) -> None:
        """A rollback to an older template makes its ReplicaSet the newest revision again."""
        revisions = [int(rs["metadata"].get("annotations", {}).get(REVISION, 0)) for rs in rss]
        mine = int(new_rs["metadata"].get("annotations", {}).get(REVISION, 0))
        if mine < max(revisions, default=0):
            key = (REPLICASETS, new_rs["metadata"].get("namespace"), new_rs["metadata"]["name"])
            obj = copy.deepcopy(self.api.store[key])
            obj["metadata"].setdefault("annotations", {})[REVISION] = str(max(revisions) + 1)
            self.api.put(key, obj)

    def _roll(
        self,
        d: Obj,
        spec: Obj,
        desired: int,
        new_rs: Obj,
        new_pods: list[Obj],
        old_pods: list[Obj],
        live: list[Obj],
    ) -> None:
        strategy = spec.get("strategy") or {}
        if strategy.get("type") == "Recreate":
            for p in old_pods:
                self.api.delete((PODS, p["metadata"].get("namespace"), p["metadata"]["name"]))
            terminating = any(
                self._is_terminating(p)
                for p in self.api.objects(PODS, d["metadata"].get("namespace"))
                if not owned_by(p, new_rs)
            )
            if not old_pods and not terminating:
                for _ in range(desired - len(new_pods)):
                    self._create_pod(new_rs)
            return
        rolling = strategy.get("rollingUpdate") or {}
        surge = resolve_percent(rolling.get("maxSurge", "25%"), desired, round_up=True)
        unavailable = resolve_percent(rolling.get("maxUnavailable", "25%"), desired, round_up=False)
        if surge == 0 and unavailable == 0:
            unavailable = 1  # the API refuses both zero; never stall
        room = desired + surge - len(live)
        for _ in range(max(0, min(desired - len(new_pods), room))):
            self._create_pod(new_rs)
        can_remove = sum(is_ready(p) for p in live) - (desired - unavailable)
        for p in sorted(old_pods, key=is_ready):  # the not-ready first
            if not is_ready(p):
                self._delete_pod(p)
            elif can_remove > 0:
                self._delete_pod(p)
                can_remove -= 1
        extra = len(new_pods) - desired
        for p in sorted(new_pods, key=is_ready)[: max(0, extra)]:
            self._delete_pod(p)

    def _is_terminating(self, pod: Obj) -> bool:
        return bool(pod["metadata"].get("deletionTimestamp"))

    def _create_pod(self, rs: Obj) -> None:
        template = rs["spec"]["template"]
        pod = {
            "metadata": {
                "name": f"{rs['metadata']['name']}-{uuid.uuid4().hex[:5]}",
                "labels": dict(template["metadata"]["labels"]),
                "annotations": dict((template.get("metadata") or {}).get("annotations") or {}),
                "ownerReferences": [_owner_ref(rs)],
            },
            "spec": copy.deepcopy(template.get("spec") or {}),
            "status": {
                "phase": "Pending",
                "conditions": [
                    {"type": "Ready", "status": "False", "reason": "ContainersNotReady"}
                ],
            },
        }
        created = self.api.create(PODS, rs["metadata"].get("namespace"), pod)
        key = (created["metadata"].get("namespace"), created["metadata"]["name"])
        self.pods[key] = PodRuntime(ip=self._allocate_ip())

    def _delete_pod(self, pod: Obj) -> None:
        self.api.delete((PODS, pod["metadata"].get("namespace"), pod["metadata"]["name"]))

    def _write_status(
        self,
        d: Obj,
        desired: int,
        new_pods: list[Obj],
        old_pods: list[Obj],
        live: list[Obj],
        paused: bool,
    ) -> None:
        key = (DEPLOYMENTS, d["metadata"].get("namespace"), d["metadata"]["name"])
        generation = d["metadata"].get("generation", 1)
        ready = sum(is_ready(p) for p in live)
        updated_ready = sum(is_ready(p) for p in new_pods)
        complete = len(new_pods) == desired and updated_ready == desired and not old_pods
        if complete:
            image = _gateway_container({"spec": d["spec"]["template"].get("spec") or {}}).get(
                "image", ""
            )
            with contextlib.suppress(ValueError):
                version = version_of_image(image)
                seen = self.history.setdefault((key[1], key[2]), [])
                if not seen or seen[-1] != version:
                    seen.append(version)
        uid = d["metadata"]["uid"]
        progress = self._progress.setdefault(uid, _Progress())
        signature = (generation, len(new_pods), updated_ready, len(old_pods))
        if signature != progress.signature or paused != progress.paused:
            progress.signature, progress.since, progress.paused = (
                signature,
                time.monotonic(),
                paused,
            )
        deadline = float(d["spec"].get("progressDeadlineSeconds", DEFAULT_DEADLINE_S)) * self.scale
        if complete:
            progressing = (
                "True",
                "NewReplicaSetAvailable",
                "ReplicaSet has successfully progressed.",
            )
        elif paused:
            progressing = ("Unknown", "DeploymentPaused", "Deployment is paused")
        elif time.monotonic() - progress.since > deadline:
            progressing = (
                "False",
                "ProgressDeadlineExceeded",
                f'ReplicaSet "{d["metadata"]["name"]}" has timed out progressing.',
            )
        else:
            progressing = ("True", "ReplicaSetUpdated", "ReplicaSet is progressing.")
        rolling = (d["spec"].get("strategy") or {}).get("rollingUpdate") or {}
        available = ready >= desired - resolve_percent(
            rolling.get("maxUnavailable", "25%"), desired, round_up=False
        )
        old_status = d.get("status") or {}
        status = {
            "observedGeneration": generation,
            "replicas": len(live),
            "updatedReplicas": len(new_pods),
            "readyReplicas": ready,
            "availableReplicas": ready,
            "unavailableReplicas": max(0, len(live) - ready),
            "conditions": [
                _condition(
                    "Available",
                    "True" if available else "False",
                    "MinimumReplicasAvailable" if available else "MinimumReplicasUnavailable",
                    "Deployment has minimum availability."
                    if available
                    else "Deployment does not have minimum availability.",
                    old_status,
                ),
                _condition("Progressing", *progressing, old_status),
            ],
        }
        if status != old_status:
            obj = copy.deepcopy(self.api.store[key])
            obj["status"] = status
            self.api.put(key, obj, bump=False)

    def _collect_garbage(self, deployments: list[Obj]) -> None:
        uids = {d["metadata"]["uid"] for d in deployments}
        for rs in list(self.api.objects(REPLICASETS)):
            refs = rs["metadata"].get("ownerReferences") or []
            if refs and not any(r["uid"] in uids for r in refs):
                self.api.store.pop(
                    (REPLICASETS, rs["metadata"].get("namespace"), rs["metadata"]["name"]), None
                )
        rs_uids = {rs["metadata"]["uid"] for rs in self.api.objects(REPLICASETS)}
        for pod in list(self.api.objects(PODS)):
            refs = pod["metadata"].get("ownerReferences") or []
            if refs and not any(r["uid"] in rs_uids for r in refs):
                if not pod["metadata"].get("deletionTimestamp"):
                    self._delete_pod(pod)

    # --- the kubelet ------------------------------------------------------------------------

    def _allocate_ip(self) -> str:
        n = self._next_ip
        self._next_ip += 1
        return f"{self.ip_prefix}.{n // 250}.{n % 250 + 2}"

    def _pod(self, ns: str | None, name: str) -> Obj | None:
        return self.api.store.get((PODS, ns, name))

    def _set_pod_status(self, ns: str | None, name: str, **changes: Any) -> None:
        pod = self._pod(ns, name)
        if pod is None:
            return
        obj = copy.deepcopy(pod)
        status = obj.setdefault("status", {})
        status.update(changes)
        if obj != pod:
            self.api.put((PODS, ns, name), obj, bump=False)

    async def _pod_life(self, ns: str | None, name: str, rt: PodRuntime) -> None:
        try:
            await self._run_pod(ns, name, rt)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("pod %s/%s failed", ns, name)
        finally:
            if rt.process is not None and rt.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    rt.process.kill()
            self.api.store.pop((PODS, ns, name), None)
            self.pods.pop((ns, name), None)

    async def _run_pod(self, ns: str | None, name: str, rt: PodRuntime) -> None:
        pod = self._pod(ns, name)
        if pod is None:
            return
        container = _gateway_container(pod)
        image = container.get("image", "")
        try:
            rt.version = version_of_image(image)
        except ValueError:
            rt.version = None
        started = time.monotonic()
        if rt.version is not None and not pod["metadata"].get("deletionTimestamp"):
            await self._start_process(pod, container, rt)
        self._set_pod_status(
            ns,
            name,
            phase="Running",
            podIP=rt.ip,
            hostIP="127.0.0.1",
            startTime=now_iso(),
            containerStatuses=[_container_status(container, ready=False)],
        )
        probe = container.get("readinessProbe")
        ready = False
        failures = successes = 0
        initial = float((probe or {}).get("initialDelaySeconds", 0)) * self.scale
        period = max(0.05, float((probe or {}).get("periodSeconds", 10)) * self.scale)
        need_ok = int((probe or {}).get("successThreshold", 1))
        need_fail = int((probe or {}).get("failureThreshold", 3))
        next_probe = started + initial
        while True:
            pod = self._pod(ns, name)
            if pod is None:
                return
            if pod["metadata"].get("deletionTimestamp"):
                break
            if rt.process is not None and rt.process.returncode is not None:
                ready = False
            elif time.monotonic() >= next_probe:
                next_probe = time.monotonic() + period
                ok = await self._probe(probe, container, rt)
                if ok:
                    successes, failures = successes + 1, 0
                    if successes >= need_ok:
                        ready = True
                else:
                    successes, failures = 0, failures + 1
                    if failures >= need_fail:
                        ready = False
            self._mark_ready(ns, name, container, ready)
            await asyncio.sleep(min(self.tick_s, period))
        await self._terminate(ns, name, pod, container, rt)

    def _mark_ready(self, ns: str | None, name: str, container: Obj, ready: bool) -> None:
        flag = "True" if ready else "False"
        pod = self._pod(ns, name)
        if pod is None:
            return
        conds = (pod.get("status") or {}).get("conditions") or []
        if any(c.get("type") == "Ready" and c.get("status") == flag for c in conds):
            return
        self._set_pod_status(
            ns,
            name,
            conditions=[{"type": "Ready", "status": flag, "lastTransitionTime": now_iso()}],
            containerStatuses=[_container_status(container, ready=ready)],
        )

    async def _probe(self, probe: Obj | None, container: Obj, rt: PodRuntime) -> bool:
        if rt.process is None:
            return False
        if not probe:
            return True  # no readiness probe: Ready once started
        timeout = max(0.5, float(probe.get("timeoutSeconds", 1)))
        if "tcpSocket" in probe:
            port = _port(container, probe["tcpSocket"].get("port"))
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(rt.ip, port), timeout)
            except (OSError, TimeoutError):
                return False
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return True
        if "httpGet" in probe:
            get = probe["httpGet"]
            port = _port(container, get.get("port"))
            url = f"http://{rt.ip}:{port}{get.get('path', '/')}"
            assert self._session is not None
            try:
                async with self._session.get(
                    url,
                    headers={"User-Agent": "kube-probe/1.30"},
                    timeout=aiohttp.ClientTimeout(total=timeout),
                ) as resp:
                    return 200 <= resp.status < 400
            except (aiohttp.ClientError, TimeoutError):
                return False
        return True  # exec probes are not emulated: taken as passing

    async def _start_process(self, pod: Obj, container: Obj, rt: PodRuntime) -> None:
        assert rt.version is not None
        image = container.get("image", "")
        product = "api7" if "api7" in image.split(":")[0] else "apisix"
        fault = self.faults.get(rt.version, Fault())
        labels = pod["metadata"].get("labels") or {}
        group = labels.get("app.kubernetes.io/instance") or labels.get("app") or "k8s"
        args = [
            sys.executable,
            "-m",
            "upgrade_bot.sandbox.simulator",
            "--instance-id",
            pod["metadata"]["name"],
            "--slot",
            pod["metadata"]["name"],
            "--group",
            group,
            "--version",
            rt.version,
            "--product",
            product,
            "--host",
            rt.ip,
            "--proxy-port",
            str(PROXY_PORT),
            "--status-port",
            str(STATUS_PORT),
            "--metrics-port",
            str(METRICS_PORT),
            "--ready-delay",
            str(self.ready_delay_s),
            "--latency-ms",
            str(self.latency_ms),
            "--faults",
            json.dumps(fault.knobs()),
        ]
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=None,
            start_new_session=True,
            env={**os.environ, SANDBOX_TAG_ENV: self.tag},
        )
        rt.process = proc
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=30)
        if not line:
            log.warning("pod %s: the gateway exited before listening", pod["metadata"]["name"])
        asyncio.get_running_loop().create_task(_drain(proc))

    async def _terminate(
        self, ns: str | None, name: str, pod: Obj, container: Obj, rt: PodRuntime
    ) -> None:
        """The kubelet's pod termination: out of the endpoints at once (not Ready), preStop,
        the stop signal, SIGKILL at the end of the grace period."""
        self._mark_ready(ns, name, container, False)
        await self._collect_stats(pod, rt)
        grace = float(pod["spec"].get("terminationGracePeriodSeconds", 30)) * self.scale
        deadline = time.monotonic() + grace
        sleep_s = _pre_stop_sleep(container) * self.scale
        if sleep_s and rt.process is not None:
            await asyncio.sleep(min(sleep_s, max(0.0, deadline - time.monotonic())))
        proc = rt.process
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGQUIT)
            try:
                await asyncio.wait_for(proc.wait(), max(0.01, deadline - time.monotonic()))
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()

    async def _collect_stats(self, pod: Obj, rt: PodRuntime) -> None:
        if rt.process is None or self._session is None:
            return
        owner = _deployment_of(pod)
        try:
            async with self._session.get(
                f"http://{rt.ip}:{STATUS_PORT}/sandbox/stats",
                headers={"User-Agent": "sandbox-fleet/1"},
            ) as resp:
                stats = await resp.json()
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return
        key = (pod["metadata"].get("namespace"), owner)
        self.served_before_ready[key] = self.served_before_ready.get(key, 0) + int(
            stats.get("served_before_ready", 0)
        )


def _deployment_of(pod: Obj) -> str:
    """The Deployment a pod belongs to: its ReplicaSet's name less the template hash."""
    for ref in pod["metadata"].get("ownerReferences") or []:
        if ref.get("kind") == "ReplicaSet":
            return str(ref["name"]).rsplit("-", 1)[0]
    return ""


async def _drain(proc: asyncio.subprocess.Process) -> None:
    assert proc.stdout is not None
    with contextlib.suppress(Exception):
        await proc.stdout.read()


def _gateway_container(pod: Obj) -> Obj:
    containers = (pod.get("spec") or {}).get("containers") or [{}]
    for c in containers:
        try:
            version_of_image(c.get("image", ""))
            return c
        except ValueError:
            continue
    return containers[0]


def _container_status(container: Obj, ready: bool) -> Obj:
    image = container.get("image", "")
    return {
        "name": container.get("name"),
        "image": image,
        "imageID": f"{image.rsplit(':', 1)[0]}@{digest_of(image)}",
        "ready": ready,
        "started": True,
        "restartCount": 0,
        "state": {"running": {"startedAt": now_iso()}},
    }


def _port(container: Obj, port: Any) -> int:
    """A probe's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int) or (isinstance(port, str) and port.isdigit()):
        return int(port)
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return int(p["containerPort"])
    return PROXY_PORT


SLEEP = re.compile(r"(?:^|\s|;|&&)sleep\s+(\d+(?:\.\d+)?)")


def _pre_stop_sleep(container: Obj) -> float:
    """Seconds of the container's preStop ``sleep`` (exec ``sleep N`` or ``sh -c "sleep N"``,
    or the ``sleep`` handler of Kubernetes 1.30+)."""
    pre_stop = (container.get("lifecycle") or {}).get("preStop") or {}
    if "sleep" in pre_stop:
        return float(pre_stop["sleep"].get("seconds", 0))
    command = (pre_stop.get("exec") or {}).get("command") or []
    match = SLEEP.search(" ".join(shlex.quote(c) if " " not in c else c for c in command))
    return float(match.group(1)) if match else 0.0


def _condition(kind: str, status: str, reason: str, message: str, old_status: Obj) -> Obj:
    old = next((c for c in old_status.get("conditions", []) if c["type"] == kind), None)
    same = old is not None and old.get("status") == status and old.get("reason") == reason
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastUpdateTime": old["lastUpdateTime"] if same and old else now_iso(),
        "lastTransitionTime": old["lastTransitionTime"]
        if old is not None and old.get("status") == status
        else now_iso(),
    }
