"""Readiness by the container's own healthcheck (``backend.readiness.mode: healthcheck``).

Docker runs a container's ``HEALTHCHECK`` itself and reports it as ``State.Health.Status``
(``starting`` / ``healthy`` / ``unhealthy``) in ``GET /containers/{id}/json`` (Engine API v1.41,
"ContainerInspect", ``ContainerState.Health``). podman's service reports the same field but runs
the check only from systemd timers, which a host without systemd does not have (podman 4.3 on
Debian 12, found by trial: the status stays ``starting``). So on podman each look first asks it
to run the check once: ``GET /libpod/containers/{name}/healthcheck`` ("Run a container's
healthcheck", containers/podman ``pkg/api/server/register_healthcheck.go`` at
6fab9c245f7e9d4507d2e6ba2519477393b73cb5).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import docker

from ..errors import PermanentError
from .docker_host import call


async def wait_healthy(
    client: docker.APIClient,
    container_id: str,
    timeout_s: float,
    *,
    podman: bool,
    poll_interval_s: float = 0.2,
) -> tuple[bool, str]:
    """Until the container's healthcheck says ``healthy`` (True) or ``timeout_s`` passes; the
    second value tells what was seen last. A container without a healthcheck is refused."""
    deadline = time.monotonic() + timeout_s
    seen = "not looked at yet"
    while True:
        if podman:
            await call(
                f"run the healthcheck of {container_id[:12]}",
                _run_podman_check,
                client,
                container_id,
            )
        doc = await call(f"inspect {container_id[:12]}", client.inspect_container, container_id)
        state = doc.get("State") or {}
        health = state.get("Health")
        if not (doc.get("Config") or {}).get("Healthcheck"):
            raise PermanentError(
                f"container {_name(doc)} has no healthcheck: readiness mode 'healthcheck' needs "
                "one (HEALTHCHECK in the image or 'healthcheck:' in compose), or choose 'status' "
                "or 'proxy'"
            )
        if not state.get("Running"):
            return False, f"the container is {state.get('Status', 'not running')}"
        status = (health or {}).get("Status", "none")
        if status == "healthy":
            return True, "healthcheck healthy"
        seen = f"healthcheck {status}"
        if time.monotonic() >= deadline:
            return False, seen
        await asyncio.sleep(poll_interval_s)


def _run_podman_check(client: docker.APIClient, container_id: str) -> None:
    # libpod's endpoints live beside the compat ones under their own version prefix
    # (``/v4.0.0/libpod/…``; podman 4.3 answers 404 without one, found by trial).
    resp = client._get(f"{client.base_url}/v4.0.0/libpod/containers/{container_id}/healthcheck")
    if resp.status_code == 409:  # "container has no defined healthcheck" or not running
        return
    client._raise_for_status(resp)


def _name(doc: dict[str, Any]) -> str:
    return str(doc.get("Name", "")).lstrip("/") or str(doc.get("Id", ""))[:12]
