"""``upgrade-bot demo --backend kubernetes``: the same rehearsal on the emulated cluster, each
group a Helm release of the vendor's APISIX chart, through the real CLI as a user runs it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from upgrade_bot.redis_server import stop_from_pidfile
from upgrade_bot.sandbox import manage

from ..test_demo import NEW, OLD, instances
from ..test_demo import demo_cli as shared_demo_cli

pytestmark = [pytest.mark.traffic, pytest.mark.timeout(400)]


def demo_cli(tmp_path: Path, *extra: str) -> dict[str, Any]:
    """The demo on the emulated cluster (no ``sandbox`` daemon to take down: its Redis only)."""
    return shared_demo_cli(
        tmp_path,
        "--backend",
        "kubernetes",
        "--quiet",
        *extra,
        teardown=lambda directory: stop_from_pidfile(directory / manage.REDIS_DIR) and None,
    )


def test_the_kubernetes_demo_upgrades_each_release_once_without_a_failed_request(
    tmp_path: Path,
) -> None:
    report = demo_cli(tmp_path, "--groups", "2", "--instances", "2")
    assert report["state"] == "completed", report["reason"]
    assert [g["verdict"] for g in report["groups"]] == ["pass", "pass"]
    assert report["requests_failed"] == 0 and report["requests_total"] > 1000
    slots = instances(report)
    assert [i["id"] for i in slots] == ["prod-eu/0", "prod-eu/1", "prod-us/0", "prod-us/1"]
    for i in slots:  # observed from the emulated pods
        assert (i["version_before"], i["version_after"]) == (OLD, NEW), i
        assert (i["replacements"], i["restorations"]) == (1, 0), i
    # One Helm upgrade per group: revision 1 (the install), revision 2 (upgrade-bot's).
    assert report["helm_releases"] == {
        g: [{"revision": 1, "status": "superseded"}, {"revision": 2, "status": "deployed"}]
        for g in ("prod-eu", "prod-us")
    }


def test_a_release_that_never_becomes_ready_is_rolled_back_after_the_first_group(
    tmp_path: Path,
) -> None:
    report = demo_cli(tmp_path, "--bad-release", "never-ready")
    assert report["state"] == "rolled_back", report["reason"]
    assert "not ready within" in report["reason"]
    assert report["requests_failed"] == 0
    for i in instances(report):
        assert (i["version_before"], i["version_after"]) == (OLD, OLD), i
        assert (i["replacements"], i["restorations"]) == (0, 0), i
    releases = report["helm_releases"]
    # The first group's upgrade was undone by a Helm rollback to revision 1; the others were
    # never touched.
    assert releases["prod-eu"][-1] == {"revision": 3, "status": "deployed"}
    assert releases["prod-us"] == releases["prod-ap"] == [{"revision": 1, "status": "deployed"}]


def test_a_release_with_errors_is_caught_by_the_metrics_and_rolled_back_by_helm(
    tmp_path: Path,
) -> None:
    """The metric watch (after each batch, with the rollout paused there) or the gate's verdict
    catches the 5xx; the rollback is a Helm rollback to the recorded revision."""
    report = demo_cli(tmp_path, "--bad-release", "errors", "--groups", "2")
    assert report["state"] == "rolled_back", report["reason"]
    assert "5xx ratio" in report["reason"] or "paused" in report["reason"], report["reason"]
    assert report["requests_failed"] == 0 and report["requests_5xx"] > 0
    first = report["groups"][0]
    for i in first["instances"]:
        assert i["version_after"] == OLD, i
        assert i["restorations"] == (1 if i["replacements"] else 0), i
    releases = report["helm_releases"]
    assert releases["prod-eu"][-1] == {"revision": 3, "status": "deployed"}
    assert releases["prod-us"] == [{"revision": 1, "status": "deployed"}]
