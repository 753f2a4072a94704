"""One emulated Kubernetes cluster per test session (per xdist worker), shared by the tests.

Each test works in its own namespace, so tests never see each other's objects.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from upgrade_bot.sandbox.kube.cluster import EmulatedCluster

SCALE = 0.05
"""Manifest durations x SCALE: the API7 chart's 10 s initial delay is 0.5 s, its 30 s preStop
sleep 1.5 s, its 180 s grace period 9 s."""

_namespaces = itertools.count(1)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatedCluster]:
    with EmulatedCluster(scale=SCALE) as c:
        yield c


@pytest.fixture
def kubeconfig(cluster: EmulatedCluster, tmp_path: Path) -> Path:
    return cluster.kubeconfig(tmp_path / "kubeconfig")


@pytest.fixture
def namespace(cluster: EmulatedCluster) -> str:
    return f"t{next(_namespaces)}"
