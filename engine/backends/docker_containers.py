"""What the Docker backend does to one container on the group's Docker host.

Each method is one Docker Engine API operation (v1.41,
https://docs.docker.com/reference/api/engine/version/v1.41/) through docker/docker-py
(4e149b629c5c2acecc19718e32d3f6760d08be52, ``docker/api/container.py``, ``docker/api/image.py``),
named beside the call; errors arrive in the engine's words (docker_host.call).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any
from urllib.parse import urlsplit

import docker

from .. import config
from ..errors import PermanentError, TemporaryError
from .docker_host import call, connect, is_podman
from .docker_inspect import normal_signal, recreate_body


class ContainerOps:
    """Container operations on the host of ``settings`` (mixed into ``DockerBackend``)."""

    group: str
    settings: config.DockerBackend
    poll_interval_s: float
    _client: docker.APIClient | None
    _podman: bool | None

    # --- the host -----------------------------------------------------------------------------

    async def client(self) -> docker.APIClient:
        if self._client is None:
            self._client = await asyncio.to_thread(connect, self.settings)
        if self._podman is None:
            # GET /version ("SystemVersion")
            self._podman = is_podman(await call("ask the engine", self._client.version))
        return self._client

    async def podman(self) -> bool:
        await self.client()
        return bool(self._podman)

    async def close(self) -> None:
        if self._client is not None:
            await asyncio.to_thread(self._client.close)

    async def containers(self) -> list[dict[str, Any]]:
        """Every container of the group, kept and interrupted ones too (``GET /containers/json``
        "ContainerList" with ``all`` and ``label`` filters)."""
        c = await self.client()
        labels = [f"{k}={v}" for k, v in sorted(self.settings.labels.items())]
        found = await call(
            f"list the containers of {self.group}",
            c.containers,
            all=True,
            filters={"label": labels},
        )
        return list(found)

    async def inspect(self, name: str) -> dict[str, Any] | None:
        """``GET /containers/{name}/json`` ("ContainerInspect"); None when there is none."""
        c = await self.client()
        try:
            return await call(f"inspect {name}", c.inspect_container, name)
        except PermanentError:
            if await self._exists(name):
                raise
            return None

    async def _exists(self, name: str) -> bool:
        c = await self.client()
        found = await call(f"look for {name}", c.containers, all=True, filters={"name": name})
        return any(entry_name(e) == name for e in found)

    async def digest(self, image_id: str) -> str | None:
        """The deployed image's registry digest (``RepoDigests`` of "ImageInspect"), else its
        ID (a locally built image has no registry digest)."""
        if not image_id:
            return None
        c = await self.client()
        try:
            doc = await call(f"inspect image {image_id[:19]}", c.inspect_image, image_id)
        except PermanentError:
            return None
        digests = doc.get("RepoDigests") or []
        return str(digests[0]).partition("@")[2] or str(digests[0]) if digests else image_id

    def endpoints(self, doc: dict[str, Any]) -> dict[str, str]:
        """Where the gateway's listeners answer, seen from the bot: a published host port, the
        host network, or the container's address on its network."""
        s = self.settings
        ports = {"proxy": s.proxy_port, "status": s.status_port, "metrics": s.metrics_port}
        hc = doc.get("HostConfig") or {}
        net = doc.get("NetworkSettings") or {}
        published = net.get("Ports") or hc.get("PortBindings") or {}
        docker_host = _docker_host_address(s.base_url or os.environ.get("DOCKER_HOST"))
        address = net.get("IPAddress") or next(
            (
                n.get("IPAddress")
                for n in (net.get("Networks") or {}).values()
                if n.get("IPAddress")
            ),
            None,
        )
        out = {}
        for name, port in ports.items():
            bindings = published.get(f"{port}/tcp") or []
            binding = next((b for b in bindings if b.get("HostPort")), None)
            if binding is not None:
                host = binding.get("HostIp") or ""
                host = docker_host if host in ("", "0.0.0.0", "::") else host
                out[name] = f"http://{host}:{binding['HostPort']}"
            elif hc.get("NetworkMode") == "host":
                out[name] = f"http://{docker_host}:{port}"
            elif address:
                out[name] = f"http://{address}:{port}"
        return out

    def stop_first(self, doc: dict[str, Any]) -> bool:
        """Whether two containers of this slot cannot run at once: a published host port, or
        the host network (both bind the same host port)."""
        hc = doc.get("HostConfig") or {}
        if hc.get("NetworkMode") == "host":
            return True
        return any(
            b.get("HostPort")
            for bindings in (hc.get("PortBindings") or {}).values()
            for b in bindings or []
        )

    # --- images -------------------------------------------------------------------------------

    async def ensure_present(self, image: str) -> None:
        """The image is on the host, or pulled ("ImageCreate", with the registry credentials
        of ``registry_auth`` or the Docker config file); otherwise a clear ``PermanentError``."""
        c = await self.client()
        try:
            await call(f"inspect image {image}", c.inspect_image, image)  # "ImageInspect"
            return
        except PermanentError:
            pass
        repository, tag = split_image(image)
        try:
            await call(
                f"pull {image}", c.pull, repository, tag=tag, auth_config=self._auth_config()
            )
            await call(f"inspect image {image}", c.inspect_image, image)
        except (PermanentError, TemporaryError) as exc:
            raise PermanentError(
                f"image {image} is not on the Docker host of {self.group} and could not be "
                f"pulled: {exc}"
            ) from None

    def _auth_config(self) -> dict[str, str] | None:
        auth = self.settings.registry_auth
        if auth is None:
            # docker-py then sends the Docker config file's credentials for the registry
            # (``docker/api/image.py`` pull → ``auth.get_config_header``; the file is loaded by
            # ``APIClient`` from ``$DOCKER_CONFIG`` or ``~/.docker/config.json``).
            return None
        return {
            "username": os.environ.get(auth.username_env, ""),
            "password": os.environ.get(auth.password_env, ""),
            **({"serveraddress": auth.registry} if auth.registry else {}),
        }

    # --- one container ------------------------------------------------------------------------

    async def _create(self, source: dict[str, Any], image: str, name: str) -> dict[str, Any]:
        """``POST /containers/create`` ("ContainerCreate") with the source's own configuration
        and ``image``; docker-py ``create_container_from_config``."""
        c = await self.client()
        image_config = None
        try:
            old_image = await call("inspect the old image", c.inspect_image, source["Image"])
            image_config = old_image.get("Config")
        except PermanentError:
            pass  # the old image is gone: nothing to tell apart from it
        body = recreate_body(source, image_config, image, podman=await self.podman())
        created = await call(f"create {name}", c.create_container_from_config, body, name=name)
        return await self._must(str(created["Id"]))

    async def _start(self, doc: dict[str, Any]) -> dict[str, Any]:
        c = await self.client()
        if not is_running(doc):
            await call(f"start {name_of(doc)}", c.start, doc["Id"])  # "ContainerStart"
        return await self._must(doc["Id"])

    async def stop(self, doc: dict[str, Any]) -> None:
        """Stop with the configured signal, SIGKILL after ``stop_timeout_s``.

        When the container's own ``StopSignal`` is that signal, the stop API sends it
        ("ContainerStop", ``t`` seconds before SIGKILL), which also tells the engine not to
        restart it; otherwise "ContainerKill" with the signal, then a wait, then SIGKILL.
        """
        c = await self.client()
        name, timeout = name_of(doc), self.settings.stop_timeout_s
        fresh = await self.inspect(doc["Id"])
        if fresh is None or not is_running(fresh):
            return
        if stop_signal_of(fresh) == self.settings.stop_signal:
            await call(f"stop {name}", c.stop, fresh["Id"], timeout=int(timeout) or 1)
            return
        await call(f"signal {name}", c.kill, fresh["Id"], signal=self.settings.stop_signal)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = await self.inspect(fresh["Id"])
            if now is None or not is_running(now):
                return
            await asyncio.sleep(self.poll_interval_s)
        await call(f"kill {name}", c.kill, fresh["Id"], signal="SIGKILL")

    async def _rename(self, doc: dict[str, Any], name: str) -> None:
        c = await self.client()
        await call(f"rename {name_of(doc)} to {name}", c.rename, doc["Id"], name)  # ContainerRename

    async def _remove(self, doc: dict[str, Any] | None) -> None:
        if doc is None:
            return
        c = await self.client()
        try:
            # "ContainerDelete" with force: a running leftover is killed first.
            await call(f"remove {name_of(doc)}", c.remove_container, doc["Id"], force=True)
        except PermanentError:
            if await self.inspect(doc["Id"]) is not None:
                raise

    async def _must(self, name_or_id: str) -> dict[str, Any]:
        doc = await self.inspect(name_or_id)
        if doc is None:
            raise PermanentError(f"{self.group}: container {name_or_id} vanished mid-run")
        return doc


def split_image(image: str) -> tuple[str, str]:
    """``repo/name:tag`` → (``repo/name``, ``tag``); a port in the registry is not a tag."""
    repository, sep, tag = image.rpartition(":")
    if not sep or "/" in tag:
        return image, "latest"
    return repository, tag


def _docker_host_address(base_url: str | None) -> str:
    """Where published ports are reached: the host of a ``tcp://`` Docker host, else local."""
    if base_url and base_url.startswith(("tcp://", "http://", "https://")):
        return urlsplit(base_url.replace("tcp://", "http://", 1)).hostname or "127.0.0.1"
    return "127.0.0.1"


def entry_name(entry: dict[str, Any]) -> str:
    names = entry.get("Names") or [""]
    return str(names[0]).lstrip("/")


def name_of(doc: dict[str, Any]) -> str:
    return str(doc.get("Name", "")).lstrip("/") or str(doc.get("Id", ""))[:12]


def image_of(doc: dict[str, Any]) -> str:
    return str((doc.get("Config") or {}).get("Image", ""))


def is_running(doc: dict[str, Any]) -> bool:
    return bool((doc.get("State") or {}).get("Running"))


def stop_signal_of(doc: dict[str, Any]) -> str:
    raw = (doc.get("Config") or {}).get("StopSignal") or "SIGTERM"
    return str(normal_signal(raw))
