"""``upgrade-bot sandbox up|status|down`` as a user runs them: separate processes, real fleet.

Each command runs as ``python -m upgrade_bot`` in a subprocess with the test's environment
(tests/conftest.py has removed any ambient REDIS_URL, so ``up`` starts its own Redis in the
folder). Whatever a test brings up is taken down in a ``finally``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .support import eventually, start_time

pytestmark = pytest.mark.timeout(180)

# The keys of `sandbox status --json`. The documented ones (slots: id, group, version,
# replacements, restorations, served_before_ready; traffic: total, ok, requests_5xx, failed)
# plus the extras it has always carried and that `demo` reads (history) or that locate things.
STATUS_KEYS = {"slots", "traffic", "front_doors"}
SLOT_KEYS = {
    "id",
    "group",
    "version",
    "replacements",
    "restorations",
    "served_before_ready",
    "image",
    "history",
    "instance",
    "pid",
}
TRAFFIC_KEYS = {"total", "ok", "requests_5xx", "failed", "by_group"}
GROUP_TRAFFIC_KEYS = {"total", "ok", "requests_5xx", "failed"}


def cli(*args: str, timeout_s: float = 150) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    return subprocess.run(
        [sys.executable, "-m", "upgrade_bot", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def state_procs(directory: Path) -> dict[str, dict[int, str | None]]:
    """The processes ``state.json`` and the Redis pidfile name, as pid -> start time."""
    state = json.loads((directory / "state.json").read_text())
    redis_pid = int((directory / "redis" / "redis-server.pid").read_text().strip())
    pids = {"daemon": [state["pid"]], "instances": state["instance_pids"], "redis": [redis_pid]}
    return {name: {pid: start_time(pid) for pid in ps} for name, ps in pids.items()}


def running(procs: dict[str, dict[int, str | None]]) -> dict[str, list[int]]:
    return {
        name: [pid for pid, started in ps.items() if started and start_time(pid) == started]
        for name, ps in procs.items()
    }


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got: {text!r}"
    return lines[0]


@pytest.mark.traffic
def test_sandbox_up_status_down(tmp_path: Path) -> None:
    directory = tmp_path / "fleet"
    up = cli(
        "sandbox", "up", "--dir", str(directory), "--groups", "2", "--instances", "2",
        "--version", "3.8.0", "--rate", "40", "--latency-ms", "10",
        "--fault", "3.8.1=errors:0.2", "--fault", "3.8.2=never-ready",
    )  # fmt: skip
    procs: dict[str, dict[int, str | None]] = {}
    try:
        assert up.returncode == 0, up.stderr
        assert "sandbox up in" in up.stdout
        procs = state_procs(directory)
        assert len(procs["instances"]) == 4
        assert running(procs) == {name: list(ps) for name, ps in procs.items()}, procs

        # config.yaml: a complete bot configuration that `validate` accepts, for this fleet.
        config_path = directory / "config.yaml"
        assert f"config: {config_path}" in up.stdout
        validate = cli("validate", "--config", str(config_path))
        assert validate.returncode == 0, validate.stdout + validate.stderr
        assert "OK (2 groups: prod-eu, prod-us)" in validate.stdout
        config = yaml.safe_load(config_path.read_text())
        state = json.loads((directory / "state.json").read_text())
        assert [g["name"] for g in config["groups"]] == ["prod-eu", "prod-us"]
        assert {g["backend"]["sandbox_url"] for g in config["groups"]} == {state["control_url"]}
        assert config["control_plane"]["url"] == state["cp_url"]
        # The fault knobs stay in the sandbox: the bot's configuration never names them.
        for word in ("error_ratio", "never_ready", "never-ready", "3.8.1", "3.8.2"):
            assert word not in config_path.read_text(), word
        assert json.loads((directory / "sandbox.json").read_text())["faults"]["3.8.1"] == {
            "never_ready": False,
            "slow_start_s": 0.0,
            "error_ratio": 0.2,
            "added_latency_ms": 0.0,
            "no_cp": False,
            "no_config": False,
            "not_found_ratio": 0.0,
            "only_slot": None,
        }

        # status --json: exactly the documented shape, and traffic flowing.
        def status_with_traffic() -> dict | None:
            result = cli("sandbox", "status", "--dir", str(directory), "--json")
            assert result.returncode == 0, result.stderr
            data = json.loads(result.stdout)
            return data if data["traffic"]["total"] >= 20 else None

        data = asyncio.run(
            eventually(status_with_traffic, "traffic in `sandbox status --json`", within=60)
        )
        assert isinstance(data, dict)
        assert set(data) == STATUS_KEYS
        assert set(data["traffic"]) == TRAFFIC_KEYS
        assert set(data["traffic"]["by_group"]) == {"prod-eu", "prod-us"}
        for counts in data["traffic"]["by_group"].values():
            assert set(counts) == GROUP_TRAFFIC_KEYS
        assert [s["id"] for s in data["slots"]] == [
            "prod-eu/0", "prod-eu/1", "prod-us/0", "prod-us/1",
        ]  # fmt: skip
        for slot in data["slots"]:
            assert set(slot) == SLOT_KEYS, slot
            assert slot["version"] == "3.8.0"
            assert (slot["replacements"], slot["restorations"]) == (0, 0)
            assert slot["served_before_ready"] == 0
        assert data["traffic"]["failed"] == 0
        assert set(data["front_doors"]) == {"prod-eu", "prod-us"}
        text = cli("sandbox", "status", "--dir", str(directory))
        assert text.returncode == 0 and text.stdout.startswith("traffic: "), text

        # A second `up` on the same folder is refused in one line, and changes nothing.
        again = cli("sandbox", "up", "--dir", str(directory), "--groups", "1")
        assert again.returncode != 0
        line = one_line(again.stderr)
        assert line.startswith("upgrade-bot: a sandbox is already up in ")
        assert "sandbox down" in line
        assert "Traceback" not in again.stderr
        assert state_procs(directory) == procs
        assert running(procs) == {name: list(ps) for name, ps in procs.items()}, procs
    finally:
        down = cli("sandbox", "down", "--dir", str(directory))
    assert down.returncode == 0, down.stderr
    assert down.stdout.strip() == "sandbox down"
    # `down` returns only once everything is gone: no daemon, no instance, no Redis left.
    left = running(procs)
    for pid in (p for ps in left.values() for p in ps):
        os.kill(pid, signal.SIGKILL)  # do not leave them to the next test
    assert procs and not any(left.values()), f"left running after `sandbox down`: {left}"
    assert not (directory / "state.json").exists()

    status = cli("sandbox", "status", "--dir", str(directory))
    assert status.returncode == 1
    assert one_line(status.stderr) == f"upgrade-bot: no sandbox is up in {directory}"
    down_again = cli("sandbox", "down", "--dir", str(directory))
    assert down_again.returncode == 0
    assert down_again.stdout.strip() == f"no sandbox was up in {directory}"


def test_sandbox_status_with_nothing_up(tmp_path: Path) -> None:
    for directory, extra in ((tmp_path, []), (tmp_path / "missing", ["--json"])):
        result = cli("sandbox", "status", "--dir", str(directory), *extra)
        assert result.returncode == 1
        assert one_line(result.stderr) == f"upgrade-bot: no sandbox is up in {directory}"
        assert result.stdout == ""


@pytest.mark.parametrize(
    ("fault", "problem"),
    [
        ("3.8=errors", "'3.8=errors': expected VERSION=KIND, e.g. 3.8.1=errors:0.2"),
        ("errors:0.2", "'errors:0.2': expected VERSION=KIND"),
        (
            "3.8.1=boom",
            "'3.8.1=boom': unknown fault kind 'boom'; "
            "expected one of never-ready, slow-start, errors, latency, no-cp, no-config, not-found",
        ),
        ("3.8.1=errors@one", "'3.8.1=errors@one': '@one' is not a slot index (e.g. errors@1)"),
        ("3.8.1=errors:1.5", "'3.8.1=errors:1.5': the error ratio must be in (0, 1]"),
        ("3.8.1=latency:slow", "'3.8.1=latency:slow': 'slow' is not a number"),
    ],
)
def test_sandbox_up_rejects_a_bad_fault(tmp_path: Path, fault: str, problem: str) -> None:
    directory = tmp_path / "fleet"
    result = cli("sandbox", "up", "--dir", str(directory), "--fault", fault)
    assert result.returncode == 2, result
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("upgrade-bot sandbox up: error: argument --fault: "), last
    assert problem in last
    assert not directory.exists()  # refused before anything started


@pytest.mark.traffic
def test_plan_to_a_four_part_version_on_an_api7_config(tmp_path: Path) -> None:
    """API7 EE releases have four parts: ``plan --to 3.2.14.6`` on a configuration written for
    API7's gateway image, with the control plane's groups listed (``--cp-groups``)."""
    directory = tmp_path / "fleet"
    up = cli(
        "sandbox", "up", "--dir", str(directory), "--groups", "2", "--instances", "2",
        "--version", "3.2.14.5", "--cp-version", "3.2.14.6", "--product", "api7", "--rate", "10",
    )  # fmt: skip
    try:
        assert up.returncode == 0, up.stderr
        config = yaml.safe_load((directory / "config.yaml").read_text())
        for group in config["groups"]:
            group["image"] = {"repository": "api7/api7-ee-3-gateway"}
        api7 = directory / "api7.yaml"  # beside the fleet's changelog, which it names relatively
        api7.write_text(yaml.safe_dump(config))

        plan = cli("plan", "--config", str(api7), "--to", "3.2.14.6", "--cp-groups")
        assert plan.returncode == 0, plan.stdout + plan.stderr
        lines = plan.stdout.splitlines()
        assert lines[0].endswith("upgrade to 3.2.14.6 (fleet now: 3.2.14.5)"), plan.stdout
        assert "→ api7/api7-ee-3-gateway:3.2.14.6" in plan.stdout
        assert "  control plane: 3.2.14.6" in lines
        assert "  control-plane groups (2):" in lines
        for name in ("prod-eu", "prod-us"):
            assert any(
                line.startswith(f"    {name} (")
                and line.endswith("2 instance(s); versions 3.2.14.5: 2; Healthy 2")
                for line in lines
            ), plan.stdout

        data = json.loads(
            cli("plan", "--config", str(api7), "--to", "v3.2.14.6", "--cp-groups", "--json").stdout
        )
        assert data["target_version"] == "3.2.14.6"  # the "v" dropped, as image tags have none
        assert sorted(g["name"] for g in data["cp_groups"]) == ["prod-eu", "prod-us"]

        # a CP older than the target blocks, comparing all four parts
        newer = cli("plan", "--config", str(api7), "--to", "3.2.14.10")
        assert newer.returncode != 0
        assert "BLOCKED: control plane runs 3.2.14.6, older than 3.2.14.10" in newer.stdout
    finally:
        down = cli("sandbox", "down", "--dir", str(directory))
    assert down.returncode == 0, down.stderr
