"""The Kubernetes backend's ``helm`` strategy on the vendor's APISIX chart, installed as a release
into the emulated cluster by Helm's own engine (helm-python-sdk), as the runbook says: upgrade
with the deployed values and only the tag changed, roll back to the recorded revision."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes
import pytest
import yaml

from upgrade_bot.engine.backends.kubernetes import KubernetesBackend, build
from upgrade_bot.engine.config import KubernetesBackend as Settings
from upgrade_bot.engine.errors import PermanentError, TemporaryError
from upgrade_bot.sandbox.kube.cluster import EmulatedCluster
from upgrade_bot.sandbox.kube.controller import is_ready
from upgrade_bot.sandbox.traffic import TrafficGenerator

from ..support import eventually
from .manifests import APISIX_CHART

RELEASE = "edge"
OLD, NEW = "apache/apisix:3.16.0-ubuntu", "apache/apisix:3.16.1-ubuntu"
SELECTOR = {"app.kubernetes.io/name": "apisix", "app.kubernetes.io/instance": RELEASE}
VALUES = {
    # SOURCE.md: installed without its etcd subchart.
    "etcd": {"enabled": False},
    "externalEtcd": {"host": ["http://etcd:2379"]},
    "replicaCount": 2,
    # The chart then probes httpGet /status/ready on 7085 instead of tcpSocket 9080
    # (templates/deployment.yaml, $useTraditionalYaml).
    "apisix": {"deployment": {"role_traditional": {"config_provider": "yaml"}}},
}


@pytest.fixture
def helm_cfg(kubeconfig: Path, namespace: str) -> Iterator[helm.Config]:
    cfg = helm.Config(kubeconfig_path=str(kubeconfig), namespace=namespace)
    yield cfg
    cfg.close()


def install(cfg: helm.Config, namespace: str) -> None:
    cfg.install(str(APISIX_CHART), RELEASE, VALUES, namespace=namespace)


def backend(kubeconfig: Path, namespace: str, **helm_settings: Any) -> KubernetesBackend:
    return build(
        "g",
        Settings(
            type="kubernetes",
            namespace=namespace,
            selector=SELECTOR,
            kubeconfig=str(kubeconfig),
            poll_interval_s=0.1,
            helm=helm_settings,
        ),
    )


def revisions(cfg: helm.Config) -> list[dict[str, Any]]:
    out = []
    for h in cfg.history(RELEASE):
        full = cfg.get_all(RELEASE, revision=h["revision"])
        out.append(
            {
                "revision": h["revision"],
                "status": h["status"],
                "values": full["config"],
                "description": full["info"]["description"],
            }
        )
    return out


async def ready_on(cluster: EmulatedCluster, namespace: str, image: str, n: int) -> None:
    def check() -> bool:
        pods = [
            p
            for p in cluster.pods(namespace, SELECTOR)
            if not p["metadata"].get("deletionTimestamp")
        ]
        return len(pods) == n and all(
            p["spec"]["containers"][0]["image"] == image and is_ready(p) for p in pods
        )

    await eventually(check, f"{n} pods ready on {image}", within=60)


@pytest.mark.traffic
async def test_helm_upgrade_changes_only_the_tag_and_rolls_back_to_the_recorded_revision(
    cluster: EmulatedCluster, kubeconfig: Path, namespace: str, helm_cfg: helm.Config
) -> None:
    await asyncio.to_thread(install, helm_cfg, namespace)
    await ready_on(cluster, namespace, OLD, 2)
    door = cluster.front_door(f"{namespace}-edge", namespace, SELECTOR)
    b = backend(kubeconfig, namespace)
    try:
        # The chart's defaults: no PodDisruptionBudget, and Kubernetes' default 30 s grace
        # period no longer than the chart's 30 s preStop sleep.
        found = await b.preflight()
        assert len(found) == 2, found
        assert "no PodDisruptionBudget" in found[0] + found[1]
        assert "terminationGracePeriodSeconds (30s)" in found[0] + found[1]
        async with TrafficGenerator({"g": door}, rate_per_s=50) as traffic:
            rollout = await b.ensure_group(NEW, slots=["g/0", "g/1"], ready_timeout_s=30)
            counts = traffic.counts()
        assert rollout.complete, rollout
        assert counts["failed"] == 0 and counts["total"] > 50, counts
        assert b.revisions == (1, 2)
        history = await asyncio.to_thread(revisions, helm_cfg)
        assert [h["revision"] for h in history] == [1, 2]
        assert history[1]["values"] == {**VALUES, "image": {"tag": "3.16.1-ubuntu"}}
        assert history[1]["description"].startswith(f"upgrade-bot: {NEW} from revision 1")
        assert {i.version for i in rollout.ready.values()} == {"3.16.1"}

        # A resumed run asks again: no second upgrade.
        again = backend(kubeconfig, namespace)
        assert (await again.ensure_group(NEW, slots=["g/0"], ready_timeout_s=10)).complete
        assert len(await asyncio.to_thread(helm_cfg.history, RELEASE)) == 2
        await again.close()

        # Roll back: a Helm rollback to the recorded revision 1 (a new revision 3).
        async with TrafficGenerator({"g": door}, rate_per_s=50) as traffic:
            restored = await b.ensure_group(OLD, slots=["g/1"], ready_timeout_s=30)
            counts = traffic.counts()
        assert restored.complete and counts["failed"] == 0, counts
        assert b.revisions == (1, 3)
        history = await asyncio.to_thread(revisions, helm_cfg)
        assert [h["revision"] for h in history] == [1, 2, 3]
        assert history[2]["values"] == VALUES
        await ready_on(cluster, namespace, OLD, 2)
        assert (await b.ensure_group(OLD, slots=["g/0"], ready_timeout_s=10)).complete
        assert len(await asyncio.to_thread(helm_cfg.history, RELEASE)) == 3
    finally:
        await b.close()


@pytest.mark.traffic
async def test_extra_values_are_shown_in_the_plan_and_applied_in_the_same_upgrade(
    cluster: EmulatedCluster,
    kubeconfig: Path,
    namespace: str,
    helm_cfg: helm.Config,
    tmp_path: Path,
) -> None:
    await asyncio.to_thread(install, helm_cfg, namespace)
    await ready_on(cluster, namespace, OLD, 2)
    extra = tmp_path / "extra.yaml"
    extra.write_text(yaml.safe_dump({"apisix": {"nginx": {"workerProcesses": 2}}}))
    b = backend(kubeconfig, namespace, values_file=str(extra))
    try:
        plan = await b.preflight()
        assert any(
            "helm release edge: the upgrade also changes apisix.nginx.workerProcesses: "
            '"auto" → 2' in w
            for w in plan
        ), plan
        assert (await b.ensure_group(NEW, slots=["g/0", "g/1"], ready_timeout_s=30)).complete
        history = await asyncio.to_thread(revisions, helm_cfg)
        assert history[-1]["values"]["apisix"]["nginx"] == {"workerProcesses": 2}
        assert history[-1]["values"]["image"] == {"tag": "3.16.1-ubuntu"}
        assert len(history) == 2
    finally:
        await b.close()


@pytest.mark.traffic
async def test_a_bot_killed_mid_upgrade_resumes_without_a_second_helm_upgrade(
    cluster: EmulatedCluster,
    kubeconfig: Path,
    namespace: str,
    helm_cfg: helm.Config,
    tmp_path: Path,
) -> None:
    await asyncio.to_thread(install, helm_cfg, namespace)
    await ready_on(cluster, namespace, OLD, 2)
    script = tmp_path / "bot.py"
    script.write_text(
        "import asyncio\n"
        "from upgrade_bot.engine.backends.kubernetes import build\n"
        "from upgrade_bot.engine.config import KubernetesBackend as S\n"
        f"b = build('g', S(type='kubernetes', namespace={namespace!r}, selector={SELECTOR!r}, "
        f"kubeconfig={str(kubeconfig)!r}, poll_interval_s=0.1))\n"
        f"asyncio.run(b.ensure_group({NEW!r}, ready_timeout_s=60, fence='run-1:1'))\n"
    )
    bot = subprocess.Popen([sys.executable, str(script)])
    try:

        def started() -> bool:
            return any(
                p["spec"]["containers"][0]["image"] == NEW
                for p in cluster.pods(namespace, SELECTOR)
            )

        def recorded() -> bool:
            return started() and helm_cfg.history(RELEASE)[-1]["status"] == "deployed"

        # Killed after Helm recorded the upgrade, mid-rollout (a death inside Helm's own
        # upgrade is the next test's).
        await eventually(recorded, "the upgrade recorded and its first new pod", within=30)
        os.kill(bot.pid, signal.SIGKILL)
        bot.wait()
    finally:
        if bot.poll() is None:
            bot.kill()
    assert len(await asyncio.to_thread(helm_cfg.history, RELEASE)) == 2
    b = backend(kubeconfig, namespace)
    try:
        resumed = await b.ensure_group(
            NEW, slots=["g/0", "g/1"], ready_timeout_s=30, fence="run-1:2"
        )
        assert resumed.complete
        assert len(await asyncio.to_thread(helm_cfg.history, RELEASE)) == 2  # no second upgrade
        assert b.revisions == (1, 2)
    finally:
        await b.close()
    await ready_on(cluster, namespace, NEW, 2)


def set_status(kubeconfig: Path, namespace: str, revision: int, status: str, why: str) -> None:
    """Rewrite a revision's status where Helm keeps it: the release in its Secret (base64 of
    gzipped JSON) and the Secret's ``status`` label (helm/helm pkg/storage/driver)."""
    api = kubernetes.client.CoreV1Api(
        kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
    )
    name = f"sh.helm.release.v1.{RELEASE}.v{revision}"
    secret = api.read_namespaced_secret(name, namespace)
    raw = base64.b64decode(base64.b64decode(secret.data["release"]))
    release = json.loads(gzip.decompress(raw))
    release["info"]["status"] = status
    release["info"]["description"] = why
    packed = base64.b64encode(gzip.compress(json.dumps(release).encode()))
    secret.data["release"] = base64.b64encode(packed).decode()
    secret.metadata.labels["status"] = status
    api.replace_namespaced_secret(name, namespace, secret)
    api.api_client.close()


def pod_names(cluster: EmulatedCluster, namespace: str) -> set[str]:
    """The pods serving (not terminating)."""
    return {
        p["metadata"]["name"]
        for p in cluster.pods(namespace, SELECTOR)
        if not p["metadata"].get("deletionTimestamp")
    }


@pytest.mark.traffic
async def test_our_upgrade_left_pending_by_a_death_inside_helm_is_marked_failed_and_redone(
    cluster: EmulatedCluster, kubeconfig: Path, namespace: str, helm_cfg: helm.Config
) -> None:
    """Helm stores the new revision as pending-upgrade, applies it, then records it deployed; a
    bot killed in between leaves it pending, and Helm refuses every later operation. The
    resumed run recognises its own upgrade, marks it failed (as Helm does to an upgrade it sees
    interrupted) and upgrades again: the same manifests, so no pod is replaced again."""
    await asyncio.to_thread(install, helm_cfg, namespace)
    await ready_on(cluster, namespace, OLD, 2)
    b = backend(kubeconfig, namespace)
    try:
        first = await b.ensure_group(NEW, slots=["g/0", "g/1"], ready_timeout_s=60, fence="run-1:1")
        assert first.complete
        await ready_on(cluster, namespace, NEW, 2)
        pods = pod_names(cluster, namespace)
        [*_, ours] = revisions(helm_cfg)
        await asyncio.to_thread(
            set_status, kubeconfig, namespace, 2, "pending-upgrade", ours["description"]
        )
        with pytest.raises(helm.HelmError, match="another operation"):  # Helm's own refusal
            await asyncio.to_thread(helm_cfg.upgrade, str(APISIX_CHART), RELEASE, VALUES)
    finally:
        await b.close()

    resumed = backend(kubeconfig, namespace)
    try:
        again = await resumed.ensure_group(
            NEW, slots=["g/0", "g/1"], ready_timeout_s=60, fence="run-1:2"
        )
        assert again.complete
    finally:
        await resumed.close()
    history = revisions(helm_cfg)
    # Helm supersedes the revision before a new one, the failed one included (its description
    # keeps what happened to it).
    assert [h["status"] for h in history] == ["superseded", "superseded", "deployed"]
    assert "marked failed by upgrade-bot to upgrade again" in history[1]["description"]
    assert history[2]["values"]["image"] == {"tag": "3.16.1-ubuntu"}
    assert pod_names(cluster, namespace) == pods, "a pod was replaced again"
    await ready_on(cluster, namespace, NEW, 2)


@pytest.mark.traffic
async def test_someone_elses_pending_operation_is_left_alone_and_named(
    cluster: EmulatedCluster, kubeconfig: Path, namespace: str, helm_cfg: helm.Config
) -> None:
    await asyncio.to_thread(install, helm_cfg, namespace)
    await ready_on(cluster, namespace, OLD, 2)
    await asyncio.to_thread(
        set_status, kubeconfig, namespace, 1, "pending-install", "Install complete"
    )
    b = backend(kubeconfig, namespace)
    try:
        with pytest.raises(TemporaryError, match=r"revision 1 is pending-install .*helm rollback"):
            await b.ensure_group(NEW, slots=["g/0", "g/1"], ready_timeout_s=10, fence="run-9:1")
    finally:
        await b.close()
    assert [h["status"] for h in revisions(helm_cfg)] == ["pending-install"]  # untouched
    assert {p["spec"]["containers"][0]["image"] for p in cluster.pods(namespace, SELECTOR)} == {OLD}


@pytest.mark.traffic
async def test_a_refused_helm_upgrade_names_the_missing_permission(
    cluster: EmulatedCluster, kubeconfig: Path, namespace: str, helm_cfg: helm.Config
) -> None:
    await asyncio.to_thread(install, helm_cfg, namespace)
    b = backend(kubeconfig, namespace)
    try:
        cluster.refuse("patch", "deployments", 403)
        with pytest.raises(PermanentError) as refused:
            await b.ensure_group(NEW, slots=["g/0"], ready_timeout_s=10)
        text = str(refused.value)
        assert "Kubernetes refused Helm's upgrade of release edge (403 Forbidden)" in text, text
        assert "RBAC" in text
    finally:
        cluster.allow_all()
        await b.close()
