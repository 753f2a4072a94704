"""The chart rendered offline with Helm's own engine, and the value sets the tests share.

``helm_python`` (helm-python-sdk) embeds Helm v4's engine: ``Chart.load(dir).render(values,
name=…, namespace=…)`` coalesces the chart's values with ``values``, validates them against
``values.schema.json`` (raising ``HelmValuesError``) and returns each template's output;
``lint(dir, values, strict=True, kube_version=…)`` is ``helm lint --strict``. No cluster is
contacted (the ``lookup`` function returns nothing).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

from upgrade_bot.engine.backends.kube_helm import merge_values

ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "helm" / "upgrade-bot"
RELEASE = "bot"
NAMESPACE = "upgrade-bot"
# The newest Kubernetes minor whose schemas kubernetes-validate 1.37 ships
# (kubernetes_validate/kubernetes-json-schema/v1.37.0-local-strict); also Helm lint's target.
KUBE_VERSION = "1.37.0"

# A bot config as a user gives it in values (see config.example.yaml): one Kubernetes group
# driven from inside the cluster, and the Slack section `serve` needs.
BOT_CONFIG: dict[str, Any] = {
    "groups": [
        {
            "name": "prod-eu",
            "image": {"repository": "apache/apisix", "tag_template": "{version}-ubuntu"},
            "backend": {
                "type": "kubernetes",
                "namespace": "gateways-eu",
                "deployment": "apisix",
                "in_cluster": True,
            },
        }
    ],
    "slack": {"channel": "C0123UPGRADES"},
}

# Tokens shaped like Slack's (xoxb-/xapp-), for the chart-made Secret; not real credentials.
BOT_TOKEN = "xoxb-0000000000-0000000000000-chartTestBotToken0000000"
APP_TOKEN = "xapp-1-A0000000000-0000000000000-chartTestAppToken"
SIGNING_SECRET = "0123456789abcdef0123456789abcdef"

# The value sets of the issue, each a complete install a user could make.
VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "http-mode": {
        "slack": {
            "mode": "http",
            "existingSecret": "",
            "botToken": BOT_TOKEN,
            "signingSecret": SIGNING_SECRET,
        },
        "config": BOT_CONFIG,
        "redis": {"url": "redis://redis.databases.svc:6379/0"},
        "service": {"ops": True},
    },
    "socket-chart-secret": {
        "slack": {"existingSecret": "", "botToken": BOT_TOKEN, "appToken": APP_TOKEN},
        "config": BOT_CONFIG,
        "redis": {"url": "redis://redis.databases.svc:6379/0"},
    },
    "internal-redis": {
        "config": BOT_CONFIG,
        "redis": {"internal": {"enabled": True}, "password": {"existingSecret": "redis-auth"}},
    },
    "kubernetes-two-namespaces": {
        "config": BOT_CONFIG,
        "redis": {"existingSecret": "redis-url"},
        "kubernetesBackend": {"enabled": True, "namespaces": ["gateways-eu", "gateways-us"]},
    },
    "kubernetes-patch-only": {
        "config": BOT_CONFIG,
        "redis": {"existingSecret": "redis-url"},
        "kubernetesBackend": {
            "enabled": True,
            "namespaces": ["gateways-eu", "gateways-us"],
            "helmStrategy": False,
        },
    },
    "kubernetes-cluster-wide": {
        "config": BOT_CONFIG,
        "redis": {"existingSecret": "redis-url"},
        "kubernetesBackend": {"enabled": True, "clusterWide": True, "namespaces": ["gateways-eu"]},
    },
    "existing-secret": {
        "slack": {
            "existingSecret": "team-slack",
            "existingSecretKeys": {"botToken": "bot", "appToken": "app"},
        },
        "config": BOT_CONFIG,
        "redis": {
            "url": "rediss+sentinel://sentinel-0.db:26379,sentinel-1.db:26379/mymaster/0",
            "username": "upgrade-bot",
            "password": {"existingSecret": "redis-auth"},
            "sentinelPassword": {"existingSecret": "redis-auth", "key": "sentinel"},
            "tls": {"caSecret": "redis-ca", "clientCertSecret": "redis-client"},
        },
        "controlPlane": {"apiKey": {"existingSecret": "api7-cp"}},
    },
    "three-replicas": {
        "replicaCount": 3,
        "config": BOT_CONFIG,
        "redis": {"url": "redis://redis.databases.svc:6379/0"},
        "validateConfig": {"enabled": True},
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": {"app.kubernetes.io/component": "bot"}},
            }
        ],
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [
            {"key": "dedicated", "operator": "Equal", "value": "ops", "effect": "NoSchedule"}
        ],
        "affinity": {
            "nodeAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 50,
                        "preference": {
                            "matchExpressions": [
                                {"key": "node-role", "operator": "In", "values": ["ops"]}
                            ]
                        },
                    }
                ]
            }
        },
        "priorityClassName": "ops-critical",
        "imagePullSecrets": [{"name": "ghcr-pull"}],
        "podAnnotations": {"prometheus.io/scrape": "true", "prometheus.io/port": "8080"},
        "extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy.internal:3128"}],
    },
}


@dataclass(frozen=True)
class Rendered:
    """One install's output: the Kubernetes objects and the NOTES text."""

    objects: list[dict[str, Any]]
    notes: str

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [o for o in self.of_kind(kind) if name is None or o["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
        return found[0]

    def kinds(self) -> list[str]:
        return sorted(f"{o['kind']}/{o['metadata']['name']}" for o in self.objects)

    @property
    def deployment(self) -> dict[str, Any]:
        return self.one("Deployment")

    @property
    def pod(self) -> dict[str, Any]:
        return self.deployment["spec"]["template"]["spec"]

    @property
    def bot(self) -> dict[str, Any]:
        (container,) = [c for c in self.pod["containers"] if c["name"] == "upgrade-bot"]
        return container

    def env(self) -> dict[str, dict[str, Any]]:
        """The bot container's environment by name (each entry as rendered)."""
        return {e["name"]: e for e in self.bot["env"]}


def merged(*layers: dict[str, Any]) -> dict[str, Any]:
    """Values layered the way `helm -f a.yaml -f b.yaml` coalesces them (the backend's own
    ``merge_values``): maps merge key by key."""
    return functools.reduce(merge_values, layers, {})


@functools.cache
def _manifests(values_json: str, namespace: str) -> dict[str, str]:
    chart = helm.Chart.load(CHART_DIR)
    try:
        return chart.render(
            json.loads(values_json), name=RELEASE, namespace=namespace, is_install=True
        )
    finally:
        chart.close()


def render(values: dict[str, Any], *, namespace: str = NAMESPACE) -> Rendered:
    """The install's objects, parsed afresh on each call (tests may change them)."""
    manifests = _manifests(json.dumps(values, sort_keys=True), namespace)
    objects: list[dict[str, Any]] = []
    notes = ""
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return Rendered(objects, notes)


def lint(values: dict[str, Any]) -> dict[str, Any]:
    return helm.lint(CHART_DIR, values, strict=True, kube_version=f"v{KUBE_VERSION}")
