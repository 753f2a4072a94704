"""One podman API service per test session: the real Docker-API engine of the Docker tests.

Started with the project's own recipe (upgrade_bot.podman, the one ``demo --backend docker``
uses), its storage under the session's temp folder. podman comes from
scripts/install-system-deps.sh; under ``CI=true`` a missing podman fails the tests instead of
skipping them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from upgrade_bot import podman


@pytest.fixture(scope="session")
def docker_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``DOCKER_HOST`` URL of a podman service for the whole session."""
    missing = podman.missing_tools()
    if missing:
        message = f"podman tools missing: {' '.join(missing)} (make system-deps installs them)"
        pytest.fail(message)  # `make test` installs it: a missing engine is a failure, never a skip
    service = podman.PodmanService(tmp_path_factory.mktemp("podman"))
    url = service.start()
    try:
        yield url
    finally:
        client = docker.APIClient(base_url=url)
        for entry in client.containers(all=True):
            client.remove_container(entry["Id"], force=True)
        client.close()
        service.stop()


@pytest.fixture
def docker_client(docker_host: str) -> Iterator[docker.DockerClient]:
    client = docker.DockerClient(base_url=docker_host)
    yield client
    client.close()


def podman_env(docker_host: str) -> dict[str, str]:
    """For a look with the podman CLI while debugging (same storage as the service)."""
    folder = Path(docker_host.removeprefix("unix://")).parent
    return podman.PodmanService(folder).environ()
