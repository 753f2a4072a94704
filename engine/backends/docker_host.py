"""The Docker host of a group: the client, which engine answers, and errors in the engine's words.

The synchronous ``docker`` SDK (docker/docker-py, ``docker/api/client.py`` at
4e149b629c5c2acecc19718e32d3f6760d08be52) runs in a worker thread (``asyncio.to_thread``); every
SDK error becomes ``TemporaryError`` (worth retrying: the daemon unreachable, a conflict, a 5xx)
or ``PermanentError`` (a 4xx: no such container or image, bad request), keeping Docker's own
message.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any, TypeVar

import docker
import docker.errors
import docker.tls
import requests.exceptions

from .. import config
from ..errors import PermanentError, TemporaryError

T = TypeVar("T")
LOCAL_SOCKET = "unix:///var/run/docker.sock"


def connect(settings: config.DockerBackend) -> docker.APIClient:
    """A low-level client for the group's host: ``base_url``, else ``DOCKER_HOST``, else the
    local socket; TLS with the configured certificates (docker-py ``docker/tls.py``
    ``TLSConfig(client_cert=(cert, key), ca_cert=…, verify=…)``)."""
    base_url = settings.base_url or os.environ.get("DOCKER_HOST") or LOCAL_SOCKET
    tls: docker.tls.TLSConfig | bool = False
    if settings.tls is not None:
        t = settings.tls
        tls = docker.tls.TLSConfig(
            client_cert=(t.client_cert, t.client_key) if t.client_cert and t.client_key else None,
            ca_cert=t.ca_cert,
            verify=t.ca_cert if t.verify and t.ca_cert else t.verify,
        )
    try:
        # docker-py ``APIClient(base_url, version="auto", timeout, tls)``: "auto" asks the
        # daemon its API version (GET /version) once, at construction.
        return docker.APIClient(
            base_url=base_url, version="auto", timeout=int(settings.api_timeout_s), tls=tls
        )
    except docker.errors.DockerException as exc:
        raise TemporaryError(f"Docker host {base_url} unreachable: {_first_line(exc)}") from None


def is_podman(version: dict[str, Any]) -> bool:
    """``GET /version`` (Engine API "SystemVersion") lists ``Components``; podman's service names
    itself ``Podman Engine`` there (containers/podman ``pkg/api/handlers/compat/version.go`` at
    09ebdfa0b0a5bc3a5aad42485831ac4a034a40a9; podman 4.3.1 answers the same here)."""
    return any(c.get("Name") == "Podman Engine" for c in version.get("Components") or [])


async def call(what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` off the event loop, its errors in the engine's vocabulary;
    ``what`` names the action for the message (``"start prod-eu-1"``)."""
    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    except docker.errors.NotFound as exc:
        raise PermanentError(f"{what}: {explain(exc)}") from None
    except docker.errors.APIError as exc:
        status = exc.status_code or 0
        if status == 409 or status >= 500:
            raise TemporaryError(f"{what}: {explain(exc)}") from None
        raise PermanentError(f"{what}: {explain(exc)}") from None
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
        raise TemporaryError(f"{what}: Docker host unreachable ({type(exc).__name__})") from None
    except docker.errors.DockerException as exc:
        raise PermanentError(f"{what}: {_first_line(exc)}") from None


def explain(exc: docker.errors.APIError) -> str:
    """Docker's own message (the ``message`` of its error body), else the HTTP status."""
    text = exc.explanation
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    if text:
        return str(text)
    if exc.response is not None and exc.response.reason:
        return str(exc.response.reason)
    return str(exc)


def _first_line(exc: Exception) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]
