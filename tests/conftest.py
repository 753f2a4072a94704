"""Shared fixtures. Tests never use an ambient REDIS_URL: they start their own servers.

Waiting and sandbox fleets are shared too: see tests/support.py (``eventually``, ``Sandboxes``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from upgrade_bot.prometheus_server import PrometheusServer, find_binary
from upgrade_bot.redis_server import free_port

from .support import Sandboxes, open_sandboxes

os.environ.pop("REDIS_URL", None)


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def sandboxes(tmp_path: Path) -> Iterator[Sandboxes]:
    """Sandbox fleets for this test, all taken down after it, with no process left behind."""
    with open_sandboxes(tmp_path) as boxes:
        yield boxes


@pytest.fixture(scope="session")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    """One real Prometheus server (Debian package) per session (per xdist worker): loopback,
    1 s scrape interval, file-based service discovery (tests write its target files)."""
    if find_binary() is None:
        message = "the 'prometheus' binary is missing (scripts/install-system-deps.sh installs it)"
        pytest.fail(message)  # `make test` installs it: a missing engine is a failure, never a skip
    server = PrometheusServer(tmp_path_factory.mktemp("prometheus"), scrape_interval_s=1.0)
    server.start()
    yield server
    server.stop()
