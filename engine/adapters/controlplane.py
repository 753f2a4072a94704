"""Client of the API7 Enterprise control plane (the dashboard's Admin API).

Reads what the runner needs before and during an upgrade: the control plane's own version,
gateway groups (by id or by name) and the data-plane instances of a group as the CP sees them.
Every path and field comes from a vendor source named beside the call: the Admin API reference
in api7/docs.apiseven.com, or API7's own clients (api7/adc, api7/a7). Every call carries the
dashboard token in ``X-API-KEY`` (adc's ``BackendAPI7`` constructor sets the same header).

The Admin API has no configuration revision per gateway group: the instances send theirs
(``conf_server_revision``) in their heartbeats, but ``GET /api/instances`` does not return it.

httpx failures are translated at this boundary: connection errors, timeouts, 429 and 5xx
become :class:`TemporaryError`; a refused key (401/403), an unknown resource (404) and
malformed answers become :class:`PermanentError`. The key itself never appears in an error
message, a ``repr`` or a log line -- only the name of the variable or file it came from.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from ..config import ControlPlane
from ..errors import PermanentError, TemporaryError

API_KEY_HEADER = "X-API-KEY"
DEFAULT_PAGE_SIZE = 100
PAGING_ATTEMPTS = 3
RETRIES = 3
"""Attempts per GET on timeouts, connection errors, 429 and 5xx, with a doubling backoff."""
RETRY_BASE_S = 0.5
# The first API7 EE release whose Admin API reference (api7/docs.apiseven.com, the oldest
# ``enterprise_versioned_docs/version-*/reference/admin-api.json``) lists the path; a 404 names it.
PATH_SINCE = {
    "/api/instances": "3.2.9.5",
    "/api/gateway_groups": "3.2.9.5",
}
# A server that ignores `page` would answer the same page forever; stop long before that.
MAX_PAGES = 10_000


def host_port(url: str) -> str:
    """host:port of ``url``, without credentials, path or query: safe for messages and logs."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = parts.port
    except ValueError:
        return "an invalid URL"
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{port}" if port else host


def display_url(url: str) -> str:
    """``url`` without user info, query or fragment: safe for messages and logs."""
    netloc = host_port(url)
    if netloc == "an invalid URL":
        return netloc
    parts = urlsplit(url)
    return f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}"


class ControlPlaneClient:
    """Async client of the control plane at ``url`` (``https://dashboard:7443``).

    Pass ``client`` to share an :class:`httpx.AsyncClient` (the caller then owns it and
    ``close`` leaves it open); otherwise one is created with ``verify_tls`` and
    ``timeout_s``. ``key_hint`` names where the key came from (an environment variable or
    a file) so that a refused key can be fixed from the error message alone.
    """

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        verify_tls: bool = True,
        timeout_s: float = 5.0,
        client: httpx.AsyncClient | None = None,
        key_hint: str | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
        retries: int = RETRIES,
        retry_base_s: float = RETRY_BASE_S,
    ) -> None:
        if not api_key:
            raise PermanentError("the control-plane API key is empty")
        if page_size < 1:
            raise ValueError("page_size must be >= 1")
        self._base = url.rstrip("/")
        self._where = display_url(url)
        self._api_key = api_key
        self._key_hint = key_hint or "the control-plane API key"
        self._timeout = httpx.Timeout(timeout_s)
        self._page_size = page_size
        self._retries = max(1, retries)
        self._retry_base_s = retry_base_s
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(verify=verify_tls, timeout=self._timeout)

    @classmethod
    def from_config(
        cls,
        cp: ControlPlane,
        environ: Mapping[str, str] = os.environ,
        *,
        client: httpx.AsyncClient | None = None,
    ) -> ControlPlaneClient:
        """A client for ``cp``, its key read from ``cp.api_key_env`` or else ``cp.api_key_file``.

        Raises :class:`PermanentError` naming the variable and the file (never a value) when
        neither yields a key.
        """
        key = (environ.get(cp.api_key_env) or "").strip()
        hint = cp.api_key_env
        if not key and cp.api_key_file:
            key = _read_key_file(cp.api_key_file, cp.api_key_env)
            hint = f"{cp.api_key_file} (or set {cp.api_key_env})"
        if not key:
            raise PermanentError(
                f"no control-plane API key: the environment variable {cp.api_key_env} is "
                "not set" + (" and no api_key_file is configured" if not cp.api_key_file else "")
            )
        return cls(
            cp.url,
            key,
            verify_tls=cp.verify_tls,
            timeout_s=cp.timeout_s,
            client=client,
            key_hint=hint,
        )

    def __repr__(self) -> str:
        # the default repr would be harmless, but a dataclass-style one would print the key
        return f"ControlPlaneClient({self._where!r})"

    async def __aenter__(self) -> ControlPlaneClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP client if this object created it."""
        if self._owns_client:
            await self._client.aclose()

    # --- API -----------------------------------------------------------------------------

    async def version(self) -> str:
        """The control plane's version, e.g. ``"3.2.14.6"`` (``"dev"`` on development builds).

        ``GET /api/version`` answers ``{"value": "<version>"}``, the value a plain string:
        api7/adc ``libs/backend-api7/src/index.ts`` @1c37ce48 (``BackendAPI7.version``) reads it
        so, and maps ``"dev"`` to the highest version. The Admin API reference does not list it.
        """
        path = "/api/version"
        body = await self._get(path)
        value = body.get("value") if isinstance(body, dict) else None
        if not isinstance(value, str) or not value.strip():
            raise self._malformed(path, "expected {'value': '<version>'}")
        return value.strip()

    async def gateway_group(self, gateway_group_id: str) -> dict[str, Any]:
        """One gateway group by id (``GET /api/gateway_groups/{id}`` → ``{"value": {...}}``).

        Source: API7 EE Admin API reference, api7/docs.apiseven.com
        ``enterprise_versioned_docs/version-3.2.14.6/reference/admin-api.json`` @faf96f0e
        (operation ``getGatewayGroup``); api7/a7 ``pkg/cmd/gateway-group/get/get.go`` @69c5178d
        and ``pkg/api/client.go`` (the ``{"value": ...}`` envelope) read it the same way.
        """
        path = f"/api/gateway_groups/{quote(gateway_group_id, safe='')}"
        body = await self._get(path)
        value = body.get("value") if isinstance(body, dict) else None
        if not isinstance(value, dict) or not isinstance(value.get("id"), str):
            raise self._malformed(path, "expected {'value': {'id': ..., 'name': ...}}")
        return value

    async def gateway_groups(self, search: str | None = None) -> list[dict[str, Any]]:
        """Every gateway group (or those matching ``search``), all pages, oldest first.

        ``GET /api/gateway_groups?search=&page=&page_size=&order_by=created_at&direction=asc``
        → ``{"list": [{"id", "name", ...}], "total": N}``: Admin API reference (above),
        operation ``listGatewayGroup``; api7/adc ``getGatewayGroupId`` @1c37ce48 looks a group up
        by name with ``search``. The order is explicit: the default (``updated_at`` descending)
        moves whenever someone edits a group, which would shift pages under us.
        """
        params: dict[str, Any] = {"order_by": "created_at", "direction": "asc"}
        if search is not None:
            params["search"] = search
        return await self._all_pages("/api/gateway_groups", params)

    async def resolve_gateway_group(
        self, *, gateway_group_id: str | None = None, name: str | None = None
    ) -> dict[str, Any]:
        """The gateway group with this id, or else the one whose name is exactly ``name``.

        ``search`` matches loosely (a keyword), so the results are filtered to the exact name;
        none or several is a :class:`PermanentError` that says which.
        """
        if gateway_group_id:
            return await self.gateway_group(gateway_group_id)
        if not name:
            raise ValueError("give gateway_group_id or name")
        found = [g for g in await self.gateway_groups(search=name) if g.get("name") == name]
        if not found:
            raise PermanentError(
                f"control plane at {self._where} has no gateway group named '{name}'"
            )
        if len(found) > 1:
            ids = ", ".join(str(g.get("id")) for g in found)
            raise PermanentError(
                f"control plane at {self._where} has {len(found)} gateway groups named "
                f"'{name}' (ids {ids}): set gateway_group_id instead of the name"
            )
        return found[0]

    async def instances(self, gateway_group_id: str) -> list[dict[str, Any]]:
        """Every data-plane instance of a gateway group, all pages, oldest first.

        ``GET /api/instances?gateway_group_id=&page=&page_size=&order_by=created_at&direction=asc``
        → ``{"list": [{"id", "hostname", "ip", "gateway_group_id", "version", "ports",
        "last_heartbeat_time", "created_at", "status", "cores"}], "total": N}``; ``status`` is one
        of Healthy, OutOfSync, LostConnection, Offline (the CP's own judgement, used as is).
        Source: Admin API reference (above), operation ``listInstances``. The order is explicit:
        the default, ``last_heartbeat_time`` descending, reshuffles with every heartbeat.
        """
        params = {
            "gateway_group_id": gateway_group_id,
            "order_by": "created_at",
            "direction": "asc",
        }
        return await self._all_pages("/api/instances", params)

    async def _all_pages(self, path: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Every item of a paged list (``page`` from 1, ``page_size`` ≥ 1, ``{list, total}``).

        Items that appear on two pages count once. When ``total`` changed between pages (an
        item came or went, shifting the pages) or fewer items than ``total`` were read, the
        whole list is read again, a few times.
        """
        found: list[dict[str, Any]] = []
        for _ in range(PAGING_ATTEMPTS):
            found, totals = await self._pages_once(path, params)
            if len(totals) == 1 and len(found) >= next(iter(totals)):
                return found
        return found

    async def _pages_once(
        self, path: str, params: Mapping[str, Any]
    ) -> tuple[list[dict[str, Any]], set[int]]:
        found: list[dict[str, Any]] = []
        seen: set[Any] = set()
        totals: set[int] = set()
        for page in range(1, MAX_PAGES + 1):
            body = await self._get(
                path, params={**params, "page": page, "page_size": self._page_size}
            )
            items = body.get("list") if isinstance(body, dict) else None
            total = body.get("total") if isinstance(body, dict) else None
            if not isinstance(items, list) or not isinstance(total, int):
                raise self._malformed(path, "expected {'total': N, 'list': [...]}")
            totals.add(total)
            new = 0
            for item in items:
                if not isinstance(item, dict):
                    raise self._malformed(path, "a list item is not an object")
                key = item.get("id", id(item))
                if key in seen:
                    continue
                seen.add(key)
                found.append(item)
                new += 1
            if len(items) < self._page_size or len(found) >= total or new == 0:
                break
        return found, totals

    # --- plumbing ------------------------------------------------------------------------

    async def _get(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        """GET ``path``; timeouts, connection errors, 429 and 5xx are tried again (backoff)."""
        for attempt in range(self._retries):
            try:
                return await self._get_once(path, params)
            except TemporaryError:
                if attempt + 1 >= self._retries:
                    raise
                await asyncio.sleep(self._retry_base_s * 2**attempt)
        raise AssertionError("unreachable")

    async def _get_once(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        try:
            resp = await self._client.get(
                self._base + path,
                params=params,
                headers={API_KEY_HEADER: self._api_key},
                timeout=self._timeout,
            )
        except httpx.InvalidURL:
            raise PermanentError(f"control plane URL {self._where} is invalid") from None
        except httpx.UnsupportedProtocol:
            raise PermanentError(f"control plane URL {self._where} is not http(s)") from None
        except httpx.HTTPError as exc:
            # the exception's text is dropped on purpose: type names say enough and cannot
            # echo a header back
            raise TemporaryError(
                f"control plane at {self._where} unreachable ({type(exc).__name__})"
            ) from None
        status = resp.status_code
        if status in (401, 403):
            raise PermanentError(
                f"control plane refused the API key ({status}) — check {self._key_hint}"
            )
        if status == 429 or status >= 500:
            raise TemporaryError(
                f"control plane at {self._where} unreachable (HTTP {status} on GET {path})",
                delay_s=_retry_after(resp),
            )
        if status == 404:
            raise PermanentError(self._not_found(path) + self._message(resp))
        if not 200 <= status < 300:
            raise PermanentError(
                f"control plane at {self._where} answered HTTP {status} to GET {path}"
                f"{self._message(resp)}"
            )
        try:
            return resp.json()
        except ValueError:
            raise self._malformed(path, "not JSON") from None

    def _message(self, resp: httpx.Response) -> str:
        """``: <message>`` from an API7 error body ``{"message": ...}``, short and redacted."""
        try:
            body = resp.json()
        except ValueError:
            return ""
        message = body.get("message") if isinstance(body, dict) else None
        if not isinstance(message, str) or not message:
            return ""
        # a proxy in front of the dashboard might echo the request headers back
        return ": " + message.replace(self._api_key, "***")[:200]

    def _not_found(self, path: str) -> str:
        """What a 404 means: an unknown gateway group, or an Admin API older than the path."""
        if path.startswith("/api/gateway_groups/"):
            group = path.removeprefix("/api/gateway_groups/")
            return f"control plane at {self._where} has no gateway group with id '{group}' (404)"
        since = PATH_SINCE.get(path)
        needs = (
            f"API7 EE {since} or later lists it in its Admin API reference"
            if since
            else "no API7 Admin API reference lists it; API7's own CLI (adc) calls it"
        )
        return f"control plane at {self._where} has no GET {path} (404; {needs})"

    def _malformed(self, path: str, what: str) -> PermanentError:
        return PermanentError(
            f"control plane at {self._where} answered GET {path} with an unexpected body ({what})"
        )


def _retry_after(resp: httpx.Response, default: float = 2.0) -> float:
    """Seconds from a numeric ``Retry-After`` header (bounded), else ``default``."""
    raw = resp.headers.get("Retry-After", "")
    try:
        return min(max(float(raw), 0.0), 300.0)
    except ValueError:
        return default


def _read_key_file(path: str, env_name: str) -> str:
    """The stripped content of a mounted-secret file; errors name the file, not its content."""
    try:
        key = Path(path).expanduser().read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise PermanentError(
            f"no control-plane API key: the environment variable {env_name} is not set and "
            f"the key file {path} does not exist"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not text"
        raise PermanentError(
            f"the control-plane key file {path} cannot be read ({reason})"
        ) from None
    if not key:
        raise PermanentError(
            f"no control-plane API key: the environment variable {env_name} is not set and "
            f"the key file {path} is empty"
        )
    return key
