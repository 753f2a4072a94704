"""The Kubernetes API calls the Kubernetes backend makes, with its errors in the engine's words.

The official ``kubernetes`` client blocks; every call here runs in a worker thread
(``asyncio.to_thread``), never on the bot's event loop. Each call names the Kubernetes API
reference page it follows. An ``ApiException`` becomes:

* 403 → ``PermanentError`` naming the verb and resource the bot's account may not use (and the
  README section listing the RBAC each strategy needs);
* 404 → ``PermanentError`` naming what is missing;
* 409 → ``TemporaryError`` (the object changed meanwhile; the call is repeated later);
* 429 and 5xx, or no answer → ``TemporaryError``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from ..errors import PermanentError, TemporaryError

T = TypeVar("T")

RBAC_HINT = "see the README, 'Kubernetes backend: RBAC'"

# https://kubernetes.io/docs/reference/kubernetes-api/workload-resources/deployment-v1/
# https://kubernetes.io/docs/reference/kubernetes-api/workload-resources/pod-v1/
# https://kubernetes.io/docs/reference/kubernetes-api/policy-resources/pod-disruption-budget-v1/


def api_client(
    *, kubeconfig: str | None, context: str | None, in_cluster: bool
) -> client.ApiClient:
    """A client for the configured cluster: in-cluster (the pod's ServiceAccount), or a
    kubeconfig file and context (kubernetes-client/python ``config.new_client_from_config``)."""
    try:
        if in_cluster:
            configuration = client.Configuration()
            config.load_incluster_config(client_configuration=configuration)
            return client.ApiClient(configuration)
        return config.new_client_from_config(config_file=kubeconfig, context=context)
    except config.ConfigException as exc:
        raise PermanentError(f"cannot configure the Kubernetes client: {exc}") from None


def describe_error(exc: ApiException, verb: str, what: str) -> TemporaryError | PermanentError:
    status = exc.status or 0
    if status == 403:
        return PermanentError(
            f"Kubernetes refused to {verb} {what} (403 Forbidden): the bot's account lacks that "
            f"permission; {RBAC_HINT}"
        )
    if status == 401:
        return PermanentError(
            f"Kubernetes did not accept the bot's credentials to {verb} {what} (401)"
        )
    if status == 404:
        return PermanentError(f"{what} not found (404 on {verb}): check namespace and name")
    if status == 409:
        return TemporaryError(
            f"{what} changed while the bot tried to {verb} it (409 Conflict); trying again"
        )
    if status == 422:
        return PermanentError(f"Kubernetes rejected the {verb} of {what} (422): {exc.reason}")
    return TemporaryError(f"Kubernetes answered {status} to {verb} {what}: {exc.reason}")


class KubeCalls:
    """The calls, each ``await``-able and mapped to the engine's errors."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.apps = client.AppsV1Api(api)
        self.core = client.CoreV1Api(api)
        self.policy = client.PolicyV1Api(api)

    async def _call(self, verb: str, what: str, fn: Callable[[], T]) -> T:
        try:
            return await asyncio.to_thread(fn)
        except ApiException as exc:
            raise describe_error(exc, verb, what) from None
        except (HTTPError, OSError) as exc:
            raise TemporaryError(
                f"the Kubernetes API did not answer ({type(exc).__name__}) to {verb} {what}"
            ) from None

    async def read_deployment(self, ns: str, name: str) -> Any:
        # GET /apis/apps/v1/namespaces/{namespace}/deployments/{name} (deployment-v1, "read")
        return await self._call(
            "get",
            f"deployments {ns}/{name}",
            lambda: self.apps.read_namespaced_deployment(name, ns),
        )

    async def list_deployments(self, ns: str, selector: str) -> list[Any]:
        # GET /apis/apps/v1/namespaces/{namespace}/deployments?labelSelector=
        # (deployment-v1, "list")
        result = await self._call(
            "list",
            f"deployments in {ns} ({selector})",
            lambda: self.apps.list_namespaced_deployment(ns, label_selector=selector),
        )
        return list(result.items)

    async def patch_deployment(self, ns: str, name: str, body: dict[str, Any]) -> Any:
        # PATCH /apis/apps/v1/namespaces/{namespace}/deployments/{name} (deployment-v1,
        # "patch"); a dict body is sent as application/strategic-merge-patch+json
        # (kubernetes-client/python kubernetes/client/rest.py), so lists such as containers
        # merge by name and everything the patch does not name is kept.
        return await self._call(
            "patch",
            f"deployments {ns}/{name}",
            lambda: self.apps.patch_namespaced_deployment(name, ns, body),
        )

    async def list_pods(self, ns: str, selector: str) -> list[Any]:
        # GET /api/v1/namespaces/{namespace}/pods?labelSelector= (pod-v1, "list")
        result = await self._call(
            "list",
            f"pods in {ns} ({selector})",
            lambda: self.core.list_namespaced_pod(ns, label_selector=selector),
        )
        return list(result.items)

    async def read_secret_data(self, ns: str, name: str) -> dict[str, str]:
        # GET /api/v1/namespaces/{namespace}/secrets/{name} (secret-v1, "read":
        # https://kubernetes.io/docs/reference/kubernetes-api/config-and-storage-resources/secret-v1/)
        secret = await self._call(
            "get", f"secrets {ns}/{name}", lambda: self.core.read_namespaced_secret(name, ns)
        )
        return dict(secret.data or {})

    async def update_secret(
        self, ns: str, name: str, data: dict[str, str], labels: dict[str, str]
    ) -> None:
        """Replace some ``data`` keys and ``labels`` of a Secret, refused if it changed since
        it was read (its resourceVersion rides along)."""
        # GET then PUT /api/v1/namespaces/{namespace}/secrets/{name} (secret-v1, "read" and
        # "replace"; the resourceVersion makes the replace conditional).
        secret = await self._call(
            "get", f"secrets {ns}/{name}", lambda: self.core.read_namespaced_secret(name, ns)
        )
        secret.data = {**(secret.data or {}), **data}
        secret.metadata.labels = {**(secret.metadata.labels or {}), **labels}
        await self._call(
            "update",
            f"secrets {ns}/{name}",
            lambda: self.core.replace_namespaced_secret(name, ns, secret),
        )

    async def list_pdbs(self, ns: str) -> list[Any]:
        # GET /apis/policy/v1/namespaces/{namespace}/poddisruptionbudgets
        # (pod-disruption-budget-v1, "list")
        result = await self._call(
            "list",
            f"poddisruptionbudgets in {ns}",
            lambda: self.policy.list_namespaced_pod_disruption_budget(ns),
        )
        return list(result.items)

    async def close(self) -> None:
        await asyncio.to_thread(self.api.close)
