"""The bot killed with ``kill -9`` mid-group on a Docker group, resumed: each slot replaced once.

The headless CLI drives a run on a container sandbox; it is killed while a replacement is in
flight (a ``…upgrade-bot-next`` container exists), and ``resume`` carries on. Judged from the
Docker host (no duplicate, no orphan) and the sandbox's observed truth (one replacement each).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import docker
import pytest

from upgrade_bot.engine.backends.docker import NEXT, SUFFIXES
from upgrade_bot.headless import EXIT_COMPLETED, EXIT_WAITING

from ..support import Sandboxes, eventually
from .fleets import NEW, OLD, container_fleet, traffic_delta

pytestmark = [pytest.mark.traffic, pytest.mark.timeout(300)]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "upgrade_bot", *args]


async def test_a_bot_killed_mid_group_resumes_with_each_slot_replaced_once(
    sandboxes: Sandboxes, docker_host: str, docker_client: docker.DockerClient
) -> None:
    async with container_fleet(sandboxes, docker_host, instances=3, rate_per_s=60.0) as fleet:
        config = str(fleet.handle.config_path)
        labels = [f"{k}={v}" for k, v in fleet.settings.labels.items()]

        def names() -> dict[str, str]:
            found = docker_client.containers.list(all=True, filters={"label": labels})
            return {c.name: c.status for c in found}

        slots = sorted(names())
        before = await fleet.status()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        driver = subprocess.Popen(
            cli(
                "run",
                "--config",
                config,
                "--to",
                NEW,
                "--acknowledge-changelog",
                "--as",
                "requester",
                "--quiet",
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert driver.stdout is not None
        first = await asyncio.to_thread(driver.stdout.readline)
        run_id = first.split()[1]
        await eventually(
            lambda: any(n.endswith(NEXT) for n in names()), "a replacement in flight", within=120
        )
        driver.kill()  # kill -9
        driver.communicate()
        for _ in range(5):
            done = await asyncio.to_thread(
                subprocess.run,
                cli("resume", run_id, "--config", config),
                capture_output=True,
                text=True,
                timeout=240,
            )
            if done.returncode == EXIT_WAITING:
                approve = await asyncio.to_thread(
                    subprocess.run,
                    cli(
                        "approve",
                        run_id,
                        "--config",
                        config,
                        "--as",
                        "oncall",
                        "--no-drive",
                        "--quiet",
                    ),
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
                assert approve.returncode == 0, approve.stderr
                continue
            assert done.returncode == EXIT_COMPLETED, done.stderr
            # The completion says the compose change to make (no compose_file configured).
            service = fleet.settings.labels["com.docker.compose.service"]
            assert (
                f"compose: change services.{service}.image in the compose file: "
                f"{fleet.image(OLD)} → {fleet.image(NEW)}" in done.stdout
            ), done.stdout[-2000:]
            assert "removed 3 kept container(s)" in done.stdout
            break
        else:
            pytest.fail("the run did not complete")
        # No duplicate, no orphan: the slots' containers only, kept ones removed at the end.
        final = names()
        assert sorted(final) == slots, final
        assert not [n for n in final if n.endswith(SUFFIXES)]
        assert set(final.values()) == {"running"}
        truth = await fleet.truth()
        assert {(s["version"], s["replacements"]) for s in truth.values()} == {(NEW, 1)}
        assert all(s["served_before_ready"] == 0 for s in truth.values())
        delta = traffic_delta(await fleet.status(), before)
        assert delta["failed"] == 0, delta
