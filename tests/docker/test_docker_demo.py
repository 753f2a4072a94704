"""``upgrade-bot demo --backend docker``: the rehearsal on containers, through the real CLI.

The session's podman service is the Docker host (``DOCKER_HOST``), as a user's would be.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ..test_demo import OLD, demo_cli

pytestmark = [pytest.mark.traffic, pytest.mark.timeout(400)]


def test_a_bad_release_on_containers_is_rolled_back_after_the_first_group_without_a_failed_request(
    tmp_path: Path, docker_host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", docker_host)
    report = demo_cli(
        tmp_path,
        "--backend",
        "docker",
        "--bad-release",
        "errors",
        "--groups",
        "2",
        "--instances",
        "2",
        "--rate",
        "100",
    )
    assert report["state"] == "rolled_back", report["reason"]
    assert "(containers)" in report["stdout"]
    first, second = report["groups"]
    assert first["verdict"] == "fail", first
    for i in first["instances"]:
        assert (i["version_after"], i["replacements"], i["restorations"]) == (OLD, 1, 1), i
        assert i["served_before_ready"] == 0
    for i in second["instances"]:
        assert (i["version_after"], i["replacements"], i["restorations"]) == (OLD, 0, 0), i
    assert report["requests_failed"] == 0
    assert report["requests_total"] > 0
