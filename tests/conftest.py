"""Shared fixtures. Tests never use an ambient REDIS_URL: they start their own servers."""

from __future__ import annotations

import os
import socket

import pytest

os.environ.pop("REDIS_URL", None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def port() -> int:
    return free_port()
