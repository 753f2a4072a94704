"""The Kubernetes backend's ``patch`` strategy on the API7 gateway chart's Deployment, against
the emulated cluster over HTTP with the real ``kubernetes`` client."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from upgrade_bot.engine.backends.kubernetes import KubernetesBackend, build
from upgrade_bot.engine.config import KubernetesBackend as Settings
from upgrade_bot.engine.errors import NotReadyError, PermanentError
from upgrade_bot.sandbox.kube.cluster import EmulatedCluster
from upgrade_bot.sandbox.spec import Fault
from upgrade_bot.sandbox.traffic import TrafficGenerator

from ..support import eventually
from .manifests import API7_DEPLOYMENT, API7_IMAGE, api7_deployment

NEW_IMAGE = "api7/api7-ee-3-gateway:3.10.6"
SELECTOR = {"app.kubernetes.io/name": "gateway", "app.kubernetes.io/instance": API7_DEPLOYMENT}


def backend(kubeconfig: Path, namespace: str, **settings: object) -> KubernetesBackend:
    return build(
        "g",
        Settings(
            type="kubernetes",
            namespace=namespace,
            deployment=API7_DEPLOYMENT,
            kubeconfig=str(kubeconfig),
            strategy="patch",
            poll_interval_s=0.1,
            **settings,
        ),
    )


def deployment(cluster: EmulatedCluster, namespace: str) -> dict:
    d = cluster.get("Deployment", namespace, API7_DEPLOYMENT)
    assert d is not None
    return d


def template_image(cluster: EmulatedCluster, namespace: str) -> str:
    d = deployment(cluster, namespace)
    return d["spec"]["template"]["spec"]["containers"][0]["image"]


def pod_images(cluster: EmulatedCluster, namespace: str) -> list[str]:
    return sorted(
        p["spec"]["containers"][0]["image"]
        for p in cluster.pods(namespace, SELECTOR)
        if not p["metadata"].get("deletionTimestamp")
    )


async def rolled_out(cluster: EmulatedCluster, namespace: str, image: str, replicas: int) -> None:
    def check() -> bool:
        d = deployment(cluster, namespace)
        status = d.get("status") or {}
        return (
            status.get("observedGeneration") == d["metadata"]["generation"]
            and status.get("readyReplicas") == replicas
            and pod_images(cluster, namespace) == [image] * replicas
        )

    await eventually(check, f"the Deployment rolled out on {image}", within=60)


async def setup(cluster: EmulatedCluster, namespace: str, **kwargs: object) -> None:
    cluster.apply([api7_deployment(**kwargs)], namespace)
    replicas = int(kwargs.get("replicas", 3))  # type: ignore[arg-type]
    if not kwargs.get("paused"):
        await rolled_out(cluster, namespace, API7_IMAGE, replicas)


@pytest.mark.traffic
async def test_patch_upgrade_and_rollback_under_traffic(
    cluster: EmulatedCluster, kubeconfig: Path, namespace: str
) -> None:
    await setup(cluster, namespace)
    door = cluster.front_door(f"{namespace}-gw", namespace, SELECTOR)
    before = deployment(cluster, namespace)
    b = backend(kubeconfig, namespace)
    try:
        slots = await b.list_slots()
        assert [s.id for s in slots] == ["g/0", "g/1", "g/2"]
        assert {s.image for s in slots} == {API7_IMAGE} and all(s.ready for s in slots)
        news: list[str] = []
        async with TrafficGenerator({"g": door}, rate_per_s=60) as traffic:
            rollout = await b.ensure_group(
                NEW_IMAGE,
                slots=["g/0", "g/1", "g/2"],
                ready_timeout_s=30,
                progress=lambda n: news.append(f"{n.slot_id}:{n.step}"),
            )
            await asyncio.sleep(0.5)  # traffic after the last replacement, too
            counts = traffic.counts()
        assert rollout.complete, rollout
        assert counts["failed"] == 0, (counts, traffic.failure_reasons())
        assert counts["total"] > 100
        assert news[-1] == "g/2:ready" and news.count("g/0:started") == 1
        after = deployment(cluster, namespace)
        assert after["metadata"]["generation"] == before["metadata"]["generation"] + 1
        container = after["spec"]["template"]["spec"]["containers"][0]
        # Only the image changed: ports, probe, volume mounts, the preStop hook are all kept.
        before_container = before["spec"]["template"]["spec"]["containers"][0]
        assert {**before_container, "image": NEW_IMAGE} == container
        pods = {p["metadata"]["name"]: p for p in cluster.pods(namespace, SELECTOR)}
        for info in rollout.ready.values():
            assert info.image == NEW_IMAGE and info.version == "3.10.6"
            digests = {
                p["status"]["containerStatuses"][0]["imageID"].split("@")[1]
                for p in pods.values()
                if p["spec"]["containers"][0]["image"] == NEW_IMAGE
            }
            assert info.digest in digests
        # Asked again (a resumed run): nothing is patched, the slots come back at once.
        again = await b.ensure_group(NEW_IMAGE, slots=["g/0"], ready_timeout_s=5)
        assert again.complete
        assert (
            deployment(cluster, namespace)["metadata"]["generation"]
            == after["metadata"]["generation"]
        )
        # Rollback: the previous image patched back, last slot first as the engine asks.
        async with TrafficGenerator({"g": door}, rate_per_s=60) as traffic:
            restored = await b.ensure_group(API7_IMAGE, slots=["g/2"], ready_timeout_s=30)
            counts = traffic.counts()
        assert restored.complete and counts["failed"] == 0, counts
        assert pod_images(cluster, namespace) == [API7_IMAGE] * 3
        for slot in ("g/1", "g/0"):
            assert (await b.ensure_group(API7_IMAGE, slots=[slot], ready_timeout_s=5)).complete
    finally:
        await b.close()


@pytest.mark.traffic
async def test_an_image_that_never_becomes_ready_is_detected_and_rolled_back(
    cluster: EmulatedCluster, kubeconfig: Path, namespace: str
) -> None:
    cluster.set_fault("3.10.7", Fault(never_ready=True))
    await setup(cluster, namespace, replicas=2)
    door = cluster.front_door(f"{namespace}-gw", namespace, SELECTOR)
    b = backend(kubeconfig, namespace)
    try:
        async with TrafficGenerator({"g": door}, rate_per_s=40) as traffic:
            stuck = await b.ensure_group(
                "api7/api7-ee-3-gateway:3.10.7", slots=["g/0"], ready_timeout_s=3
            )
            assert list(stuck.failed) == ["g/0"]
            assert isinstance(stuck.failed["g/0"], NotReadyError)
            assert "not ready within 3s" in str(stuck.failed["g/0"])
            # No pod of it was ever ready, so no slot is the engine's to restore: the backend
            # put the previous image back itself. maxUnavailable 0: the old pods kept serving.
            assert f"the Deployment was put back on {API7_IMAGE}" in str(stuck.failed["g/0"])
            assert template_image(cluster, namespace) == API7_IMAGE
            await rolled_out(cluster, namespace, API7_IMAGE, 2)
            restored = await b.ensure_group(API7_IMAGE, slots=["g/1"], ready_timeout_s=30)
            counts = traffic.counts()
        assert restored.complete
        assert counts["failed"] == 0, counts
        assert pod_images(cluster, namespace) == [API7_IMAGE] * 2
    finally:
        await b.close()


@pytest.mark.traffic
async def test_progress_deadline_exceeded_fails_the_rollout(
    cluster: EmulatedCluster, kubeconfig: Path, namespace: str
) -> None:
    cluster.set_fault("3.10.8", Fault(never_ready=True))
    # 40 s x 0.05: Kubernetes gives up after 2 s without progress.
    await setup(cluster, namespace, replicas=2, progressDeadlineSeconds=40)
    b = backend(kubeconfig, namespace)
    try:
        stuck = await b.ensure_group(
            "api7/api7-ee-3-gateway:3.10.8", slots=["g/0", "g/1"], ready_timeout_s=60
        )
        assert list(stuck.failed) == ["g/0"] and stuck.pending == ("g/1",)
        assert "ProgressDeadlineExceeded" in str(stuck.failed["g/0"])
        assert template_image(cluster, namespace) == API7_IMAGE  # put back
        restored = await b.ensure_group(API7_IMAGE, slots=["g/1"], ready_timeout_s=30)
        assert restored.complete
    finally:
        await b.close()


@pytest.mark.traffic
async def test_a_pause_pauses_the_rollout_and_a_rollback_unpauses(
    cluster: EmulatedCluster, kubeconfig: Path, namespace: str
) -> None:
    await setup(cluster, namespace, replicas=3)
    b = backend(kubeconfig, namespace)
    pause = asyncio.Event()
    try:

        def on_progress(news: object) -> None:
            if getattr(news, "step", None) == "ready":
                pause.set()  # a mid-group "fail" from the metric watch

        rollout = await b.ensure_group(
            NEW_IMAGE,
            slots=["g/0", "g/1", "g/2"],
            ready_timeout_s=30,
            progress=on_progress,
            pause=pause,
        )
        assert rollout.paused and "g/0" in rollout.ready and rollout.pending
        assert deployment(cluster, namespace)["spec"]["paused"] is True
        await asyncio.sleep(1.0)  # paused: Kubernetes starts no further pod
        assert pod_images(cluster, namespace).count(NEW_IMAGE) < 3
        # A batch the engine asked for: the rollout stops there too, until the next batch.
        batch = await b.ensure_group(NEW_IMAGE, slots=["g/1"], ready_timeout_s=30)
        assert batch.complete and deployment(cluster, namespace)["spec"]["paused"] is True
        last = await b.ensure_group(NEW_IMAGE, slots=["g/2"], ready_timeout_s=30)
        assert last.complete and deployment(cluster, namespace)["spec"]["paused"] is False
        assert pod_images(cluster, namespace) == [NEW_IMAGE] * 3
        restored = await b.ensure_group(API7_IMAGE, slots=["g/2"], ready_timeout_s=30)
        assert restored.complete
        assert deployment(cluster, namespace)["spec"]["paused"] is False
        assert pod_images(cluster, namespace) == [API7_IMAGE] * 3
    finally:
        await b.close()


@pytest.mark.traffic
async def test_a_bot_killed_mid_rollout_resumes_without_a_second_patch(
    cluster: EmulatedCluster, kubeconfig: Path, namespace: str, tmp_path: Path
) -> None:
    await setup(cluster, namespace, replicas=3)
    generation = deployment(cluster, namespace)["metadata"]["generation"]
    script = tmp_path / "bot.py"
    script.write_text(
        "import asyncio, sys\n"
        "from upgrade_bot.engine.backends.kubernetes import build\n"
        "from upgrade_bot.engine.config import KubernetesBackend as S\n"
        f"b = build('g', S(type='kubernetes', namespace={namespace!r}, "
        f"deployment={API7_DEPLOYMENT!r}, kubeconfig={str(kubeconfig)!r}, strategy='patch', "
        "poll_interval_s=0.1))\n"
        f"asyncio.run(b.ensure_group({NEW_IMAGE!r}, ready_timeout_s=60, fence='run-1:1'))\n"
    )
    bot = subprocess.Popen([sys.executable, str(script)])
    try:
        await eventually(
            lambda: NEW_IMAGE in pod_images(cluster, namespace), "the rollout started", within=30
        )
        os.kill(bot.pid, signal.SIGKILL)
        bot.wait()
    finally:
        if bot.poll() is None:
            bot.kill()
    assert deployment(cluster, namespace)["metadata"]["generation"] == generation + 1
    b = backend(kubeconfig, namespace)
    try:
        resumed = await b.ensure_group(
            NEW_IMAGE, slots=["g/0", "g/1", "g/2"], ready_timeout_s=30, fence="run-1:2"
        )
        assert resumed.complete
        d = deployment(cluster, namespace)
        assert d["metadata"]["generation"] == generation + 1  # one patch, not two
        assert d["metadata"]["annotations"]["upgrade-bot/fence"] == "run-1:2"
        # The first driver, were it still alive, is refused by the fence.
        stale = backend(kubeconfig, namespace)
        with pytest.raises(PermanentError, match="newer driver"):
            await stale.ensure_group(API7_IMAGE, slots=["g/0"], ready_timeout_s=5, fence="run-1:1")
        await stale.close()
    finally:
        await b.close()


@pytest.mark.traffic
async def test_an_autoscaler_or_gitops_change_is_reported_not_fought(
    cluster: EmulatedCluster, kubeconfig: Path, namespace: str
) -> None:
    await setup(cluster, namespace, replicas=2)
    b = backend(kubeconfig, namespace)
    try:
        task = asyncio.create_task(
            b.ensure_group(NEW_IMAGE, slots=["g/0", "g/1"], ready_timeout_s=30)
        )
        await eventually(lambda: template_image(cluster, namespace) == NEW_IMAGE, "patched")
        d = deployment(cluster, namespace)
        d["spec"]["replicas"] = 4  # a HorizontalPodAutoscaler scales up
        d["metadata"].pop("resourceVersion")
        cluster.apply([d], namespace)
        result = await task
        assert "replicas changed from 2 to 4" in str(result.failed["g/0"])
        assert deployment(cluster, namespace)["spec"]["replicas"] == 4  # not fought

        d = deployment(cluster, namespace)  # the operator puts things back
        d["spec"]["replicas"] = 2
        d["spec"]["template"]["spec"]["containers"][0]["image"] = API7_IMAGE
        d["metadata"].pop("resourceVersion")
        cluster.apply([d], namespace)
        await rolled_out(cluster, namespace, API7_IMAGE, 2)
        task = asyncio.create_task(
            b.ensure_group(NEW_IMAGE, slots=["g/0", "g/1"], ready_timeout_s=30)
        )
        await eventually(lambda: template_image(cluster, namespace) == NEW_IMAGE, "patched")
        d = deployment(cluster, namespace)
        d["spec"]["template"]["spec"]["containers"][0]["image"] = API7_IMAGE  # Argo CD reverts
        d["metadata"].pop("resourceVersion")
        cluster.apply([d], namespace)
        result = await task
        assert "GitOps" in str(result.failed["g/0"])
        assert template_image(cluster, namespace) == API7_IMAGE  # not fought
    finally:
        await b.close()


@pytest.mark.traffic
async def test_the_failed_count_sees_requests_cut_by_a_too_short_grace_period(
    cluster: EmulatedCluster, kubeconfig: Path, namespace: str
) -> None:
    """Negative control for ``failed == 0`` above: pods killed (SIGKILL at the end of a 1 s
    grace period, no preStop sleep) while slow requests are in flight cut them, and the traffic
    through the front door counts them as failed."""
    old = "api7/api7-ee-3-gateway:3.10.4"
    cluster.set_fault("3.10.4", Fault(added_latency_ms=1500))
    d = api7_deployment(replicas=2)
    container = d["spec"]["template"]["spec"]["containers"][0]
    container["image"] = old
    container.pop("lifecycle")
    d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 1  # x 0.05: 50 ms
    cluster.apply([d], namespace)
    await rolled_out(cluster, namespace, old, 2)
    door = cluster.front_door(f"{namespace}-gw", namespace, SELECTOR)
    b = backend(kubeconfig, namespace)
    try:
        async with TrafficGenerator({"g": door}, rate_per_s=40) as traffic:
            await asyncio.sleep(2.0)  # requests in flight on every pod
            rollout = await b.ensure_group(NEW_IMAGE, slots=["g/0", "g/1"], ready_timeout_s=30)
            counts = traffic.counts()
        assert rollout.complete
        assert counts["failed"] > 0, counts
        assert "terminationGracePeriodSeconds (1s)" in "\n".join(await b.preflight())
    finally:
        await b.close()
