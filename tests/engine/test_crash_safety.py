"""Crash safety: a run resumed after a crash anywhere upgrades each instance exactly once.

Real sandbox processes, real Redis. Three kinds of crash:
- injected at every save/act boundary of the runner (in-process, each crash point once);
- external ``kill -9`` of the CLI driver at random moments (replacement, gates, rollback);
- a driver frozen with SIGSTOP while another takes over, then continued with SIGCONT.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from upgrade_bot.engine import COMPLETED, ROLLED_BACK, Command
from upgrade_bot.engine.config import load_config
from upgrade_bot.sandbox import manage
from upgrade_bot.wiring import engine_for

from ..support import Sandboxes, eventually, fleet_spec

pytestmark = pytest.mark.traffic

FAST_DEFAULTS: dict[str, Any] = {
    "rollout": {
        "batch_size": 1,
        "ready_timeout_s": 30,
        "baseline_window_s": 1.0,
        "settle_s": 1.0,
    },
    "thresholds": {"min_requests": 10},
    "observation": {"window_s": 1, "checkin_interval_s": 1},
    "smoke": {"path": "/smoke", "expect_status": [200], "count": 2},
    "approval": {"required": 1, "expiry_s": 3600},
}


class Crash(BaseException):
    """Stands for the process dying: nothing after it runs, nothing catches it."""


def sandbox(
    directory: Path,
    groups: int,
    instances: int,
    *,
    lease_ttl_s: float | None = None,
    ready_delay_s: float = 0.3,
) -> manage.SandboxHandle:
    spec = fleet_spec(groups, instances, ready_delay_s=ready_delay_s)
    boxes = Sandboxes(directory.parent)
    handle = boxes.up_blocking(spec, name=directory.name, defaults=FAST_DEFAULTS)
    if lease_ttl_s is not None:
        text = handle.config_path.read_text()
        handle.config_path.write_text(text + f"store:\n  lease_ttl_s: {lease_ttl_s}\n")
    return handle


@pytest.fixture
def small_fleet(tmp_path: Path) -> Iterator[manage.SandboxHandle]:
    handle = sandbox(tmp_path / "fleet", groups=1, instances=2)
    try:
        yield handle
    finally:
        manage.down(handle.dir)


def truth_by_slot(handle: manage.SandboxHandle) -> dict[str, dict[str, Any]]:
    return {s["id"]: s for s in handle.status()["slots"]}


async def event_types(handle: manage.SandboxHandle, run_id: str) -> Counter[str]:
    config = load_config(handle.config_path)
    async with engine_for(config, config_dir=handle.dir, redis_url=handle.redis_url) as engine:
        events = await engine.feed.events(run_id)
    return Counter(e["type"] for _, e in events)


async def slot_events(handle: manage.SandboxHandle, run_id: str, kind: str) -> Counter[str]:
    config = load_config(handle.config_path)
    async with engine_for(config, config_dir=handle.dir, redis_url=handle.redis_url) as engine:
        events = await engine.feed.events(run_id)
    return Counter(e["slot"] for _, e in events if e["type"] == kind)


async def test_a_crash_at_every_runner_boundary_still_replaces_each_slot_exactly_once(
    small_fleet: manage.SandboxHandle,
) -> None:
    handle = small_fleet
    config = load_config(handle.config_path)
    crashed: set[tuple[str, str]] = set()

    def crash_once_at_each_boundary(name: str, detail: str) -> None:
        if (name, detail) not in crashed:
            crashed.add((name, detail))
            raise Crash(f"{name} {detail}")

    traffic_before = handle.status()["traffic"]
    async with engine_for(config, config_dir=handle.dir, redis_url=handle.redis_url) as engine:
        run = await engine.start(
            "3.8.1", requester="ci", approval_mode="auto", acknowledge_changelog=True
        )
    crashes = 0
    while True:
        # A fresh engine each time, as a restarted process would build.
        async with engine_for(
            config,
            config_dir=handle.dir,
            redis_url=handle.redis_url,
            checkpoint=crash_once_at_each_boundary,
            poll_interval_s=0.05,
        ) as engine:
            try:
                result = await engine.drive(run.id, until_human=False)
                break
            except Crash:
                crashes += 1
        assert crashes < 600, "the run makes no progress across crashes"

    assert result.run.state == COMPLETED, result.run.reason
    boundaries = {name for name, _ in crashed}
    assert boundaries == {"before_save", "after_save", "before_act", "after_act"}
    assert crashes == len(crashed) >= 40
    truth = truth_by_slot(handle)
    assert {s: (t["version"], t["replacements"], t["restorations"]) for s, t in truth.items()} == {
        "prod-eu/0": ("3.8.1", 1, 0),
        "prod-eu/1": ("3.8.1", 1, 0),
    }
    assert all(t["served_before_ready"] == 0 for t in truth.values())
    traffic = handle.status()["traffic"]
    assert traffic["failed"] - traffic_before["failed"] == 0
    assert traffic["total"] > traffic_before["total"]
    # The audit is complete and says everything exactly once.
    assert await slot_events(handle, run.id, "slot_replaced") == {"prod-eu/0": 1, "prod-eu/1": 1}
    types = await event_types(handle, run.id)
    for once in (
        "run_started",
        "backup_done",
        "group_started",
        "metrics_summary",
        "gate_decided",
        "run_completed",
        "freeze_lifted",
    ):
        assert types[once] == 1, (once, types)
    # The engine's record agrees with the sandbox's observed truth.
    for group in result.run.groups:
        for slot in group.slots:
            assert slot.current_version == truth[slot.id]["version"]
            assert slot.replacements == truth[slot.id]["replacements"]


def cli(*args: str, env: dict[str, str] | None = None) -> list[str]:
    return [sys.executable, "-m", "upgrade_bot", *args]


def run_cli(args: list[str], env: dict[str, str] | None = None, timeout: float = 120) -> int:
    return subprocess.run(
        cli(*args), env=env, timeout=timeout, capture_output=True, text=True
    ).returncode


async def test_ten_kill_9s_across_replacement_gates_and_rollback_lose_nothing(
    tmp_path: Path,
) -> None:
    """kill -9 of the driving CLI at random moments; each time `resume` carries on."""
    handle = sandbox(tmp_path / "fleet", groups=3, instances=3)
    rng = random.Random(20261126)
    try:
        config = str(handle.config_path)
        traffic_before = handle.status()["traffic"]
        out = subprocess.run(
            cli(
                "run",
                "--config",
                config,
                "--to",
                "3.8.1",
                "--acknowledge-changelog",
                "--as",
                "requester",
                "--quiet",
            ),
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert out.returncode == 5, out.stderr  # waiting at the first gate
        run_id = out.stdout.split()[1]
        kills = 0
        gates = 0
        rolled_back = False
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            proc = subprocess.Popen(
                cli("resume", run_id, "--config", config, "--quiet"),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            if kills < 12:
                try:
                    proc.wait(timeout=rng.uniform(0.7, 2.2))
                except subprocess.TimeoutExpired:
                    proc.send_signal(signal.SIGKILL)
                    proc.communicate()
                    kills += 1
                    continue
            else:
                proc.wait(timeout=300)
            code = proc.returncode
            if code == 5:
                proc.communicate()  # at a gate: approve the first two, roll back the third
                gates += 1
                action = "approve" if gates < 3 else "rollback"
                rolled_back = rolled_back or action == "rollback"
                assert (
                    run_cli(
                        [
                            action,
                            run_id,
                            "--config",
                            config,
                            "--as",
                            "oncall",
                            "--no-drive",
                            "--quiet",
                        ]
                    )
                    == 0
                )
                continue
            _, err = proc.communicate()
            assert code == 4, err  # rolled back
            break
        else:
            pytest.fail("the run did not finish")
        assert kills >= 10
        assert rolled_back
        status = json.loads(
            subprocess.run(
                cli("status", run_id, "--config", config, "--json"),
                capture_output=True,
                text=True,
                timeout=60,
            ).stdout
        )
        assert status["state"] == ROLLED_BACK
        truth = truth_by_slot(handle)
        # Each slot was upgraded exactly once and restored exactly once, whatever the kills.
        assert {(t["version"], t["replacements"], t["restorations"]) for t in truth.values()} == {
            ("3.8.0", 1, 1)
        }
        assert len(truth) == 9
        traffic = handle.status()["traffic"]
        assert traffic["failed"] - traffic_before["failed"] == 0
        assert await slot_events(handle, run_id, "slot_replaced") == {s: 1 for s in truth}
        assert await slot_events(handle, run_id, "slot_restored") == {s: 1 for s in truth}
        types = await event_types(handle, run_id)
        assert types["run_rolled_back"] == 1
        assert types["gate_opened"] == 3
        assert types["approval_recorded"] == 2
    finally:
        manage.down(handle.dir)


async def test_a_frozen_driver_is_fenced_after_another_takes_over(tmp_path: Path) -> None:
    """SIGSTOP mid-replacement, takeover by another bot, SIGCONT: the stale one is refused."""
    # A slow start keeps driver A inside a replacement long enough to freeze it there.
    handle = sandbox(tmp_path / "fleet", groups=1, instances=3, lease_ttl_s=2.0, ready_delay_s=2.0)
    try:
        config = load_config(handle.config_path)
        async with engine_for(config, config_dir=handle.dir, redis_url=handle.redis_url) as eng:
            run = await eng.start(
                "3.8.1", requester="ci", approval_mode="auto", acknowledge_changelog=True
            )
        env_a = {**os.environ, "UPGRADE_BOT_IDENTITY": "driver-a"}
        env_b = {**os.environ, "UPGRADE_BOT_IDENTITY": "driver-b"}
        args = ["resume", run.id, "--config", str(handle.config_path), "--quiet"]
        driver_a = subprocess.Popen(
            cli(*args), env=env_a, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )

        def replacement_under_way() -> bool:
            slots = httpx.get(f"{handle.control_url}/groups/prod-eu/slots", timeout=10).json()
            return any(len(s["instances"]) > 1 for s in slots["slots"])

        await eventually(replacement_under_way, "driver A to start a replacement", within=120)
        driver_a.send_signal(signal.SIGSTOP)
        try:
            driver_b = subprocess.run(
                cli(*args, "--wait-lease", "30"),
                env=env_b,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert driver_b.returncode == 0, driver_b.stderr
        finally:
            driver_a.send_signal(signal.SIGCONT)
        _, err_a = driver_a.communicate(timeout=120)
        assert driver_a.returncode != 0
        assert "another driver holds run" in err_a or "lost the lease" in err_a, err_a

        status = handle.status()
        truth = {s["id"]: s for s in status["slots"]}
        assert {(t["version"], t["replacements"], t["restorations"]) for t in truth.values()} == {
            ("3.8.1", 1, 0)
        }
        raw = httpx.get(f"{handle.control_url}/status", timeout=10).json()
        assert raw["fenced_requests"] >= 1  # A's late backend action was refused by the sandbox
        assert await slot_events(handle, run.id, "slot_replaced") == {s: 1 for s in truth}
        types = await event_types(handle, run.id)
        assert types["run_completed"] == 1
    finally:
        manage.down(handle.dir)


async def test_commands_from_another_process_land_while_a_driver_runs(
    small_fleet: manage.SandboxHandle,
) -> None:
    """A pause recorded while a slot is being replaced takes effect after that slot."""
    handle = small_fleet
    config = load_config(handle.config_path)
    async with engine_for(config, config_dir=handle.dir, redis_url=handle.redis_url) as engine:
        run = await engine.start(
            "3.8.1", requester="ci", approval_mode="auto", acknowledge_changelog=True
        )
        import asyncio

        driver = asyncio.create_task(engine.drive(run.id))

        async def replacing() -> bool:
            current = await engine.status(run.id)
            return current.pending is not None and current.pending.kind == "ensure_slots"

        await eventually(replacing, "a replacement to start", within=120, interval=0.02)
        decision = await engine.command(run.id, Command("pause", "oncall", reason="look first"))
        assert decision.refusal is None
        result = await asyncio.wait_for(driver, 120)
        assert result.run.state == "paused"
        assert result.run.reason == "look first"
        # The slot under way when the pause arrived was finished, not left half-replaced.
        replaced = [s for s in result.run.groups[0].slots if s.status == "done"]
        assert len(replaced) == 1
        truth = truth_by_slot(handle)
        assert sorted(t["replacements"] for t in truth.values()) == [0, 1]
        assert all(len(t["history"]) >= 1 for t in truth.values())
