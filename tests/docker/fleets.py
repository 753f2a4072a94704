"""Container fleets for the Docker tests: a sandbox whose gateways are podman containers.

``container_fleet`` brings up a sandbox (front door, traffic, control-plane stand-in) whose
slots are containers on the session's podman service, and a ``DockerBackend`` built from the
bot configuration the sandbox wrote — the same configuration a user would point the bot at.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from upgrade_bot.engine.backends.docker import DockerBackend
from upgrade_bot.engine.config import DockerBackend as DockerSettings
from upgrade_bot.engine.config import load_config
from upgrade_bot.sandbox import manage
from upgrade_bot.sandbox.containers import image_repository

from ..support import Sandboxes, fleet_spec

OLD, NEW = "3.8.0", "3.8.1"
OUTCOMES = ("total", "ok", "requests_5xx", "failed")
FAST_DEFAULTS: dict[str, Any] = {
    "rollout": {"batch_size": 1, "ready_timeout_s": 30, "baseline_window_s": 1.0, "settle_s": 1.0},
    "thresholds": {"min_requests": 10},
    "observation": {"window_s": 1, "checkin_interval_s": 1},
    "smoke": {"path": "/smoke", "expect_status": [200], "count": 2},
    "approval": {"required": 1, "expiry_s": 3600},
}


@dataclass
class ContainerFleet:
    handle: manage.SandboxHandle
    settings: DockerSettings
    repository: str

    def image(self, version: str) -> str:
        return f"{self.repository}:{version}"

    def backend(self, **changes: Any) -> DockerBackend:
        """A backend on the group's containers; ``changes`` override its settings."""
        settings = DockerSettings.model_validate({**self.settings.model_dump(), **changes})
        return DockerBackend(self.group, settings, poll_interval_s=0.1)

    @property
    def group(self) -> str:
        return load_config(self.handle.config_path).groups[0].name

    async def status(self) -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=30) as client:
            resp = await client.get(self.handle.control_url + "/status")
            resp.raise_for_status()
            return resp.json()

    async def truth(self) -> dict[str, dict[str, Any]]:
        return {s["id"]: s for s in (await self.status())["slots"]}


def traffic_delta(after: dict[str, Any], before: dict[str, Any]) -> dict[str, int]:
    return {k: after["traffic"][k] - before["traffic"][k] for k in OUTCOMES}


@asynccontextmanager
async def container_fleet(
    sandboxes: Sandboxes,
    docker_host: str,
    *,
    instances: int = 2,
    name: str = "fleet",
    **options: Any,
) -> AsyncIterator[ContainerFleet]:
    spec = fleet_spec(1, instances, backend="docker", docker_host=docker_host, **options)
    handle = await sandboxes.up(spec, name, defaults=FAST_DEFAULTS)
    config = load_config(handle.config_path)
    settings = config.groups[0].backend
    assert isinstance(settings, DockerSettings)
    yield ContainerFleet(handle=handle, settings=settings, repository=image_repository(spec))
