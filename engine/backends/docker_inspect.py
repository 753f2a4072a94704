"""A container's own configuration, read back from its inspect document, to recreate it.

``GET /containers/{id}/json`` (Docker Engine API v1.41, "ContainerInspect":
https://docs.docker.com/reference/api/engine/version/v1.41/#tag/Container/operation/ContainerInspect)
answers ``Config`` (the create-time ``ContainerConfig``), ``HostConfig`` and
``NetworkSettings.Networks``. ``POST /containers/create`` ("ContainerCreate") takes the same
``ContainerConfig`` with ``HostConfig`` and ``NetworkingConfig.EndpointsConfig`` beside it, so a
replacement keeps everything the operator (or compose) set — name, env, mounts, labels, networks,
port bindings, restart policy, healthcheck, command, user, ulimits — with only the image changed.

What the inspect document mixes in that the operator never set is taken out, or the old version
would carry over into the new one:

* the old image's own ``Env``, ``Labels``, ``Cmd``, ``Entrypoint``, ``WorkingDir``, ``User``,
  ``Healthcheck``, ``StopSignal``, ``ExposedPorts`` and ``Volumes`` (the new image brings its own);
* what the engine adds: ``Hostname`` (the short container ID), and on podman ``container=podman``,
  ``HOSTNAME=…`` and ``TERM=xterm`` in ``Env`` (libpod's defaults; DESIGN.md §9, found by trial);
* podman reports ``HostConfig.Binds`` as ``src:dst:ro,rprivate,rbind`` and ``StopSignal`` as a
  number (``'3'``); both are turned back into what ``create`` accepts (``src:dst:ro``, a name).
"""

from __future__ import annotations

import copy
import signal
from typing import Any

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PODMAN_ENV = ("container=podman", "TERM=xterm")
IMAGE_DEFAULTS = (
    "Cmd",
    "Entrypoint",
    "WorkingDir",
    "User",
    "Healthcheck",
    "StopSignal",
    "ExposedPorts",
    "Volumes",
)
RUNTIME_CONFIG = ("Hostname", "Image", "Env", "Labels")
# Bind options the engine reports but that are its defaults (propagation, recursive bind).
ENGINE_BIND_OPTIONS = frozenset({"rprivate", "private", "rbind", "bind"})


def recreate_body(
    inspect: dict[str, Any],
    image_config: dict[str, Any] | None,
    new_image: str,
    *,
    podman: bool = False,
) -> dict[str, Any]:
    """The ``POST /containers/create`` body of a replacement for the inspected container.

    ``image_config`` is the ``Config`` of the old container's image (``GET /images/{id}/json``)
    or None when that image is gone (then nothing can be told apart from it and everything is
    kept except what the engine adds).
    """
    config = copy.deepcopy(inspect.get("Config") or {})
    image_config = image_config or {}
    body: dict[str, Any] = {
        k: v for k, v in config.items() if k not in RUNTIME_CONFIG and k not in IMAGE_DEFAULTS
    }
    for key in IMAGE_DEFAULTS:
        value = config.get(key)
        if value in (None, "", [], {}) or value == image_config.get(key):
            continue
        if key == "WorkingDir" and value == "/" and not image_config.get(key):
            continue  # podman reports "/" where Docker reports "" (not set)
        if key == "StopSignal" and normal_signal(value) == normal_signal(image_config.get(key)):
            continue
        body[key] = normal_signal(value) if key == "StopSignal" else value
    hostname = config.get("Hostname")
    if hostname and not str(inspect.get("Id", "")).startswith(hostname):
        body["Hostname"] = hostname
    body["Image"] = new_image
    body["Env"] = own_env(config.get("Env") or [], image_config.get("Env") or [], podman=podman)
    body["Labels"] = own_labels(config.get("Labels") or {}, image_config.get("Labels") or {})
    body["HostConfig"] = host_config(inspect.get("HostConfig") or {})
    networking = networking_config(inspect)
    if networking:
        body["NetworkingConfig"] = networking
    return body


def own_env(env: list[str], image_env: list[str], *, podman: bool) -> list[str]:
    """The container's environment without the image's own entries and the engine's."""
    dropped = set(image_env) | {DEFAULT_PATH}
    if podman:
        dropped |= set(PODMAN_ENV)
    return [e for e in env if e not in dropped and not (podman and e.startswith("HOSTNAME="))]


def own_labels(labels: dict[str, str], image_labels: dict[str, str]) -> dict[str, str]:
    """The container's labels without those its image carries (same key and value)."""
    return {k: v for k, v in labels.items() if image_labels.get(k) != v}


def host_config(hc: dict[str, Any]) -> dict[str, Any]:
    """``HostConfig`` as ``create`` takes it back."""
    out = {k: v for k, v in hc.items() if v is not None}
    if out.get("Binds"):
        out["Binds"] = [normal_bind(b) for b in out["Binds"]]
    if out.get("Ulimits"):
        out["Ulimits"] = [normal_ulimit(u) for u in out["Ulimits"]]
    return out


def normal_ulimit(limit: dict[str, Any]) -> dict[str, Any]:
    """podman reports ``RLIMIT_NOFILE``; ``create`` takes Docker's ``nofile``."""
    name = str(limit.get("Name", ""))
    if name.startswith("RLIMIT_"):
        return {**limit, "Name": name[len("RLIMIT_") :].lower()}
    return limit


def normal_bind(bind: str) -> str:
    """``src:dst:ro,rprivate,rbind`` → ``src:dst:ro`` (podman reports its defaults)."""
    parts = bind.split(":")
    if len(parts) < 3:
        return bind
    options = [o for o in parts[-1].split(",") if o and o not in ENGINE_BIND_OPTIONS]
    head = ":".join(parts[:-1])
    return f"{head}:{','.join(options)}" if options else head


def networking_config(inspect: dict[str, Any]) -> dict[str, Any] | None:
    """``NetworkingConfig`` from the networks the container is attached to (none for host)."""
    mode = (inspect.get("HostConfig") or {}).get("NetworkMode", "")
    if mode == "host" or mode.startswith("container:") or mode == "none":
        return None
    networks = (inspect.get("NetworkSettings") or {}).get("Networks") or {}
    short_id = str(inspect.get("Id", ""))[:12]
    endpoints = {}
    for name, net in networks.items():
        endpoint: dict[str, Any] = {}
        aliases = [a for a in net.get("Aliases") or [] if a != short_id]
        if aliases:
            endpoint["Aliases"] = aliases
        if net.get("IPAMConfig"):
            endpoint["IPAMConfig"] = net["IPAMConfig"]  # a fixed address the operator chose
        if net.get("Links"):
            endpoint["Links"] = net["Links"]
        endpoints[name] = endpoint
    return {"EndpointsConfig": endpoints} if endpoints else None


def normal_signal(value: Any) -> Any:
    """``'3'`` (podman) → ``'SIGQUIT'`` (Docker); names are left as they are."""
    if isinstance(value, str) and value.isdigit():
        try:
            return signal.Signals(int(value)).name
        except ValueError:
            return value
    return value


def differences(
    before: dict[str, Any], after: dict[str, Any], *, ignore: tuple[str, ...] = ()
) -> list[str]:
    """Dotted paths where two documents differ (``Config.Image``...), for tests and reports."""
    found: list[str] = []

    def walk(a: Any, b: Any, path: str) -> None:
        if path in ignore:
            return
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                walk(a.get(key), b.get(key), f"{path}.{key}" if path else str(key))
        elif a != b:
            found.append(path)

    walk(before, after, "")
    return found
