"""The ``helm`` strategy of the Kubernetes backend: what the vendor runbook's step 5 says.

"Change the image tag in the Helm values and upgrade": the release is upgraded with the values
it was deployed with (``helm get values``) and only the image tag changed, using the chart
stored in the deployed release unless the group's config names a chart. Step 8, "roll back": a
Helm rollback to the revision recorded before the upgrade. Helm's own engine runs in-process
through ``helm-python-sdk`` (``helm_python.Config.upgrade/rollback/history/get_values/get_all``,
the Helm v4 SDK's ``action`` package behind a C ABI); there is no ``helm`` binary.

The revision before the upgrade is recorded in the new revision's description
(``upgrade-bot: <image> from revision N``, what ``helm history`` shows), so that a restarted bot
finds it, and a resumed run sees that the release already carries the tag and never upgrades
twice.

The chart stored in a release is read from the release's Secret
(``sh.helm.release.v1.<release>.v<revision>``, data ``release``: base64 of the gzipped JSON
release, helm/helm ``pkg/storage/driver/util.go`` ``decodeRelease``), whose ``chart`` holds the
chart's metadata, templates, values, schema and files (helm/helm ``pkg/chart/v2/chart.go``);
it is written out as a chart directory and loaded with ``helm_python.Chart.load``.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import gzip
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

from ..errors import PermanentError, TemporaryError

log = logging.getLogger(__name__)

VALUES_KEYS = {
    # chart name -> the values key of the gateway image's tag
    "apisix": "image.tag",  # apache/apisix-helm-chart charts/apisix values.yaml
    "gateway": "apisix.image.tag",  # api7/api7-helm-chart charts/gateway README "apisix.image.tag"
}
DESCRIPTION = "upgrade-bot: {image} from revision {revision}"


def tag_of(image: str) -> str:
    last = image.rsplit("/", 1)[-1]
    if ":" not in last:
        raise PermanentError(f"image '{image}' has no tag to set in the Helm values")
    return image.rsplit(":", 1)[1]


def get_path(values: dict[str, Any], key: str) -> Any:
    node: Any = values
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def set_path(values: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(values)
    node = out
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def merge_values(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Helm's coalescing of ``-f`` files: maps merge key by key, anything else replaces."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_values(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def diff_values(old: Any, new: Any, prefix: str = "") -> list[str]:
    """``a.b: 1 → 2`` lines, for the plan."""
    if isinstance(old, dict) and isinstance(new, dict):
        lines = []
        for key in sorted(set(old) | set(new)):
            path = f"{prefix}.{key}" if prefix else str(key)
            lines += diff_values(old.get(key), new.get(key), path)
        return lines
    if old == new:
        return []
    return [f"{prefix}: {json.dumps(old)} → {json.dumps(new)}"]


def describe_helm_error(exc: helm.HelmError, action: str, release: str) -> Exception:
    text = str(exc)
    if isinstance(exc, helm.HelmNotFoundError):
        return PermanentError(f"Helm release {release}: {action} found nothing ({text})")
    if "forbidden" in text.lower():
        return PermanentError(
            f"Kubernetes refused Helm's {action} of release {release} (403 Forbidden): {text}; "
            "see the README, 'Kubernetes backend: RBAC'"
        )
    if "another operation" in text or isinstance(exc, helm.HelmKubeError):
        return TemporaryError(f"Helm {action} of release {release}: {text}")
    return PermanentError(f"Helm {action} of release {release} failed: {text}")


def chart_from_release(release: dict[str, Any], directory: Path) -> Path:
    """Write the chart stored in a decoded release out as a chart directory."""
    chart = release["chart"]
    meta = dict(chart["metadata"])
    # Subcharts are not stored in a release; keep only dependencies that are switched off,
    # which Helm drops anyway, and refuse to guess the others.
    values = merge_values(chart.get("values") or {}, release.get("config") or {})
    deps = []
    for dep in meta.get("dependencies") or []:
        condition = dep.get("condition")
        if condition and get_path(values, condition.split(",")[0]) is False:
            continue
        deps.append(dep)
    if deps:
        names = ", ".join(d["name"] for d in deps)
        raise PermanentError(
            f"the chart stored in release {release['name']} needs subcharts ({names}) that Helm "
            "does not store: name the chart in backend.helm.chart"
        )
    meta.pop("dependencies", None)
    (directory / "templates").mkdir(parents=True, exist_ok=True)
    (directory / "Chart.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    (directory / "values.yaml").write_text(yaml.safe_dump(chart.get("values") or {}))
    if chart.get("schema"):
        (directory / "values.schema.json").write_bytes(base64.b64decode(chart["schema"]))
    for item in (chart.get("templates") or []) + (chart.get("files") or []):
        path = directory / item["name"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(item["data"]))
    return directory


def decode_release(secret_data: dict[str, str]) -> dict[str, Any]:
    raw = base64.b64decode(base64.b64decode(secret_data["release"]))
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return dict(json.loads(raw))


def encode_release(release: dict[str, Any]) -> str:
    """The inverse of ``decode_release``: Helm stores a release as base64(gzip(JSON)) in the
    Secret's ``release`` key (helm/helm pkg/storage/driver/util.go ``encodeRelease``), and the
    API carries Secret data base64-encoded once more."""
    stored = base64.b64encode(gzip.compress(json.dumps(release).encode()))
    return base64.b64encode(stored).decode()


PENDING = ("pending-install", "pending-upgrade", "pending-rollback")
"""Helm statuses of an operation under way; Helm refuses any other operation on the release
while its newest revision has one ("another operation (install/upgrade/rollback) is in
progress", helm/helm pkg/action/upgrade.go)."""


class HelmRelease:
    """One release, driven through Helm's engine (blocking calls run in a worker thread)."""

    def __init__(
        self,
        name: str,
        namespace: str,
        *,
        kubeconfig: str | None,
        context: str | None,
        chart: str | None = None,
        chart_version: str | None = None,
        extra_values: dict[str, Any] | None = None,
        values_key: str | None = None,
        read_secret: Any = None,
        update_secret: Any = None,
    ) -> None:
        self.name = name
        self.namespace = namespace
        self.chart = chart
        self.chart_version = chart_version
        self.extra_values = extra_values or {}
        self._values_key = values_key
        self._read_secret = read_secret
        self._update_secret = update_secret
        # helm_python.Config: kubeconfig + context; with neither, KUBECONFIG, ~/.kube/config,
        # then the pod's ServiceAccount (its docstring).
        self.cfg = helm.Config(
            kubeconfig_path=kubeconfig, kube_context=context, namespace=namespace
        )
        self._lock = asyncio.Lock()  # "serialize per release" (helm_python.Config)

    async def _helm(self, action: str, fn: Any) -> Any:
        try:
            return await asyncio.to_thread(fn)
        except helm.HelmError as exc:
            raise describe_helm_error(exc, action, self.name) from None

    async def latest(self) -> dict[str, Any]:
        """The newest revision: ``revision``, ``status``, ``chart_name``, ``chart_version``…
        plus its user-supplied ``values`` and ``description``."""
        history = await self._helm("history", lambda: self.cfg.history(self.name))
        if not history:
            raise PermanentError(f"Helm release {self.name} has no revision")
        latest = dict(history[-1])
        return await self._with_details(latest)

    async def _with_details(self, summary: dict[str, Any]) -> dict[str, Any]:
        revision = int(summary["revision"])
        full = await self._helm("get", lambda: self.cfg.get_all(self.name, revision=revision))
        summary["values"] = full.get("config") or {}
        computed = await self._helm(
            "get values", lambda: self.cfg.get_values(self.name, all_values=True, revision=revision)
        )
        summary["computed"] = computed
        summary["description"] = (full.get("info") or {}).get("description", "")
        return summary

    async def history(self) -> list[dict[str, Any]]:
        history = await self._helm("history", lambda: self.cfg.history(self.name))
        return [await self._with_details(dict(h)) for h in history]

    def values_key(self, chart_name: str) -> str:
        key = self._values_key or VALUES_KEYS.get(chart_name)
        if not key:
            raise PermanentError(
                f"release {self.name} uses chart '{chart_name}': set backend.helm.values_key "
                "to the values key of the image tag (e.g. image.tag)"
            )
        return key

    def planned_values(self, latest: dict[str, Any], image: str) -> dict[str, Any]:
        values = merge_values(latest["values"], self.extra_values)
        return set_path(values, self.values_key(latest["chart_name"]), tag_of(image))

    async def plan(self, image: str) -> list[str]:
        """What the upgrade to ``image`` changes besides the tag: value and chart changes."""
        latest = await self.latest()
        key = self.values_key(latest["chart_name"])
        deployed = set_path(latest["computed"], key, tag_of(image))
        lines = diff_values(deployed, merge_values(deployed, self.extra_values))
        if self.chart_version and self.chart_version != latest.get("chart_version"):
            lines.append(
                f"chart {latest['chart_name']}: {latest.get('chart_version')} → "
                f"{self.chart_version}"
            )
        return lines

    async def upgrade(self, image: str, fence: str | None) -> tuple[int, int]:
        """Upgrade the release to ``image``'s tag (nothing if its newest revision has it);
        returns (revision before, revision after)."""
        async with self._lock:
            latest = await self.latest()
            if latest["status"] in PENDING:
                latest = await self._unlock_own(latest, image, fence)
            key = self.values_key(latest["chart_name"])
            if (
                get_path(latest["computed"], key) == tag_of(image)
                and latest["status"] == "deployed"
            ):
                before = _recorded_from(latest["description"])
                return (before or int(latest["revision"]), int(latest["revision"]))
            values = self.planned_values(latest, image)
            description = DESCRIPTION.format(image=image, revision=latest["revision"])
            if fence:
                description += f" (run {fence.rpartition(':')[0]})"
            with tempfile.TemporaryDirectory(prefix="upgrade-bot-chart-") as tmp:
                chart: Any = self.chart
                if chart is None:
                    chart = await self._stored_chart(int(latest["revision"]), Path(tmp))
                result = await self._helm(
                    "upgrade",
                    lambda: self.cfg.upgrade(
                        chart,
                        self.name,
                        values,
                        namespace=self.namespace,
                        description=description,
                        chart_version=self.chart_version if self.chart else None,
                    ),
                )
            return int(latest["revision"]), int(result["revision"])

    async def _unlock_own(
        self, latest: dict[str, Any], image: str, fence: str | None
    ) -> dict[str, Any]:
        """The newest revision is still pending: an operation under way, or one whose process
        died before Helm recorded its end (Helm stores the new revision as pending-upgrade,
        applies the manifests, then records it deployed: helm/helm pkg/action/upgrade.go).
        Our own upgrade to ``image`` for this run, left pending, is marked failed — what Helm
        itself does to an upgrade it sees interrupted (helm/helm#9180), and what Flux does to a
        release left pending (fluxcd/helm-controller internal/reconcile/unlock.go) — so that
        it can be upgraded again. Anyone else's pending operation is left alone."""
        run = fence.rpartition(":")[0] if fence else None
        ours = (
            latest["status"] == "pending-upgrade"
            and run is not None
            and latest["description"].startswith(DESCRIPTION.split("{", 1)[0])
            and latest["description"].endswith(f"(run {run})")
            and f": {image} from revision" in latest["description"]
        )
        if not ours or self._read_secret is None or self._update_secret is None:
            raise TemporaryError(
                f"Helm release {self.name}: revision {latest['revision']} is "
                f"{latest['status']} ({latest['description'] or 'no description'}), another "
                "operation is in progress; wait for it, or resolve it (helm rollback)"
            )
        secret = f"sh.helm.release.v1.{self.name}.v{latest['revision']}"
        release = decode_release(await self._read_secret(secret))
        info = release.setdefault("info", {})
        info["status"] = "failed"
        info["description"] = (
            f"{latest['description']}; interrupted before Helm recorded its end: marked failed "
            "by upgrade-bot to upgrade again"
        )
        # The storage driver's Secret: the encoded release and a status label Helm filters by
        # (helm/helm pkg/storage/driver/secrets.go).
        await self._update_secret(
            secret, {"release": encode_release(release)}, {"status": "failed"}
        )
        log.warning(
            "Helm release %s: revision %s was left pending-upgrade by an interrupted upgrade of "
            "this run; marked failed, upgrading again",
            self.name,
            latest["revision"],
        )
        return await self.latest()

    async def _stored_chart(self, revision: int, directory: Path) -> Path:
        if self._read_secret is None:
            raise PermanentError("no way to read the release's stored chart")
        data = await self._read_secret(f"sh.helm.release.v1.{self.name}.v{revision}")
        return chart_from_release(decode_release(data), directory)

    async def rollback_to_tag(self, image: str) -> tuple[int, int] | None:
        """Undo upgrade-bot's upgrade: roll back to the revision recorded before it, when that
        revision has ``image``'s tag; None when there is no such upgrade to undo."""
        async with self._lock:
            history = await self.history()
            latest = history[-1]
            key = self.values_key(latest["chart_name"])
            tag = tag_of(image)
            if get_path(latest["computed"], key) == tag and latest["status"] == "deployed":
                return None
            recorded = _recorded_from(latest["description"])
            by_revision = {int(h["revision"]): h for h in history}
            if (
                recorded not in by_revision
                or get_path(by_revision[recorded]["computed"], key) != tag
            ):
                return None
            target = recorded
            await self._helm("rollback", lambda: self.cfg.rollback(self.name, version=target))
            after = await self.latest()
            return target, int(after["revision"])

    async def undo(self, image: str) -> tuple[int, int] | None:
        """Roll back upgrade-bot's upgrade to ``image`` (the newest revision) to the revision
        recorded before it; None when the newest revision is not such an upgrade."""
        async with self._lock:
            latest = await self.latest()
            recorded = _recorded_from(latest["description"])
            if recorded is None or not latest["description"].startswith(f"upgrade-bot: {image} "):
                return None
            await self._helm("rollback", lambda: self.cfg.rollback(self.name, version=recorded))
            after = await self.latest()
            return recorded, int(after["revision"])

    async def close(self) -> None:
        await asyncio.to_thread(self.cfg.close)


def _recorded_from(description: str) -> int | None:
    marker = " from revision "
    if not description.startswith("upgrade-bot:") or marker not in description:
        return None
    digits = description.split(marker, 1)[1].split(" ", 1)[0]
    return int(digits) if digits.isdigit() else None
