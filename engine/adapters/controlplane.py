"""Client of the API7 Enterprise control plane (the dashboard's HTTP API).

Reads what the runner needs before and during an upgrade: the control plane's own version,
the data-plane instances of a gateway group and the group's configuration revision. Every
call carries the dashboard token in ``X-API-KEY``.

httpx failures are translated at this boundary: connection errors, timeouts, 429 and 5xx
become :class:`TemporaryError`; a refused key (401/403), an unknown resource (404) and
malformed answers become :class:`PermanentError`. The key itself never appears in an error
message, a ``repr`` or a log line -- only the name of the variable or file it came from.
"""

from __future__ import annotations

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
        """The control plane's version (``GET /api/version``), e.g. ``"3.8.0"``."""
        path = "/api/version"
        value = _value(await self._get(path), path, self._where)
        version = value.get("version")
        if not isinstance(version, str) or not version:
            raise self._malformed(path, "no 'version'")
        return version

    async def instances(self, gateway_group_id: str) -> list[dict[str, Any]]:
        """Every data-plane instance of a gateway group, following all pages (ordered by id)."""
        path = "/api/instances"
        found: list[dict[str, Any]] = []
        seen: set[Any] = set()
        for page in range(1, MAX_PAGES + 1):
            body = await self._get(
                path,
                params={
                    "gateway_group_id": gateway_group_id,
                    "page": page,
                    "page_size": self._page_size,
                },
            )
            items = body.get("list") if isinstance(body, dict) else None
            total = body.get("total") if isinstance(body, dict) else None
            if not isinstance(items, list) or not isinstance(total, int):
                raise self._malformed(path, "expected {'total': N, 'list': [...]}")
            new = 0
            for item in items:
                if not isinstance(item, dict):
                    raise self._malformed(path, "a list item is not an object")
                # instances registering while we page shift later pages by one: skip repeats
                key = item.get("id", id(item))
                if key in seen:
                    continue
                seen.add(key)
                found.append(item)
                new += 1
            if len(items) < self._page_size or len(found) >= total or new == 0:
                break
        return found

    async def config_revision(self, gateway_group_id: str) -> int:
        """The gateway group's current configuration revision (grows with every change)."""
        path = f"/api/gateway_groups/{quote(gateway_group_id, safe='')}/config_revision"
        value = _value(await self._get(path), path, self._where)
        revision = value.get("config_revision")
        if not isinstance(revision, int) or isinstance(revision, bool):
            raise self._malformed(path, "no integer 'config_revision'")
        return revision

    # --- plumbing ------------------------------------------------------------------------

    async def _get(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
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
            raise PermanentError(
                f"control plane at {self._where} has no {path} (404){self._message(resp)}"
            )
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

    def _malformed(self, path: str, what: str) -> PermanentError:
        return PermanentError(
            f"control plane at {self._where} answered GET {path} with an unexpected body ({what})"
        )


def _value(body: Any, path: str, where: str) -> dict[str, Any]:
    """The ``value`` of a single-resource envelope ``{"value": {...}}``."""
    value = body.get("value") if isinstance(body, dict) else None
    if not isinstance(value, dict):
        raise PermanentError(
            f"control plane at {where} answered GET {path} with an unexpected body "
            "(expected {'value': {...}})"
        )
    return value


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
