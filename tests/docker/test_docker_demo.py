"""``upgrade-bot demo --backend docker``: the rehearsal on containers, through the real CLI.

The session's podman service is the Docker host (``DOCKER_HOST``), as a user's would be.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ..test_demo import NEW, OLD, demo_cli

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
    # Found in the first group (by the watch during its replacement, or by its verdict): each
    # container replaced there was restored, the second group never touched.
    assert first["verdict"] in (None, "fail"), first
    assert sum(i["replacements"] for i in first["instances"]) >= 1, first
    for i in first["instances"]:
        assert i["version_after"] == OLD and i["replacements"] == i["restorations"], i
        assert i["served_before_ready"] == 0
    for i in second["instances"]:
        assert (i["version_after"], i["replacements"], i["restorations"]) == (OLD, 0, 0), i
    assert report["requests_failed"] == 0
    assert report["requests_total"] > 0


def test_the_demo_on_containers_completes_with_every_slot_replaced_once_and_no_failed_request(
    tmp_path: Path, docker_host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", docker_host)
    report = demo_cli(
        tmp_path, "--backend", "docker", "--groups", "2", "--instances", "2", "--rate", "100"
    )
    assert report["state"] == "completed", report["reason"]
    slots = [i for g in report["groups"] for i in g["instances"]]
    assert len(slots) == 4
    for i in slots:
        assert (i["version_before"], i["version_after"]) == (OLD, NEW), i
        assert (i["replacements"], i["restorations"], i["served_before_ready"]) == (1, 0, 0), i
    assert report["requests_failed"] == 0 and report["requests_5xx"] == 0
    assert report["requests_total"] > 0
    # The completion says which compose line to change, for each group; the report too.
    for g in report["groups"]:
        note = report["backends"][g["name"]]["compose"]
        assert note.startswith(f"change services.{g['name']}.image in the compose file: "), note
        assert f"{g['name']} compose: {note}" in report["stdout"]
        assert len(report["backends"][g["name"]]["removed"]) == 2
