"""The RBAC the chart grants is exactly the README's table ("Kubernetes backend: RBAC"), scoped
to the gateway namespaces, with Secrets and the chart kinds only for the `helm` strategy; and it
covers every call the backend makes (engine/backends/kube_api.py)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pytest

from .rendering import NAMESPACE, ROOT, VALUE_SETS, render

Rule = tuple[str, frozenset[str], frozenset[str]]  # (apiGroup, resources, verbs)


@dataclass(frozen=True)
class Row:
    group: str
    resources: frozenset[str]  # empty: "as the chart renders them"
    verbs: frozenset[str]
    strategy: str  # both | helm


def readme_rows() -> list[Row]:
    text = (ROOT / "README.md").read_text()
    section = text.split("### Kubernetes backend: RBAC", 1)[1].split("\n#", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not cells[2].startswith("`"):
            continue  # the header, its rule, and prose
        ticked = [re.findall(r"`([^`]*)`", c) for c in cells]
        group = ticked[0][0].replace('""', "")
        strategy = "helm" if cells[3].startswith("`helm`") else "both"
        rows.append(Row(group, frozenset(ticked[1]), frozenset(ticked[2]), strategy))
    assert len(rows) == 5, f"the README's RBAC table changed shape: {rows}"
    return rows


def normalized(rules: list[dict[str, Any]]) -> set[Rule]:
    out = set()
    for r in rules:
        assert len(r["apiGroups"]) == 1, r
        out.add((r["apiGroups"][0], frozenset(r["resources"]), frozenset(r["verbs"])))
    assert len(out) == len(rules), f"duplicate rules: {rules}"
    return out


def expected_rules(*, backend: bool, helm: bool, helm_resources: list[dict[str, Any]]) -> set[Rule]:
    rows = readme_rows()
    rules: set[Rule] = set()
    for row in rows:
        if row.strategy == "both" and backend:
            rules.add((row.group, row.resources, row.verbs))
        elif row.strategy == "helm" and helm and row.resources:
            rules.add((row.group, row.resources, row.verbs))
    if helm:
        (chart_kinds,) = [r for r in rows if r.strategy == "helm" and not r.resources]
        for item in helm_resources:
            rules.add((item["apiGroup"], frozenset(item["resources"]), chart_kinds.verbs))
    return rules


DEFAULT_CHART_KINDS = [
    {"apiGroup": "", "resources": ["configmaps", "services", "serviceaccounts"]},
    {"apiGroup": "apps", "resources": ["deployments"]},
]


def roles_by_namespace(name: str) -> dict[str, set[Rule]]:
    rendered = render(VALUE_SETS[name])
    out = {}
    for role in rendered.of_kind("Role"):
        out[role["metadata"]["namespace"]] = normalized(role["rules"])
    return out


def assert_bound(rendered: Any, kind: str, namespace: str | None) -> None:
    """A binding of that role, in that namespace, to the bot's ServiceAccount (and nobody else)."""
    binding_kind = kind + "Binding"
    bindings = [
        b for b in rendered.of_kind(binding_kind) if b["metadata"].get("namespace") == namespace
    ]
    assert len(bindings) == 1, (binding_kind, namespace)
    (b,) = bindings
    role = next(r for r in rendered.of_kind(kind) if r["metadata"].get("namespace") == namespace)
    assert b["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": kind,
        "name": role["metadata"]["name"],
    }
    assert b["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": rendered.pod["serviceAccountName"],
            "namespace": NAMESPACE,
        }
    ]


def test_two_gateway_namespaces_get_a_role_each_with_exactly_the_documented_rules() -> None:
    rendered = render(VALUE_SETS["kubernetes-two-namespaces"])
    assert roles_by_namespace("kubernetes-two-namespaces") == {
        ns: expected_rules(backend=True, helm=True, helm_resources=DEFAULT_CHART_KINDS)
        for ns in ("gateways-eu", "gateways-us")
    }
    for ns in ("gateways-eu", "gateways-us"):
        assert_bound(rendered, "Role", ns)
    assert not rendered.of_kind("ClusterRole") and not rendered.of_kind("ClusterRoleBinding")
    # nothing in the bot's own namespace: it holds no gateway group
    assert NAMESPACE not in roles_by_namespace("kubernetes-two-namespaces")


def test_secrets_are_granted_only_with_the_helm_strategy() -> None:
    with_helm = roles_by_namespace("kubernetes-two-namespaces")
    patch_only = roles_by_namespace("kubernetes-patch-only")
    assert set(patch_only) == {"gateways-eu", "gateways-us"}
    for ns, rules in patch_only.items():
        assert rules == expected_rules(backend=True, helm=False, helm_resources=[])
        assert not any("secrets" in resources for _, resources, _ in rules)
        assert any("secrets" in resources for _, resources, _ in with_helm[ns])


def test_cluster_wide_puts_the_backend_rules_in_a_cluster_role_and_secrets_stay_namespaced() -> (
    None
):
    rendered = render(VALUE_SETS["kubernetes-cluster-wide"])
    cluster_role = rendered.one("ClusterRole")
    assert normalized(cluster_role["rules"]) == expected_rules(
        backend=True, helm=False, helm_resources=[]
    )
    assert_bound(rendered, "ClusterRole", None)
    assert roles_by_namespace("kubernetes-cluster-wide") == {
        "gateways-eu": expected_rules(backend=False, helm=True, helm_resources=DEFAULT_CHART_KINDS)
    }
    assert_bound(rendered, "Role", "gateways-eu")


def test_chart_kinds_from_values_get_the_documented_verbs() -> None:
    kinds = [
        {"apiGroup": "apps", "resources": ["statefulsets"]},
        {"apiGroup": "policy", "resources": ["poddisruptionbudgets"]},
    ]
    values = {
        "redis": {"url": "redis://r:6379/0"},
        "kubernetesBackend": {"enabled": True, "namespaces": ["gw"], "helmResources": kinds},
    }
    (role,) = render(values).of_kind("Role")
    assert normalized(role["rules"]) == expected_rules(
        backend=True, helm=True, helm_resources=kinds
    )


def backend_calls() -> set[tuple[str, str]]:
    """(verb, resource) of every Kubernetes call the backend makes through KubeCalls._call."""
    source = (ROOT / "engine" / "backends" / "kube_api.py").read_text()
    calls = set(re.findall(r'_call\(\s*"([a-z]+)",\s*f?"([a-z]+)', source))
    assert calls, "no calls found: kube_api.py changed shape"
    return calls


@pytest.mark.parametrize("name", ["kubernetes-two-namespaces", "kubernetes-cluster-wide"])
def test_every_call_of_the_backend_is_allowed_in_a_gateway_namespace(name: str) -> None:
    rendered = render(VALUE_SETS[name])
    granted: set[tuple[str, str, str]] = set()  # (group, resource, verb) in gateways-eu
    for obj in rendered.objects:
        if obj["kind"] == "ClusterRole" or (
            obj["kind"] == "Role" and obj["metadata"]["namespace"] == "gateways-eu"
        ):
            for r in obj["rules"]:
                granted |= {
                    (g, res, v)
                    for g in r["apiGroups"]
                    for res in r["resources"]
                    for v in r["verbs"]
                }
    group_of = {res: row.group for row in readme_rows() for res in row.resources}
    for verb, resource in backend_calls():
        assert (group_of[resource], resource, verb) in granted, (verb, resource)


def test_the_backend_off_renders_no_rbac_at_all() -> None:
    rendered = render(VALUE_SETS["defaults"])
    assert not [o for o in rendered.objects if "Role" in o["kind"]]
