"""Kubernetes backend: a gateway group is one Deployment, rolled as a whole.

Kubernetes replaces the pods itself, honouring the Deployment's own strategy (maxSurge,
maxUnavailable), probes and preStop hooks; the bot changes the pod template's image and
follows the rollout as Kubernetes reports it (Kubernetes API reference, Deployment v1:
https://kubernetes.io/docs/reference/kubernetes-api/workload-resources/deployment-v1/ and
"Deployments" https://kubernetes.io/docs/concepts/workloads/controllers/deployment/):

* the rollout has seen the change when ``status.observedGeneration >= metadata.generation``;
* pods of the new template (their gateway container runs the image) that are Ready are the
  group's progress: slots are *replica positions* (``prod-eu/0`` is the first pod to be ready
  on the new image, whichever pod that is, since pod names change); the last slot is ready when
  the rollout is complete (updated = ready = available = replicas, no old pod left);
* ``Progressing`` with reason ``ProgressDeadlineExceeded`` fails the slots not yet ready, and so
  does a slot not ready within ``ready_timeout_s`` after the one before it;
* the rollout goes only as far as the caller asked: once the asked positions are ready and the
  rollout is not complete, ``spec.paused`` is set (so the engine's metric watch judges a batch
  with nothing else moving, and a watch ``fail`` finds the rollout already paused); the same
  for the engine's ``pause`` event mid-batch. A call that brings the group anywhere (the next
  batch, a rollback) unpauses first. Pods already starting when the pause lands finish (at
  most maxSurge of them), as Kubernetes does;
* the image digest comes from the pod's ``containerStatuses[].imageID``.

Strategy ``helm`` (the default for a Helm-managed Deployment): see :mod:`.kube_helm`. Strategy
``patch``: a strategic-merge patch of the container's image (everything else kept); restoring
patches the previous image back. A resumed run reads the release's newest revision or the
template's image first and never upgrades or patches twice.

Fencing: the driver's token is kept in the Deployment's annotation ``upgrade-bot/fence``; a
change carrying an older token of the same run is refused.

What is detected and reported, never fought: the replica count changing during the rollout (an
autoscaler), the template's image changing to something else while the bot waits (a GitOps
controller such as Argo CD or Flux reverting the change).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from .. import config
from ..errors import PermanentError
from .base import Progress, Rollout, SlotInfo
from .kube_api import KubeCalls, api_client
from .kube_helm import HelmRelease
from .kube_preflight import preflight_warnings
from .kube_rollout import Follower, pod_ready

log = logging.getLogger(__name__)

FENCE_ANNOTATION = "upgrade-bot/fence"
PREVIOUS_ANNOTATION = "upgrade-bot/previous-image"
GATEWAY_IMAGE = re.compile(r"(apisix|api7)[^/]*$")
"""The gateway's image (the default container): ``apache/apisix``, ``api7/api7-ee-3-gateway``."""
PROXY_PORT, STATUS_PORT, METRICS_PORT = 9080, 7085, 9091
"""The gateway's listeners (APISIX defaults: proxy 9080, status API 7085, prometheus 9091)."""


def build(group: str, settings: config.KubernetesBackend) -> KubernetesBackend:
    calls = KubeCalls(
        api_client(
            kubeconfig=settings.kubeconfig,
            context=settings.context,
            in_cluster=settings.in_cluster,
        )
    )
    return KubernetesBackend(group, settings, calls)


def selector_text(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def image_version(image: str) -> str | None:
    tag = image.rsplit(":", 1)[-1] if ":" in image.rsplit("/", 1)[-1] else ""
    digits = ""
    for part in tag.replace("-", ".").split("."):
        if part.isdigit():
            digits += ("." if digits else "") + part
        elif digits:
            break
    return digits or None


class KubernetesBackend:
    def __init__(
        self,
        group: str,
        settings: config.KubernetesBackend,
        calls: KubeCalls,
    ) -> None:
        self.group = group
        self.settings = settings
        self.calls = calls
        self.ns = settings.namespace
        self._release: HelmRelease | None = None
        self.revisions: tuple[int, int] | None = None
        """(before, after) of the last Helm upgrade or rollback this backend made."""

    # --- reading ----------------------------------------------------------------------------

    async def deployment(self) -> Any:
        if self.settings.deployment:
            return await self.calls.read_deployment(self.ns, self.settings.deployment)
        found = await self.calls.list_deployments(self.ns, selector_text(self.settings.selector))
        if len(found) != 1:
            names = ", ".join(d.metadata.name for d in found) or "none"
            raise PermanentError(
                f"{self.group}: the selector {selector_text(self.settings.selector)} must pick "
                f"exactly one Deployment in namespace {self.ns} (found: {names})"
            )
        return found[0]

    def container_of(self, spec: Any) -> Any:
        containers = list(spec.containers or [])
        if self.settings.container:
            for c in containers:
                if c.name == self.settings.container:
                    return c
            raise PermanentError(
                f"{self.group}: no container '{self.settings.container}' in the pod template "
                f"(containers: {', '.join(c.name for c in containers)})"
            )
        gateways = [c for c in containers if GATEWAY_IMAGE.search((c.image or "").split(":")[0])]
        if len(gateways) == 1:
            return gateways[0]
        if len(containers) == 1:
            return containers[0]
        raise PermanentError(
            f"{self.group}: the pod template has several containers "
            f"({', '.join(c.name for c in containers)}); name the gateway's in backend.container"
        )

    async def pods(self, d: Any) -> list[Any]:
        labels = (d.spec.selector.match_labels or {}) if d.spec.selector else {}
        pods = await self.calls.list_pods(self.ns, selector_text(labels))
        live = [p for p in pods if p.metadata.deletion_timestamp is None]
        return sorted(live, key=lambda p: (p.metadata.creation_timestamp or 0, p.metadata.name))

    def _slot_info(self, slot_id: str, pod: Any, container_name: str) -> SlotInfo:
        spec_container = next(
            (c for c in pod.spec.containers if c.name == container_name), pod.spec.containers[0]
        )
        image = spec_container.image or ""
        status = next(
            (s for s in (pod.status.container_statuses or []) if s.name == container_name), None
        )
        digest = None
        if status is not None and status.image_id and "@" in status.image_id:
            digest = status.image_id.rsplit("@", 1)[1]
        ip = pod.status.pod_ip
        ports = {p.container_port for p in spec_container.ports or []}
        endpoints = {}
        if ip:
            endpoints = {
                "proxy": f"http://{ip}:{PROXY_PORT}",
                "metrics": f"http://{ip}:{METRICS_PORT}",
            }
            if STATUS_PORT in ports:
                endpoints["status"] = f"http://{ip}:{STATUS_PORT}"
        return SlotInfo(
            id=slot_id,
            image=image,
            version=image_version(image),
            ready=pod_ready(pod),
            digest=digest,
            endpoints=endpoints,
            # What the gateway reports to its control plane as its hostname: the pod's
            # spec.hostname, else metadata.name (kubernetes.io/docs/concepts/services-networking/
            # dns-pod-service/ "Pod's hostname and subdomain fields").
            hostname=pod.spec.hostname or pod.metadata.name,
        )

    async def list_slots(self) -> list[SlotInfo]:
        """One slot per replica position, filled by the live pods in creation order."""
        d = await self.deployment()
        container = self.container_of(d.spec.template.spec)
        pods = await self.pods(d)
        replicas = d.spec.replicas if d.spec.replicas is not None else 1
        slots = []
        for i in range(replicas):
            slot_id = f"{self.group}/{i}"
            if i < len(pods):
                slots.append(self._slot_info(slot_id, pods[i], container.name))
            else:
                slots.append(
                    SlotInfo(slot_id, container.image, image_version(container.image), False)
                )
        return slots

    # --- changing ---------------------------------------------------------------------------

    def strategy(self, d: Any) -> str:
        if self.settings.strategy:
            return self.settings.strategy
        return "helm" if helm_managed(d) else "patch"

    def release(self, d: Any) -> HelmRelease:
        if self._release is None:
            name = self.settings.helm.release or (d.metadata.annotations or {}).get(
                "meta.helm.sh/release-name"
            )
            if not name:
                raise PermanentError(
                    f"{self.group}: deployment {d.metadata.name} names no Helm release "
                    "(annotation meta.helm.sh/release-name): set backend.helm.release"
                )
            extra = {}
            if self.settings.helm.values_file:
                try:
                    extra = yaml.safe_load(Path(self.settings.helm.values_file).read_text()) or {}
                except (OSError, yaml.YAMLError) as exc:
                    raise PermanentError(
                        f"{self.group}: backend.helm.values_file cannot be read ({exc})"
                    ) from None
            self._release = HelmRelease(
                name,
                self.ns,
                kubeconfig=os.path.expanduser(self.settings.kubeconfig)
                if self.settings.kubeconfig
                else None,
                context=self.settings.context,
                chart=self.settings.helm.chart,
                chart_version=self.settings.helm.chart_version,
                extra_values=extra,
                values_key=self.settings.helm.values_key,
                read_secret=lambda secret: self.calls.read_secret_data(self.ns, secret),
                update_secret=lambda secret, data, labels: self.calls.update_secret(
                    self.ns, secret, data, labels
                ),
            )
        return self._release

    async def _helm_to(self, d: Any, container: Any, image: str, fence: str | None) -> Any:
        """Bring the release to ``image``: undo upgrade-bot's upgrade by a Helm rollback to the
        recorded revision, or upgrade with only the tag changed; idempotent."""
        annotations = self._check_fence(d, fence)
        body: dict[str, Any] = {}
        if annotations and (d.metadata.annotations or {}).get(FENCE_ANNOTATION) != fence:
            body["metadata"] = {"annotations": annotations}
        if d.spec.paused:
            body["spec"] = {"paused": False}  # a rollback unpauses first
        if body:
            d = await self.calls.patch_deployment(self.ns, d.metadata.name, body)
        release = self.release(d)
        rolled_back = await release.rollback_to_tag(image)
        if rolled_back is not None:
            self.revisions = rolled_back
            log.info(
                "%s: Helm release %s rolled back to revision %s (now revision %s)",
                self.group,
                release.name,
                *rolled_back,
            )
        else:
            self.revisions = await release.upgrade(image, fence)
            log.info(
                "%s: Helm release %s at revision %s (was %s) for %s",
                self.group,
                release.name,
                self.revisions[1],
                self.revisions[0],
                image,
            )
        return await self.deployment()

    def _check_fence(self, d: Any, fence: str | None) -> dict[str, str]:
        """The annotation to write, or ``PermanentError`` for a stale driver."""
        if not fence:
            return {}
        seen = (d.metadata.annotations or {}).get(FENCE_ANNOTATION)
        if seen:
            run, _, token = seen.rpartition(":")
            mine_run, _, mine = fence.rpartition(":")
            if run == mine_run and token.isdigit() and mine.isdigit() and int(mine) < int(token):
                raise PermanentError(
                    f"{self.group}: a newer driver of run {run} (token {token}) changed this "
                    f"Deployment; this one (token {mine}) stops"
                )
        return {FENCE_ANNOTATION: fence}

    async def _bring_template_to(
        self, d: Any, container: Any, image: str, fence: str | None
    ) -> Any:
        """Patch the template's image (if it is not ``image`` yet) and unpause; idempotent."""
        annotations = self._check_fence(d, fence)
        body: dict[str, Any] = {}
        if annotations and (d.metadata.annotations or {}).get(FENCE_ANNOTATION) != fence:
            body["metadata"] = {"annotations": annotations}
        if container.image != image:
            body.setdefault("spec", {})["template"] = {
                "spec": {"containers": [{"name": container.name, "image": image}]}
            }
            # Where to go back to if the new image never gets a pod ready (see ``undo``).
            body.setdefault("metadata", {}).setdefault("annotations", {})[PREVIOUS_ANNOTATION] = (
                container.image
            )
        if d.spec.paused:
            body.setdefault("spec", {})["paused"] = False
        if not body:
            return d
        return await self.calls.patch_deployment(self.ns, d.metadata.name, body)

    async def ensure_group(
        self,
        image: str,
        *,
        slots: Sequence[str] | None = None,
        ready_timeout_s: float,
        fence: str | None = None,
        parallel: int = 1,
        progress: Progress | None = None,
        pause: asyncio.Event | None = None,
    ) -> Rollout:
        """See ``Backend.ensure_group``: the whole Deployment rolls; ``slots`` are the replica
        positions whose readiness the caller waits for."""
        d = await self.deployment()
        container = self.container_of(d.spec.template.spec)
        asked = list(slots) if slots is not None else [s.id for s in await self.list_slots()]
        for slot_id in asked:
            if not slot_id.startswith(self.group + "/"):
                raise PermanentError(f"slot '{slot_id}' is not in group '{self.group}'")
        replicas = d.spec.replicas if d.spec.replicas is not None else 1
        if self.strategy(d) == "helm":
            d = await self._helm_to(d, container, image, fence)
        else:
            d = await self._bring_template_to(d, container, image, fence)
        follower = Follower(self, image, container.name, replicas, asked, progress)
        return await follower.follow(ready_timeout_s, pause)

    async def undo(self, image: str) -> str | None:
        """Put back what the Deployment ran before upgrade-bot brought it to ``image``, when no
        pod of ``image`` ever became ready (so no slot of it is the engine's to restore): the
        recorded previous image (``patch``) or the recorded Helm revision (``helm``). Returns
        what it went back to, or None."""
        d = await self.deployment()
        container = self.container_of(d.spec.template.spec)
        if container.image != image:
            return None
        if self.strategy(d) == "helm":
            back = await self.release(d).undo(image)
            if back is None:
                return None
            self.revisions = back
            return f"Helm revision {back[0]} (now revision {back[1]})"
        previous = (d.metadata.annotations or {}).get(PREVIOUS_ANNOTATION)
        if not previous or previous == image:
            return None
        await self._bring_template_to(d, container, previous, None)
        return previous

    async def pause_rollout(self) -> None:
        d = await self.deployment()
        if not d.spec.paused:
            await self.calls.patch_deployment(self.ns, d.metadata.name, {"spec": {"paused": True}})

    async def preflight(self) -> list[str]:
        d = await self.deployment()
        container = self.container_of(d.spec.template.spec)
        pdbs = await self.calls.list_pdbs(self.ns)
        strategy = self.strategy(d)
        warnings = preflight_warnings(d, container, pdbs, strategy=strategy)
        if strategy == "helm":
            release = self.release(d)
            changes = await release.plan(container.image)
            if changes:
                warnings.append(
                    f"helm release {release.name}: the upgrade also changes " + "; ".join(changes)
                )
        return warnings

    async def close(self) -> None:
        if self._release is not None:
            await self._release.close()
        await self.calls.close()


def helm_managed(d: Any) -> bool:
    """Helm's marks on what it installs: label ``app.kubernetes.io/managed-by: Helm`` and
    annotation ``meta.helm.sh/release-name`` (helm/helm ``pkg/action/validate.go``)."""
    return (d.metadata.labels or {}).get("app.kubernetes.io/managed-by") == "Helm" and bool(
        (d.metadata.annotations or {}).get("meta.helm.sh/release-name")
    )
