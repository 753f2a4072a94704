"""Docker backend: a gateway group is the containers on one Docker host matching some labels.

A slot is a container *name* (``prod-eu/demo-gw-1``); the container behind it is replaced with
the same configuration (docker_inspect) and the new image:

* **beside** (the default): the replacement starts as ``NAME.upgrade-bot-next``; once it is
  ready the old container is renamed ``NAME.upgrade-bot-prev``, the replacement takes ``NAME``,
  and the old one gets the stop signal (SIGQUIT: nginx-based gateways drain what is in flight)
  and is kept, stopped, so that a rollback is a restart, not a pull;
* **stop first**, when two containers cannot serve at once: a published host port (two cannot
  bind it) or the host network. The old container is stopped and kept first, then the
  replacement starts; the slot is out meanwhile (the plan says so: a load balancer must route
  around it). A replacement that never gets ready is removed and the kept one restarted.

Each step is an end state found again by name, so a run resumed after ``kill -9`` finishes an
interrupted swap instead of doubling it. ``finish`` removes the kept containers once the run has
ended.

Docker Engine API v1.41 (https://docs.docker.com/reference/api/engine/version/v1.41/) through
docker/docker-py (4e149b629c5c2acecc19718e32d3f6760d08be52, ``docker/api/container.py`` and
``docker/api/image.py``): each call names its operation.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from typing import Any

import docker

from .. import config
from ..errors import NotReadyError, PermanentError
from . import compose
from . import readiness as probes
from .base import PerSlotRollout, Rollout, SlotInfo
from .docker_containers import (
    ContainerOps,
    entry_name,
    image_of,
    is_running,
    name_of,
    split_image,
    stop_signal_of,
)
from .docker_readiness import wait_healthy

log = logging.getLogger(__name__)

NEXT = ".upgrade-bot-next"
"""A replacement being started beside the slot's container."""
PREV = ".upgrade-bot-prev"
"""The slot's previous container, stopped and kept until the run ends."""
DISCARD = ".upgrade-bot-discard"
"""A container a rollback took out of its slot, on its way out."""
SUFFIXES = (NEXT, PREV, DISCARD)
VERSION_IN_TAG = re.compile(r"(\d+\.\d+\.\d+(?:\.\d+)?)")


def build(group: str, settings: config.DockerBackend) -> DockerBackend:
    """The backend of ``group`` as its configuration's ``backend`` section describes it."""
    return DockerBackend(group, settings)


@dataclass(frozen=True)
class SlotState:
    """The containers of one slot, by name (each an inspect document or None)."""

    current: dict[str, Any] | None
    next: dict[str, Any] | None
    prev: dict[str, Any] | None
    discard: dict[str, Any] | None


class DockerBackend(ContainerOps, PerSlotRollout):
    def __init__(
        self,
        group: str,
        settings: config.DockerBackend,
        *,
        client: docker.APIClient | None = None,
        poll_interval_s: float = 0.2,
    ) -> None:
        self.group = group
        self.settings = settings
        self.poll_interval_s = poll_interval_s
        self._client = client
        self._podman: bool | None = None
        self.compose_changes: list[compose.ImageChange] = []

    # --- slots --------------------------------------------------------------------------------

    async def list_slots(self) -> list[SlotInfo]:
        names = sorted(
            name
            for entry in await self.containers()
            if not (name := entry_name(entry)).endswith(SUFFIXES)
        )
        out = []
        for name in names:
            doc = await self.inspect(name)
            if doc is not None:
                out.append(await self.slot_info(doc))
        return out

    async def slot_state(self, name: str) -> SlotState:
        return SlotState(
            current=await self.inspect(name),
            next=await self.inspect(name + NEXT),
            prev=await self.inspect(name + PREV),
            discard=await self.inspect(name + DISCARD),
        )

    def slot_id(self, name: str) -> str:
        return f"{self.group}/{name}"

    def container_name(self, slot_id: str) -> str:
        group, sep, name = slot_id.partition("/")
        if not sep or group != self.group or not name:
            raise PermanentError(f"slot '{slot_id}' is not in group '{self.group}'")
        return name

    async def slot_info(self, doc: dict[str, Any]) -> SlotInfo:
        image = str((doc.get("Config") or {}).get("Image", ""))
        state = doc.get("State") or {}
        health = (state.get("Health") or {}).get("Status")
        return SlotInfo(
            id=self.slot_id(name_of(doc)),
            image=image,
            version=version_of(image),
            ready=bool(state.get("Running")) and health not in ("unhealthy",),
            digest=await self.digest(str(doc.get("Image", ""))),
            endpoints=self.endpoints(doc),
            # What the gateway reports to its control plane as its hostname: the container's
            # (Engine API ContainerInspect, Config.Hostname; by default its short id).
            hostname=(doc.get("Config") or {}).get("Hostname") or None,
        )

    # --- replacing ----------------------------------------------------------------------------

    async def ensure_group(self, image: str, **kwargs: Any) -> Rollout:  # type: ignore[override]
        """``PerSlotRollout.ensure_group``, then the compose file follows: once every slot of
        the group runs ``image`` (an upgrade done, or a rollback's restore), its service's
        ``image:`` line says so."""
        rollout = await super().ensure_group(image, **kwargs)
        if rollout.complete and self.settings.compose_file:
            slots = await self.list_slots()
            if slots and all(s.image == image for s in slots):
                change = compose.set_image(self.settings.compose_file, self.compose_service, image)
                if change is not None:
                    self.compose_changes.append(change)
                    log.info("%s: %s", self.group, change.describe())
        return rollout

    @property
    def compose_service(self) -> str:
        service = self.settings.compose_service or self.settings.labels.get(
            "com.docker.compose.service"
        )
        if not service:
            raise PermanentError(
                f"{self.group}: compose_file is set but not compose_service (and the labels "
                "have no com.docker.compose.service)"
            )
        return service

    async def ensure_image(
        self, slot_id: str, image: str, *, ready_timeout_s: float, fence: str | None = None
    ) -> SlotInfo:
        """Bring the slot's container to ``image``, ready (see the module's docstring)."""
        name = self.container_name(slot_id)
        state = await self.slot_state(name)
        restoring = state.prev is not None and image_of(state.prev) == image
        if not restoring:
            await self.ensure_present(image)
        state = await self._finish_swap(name, state, image)
        current = state.current
        if current is not None and image_of(current) == image and is_running(current):
            if not await self._ready(current, ready_timeout_s):
                raise NotReadyError(f"{slot_id}: {image} is running but not ready")
            if state.prev is not None and is_running(state.prev):
                await self.stop(state.prev)
            await self._remove(state.discard)
            return await self.slot_info(await self._must(name))
        if restoring:
            return await self._restore(slot_id, name, state, ready_timeout_s)
        source = current if current is not None else state.prev
        assert source is not None
        if current is None or self.stop_first(source):
            return await self._replace_stop_first(slot_id, name, state, image, ready_timeout_s)
        return await self._replace_beside(slot_id, name, state, image, ready_timeout_s)

    async def _finish_swap(self, name: str, state: SlotState, image: str) -> SlotState:
        """Put a container back on the slot's name after an interrupted swap."""
        if state.current is not None:
            return state
        if state.next is not None and image_of(state.next) == image:
            await self._rename(state.next, name)
        elif state.prev is not None and image_of(state.prev) == image:
            await self._rename(state.prev, name)  # an interrupted restore
        elif state.prev is None:
            raise PermanentError(
                f"{self.slot_id(name)}: container {name} is gone (removed outside the bot?)"
            )
        else:
            return state  # stopped and kept, replacement not created yet: stop first goes on
        return await self.slot_state(name)

    async def _replace_beside(
        self, slot_id: str, name: str, state: SlotState, image: str, timeout_s: float
    ) -> SlotInfo:
        current = state.current
        assert current is not None
        new = state.next if state.next is not None and image_of(state.next) == image else None
        if new is None:
            await self._remove(state.next)
            new = await self._create(current, image, name + NEXT)
        new = await self._start(new)
        if not await self._ready(new, timeout_s):
            await self._remove(new)  # it never took the slot's name: nothing routed to it
            raise NotReadyError(
                f"{slot_id}: {image} was not ready within {timeout_s:g}s "
                f"(the slot keeps serving {image_of(current)})"
            )
        await self._remove(state.prev)  # kept by an earlier run that did not clean up
        await self._rename(current, name + PREV)
        await self._rename(new, name)
        if self.settings.drain_s:
            await asyncio.sleep(self.settings.drain_s)
        await self.stop(current)
        return await self.slot_info(await self._must(name))

    async def _replace_stop_first(
        self, slot_id: str, name: str, state: SlotState, image: str, timeout_s: float
    ) -> SlotInfo:
        source = state.current
        if source is not None:
            await self.stop(source)
            await self._remove(state.prev)
            await self._rename(source, name + PREV)
        else:
            source = state.prev  # stopped and kept by the interrupted attempt
        assert source is not None
        new = await self._start(await self._create(source, image, name))
        if await self._ready(new, timeout_s):
            if self.settings.drain_s:
                await asyncio.sleep(self.settings.drain_s)  # before the next slot goes out
            return await self.slot_info(await self._must(name))
        await self._remove(new)
        await self._rename(source, name)
        restarted = await self._start(await self._must(name))
        await self._ready(restarted, timeout_s)
        raise NotReadyError(
            f"{slot_id}: {image} was not ready within {timeout_s:g}s "
            f"(the slot is back on {image_of(source)})"
        )

    async def _restore(
        self, slot_id: str, name: str, state: SlotState, timeout_s: float
    ) -> SlotInfo:
        """Rollback: restart the kept container (no pull), then retire the current one."""
        kept, current = state.prev, state.current
        assert kept is not None
        fixed = self.stop_first(kept)
        if current is not None and fixed:
            await self.stop(current)
        kept = await self._start(kept)
        if not await self._ready(kept, timeout_s):
            raise NotReadyError(f"{slot_id}: the kept {image_of(kept)} container is not ready")
        if current is not None:
            await self._remove(state.discard)
            await self._rename(current, name + DISCARD)
        await self._rename(kept, name)
        if current is not None:
            await self.stop(current)
            await self._remove(await self.inspect(name + DISCARD))
        return await self.slot_info(await self._must(name))

    async def wrap_up(self, state: str, *, before: str | None, after: str | None) -> dict[str, Any]:
        """The run has completed or rolled back (FINISH_BACKENDS): the kept containers go, and
        the compose change is said — or, with ``compose_file``, made."""
        said: dict[str, Any] = {}
        removed = await self.finish()
        if removed:
            said["removed"] = removed
        note = self.compose_note(state, before, after)
        if note:
            said["compose"] = note
        return said

    def compose_note(self, state: str, before: str | None, after: str | None) -> str | None:
        """The compose file's change, as the completion message shows it."""
        try:
            service = self.compose_service
        except PermanentError:
            return None
        path = self.settings.compose_file
        if path:
            change = compose.set_image(path, service, after) if after else None
            if change is not None:
                return f"{change.describe()} (written by the bot)"
            if state == "completed" and before and after and before != after:
                return f"{path}: services.{service}.image: {before} → {after} (written by the bot)"
            return None
        if state == "completed" and before and after and before != after:
            return (
                f"change services.{service}.image in the compose file: {before} → {after} "
                f"(the next `docker compose up` would otherwise recreate {before})"
            )
        return None

    async def finish(self) -> list[str]:
        """The run has ended: remove the containers kept for a rollback and any leftovers.
        Returns their names."""
        removed = []
        for entry in await self.containers():
            name = entry_name(entry)
            if name.endswith(SUFFIXES):
                await self._remove(await self.inspect(name))
                removed.append(name)
        return removed

    async def _ready(self, doc: dict[str, Any], timeout_s: float) -> bool:
        readiness = self.settings.readiness
        if readiness.mode == "healthcheck":
            ok, _ = await wait_healthy(
                await self.client(),
                doc["Id"],
                timeout_s,
                podman=await self.podman(),
                poll_interval_s=self.poll_interval_s,
            )
            return ok
        endpoints = self.endpoints(await self._must(doc["Id"]))
        probe = await probes.wait_ready(
            readiness, endpoints, timeout_s, poll_interval_s=self.poll_interval_s
        )
        return probe.ready

    # --- preflight ----------------------------------------------------------------------------

    async def preflight(self) -> list[str]:
        # The plan shows each group's readiness choice (engine.api); preflight warns on TCP only.
        warnings = probes.preflight_warnings(self.settings.readiness)
        if self.settings.stop_signal != "SIGQUIT":
            warnings.append(
                f"containers are stopped with {self.settings.stop_signal}: nginx-based "
                "gateways cut in-flight requests (use SIGQUIT for a graceful drain)"
            )
        for slot in await self.list_slots():
            doc = await self.inspect(self.container_name(slot.id))
            if doc is None:
                continue
            if self.stop_first(doc):
                warnings.append(
                    f"{slot.id}: a published host port (or the host network) means the old "
                    "container stops before the new one starts; the slot is briefly out and "
                    "the load balancer must route around it"
                )
            policy = ((doc.get("HostConfig") or {}).get("RestartPolicy") or {}).get("Name")
            if policy in ("always", "unless-stopped") and stop_signal_of(doc) != (
                self.settings.stop_signal
            ):
                warnings.append(
                    f"{slot.id}: restart policy '{policy}' and STOPSIGNAL {stop_signal_of(doc)}: "
                    f"after {self.settings.stop_signal} the engine may restart the old container"
                )
        return warnings


def version_of(image: str) -> str | None:
    tag = split_image(image)[1]
    match = VERSION_IN_TAG.search(tag or "")
    return match.group(1) if match else None
