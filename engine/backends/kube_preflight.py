"""Pre-flight warnings for a Kubernetes group: the set-ups real rolling upgrades trip over.

Each warning says what is wrong and what to do. Fields read (Kubernetes API reference):
Container ``readinessProbe``, ``lifecycle.preStop``, ``imagePullPolicy``
(https://kubernetes.io/docs/reference/kubernetes-api/workload-resources/pod-v1/#Container),
PodSpec ``terminationGracePeriodSeconds``, DeploymentSpec ``strategy.rollingUpdate``
(https://kubernetes.io/docs/reference/kubernetes-api/workload-resources/deployment-v1/), and the
namespace's PodDisruptionBudgets
(https://kubernetes.io/docs/reference/kubernetes-api/policy-resources/pod-disruption-budget-v1/).
"""

from __future__ import annotations

import math
import re
from typing import Any

from ..config import TcpReadiness
from ..readiness import preflight_warnings as readiness_warnings

DRAIN_S = 5.0
"""Time a gateway needs after its preStop sleep to finish in-flight requests (SIGQUIT)."""
MUTABLE_TAGS = re.compile(r"^(latest|main|master|stable|dev|edge|nightly)$")
GITOPS_MARKERS = {
    "argocd.argoproj.io/instance": "Argo CD",
    "argocd.argoproj.io/tracking-id": "Argo CD",
    "kustomize.toolkit.fluxcd.io/name": "Flux",
    "helm.toolkit.fluxcd.io/name": "Flux",
}


def _percent(value: Any, total: int, round_up: bool) -> int:
    if isinstance(value, str) and value.endswith("%"):
        exact = int(value[:-1]) * total / 100
        return math.ceil(exact) if round_up else math.floor(exact)
    return int(value)


def pre_stop_sleep(container: Any) -> float:
    pre_stop = container.lifecycle.pre_stop if container.lifecycle else None
    if pre_stop is None:
        return 0.0
    if getattr(pre_stop, "sleep", None) is not None:
        return float(pre_stop.sleep.seconds or 0)
    command = " ".join(pre_stop._exec.command or []) if pre_stop._exec else ""
    match = re.search(r"sleep\s+(\d+(?:\.\d+)?)", command)
    return float(match.group(1)) if match else 0.0


def preflight_warnings(d: Any, container: Any, pdbs: list[Any], *, strategy: str) -> list[str]:
    warnings: list[str] = []
    name = d.metadata.name
    probe = container.readiness_probe
    if probe is None:
        warnings.append(
            f"deployment {name}: container {container.name} has no readiness probe: pods take "
            "traffic as soon as they start; probe GET /status/ready on the status port (7085)"
        )
    elif probe.tcp_socket is not None and probe.http_get is None:
        # The same advice as for a group whose readiness mode is 'tcp' (engine/readiness.py).
        warnings += [
            f"deployment {name}: the readiness probe is tcpSocket (the API7 gateway chart's "
            f"default): {w.split(': ', 1)[1]}. On Kubernetes: enable the status endpoint "
            "(API7 chart: status_endpoint.enabled) and probe httpGet /status/ready on port 7085"
            for w in readiness_warnings(TcpReadiness(mode="tcp"))
        ]
    grace = d.spec.template.spec.termination_grace_period_seconds
    grace = 30 if grace is None else grace
    sleep_s = pre_stop_sleep(container)
    if grace <= sleep_s + DRAIN_S:
        warnings.append(
            f"deployment {name}: terminationGracePeriodSeconds ({grace}s) is not larger than the "
            f"preStop sleep ({sleep_s:g}s) plus the drain time ({DRAIN_S:g}s): the gateway is "
            "killed (SIGKILL) mid-request; raise terminationGracePeriodSeconds"
        )
    labels = d.spec.template.metadata.labels or {}
    covered = any(
        pdb.spec.selector is not None
        and pdb.spec.selector.match_labels
        and all(labels.get(k) == v for k, v in pdb.spec.selector.match_labels.items())
        for pdb in pdbs
    )
    if not covered:
        warnings.append(
            f"deployment {name}: no PodDisruptionBudget covers its pods: a node drain during the "
            "upgrade may take several down at once; add one (e.g. maxUnavailable: 1)"
        )
    replicas = d.spec.replicas if d.spec.replicas is not None else 1
    rolling = d.spec.strategy.rolling_update if d.spec.strategy else None
    if d.spec.strategy is not None and d.spec.strategy.type == "Recreate":
        warnings.append(
            f"deployment {name}: strategy Recreate stops every pod before starting new ones: "
            "the group is down during the upgrade; use RollingUpdate"
        )
    else:
        unavailable = _percent(
            rolling.max_unavailable if rolling and rolling.max_unavailable is not None else "25%",
            replicas,
            round_up=False,
        )
        if replicas > 1 and unavailable >= max(1, replicas // 2):
            warnings.append(
                f"deployment {name}: maxUnavailable allows {unavailable} of {replicas} pods "
                "down at once, more than the group can lose under load; use maxUnavailable: 0 "
                "with maxSurge: 1"
            )
        elif replicas == 1 and unavailable >= 1:
            warnings.append(
                f"deployment {name}: one replica and maxUnavailable {unavailable}: the group is "
                "down during the upgrade; use maxUnavailable: 0"
            )
    tag = (container.image or "").rsplit(":", 1)[-1] if ":" in (container.image or "") else ""
    if container.image_pull_policy == "Always" and (not tag or MUTABLE_TAGS.match(tag)):
        warnings.append(
            f"deployment {name}: imagePullPolicy Always with the mutable tag '{tag or 'latest'}': "
            "a restarted pod may run a different build; pin a version tag or a digest"
        )
    markers = {**(d.metadata.labels or {}), **(d.metadata.annotations or {})}
    for key, tool in GITOPS_MARKERS.items():
        if key in markers:
            warnings.append(
                f"deployment {name}: managed by {tool} ({key}): it may revert the image; change "
                "it in Git or pause the sync during the upgrade"
            )
            break
    if (
        strategy == "patch"
        and (d.metadata.labels or {}).get("app.kubernetes.io/managed-by") == "Helm"
    ):
        release = (d.metadata.annotations or {}).get("meta.helm.sh/release-name") or (
            d.metadata.labels or {}
        ).get("app.kubernetes.io/instance", "?")
        warnings.append(
            f"deployment {name}: managed by Helm (release {release}) but patched directly: the "
            "next `helm upgrade` reverts the image; change the tag in the release's values too"
        )
    return warnings
