"""values.schema.json refuses values that would install a broken or over-privileged bot, naming
the key, at `helm install` time (Helm validates values before rendering)."""

from __future__ import annotations

from typing import Any

import pytest
from helm_python.errors import HelmValuesError

from .rendering import APP_TOKEN, BOT_TOKEN, VALUE_SETS, merged, render

SOCKET = VALUE_SETS["socket-chart-secret"]
K8S = VALUE_SETS["kubernetes-two-namespaces"]

BAD_VALUES: dict[str, tuple[dict[str, Any], str]] = {
    # name: (values, the path Helm's message names)
    "unknown Slack mode": ({"slack": {"mode": "foo"}}, "/slack/mode"),
    "negative replicas": ({"replicaCount": -1}, "/replicaCount"),
    "replicas as text": ({"replicaCount": "3"}, "/replicaCount"),
    "no token source": ({"slack": {"existingSecret": ""}}, "/slack/botToken"),
    "socket mode without the app token": (
        {"slack": {"existingSecret": "", "botToken": BOT_TOKEN}},
        "/slack/appToken",
    ),
    "http mode without the signing secret": (
        {"slack": {"mode": "http", "existingSecret": "", "botToken": BOT_TOKEN}},
        "/slack/signingSecret",
    ),
    "tokens beside an existing Secret": ({"slack": {"botToken": BOT_TOKEN}}, "/slack/botToken"),
    "the app token where the bot token goes": (
        merged(SOCKET, {"slack": {"botToken": APP_TOKEN}}),
        "/slack/botToken",
    ),
    "a fixed identity shared by every pod": (
        merged(SOCKET, {"config": {"identity": "upgrade-bot-1"}}),
        "/config/identity",
    ),
    "the backend on without a gateway namespace": (
        {"kubernetesBackend": {"enabled": True}},
        "/kubernetesBackend",
    ),
    "a wildcard resource for Helm": (
        merged(
            K8S, {"kubernetesBackend": {"helmResources": [{"apiGroup": "", "resources": ["*"]}]}}
        ),
        "/kubernetesBackend/helmResources/0/resources/0",
    ),
    "a wildcard API group for Helm": (
        merged(
            K8S,
            {
                "kubernetesBackend": {
                    "helmResources": [{"apiGroup": "*", "resources": ["configmaps"]}]
                }
            },
        ),
        "/kubernetesBackend/helmResources/0/apiGroup",
    ),
    "a namespace that is not a DNS label": (
        merged(K8S, {"kubernetesBackend": {"namespaces": ["Gateways_EU"]}}),
        "/kubernetesBackend/namespaces/0",
    ),
    "a password in the Redis URL": (
        {"redis": {"url": "redis://:hunter2@redis:6379/0"}},
        "/redis/url",
    ),
    "not a Redis URL": ({"redis": {"url": "http://redis:6379"}}, "/redis/url"),
    "two Redis URLs": ({"redis": {"url": "redis://r:6379/0", "existingSecret": "r"}}, "/redis"),
    "the in-chart Redis and another": (
        {"redis": {"url": "redis://r:6379/0", "internal": {"enabled": True}}},
        "/redis/url",
    ),
    "a grace too short to finish a write": (
        {"terminationGracePeriodSeconds": 5},
        "/terminationGracePeriodSeconds",
    ),
    "an unknown log format": ({"logFormat": "yaml"}, "/logFormat"),
    "the namespace's default ServiceAccount": (
        {"serviceAccount": {"create": False}},
        "/serviceAccount/name",
    ),
    "a misspelt key": ({"replicas": 3}, "replicas"),
    "a privileged ops port": ({"ops": {"port": 80}}, "/ops/port"),
}


@pytest.mark.parametrize("name", BAD_VALUES)
def test_bad_values_are_refused_naming_the_key(name: str) -> None:
    values, path = BAD_VALUES[name]
    with pytest.raises(HelmValuesError) as refused:
        render(values)
    assert path in str(refused.value)


def test_cluster_wide_without_helm_needs_no_namespace() -> None:
    values = {"kubernetesBackend": {"enabled": True, "clusterWide": True, "helmStrategy": False}}
    rendered = render(values)
    assert [o["kind"] for o in rendered.objects if "Role" in o["kind"]] == [
        "ClusterRole",
        "ClusterRoleBinding",
    ]
