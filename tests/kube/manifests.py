"""The vendor charts' manifests as tests apply them (tests/fixtures/vendor-charts/SOURCE.md)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from upgrade_bot.sandbox.kube import CHART_DIR

CHARTS = Path(__file__).parent.parent / "fixtures" / "vendor-charts"
API7_RENDERED = CHARTS / "rendered-api7-gateway-3.10.12.yaml"
APISIX_CHART = CHART_DIR / "apisix-2.14.0"
API7_DEPLOYMENT = "api7-ee-3-gateway"
API7_CONTAINER = "gateway"
API7_IMAGE = "api7/api7-ee-3-gateway:3.10.5"


def api7_manifests() -> list[dict[str, Any]]:
    return [m for m in yaml.safe_load_all(API7_RENDERED.read_text()) if m]


def api7_deployment(
    *,
    replicas: int = 3,
    status_probe: bool = True,
    paused: bool = False,
    **spec: Any,
) -> dict[str, Any]:
    """The API7 gateway chart's Deployment (default values), with ``replicas`` and, when
    ``status_probe``, the readiness probe the preflight advises: the status endpoint enabled
    (container port 7085) and ``httpGet /status/ready`` instead of the chart's ``tcpSocket``."""
    d = copy.deepcopy(next(m for m in api7_manifests() if m["kind"] == "Deployment"))
    d["spec"]["replicas"] = replicas
    d["spec"].update(spec)
    if paused:
        d["spec"]["paused"] = True
    container = d["spec"]["template"]["spec"]["containers"][0]
    if status_probe:
        container["ports"].append({"name": "status", "containerPort": 7085, "protocol": "TCP"})
        probe = container["readinessProbe"]
        probe.pop("tcpSocket", None)
        probe["httpGet"] = {"path": "/status/ready", "port": 7085}
    return d
