"""The emulated cluster's Kubernetes API: ``kmock`` with the object semantics clients rely on.

``kmock.KubernetesEmulator`` serves the Kubernetes URL scheme, discovery and error format, but
stores objects as plain dicts merged on PATCH (DESIGN.md §9 lists what it lacks). This subclass
keeps kmock's server, request parsing, discovery and ``Status`` errors, and replaces the object
store with one that follows the API conventions (Kubernetes API reference, "API Concepts"
https://kubernetes.io/docs/reference/using-api/api-concepts/ and "Common Definitions" /
ObjectMeta https://kubernetes.io/docs/reference/kubernetes-api/common-definitions/object-meta/):

* ``metadata.uid``, ``resourceVersion`` (one counter for the cluster), ``creationTimestamp``,
  ``generation`` bumped when anything but ``metadata``/``status`` changes;
* LIST with ``labelSelector`` (equality, ``!=``, ``in``/``notin``, exists) and ``fieldSelector``
  (``metadata.name``, ``metadata.namespace``), answered as ``kind: <Kind>List``;
* PATCH as strategic merge (lists merged by their patch merge key, e.g. containers by
  ``name``: https://kubernetes.io/docs/tasks/manage-kubernetes-objects/update-api-object-kubectl-patch/),
  JSON merge patch (RFC 7386), JSON patch (RFC 6902) and server-side apply
  (``application/apply-patch+yaml``, which creates a missing object);
* PUT replacing an object, refused with 409 Conflict on a stale ``resourceVersion``;
* the ``status`` subresource: writes to it change only ``status``, writes to the object never do;
* release Secrets that Helm sends as protobuf (``application/vnd.kubernetes.protobuf``, the
  ``k8s\\0`` envelope of k8s.io/apimachinery ``runtime.Unknown``), decoded for that one kind;
* ``GET /openapi/v2`` answered empty (Helm then skips schema validation) and ``/api/v1`` with
  ``groupVersion: v1``.

Refusals (``refuse``) answer 403 Forbidden (as missing RBAC would) or 409 Conflict for a verb on a
resource; tests use them to check the backend's error messages. WATCH is not served (nothing
here needs it).
"""

from __future__ import annotations

import base64
import copy
import datetime
import itertools
import json
import re
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import yaml
from kmock import KubernetesEmulator, ResourceInfo, resource
from kmock._internal import enums, parsing, rendering

Obj = dict[str, Any]
Key = tuple[str, str | None, str]
"""(``group/version/plural``, namespace or None, name)."""

KINDS: dict[str, tuple[str, bool, tuple[str, ...]]] = {
    # group/version/plural: (kind, namespaced, subresources)
    "apps/v1/deployments": ("Deployment", True, ("status", "scale")),
    "apps/v1/replicasets": ("ReplicaSet", True, ("status",)),
    "v1/pods": ("Pod", True, ("status",)),
    "v1/secrets": ("Secret", True, ()),
    "v1/configmaps": ("ConfigMap", True, ()),
    "v1/services": ("Service", True, ("status",)),
    "v1/serviceaccounts": ("ServiceAccount", True, ()),
    "v1/namespaces": ("Namespace", False, ("status",)),
    "policy/v1/poddisruptionbudgets": ("PodDisruptionBudget", True, ("status",)),
    "autoscaling/v2/horizontalpodautoscalers": ("HorizontalPodAutoscaler", True, ("status",)),
    "rbac.authorization.k8s.io/v1/clusterroles": ("ClusterRole", False, ()),
    "rbac.authorization.k8s.io/v1/clusterrolebindings": ("ClusterRoleBinding", False, ()),
    "rbac.authorization.k8s.io/v1/roles": ("Role", True, ()),
    "rbac.authorization.k8s.io/v1/rolebindings": ("RoleBinding", True, ()),
}
WITH_GENERATION = {"apps/v1/deployments", "apps/v1/replicasets", "policy/v1/poddisruptionbudgets"}
VERBS = ["get", "list", "create", "update", "patch", "delete"]

# Patch merge keys of the lists a gateway Deployment carries (the `patchMergeKey` of each field
# in the API reference: Container.name, EnvVar.name, ContainerPort.containerPort, Volume.name,
# VolumeMount.mountPath).
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "ports": "containerPort",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "imagePullSecrets": "name",
}


class ApiError(Exception):
    """A ``Status`` answer (https://kubernetes.io/docs/reference/kubernetes-api/common-definitions/status/)."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


def now_iso() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def api_version_of(gvp: str) -> str:
    return gvp.rsplit("/", 1)[0]


@attrs.define(kw_only=True)
class KubeAPI(KubernetesEmulator):
    """The API server. Every method that touches ``store`` runs on the server's event loop."""

    store: dict[Key, Obj] = attrs.field(factory=dict, init=False)
    refuse: dict[tuple[str, str], int] = attrs.field(factory=dict, init=False)
    """(verb, plural) -> an error status to answer instead (403 as missing RBAC would, 409 as a
    concurrent writer would); tests use it to check the backend's error messages."""
    on_change: list[Callable[[], None]] = attrs.field(factory=list, init=False)
    _rv: Any = attrs.field(factory=lambda: itertools.count(1), init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for gvp, (kind, namespaced, subs) in KINDS.items():
            group, version, plural = _split(gvp)
            self.resources[resource(group, version, plural)] = ResourceInfo(
                kind=kind,
                namespaced=namespaced,
                singular=kind.lower(),
                verbs=set(VERBS),
                subresources=set(subs),
            )

    # --- the HTTP entry ----------------------------------------------------------------------

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        """kmock parses every body as text; a protobuf body (Helm's release Secrets) is not
        text, so such a request is parsed here and handed on the same way."""
        if raw_request.content_type != PROTOBUF_TYPE:
            return await super().__call__(raw_request)
        body = await raw_request.read()
        k8s = parsing.parse_path(raw_request.path)
        method = enums.method(raw_request.method)
        request = rendering.Request(
            raw_request=raw_request,
            url=raw_request.url,
            method=raw_request.method,
            params=dict(raw_request.query),
            headers=dict(raw_request.headers),
            body=body,
            action=parsing.guess_k8s(k8s, method, dict(raw_request.query)),
            resource=resource(group=k8s.group, version=k8s.version, plural=k8s.plural)
            if k8s.group is not None
            else None,
            namespace=k8s.namespace,
            name=k8s.name,
            subresource=k8s.subresource,
        )
        return await self._handle(request)

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        path = request.url.path
        if path == "/openapi/v2":
            return aiohttp.web.Response(body=b"", content_type="application/json")
        if path.rstrip("/") == "/api/v1" and request.method == "GET":
            return aiohttp.web.json_response(self._core_resources())
        res = request.resource
        if res is None or not res.plural or f"{_gv(res)}/{res.plural}" not in KINDS:
            return await super()._handle(request)
        gvp = f"{_gv(res)}/{res.plural}"
        try:
            body = self._serve(request, gvp)
        except ApiError as exc:
            return aiohttp.web.json_response(status_body(exc), status=exc.code)
        for callback in self.on_change:
            if request.method != "GET":
                callback()
        return aiohttp.web.json_response(body)

    def _core_resources(self) -> Obj:
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": "v1",
            "resources": [
                {
                    "name": plural + (f"/{sub}" if sub else ""),
                    "singularName": kind.lower(),
                    "namespaced": namespaced,
                    "kind": kind,
                    "verbs": VERBS,
                }
                for gvp, (kind, namespaced, subs) in KINDS.items()
                if gvp.count("/") == 1
                for plural in [gvp.split("/")[1]]
                for sub in ("", *subs)
            ],
        }

    def _serve(self, request: rendering.Request, gvp: str) -> Obj:
        method = request.method.value.upper() if request.method else "GET"
        plural = gvp.rsplit("/", 1)[1]
        verb = {
            "GET": "list" if request.name is None else "get",
            "POST": "create",
            "PUT": "update",
            "PATCH": "patch",
            "DELETE": "delete",
        }.get(method, method.lower())
        if request.params.get("watch") in ("true", "1"):
            raise ApiError(405, "MethodNotAllowed", "watch is not served by this emulated cluster")
        code = self.refuse.get((verb, plural))
        if code == 403:
            raise ApiError(
                403,
                "Forbidden",
                f'{plural} is forbidden: User "upgrade-bot" cannot {verb} resource "{plural}" '
                f'in API group "{_group(gvp)}" in the namespace "{request.namespace}"',
            )
        if code == 409:
            raise ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {plural} "{request.name}": the object has been '
                "modified; please apply your changes to the latest version and try again",
            )
        if code is not None:
            raise ApiError(code, "InternalError", f"refused with {code} by the emulated cluster")
        ns = request.namespace if KINDS[gvp][1] else None
        if verb == "list":
            return self.list(gvp, ns, request.params)
        if verb == "create":
            return self.create(gvp, ns, self._body(request, gvp))
        assert request.name is not None
        key = (gvp, ns, request.name)
        if verb == "get":
            return self.get(key)
        if verb == "delete":
            return self.delete(key)
        if verb == "update":
            return self.replace(key, self._body(request, gvp), request.subresource)
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
        return self.patch(
            key, self._patch_body(request, content_type), content_type, request.subresource
        )

    def _body(self, request: rendering.Request, gvp: str) -> Obj:
        if request.body.startswith(PROTOBUF_MAGIC):
            if gvp != "v1/secrets":
                raise ApiError(415, "UnsupportedMediaType", "protobuf is decoded for Secrets only")
            return decode_secret(request.body)
        if not isinstance(request.data, dict):
            try:
                data = yaml.safe_load(request.text)
            except yaml.YAMLError:
                data = None
            if not isinstance(data, dict):
                raise ApiError(400, "BadRequest", "the body is not a JSON or YAML object")
            return data
        return dict(request.data)

    def _patch_body(self, request: rendering.Request, content_type: str) -> Any:
        if content_type == "application/apply-patch+yaml":
            return yaml.safe_load(request.text)
        return json.loads(request.text) if request.text else {}

    # --- the store --------------------------------------------------------------------------

    def _stamp(self, gvp: str, obj: Obj) -> None:
        obj["metadata"]["resourceVersion"] = str(next(self._rv))
        kind = KINDS[gvp][0]
        obj["apiVersion"], obj["kind"] = api_version_of(gvp), kind

    def get(self, key: Key) -> Obj:
        obj = self.store.get(key)
        if obj is None:
            raise ApiError(404, "NotFound", f'{key[0].rsplit("/", 1)[1]} "{key[2]}" not found')
        return copy.deepcopy(obj)

    def list(self, gvp: str, ns: str | None, params: dict[str, str]) -> Obj:
        match_labels = parse_label_selector(params.get("labelSelector", ""))
        fields = parse_field_selector(params.get("fieldSelector", ""))
        items = [
            copy.deepcopy(o)
            for (g, n, name), o in sorted(self.store.items(), key=lambda kv: kv[0][1:])
            if g == gvp
            and (ns is None or n == ns)
            and match_labels(o["metadata"].get("labels") or {})
            and all(_field(o, f) == v for f, v in fields)
        ]
        return {
            "apiVersion": api_version_of(gvp),
            "kind": KINDS[gvp][0] + "List",
            "metadata": {"resourceVersion": str(next(self._rv))},
            "items": items,
        }

    def create(self, gvp: str, ns: str | None, obj: Obj) -> Obj:
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise ApiError(422, "Invalid", "metadata.name: Required value")
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        if ns is not None:
            meta["namespace"] = ns
        else:
            meta.pop("namespace", None)
        key = (gvp, ns, meta["name"])
        if key in self.store:
            raise ApiError(
                409, "AlreadyExists", f'{gvp.rsplit("/", 1)[1]} "{meta["name"]}" already exists'
            )
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_iso()
        if gvp in WITH_GENERATION:
            meta["generation"] = 1
        obj.setdefault("status", {}) if gvp in WITH_GENERATION else None
        self._stamp(gvp, obj)
        self.store[key] = obj
        return copy.deepcopy(obj)

    def put(self, key: Key, obj: Obj, *, bump: bool = True) -> Obj:
        """Store ``obj`` as the new state of ``key`` (the controller's own writes too)."""
        old = self.store.get(key)
        if old is not None and key[0] in WITH_GENERATION and bump:
            if _spec_part(old) != _spec_part(obj):
                obj["metadata"]["generation"] = int(old["metadata"].get("generation", 1)) + 1
            else:
                obj["metadata"]["generation"] = old["metadata"].get("generation", 1)
        self._stamp(key[0], obj)
        self.store[key] = obj
        return copy.deepcopy(obj)

    def replace(self, key: Key, new: Obj, subresource: str | None) -> Obj:
        old = self.store.get(key)
        if old is None:
            raise ApiError(404, "NotFound", f'{key[0].rsplit("/", 1)[1]} "{key[2]}" not found')
        wanted_rv = (new.get("metadata") or {}).get("resourceVersion")
        if wanted_rv and wanted_rv != old["metadata"]["resourceVersion"]:
            raise ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {key[0].rsplit("/", 1)[1]} "{key[2]}": '
                "the object has been modified; please apply your changes to the latest version "
                "and try again",
            )
        return self._write(key, old, copy.deepcopy(new), subresource)

    def patch(self, key: Key, body: Any, content_type: str, subresource: str | None) -> Obj:
        old = self.store.get(key)
        if old is None:
            if content_type == "application/apply-patch+yaml":
                return self.create(key[0], key[1], body)
            raise ApiError(404, "NotFound", f'{key[0].rsplit("/", 1)[1]} "{key[2]}" not found')
        if content_type == "application/json-patch+json":
            try:
                new = jsonpatch.apply_patch(old, body)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
                raise ApiError(422, "Invalid", f"the JSON patch does not apply: {exc}") from None
        elif content_type == "application/merge-patch+json":
            new = merge_patch(old, body)
        else:  # strategic merge, and apply (merged the same way here)
            new = strategic_merge(old, body)
        return self._write(key, old, new, subresource)

    def _write(self, key: Key, old: Obj, new: Obj, subresource: str | None) -> Obj:
        if subresource == "status":
            obj = copy.deepcopy(old)
            obj["status"] = new.get("status", {})
            return self.put(key, obj, bump=False)
        if subresource == "scale":
            obj = copy.deepcopy(old)
            obj.setdefault("spec", {})["replicas"] = (new.get("spec") or {}).get("replicas")
            return self.put(key, obj)
        meta = new.setdefault("metadata", {})
        for kept in ("uid", "creationTimestamp", "namespace", "name", "generation"):
            if kept in old["metadata"]:
                meta[kept] = old["metadata"][kept]
        if "status" in KINDS[key[0]][2]:
            new["status"] = old.get("status", {})  # the status subresource owns it
        return self.put(key, new)

    def delete(self, key: Key) -> Obj:
        obj = self.get(key)
        if key[0] == "v1/pods" and self.store[key]["metadata"].get("uid"):
            # Graceful: the kubelet (the controller) stops the containers, then removes it.
            if not obj["metadata"].get("deletionTimestamp"):
                self.store[key]["metadata"]["deletionTimestamp"] = now_iso()
                self._stamp(key[0], self.store[key])
            return self.get(key)
        del self.store[key]
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Success",
            "details": {"name": key[2], "kind": key[0].rsplit("/", 1)[1]},
        }

    def objects(self, gvp: str, ns: str | None = None) -> list[Obj]:
        return [o for (g, n, _), o in self.store.items() if g == gvp and (ns is None or n == ns)]


# --- helpers ----------------------------------------------------------------------------------


def _split(gvp: str) -> tuple[str, str, str]:
    parts = gvp.split("/")
    return ("", parts[0], parts[1]) if len(parts) == 2 else (parts[0], parts[1], parts[2])


def _gv(res: Any) -> str:
    return f"{res.group}/{res.version}" if res.group else str(res.version)


def _group(gvp: str) -> str:
    return _split(gvp)[0]


def _spec_part(obj: Obj) -> Obj:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


def _field(obj: Obj, path: str) -> Any:
    node: Any = obj
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def status_body(exc: ApiError) -> Obj:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": exc.message,
        "reason": exc.reason,
        "code": exc.code,
    }


SET_RULE = re.compile(r"^\s*([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def parse_label_selector(text: str) -> Callable[[dict[str, str]], bool]:
    """Label selectors as https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/
    writes them: ``a=b``, ``a==b``, ``a!=b``, ``a in (x,y)``, ``a notin (x)``, ``a``, ``!a``."""
    rules: list[Callable[[dict[str, str]], bool]] = []
    for term in _split_terms(text):
        m = SET_RULE.match(term)
        if m:
            key, op, values = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",")}
            if op == "in":
                rules.append(lambda labels, k=key, vs=values: labels.get(k) in vs)
            else:
                rules.append(lambda labels, k=key, vs=values: labels.get(k) not in vs)
        elif "!=" in term:
            key, value = (s.strip() for s in term.split("!=", 1))
            rules.append(lambda labels, k=key, v=value: labels.get(k) != v)
        elif "=" in term:
            key, value = (s.strip() for s in term.replace("==", "=").split("=", 1))
            rules.append(lambda labels, k=key, v=value: labels.get(k) == v)
        elif term.strip().startswith("!"):
            rules.append(lambda labels, k=term.strip()[1:]: k not in labels)
        elif term.strip():
            rules.append(lambda labels, k=term.strip(): k in labels)
    return lambda labels: all(rule(labels) for rule in rules)


def _split_terms(text: str) -> Iterable[str]:
    depth, start = 0, 0
    for i, ch in enumerate(text):
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            yield text[start:i]
            start = i + 1
    if text[start:].strip():
        yield text[start:]


def parse_field_selector(text: str) -> list[tuple[str, str]]:
    out = []
    for term in filter(None, (t.strip() for t in text.split(","))):
        key, _, value = term.replace("==", "=").partition("=")
        out.append((key.strip(), value.strip()))
    return out


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def strategic_merge(target: Any, patch: Any, field: str = "") -> Any:
    """Strategic merge patch: like a merge patch, but lists with a patch merge key are merged
    element by element (an image patch keeps the container's env and ports)."""
    if isinstance(patch, dict) and isinstance(target, dict):
        out = copy.deepcopy(target)
        for key, value in patch.items():
            if key.startswith("$"):
                continue
            if value is None:
                out.pop(key, None)
            else:
                out[key] = strategic_merge(out.get(key), value, key)
        return out
    if isinstance(patch, list) and isinstance(target, list) and field in MERGE_KEYS:
        merge_key = MERGE_KEYS[field]
        out = copy.deepcopy(target)
        for item in patch:
            if not isinstance(item, dict) or merge_key not in item:
                out.append(copy.deepcopy(item))
                continue
            for i, existing in enumerate(out):
                if isinstance(existing, dict) and existing.get(merge_key) == item[merge_key]:
                    if item.get("$patch") == "delete":
                        out.pop(i)
                    else:
                        out[i] = strategic_merge(existing, item)
                    break
            else:
                if item.get("$patch") != "delete":
                    out.append(copy.deepcopy(item))
        return out
    return copy.deepcopy(patch)


# --- protobuf: Helm's release Secrets -----------------------------------------------------------

PROTOBUF_TYPE = "application/vnd.kubernetes.protobuf"
PROTOBUF_MAGIC = b"k8s\x00"
"""k8s.io/apimachinery pkg/runtime/serializer/protobuf: the 4-byte prefix before runtime.Unknown."""


def _fields(data: bytes) -> Iterable[tuple[int, int, Any]]:
    """(field number, wire type, value) of a protobuf message (varint and length-delimited)."""
    i = 0
    while i < len(data):
        tag, i = _varint(data, i)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, i = _varint(data, i)
        elif wire == 2:
            length, i = _varint(data, i)
            value, i = data[i : i + length], i + length
        elif wire == 1:
            value, i = data[i : i + 8], i + 8
        elif wire == 5:
            value, i = data[i : i + 4], i + 4
        else:
            raise ApiError(400, "BadRequest", f"protobuf wire type {wire} is not supported")
        yield number, wire, value


def _varint(data: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        byte = data[i]
        i += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, i
        shift += 7


def _map_entry(raw: bytes) -> tuple[str, bytes]:
    key, value = "", b""
    for number, _, v in _fields(raw):
        if number == 1:
            key = v.decode()
        elif number == 2:
            value = v
    return key, value


def decode_secret(body: bytes) -> Obj:
    """A ``v1.Secret`` from its protobuf encoding (k8s.io/api core/v1/generated.proto: Secret
    metadata=1 data=2 type=3 stringData=4 immutable=5; ObjectMeta name=1 generateName=2
    namespace=3 labels=11 annotations=12)."""
    raw = b""
    for number, _, value in _fields(body[len(PROTOBUF_MAGIC) :]):
        if number == 2:  # runtime.Unknown.raw
            raw = value
    meta: Obj = {}
    secret: Obj = {"metadata": meta, "data": {}}
    for number, _, value in _fields(raw):
        if number == 1:
            for n, _, v in _fields(value):
                if n in (1, 2, 3):
                    meta[{1: "name", 2: "generateName", 3: "namespace"}[n]] = v.decode()
                elif n in (11, 12):
                    k, val = _map_entry(v)
                    meta.setdefault("labels" if n == 11 else "annotations", {})[k] = val.decode()
                elif n == 6:
                    meta["resourceVersion"] = v.decode()
        elif number == 2:
            k, val = _map_entry(value)
            secret["data"][k] = base64.b64encode(val).decode()
        elif number == 3:
            secret["type"] = value.decode()
        elif number == 4:
            k, val = _map_entry(value)
            secret.setdefault("stringData", {})[k] = val.decode()
    return secret
