"""Pre-flight warnings on the vendor charts' Deployments, and API refusals in clear words.

Deployments here are created paused: Kubernetes starts no pod for them, and the backend only
reads them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from upgrade_bot.engine.backends.kubernetes import build
from upgrade_bot.engine.config import KubernetesBackend as Settings
from upgrade_bot.engine.config import parse_config
from upgrade_bot.engine.errors import ConfigError, PermanentError, TemporaryError
from upgrade_bot.sandbox.kube.cluster import EmulatedCluster

from .manifests import API7_DEPLOYMENT, api7_deployment

SELECTOR = {"app.kubernetes.io/name": "gateway", "app.kubernetes.io/instance": API7_DEPLOYMENT}
PDB = {
    "apiVersion": "policy/v1",
    "kind": "PodDisruptionBudget",
    "metadata": {"name": "gw"},
    "spec": {"maxUnavailable": 1, "selector": {"matchLabels": SELECTOR}},
}


async def warnings_for(
    cluster: EmulatedCluster, kubeconfig: Path, namespace: str, manifests: list[dict], **s: object
) -> list[str]:
    cluster.apply(manifests, namespace)
    settings = {"strategy": "patch", **s}
    b = build(
        "g",
        Settings(
            type="kubernetes",
            namespace=namespace,
            deployment=API7_DEPLOYMENT,
            kubeconfig=str(kubeconfig),
            **settings,  # type: ignore[arg-type]
        ),
    )
    try:
        return await b.preflight()
    finally:
        await b.close()


async def test_the_api7_chart_defaults_get_the_tcp_probe_and_pdb_warnings(
    cluster: EmulatedCluster, kubeconfig: Path, namespace: str
) -> None:
    found = await warnings_for(
        cluster, kubeconfig, namespace, [api7_deployment(status_probe=False, paused=True)]
    )
    text = "\n".join(found)
    assert "readiness probe is tcpSocket" in text and "/status/ready" in text
    assert "answers 404" in text
    assert "no PodDisruptionBudget" in text
    assert "managed by Helm (release api7-ee-3-gateway) but patched directly" in text
    # The chart's 180 s grace period covers its 30 s preStop sleep; 3 replicas at 25 %
    # unavailable lose none at once; 3.10.5 is a pinned tag: no warning for those.
    assert "terminationGracePeriodSeconds" not in text
    assert "pods down at once" not in text and "mutable tag" not in text


async def test_a_careful_set_up_gets_no_warning(
    cluster: EmulatedCluster, kubeconfig: Path, namespace: str
) -> None:
    d = api7_deployment(paused=True)
    d["metadata"]["labels"].pop("app.kubernetes.io/managed-by")
    assert await warnings_for(cluster, kubeconfig, namespace, [d, PDB]) == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda d: d["spec"]["template"]["spec"].update(terminationGracePeriodSeconds=30),
            "terminationGracePeriodSeconds (30s) is not larger than the preStop sleep (30s)",
        ),
        (
            lambda d: d["spec"].update(
                replicas=4,
                strategy={"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "50%"}},
            ),
            "maxUnavailable allows 2 of 4 pods down at once",
        ),
        (
            lambda d: d["spec"]["template"]["spec"]["containers"][0].update(
                image="api7/api7-ee-3-gateway:latest"
            ),
            "imagePullPolicy Always with the mutable tag 'latest'",
        ),
        (
            lambda d: d["metadata"]["labels"].update({"argocd.argoproj.io/instance": "gateways"}),
            "managed by Argo CD",
        ),
    ],
)
async def test_each_risky_set_up_is_warned_with_its_fix(
    cluster: EmulatedCluster, kubeconfig: Path, namespace: str, change, expected: str
) -> None:
    d = api7_deployment(paused=True)
    d["metadata"]["labels"].pop("app.kubernetes.io/managed-by")
    change(d)
    found = await warnings_for(cluster, kubeconfig, namespace, [d, PDB])
    assert len(found) == 1 and expected in found[0], found


async def test_refusals_name_the_verb_and_the_resource(
    cluster: EmulatedCluster, kubeconfig: Path, namespace: str
) -> None:
    cluster.apply([api7_deployment(paused=True)], namespace)
    b = build(
        "g",
        Settings(
            type="kubernetes",
            namespace=namespace,
            deployment=API7_DEPLOYMENT,
            kubeconfig=str(kubeconfig),
            strategy="patch",
        ),
    )
    missing = build(
        "g",
        Settings(
            type="kubernetes",
            namespace=namespace,
            deployment="no-such-gateway",
            kubeconfig=str(kubeconfig),
        ),
    )
    try:
        cluster.refuse("patch", "deployments", 403)
        with pytest.raises(PermanentError) as forbidden:
            await b.ensure_group("api7/api7-ee-3-gateway:3.10.6", ready_timeout_s=5)
        assert str(forbidden.value).startswith(
            f"Kubernetes refused to patch deployments {namespace}/{API7_DEPLOYMENT} (403 "
        )
        assert "RBAC" in str(forbidden.value)
        cluster.refuse("patch", "deployments", 409)
        with pytest.raises(TemporaryError, match="409 Conflict"):
            await b.ensure_group("api7/api7-ee-3-gateway:3.10.6", ready_timeout_s=5)
        cluster.refuse("list", "poddisruptionbudgets", 403)
        with pytest.raises(PermanentError, match="refused to list poddisruptionbudgets"):
            await b.preflight()
        with pytest.raises(PermanentError) as not_found:
            await missing.list_slots()
        assert f"deployments {namespace}/no-such-gateway not found (404 on get)" in str(
            not_found.value
        )
    finally:
        cluster.allow_all()
        await b.close()
        await missing.close()


@pytest.mark.parametrize(
    ("backend", "problem"),
    [
        ({"namespace": "api7"}, "set 'deployment' or 'selector'"),
        (
            {"deployment": "gw", "in_cluster": True, "kubeconfig": "/k"},
            "'in_cluster' uses the pod's ServiceAccount",
        ),
        ({"deployment": "gw", "helm": {"chart_version": "2.15.0"}}, "'chart_version' needs"),
        ({"deployment": "gw", "strategy": "replace"}, "strategy: Input should be 'helm' or"),
    ],
)
def test_a_wrong_kubernetes_backend_is_a_clear_config_error(backend: dict, problem: str) -> None:
    text = (
        "groups:\n  - name: prod-eu\n    image: {repository: apache/apisix}\n"
        f"    backend: {json.dumps({'type': 'kubernetes', **backend})}\n"
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "c.yaml")
    assert any(problem in p for p in caught.value.problems), caught.value.problems
