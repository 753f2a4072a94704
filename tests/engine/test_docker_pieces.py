"""The Docker backend's pure pieces, without an engine: recreating a container's configuration
from its inspect document, the compose file's image line, and Docker errors in the engine's
words. (The backend itself is proven on podman in tests/docker.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import docker.errors
import pytest
import requests

from upgrade_bot.engine.backends import compose
from upgrade_bot.engine.backends.docker import DockerBackend, version_of
from upgrade_bot.engine.backends.docker_host import call
from upgrade_bot.engine.backends.docker_inspect import normal_bind, recreate_body
from upgrade_bot.engine.config import DockerBackend as DockerSettings
from upgrade_bot.engine.errors import PermanentError, TemporaryError

# The shape of podman 4.3's answer to GET /containers/{id}/json for a gateway container
# (trimmed to the fields the recreation reads; values as podman reported them in this
# project's tests: binds with its default options, ulimits as RLIMIT_*, StopSignal a number).
INSPECT: dict[str, Any] = {
    "Id": "e2985751eaff0123456789",
    "Name": "/gw-1",
    "Image": "sha256:old",
    "Config": {
        "Hostname": "e2985751eaff",
        "Image": "localhost/gw:3.8.0",
        "Env": [
            "GATEWAY_PROXY_PORT=9080",
            "container=podman",
            "GATEWAY_VERSION=3.8.0",
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "TERM=xterm",
            "HOSTNAME=e2985751eaff",
        ],
        "Labels": {
            "com.docker.compose.service": "gw",
            "org.opencontainers.image.version": "3.8.0",
            "io.buildah.version": "1.28.2",
        },
        "Cmd": ["/usr/bin/python3", "-m", "gateway"],
        "WorkingDir": "/",
        "User": "0",
        "StopSignal": "3",
        "Healthcheck": {"Test": ["CMD", "/probe"], "Interval": 1000000000},
    },
    "HostConfig": {
        "Binds": ["/usr:/usr:ro,rprivate,rbind", "/data:/data:rprivate,rbind"],
        "PortBindings": {"9080/tcp": [{"HostIp": "127.0.0.1", "HostPort": "19080"}]},
        "RestartPolicy": {"Name": "on-failure", "MaximumRetryCount": 3},
        "Ulimits": [{"Name": "RLIMIT_NOFILE", "Hard": 20000, "Soft": 20000}],
        "NetworkMode": "bridge",
        "Init": True,
    },
    "NetworkSettings": {
        "IPAddress": "10.88.0.5",
        "Networks": {"podman": {"Aliases": ["e2985751eaff", "gw"], "IPAddress": "10.88.0.5"}},
        "Ports": {"9080/tcp": [{"HostIp": "127.0.0.1", "HostPort": "19080"}]},
    },
}
IMAGE_CONFIG = {
    "Env": ["GATEWAY_VERSION=3.8.0"],
    "Labels": {"org.opencontainers.image.version": "3.8.0", "io.buildah.version": "1.28.2"},
}


def test_a_replacement_gets_the_operators_configuration_and_only_that() -> None:
    body = recreate_body(INSPECT, IMAGE_CONFIG, "localhost/gw:3.8.1", podman=True)
    assert body["Image"] == "localhost/gw:3.8.1"
    # The old image's ENV and labels and the engine's additions do not carry over.
    assert body["Env"] == ["GATEWAY_PROXY_PORT=9080"]
    assert body["Labels"] == {"com.docker.compose.service": "gw"}
    assert "Hostname" not in body and "WorkingDir" not in body  # assigned, not chosen
    # What create takes back: Docker's spellings.
    assert body["StopSignal"] == "SIGQUIT"
    assert body["HostConfig"]["Binds"] == ["/usr:/usr:ro", "/data:/data"]
    assert body["HostConfig"]["Ulimits"] == [{"Name": "nofile", "Hard": 20000, "Soft": 20000}]
    for key in ("PortBindings", "RestartPolicy", "NetworkMode", "Init"):
        assert body["HostConfig"][key] == INSPECT["HostConfig"][key]
    for key in ("Cmd", "User", "Healthcheck"):
        assert body[key] == INSPECT["Config"][key]
    assert body["NetworkingConfig"] == {"EndpointsConfig": {"podman": {"Aliases": ["gw"]}}}


def test_without_the_old_image_only_the_engines_additions_are_dropped() -> None:
    body = recreate_body(INSPECT, None, "localhost/gw:3.8.1", podman=True)
    assert "GATEWAY_VERSION=3.8.0" in body["Env"]  # cannot be told apart from the operator's
    assert "container=podman" not in body["Env"]


def test_host_network_containers_get_no_networking_config() -> None:
    doc = {**INSPECT, "HostConfig": {**INSPECT["HostConfig"], "NetworkMode": "host"}}
    assert "NetworkingConfig" not in recreate_body(doc, IMAGE_CONFIG, "x:1", podman=False)


@pytest.mark.parametrize(
    ("bind", "normal"),
    [("/a:/b", "/a:/b"), ("/a:/b:ro,rprivate,rbind", "/a:/b:ro"), ("/a:/b:z,rbind", "/a:/b:z")],
)
def test_binds_keep_the_operators_options(bind: str, normal: str) -> None:
    assert normal_bind(bind) == normal


def backend(**changes: Any) -> DockerBackend:
    settings = DockerSettings.model_validate(
        {"type": "docker", "labels": {"com.docker.compose.service": "gw"}, **changes}
    )
    return DockerBackend("prod-eu", settings)


def test_endpoints_are_the_published_ports_else_the_containers_address() -> None:
    b = backend()
    endpoints = b.endpoints(INSPECT)
    assert endpoints["proxy"] == "http://127.0.0.1:19080"  # published
    assert endpoints["status"] == "http://10.88.0.5:7085"  # the container's own address
    assert b.stop_first(INSPECT)  # two containers cannot bind 19080 at once
    unpublished = {**INSPECT, "HostConfig": {**INSPECT["HostConfig"], "PortBindings": {}}}
    assert not b.stop_first(unpublished)
    remote = backend(base_url="tcp://gw-host:2376")
    published_anywhere = {
        **INSPECT,
        "NetworkSettings": {"Ports": {"9080/tcp": [{"HostIp": "0.0.0.0", "HostPort": "80"}]}},
    }
    assert remote.endpoints(published_anywhere)["proxy"] == "http://gw-host:80"


def test_slot_ids_are_group_and_container_name() -> None:
    b = backend()
    assert b.container_name("prod-eu/gw-1") == "gw-1"
    with pytest.raises(PermanentError, match="not in group"):
        b.container_name("prod-us/gw-1")
    assert version_of("registry:5000/apache/apisix:3.9.1-debian") == "3.9.1"
    assert version_of("api7/api7-ee-3-gateway:3.2.14.6") == "3.2.14.6"


def test_without_compose_file_the_completion_says_which_line_to_change() -> None:
    note = backend().compose_note("completed", "gw:3.8.0", "gw:3.8.1")
    assert note == (
        "change services.gw.image in the compose file: gw:3.8.0 → gw:3.8.1 "
        "(the next `docker compose up` would otherwise recreate gw:3.8.0)"
    )
    assert backend().compose_note("rolled_back", "gw:3.8.0", "gw:3.8.0") is None


# --- the compose file -----------------------------------------------------------------------

COMPOSE = """\
# gateways
services:
  etcd:
    image: bitnami/etcd:3.5   # not ours
  gw:
    image: 'apache/apisix:3.8.0-debian'  # pinned
    ports: ["9080:9080"]
"""


def test_only_the_services_image_value_changes(tmp_path: Path) -> None:
    path = tmp_path / "compose.yaml"
    path.write_text(COMPOSE)
    change = compose.set_image(path, "gw", "apache/apisix:3.8.1-debian")
    assert change is not None and change.old == "apache/apisix:3.8.0-debian"
    assert path.read_text() == COMPOSE.replace("3.8.0-debian", "3.8.1-debian")
    assert compose.set_image(path, "gw", "apache/apisix:3.8.1-debian") is None  # idempotent
    compose.set_image(path, "gw", "apache/apisix:3.8.0-debian")
    assert path.read_text() == COMPOSE


def test_a_compose_file_without_the_service_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "compose.yaml"
    path.write_text(COMPOSE)
    with pytest.raises(PermanentError, match=r"no services\.api\.image"):
        compose.set_image(path, "api", "x:1")
    with pytest.raises(PermanentError, match="cannot be read"):
        compose.set_image(tmp_path / "missing.yaml", "gw", "x:1")


# --- Docker errors in the engine's words ----------------------------------------------------


def api_error(status: int, message: str) -> docker.errors.APIError:
    response = requests.Response()
    response.status_code = status
    cls = docker.errors.NotFound if status == 404 else docker.errors.APIError
    return cls("failed", response=response, explanation=message)


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (api_error(404, "no such container: gw-1"), PermanentError),
        (api_error(400, "invalid reference format"), PermanentError),
        (api_error(409, "container name already in use"), TemporaryError),
        (api_error(500, "runtime failed"), TemporaryError),
        (requests.exceptions.ConnectionError("refused"), TemporaryError),
    ],
)
async def test_docker_errors_become_retry_later_or_give_up_keeping_dockers_message(
    error: Exception, kind: type[Exception]
) -> None:
    def fail() -> None:
        raise error

    with pytest.raises(kind) as caught:
        await call("start gw-1", fail)
    assert str(caught.value).startswith("start gw-1: ")
    if isinstance(error, docker.errors.APIError):
        assert str(error.explanation) in str(caught.value)
