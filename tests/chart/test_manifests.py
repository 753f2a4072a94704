"""Every value set lints strictly and renders manifests a current Kubernetes accepts.

Lint is `helm lint --strict` through Helm's own engine (a finding of severity warning or above
fails); each rendered object is validated with kubernetes-validate against the schemas of
Kubernetes KUBE_VERSION in strict mode (an unknown field is an error, as the API server's
strict field validation makes it)."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from .rendering import KUBE_VERSION, VALUE_SETS, lint, render

WARNING = 2  # helm_python.lint severities: 1 info, 2 warning, 3 error


@pytest.mark.parametrize("name", VALUE_SETS)
def test_the_chart_lints_strictly_without_warnings(name: str) -> None:
    report = lint(VALUE_SETS[name])
    assert report["errors"] == []
    serious = [m for m in report["messages"] if m["severity"] >= WARNING]
    assert serious == [], serious


@pytest.mark.parametrize("name", VALUE_SETS)
def test_every_rendered_manifest_is_valid_for_a_current_kubernetes(name: str) -> None:
    rendered = render(VALUE_SETS[name])
    assert rendered.objects
    for obj in rendered.objects:
        # raises ValidationError naming the field; SchemaNotFoundError for an unknown kind
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


def test_a_manifest_with_an_unknown_field_is_refused_by_the_validator() -> None:
    """The validation above has teeth: a misspelt field in the rendered Deployment fails."""
    deployment = render({}).deployment
    deployment["spec"]["template"]["spec"]["securityContxt"] = {"runAsNonRoot": True}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSION, strict=True)


def rbac_rules(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return obj.get("rules", []) if obj["kind"] in ("Role", "ClusterRole") else []


@pytest.mark.parametrize("name", VALUE_SETS)
def test_no_rbac_rule_has_a_wildcard(name: str) -> None:
    rules = [rule for obj in render(VALUE_SETS[name]).objects for rule in rbac_rules(obj)]
    for rule in rules:
        for field in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
            assert "*" not in rule.get(field, []), rule
            assert not any("*" in item for item in rule.get(field, [])), rule
