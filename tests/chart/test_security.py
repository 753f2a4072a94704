"""Least privilege in every value set: the bot (and the in-chart Redis) run as non-root with a
read-only root filesystem, no privilege escalation, no capabilities, the runtime's seccomp
profile, and an API token only when the Kubernetes backend needs one."""

from __future__ import annotations

from typing import Any

import pytest

from .rendering import VALUE_SETS, render

WORKLOAD_KINDS = ("Deployment", "StatefulSet")


def pod_specs(name: str) -> list[tuple[str, dict[str, Any]]]:
    rendered = render(VALUE_SETS[name])
    return [
        (o["metadata"]["name"], o["spec"]["template"]["spec"])
        for o in rendered.objects
        if o["kind"] in WORKLOAD_KINDS
    ]


@pytest.mark.parametrize("name", VALUE_SETS)
def test_every_pod_runs_as_non_root_under_the_runtime_seccomp_profile(name: str) -> None:
    for workload, pod in pod_specs(name):
        ctx = pod["securityContext"]
        assert ctx["runAsNonRoot"] is True, workload
        assert ctx["runAsUser"] != 0 and ctx["runAsGroup"] != 0, workload
        assert ctx["fsGroup"] == ctx["runAsGroup"], workload  # volumes writable by the group
        assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}, workload


@pytest.mark.parametrize("name", VALUE_SETS)
def test_every_container_is_read_only_unprivileged_and_without_capabilities(name: str) -> None:
    for workload, pod in pod_specs(name):
        for c in pod.get("initContainers", []) + pod["containers"]:
            ctx = c["securityContext"]
            assert ctx["readOnlyRootFilesystem"] is True, (workload, c["name"])
            assert ctx["allowPrivilegeEscalation"] is False, (workload, c["name"])
            assert ctx["capabilities"] == {"drop": ["ALL"]}, (workload, c["name"])
            assert not ctx.get("privileged"), (workload, c["name"])
            # something writable for what the process needs: /tmp (and Redis's /data)
            mounts = {m["mountPath"] for m in c["volumeMounts"]}
            assert "/tmp" in mounts, (workload, c["name"])
            assert c["resources"]["requests"] and c["resources"]["limits"], (workload, c["name"])


@pytest.mark.parametrize("name", VALUE_SETS)
def test_the_bot_runs_as_the_image_user_10001(name: str) -> None:
    ctx = render(VALUE_SETS[name]).pod["securityContext"]
    assert (ctx["runAsUser"], ctx["runAsGroup"], ctx["fsGroup"]) == (10001, 10001, 10001)


@pytest.mark.parametrize("name", VALUE_SETS)
def test_a_service_account_token_is_mounted_only_for_the_kubernetes_backend(name: str) -> None:
    values = VALUE_SETS[name]
    rendered = render(values)
    wanted = values.get("kubernetesBackend", {}).get("enabled", False)
    assert rendered.pod["automountServiceAccountToken"] is wanted
    # the bot's own ServiceAccount, never the namespace's default, and it mounts nothing itself
    sa = rendered.one("ServiceAccount")
    assert rendered.pod["serviceAccountName"] == sa["metadata"]["name"] != "default"
    assert sa["automountServiceAccountToken"] is False
    for o in rendered.of_kind("StatefulSet"):
        assert o["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    has_rbac = any(o["kind"].endswith(("Role", "RoleBinding")) for o in rendered.objects)
    assert has_rbac is wanted
