"""``upgrade-bot sandbox up|status|down``: run a sandbox fleet in the background of a folder.

``up`` leaves behind, in its folder: the daemon's state, its log, the embedded Redis (unless
``REDIS_URL`` is set) and ``config.yaml``, a complete bot configuration for this fleet.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from ..redis_server import RedisServer, stop_from_pidfile
from ..redis_server import _pid_alive as pid_alive
from .containers import PROJECT_LABEL, SERVICE_LABEL, container_project, image_repository
from .daemon import CP_KEY_FILE, SPEC_FILE, STATE_FILE
from .fleet import tagged_processes
from .spec import SandboxSpec

REDIS_DIR = "redis"
CHANGELOG_FILE = "CHANGELOG.md"
DAEMON_LOG = "daemon.log"
# $1: the log file; the rest: the command. Prints the daemon's pid. The daemon is the child of a
# shell that exits at once, never of the caller: a caller that stays alive (``demo``, a test)
# would otherwise keep it as a zombie after it exits, and ``down`` would wait for that forever.
_DETACH_SCRIPT = 'log=$1; shift; "$@" </dev/null >>"$log" 2>&1 & echo $!'


class SandboxError(Exception):
    """Something the user must be told in one line."""


@dataclass(frozen=True)
class SandboxHandle:
    dir: Path
    control_url: str
    cp_url: str
    redis_url: str
    config_path: Path
    front_doors: dict[str, str]

    def status(self) -> dict[str, Any]:
        return status(self.dir)


def _pid_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (exited, not yet reaped) counts as gone."""
    return pid_alive(pid)


def read_state(directory: Path) -> dict[str, Any] | None:
    path = directory / STATE_FILE
    try:
        state = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return state if _pid_alive(int(state["pid"])) else None


def up(
    directory: Path,
    spec: SandboxSpec,
    *,
    timeout_s: float = 120.0,
    sandbox_defaults: dict[str, Any] | None = None,
) -> SandboxHandle:
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    if read_state(directory):
        raise SandboxError(f"a sandbox is already up in {directory} (run 'sandbox down' first)")
    _stop_orphans(directory)  # instances of an earlier daemon here that died
    for stale in ("error.txt", STATE_FILE):
        with contextlib.suppress(FileNotFoundError):
            (directory / stale).unlink()
    spec.save(directory / SPEC_FILE)
    key_path = directory / CP_KEY_FILE
    key_path.write_text(secrets.token_hex(16))
    key_path.chmod(0o600)

    redis_url = os.environ.get("REDIS_URL")
    if not redis_url:
        server = RedisServer(directory / REDIS_DIR)
        server.start_detached()
        redis_url = server.url

    try:
        launcher = subprocess.run(
            [
                "sh",
                "-c",
                _DETACH_SCRIPT,
                "sh",
                str(directory / DAEMON_LOG),
                sys.executable,
                "-m",
                "upgrade_bot.sandbox.daemon",
                "--dir",
                str(directory),
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            start_new_session=True,
            check=True,
            timeout=30,
        )
        pid = int(launcher.stdout.decode().split()[-1])
    except (OSError, ValueError, IndexError, subprocess.SubprocessError) as exc:
        _stop_redis(directory)
        raise SandboxError(f"the sandbox daemon could not be started: {exc}") from None
    deadline = time.monotonic() + timeout_s
    state = None
    while time.monotonic() < deadline:
        state = read_state(directory)
        if state:
            break
        if not _pid_alive(pid) or (directory / "error.txt").exists():
            reason = _read(directory / "error.txt") or _tail(directory / DAEMON_LOG)
            _kill(pid)
            _stop_redis(directory)
            raise SandboxError(f"the sandbox failed to start: {reason}")
        time.sleep(0.1)
    if not state:
        _kill(pid)
        _stop_redis(directory)
        raise SandboxError(f"the sandbox did not come up within {timeout_s:g}s")

    config_path = directory / "config.yaml"
    write_changelog(directory / CHANGELOG_FILE, spec.version)
    config = bot_config(spec, state, redis_url, key_path, sandbox_defaults)
    config_path.write_text(
        "# Written by `upgrade-bot sandbox up`: a complete bot configuration for this fleet.\n"
        + yaml.safe_dump(config, sort_keys=False)
    )
    return SandboxHandle(
        dir=directory,
        control_url=state["control_url"],
        cp_url=state["cp_url"],
        redis_url=redis_url,
        config_path=config_path,
        front_doors=state["front_doors"],
    )


SANDBOX_CHANNEL = "C0UPGRADES"
SANDBOX_APPROVERS = ("S0ONCALL01", "oncall")


def bot_config(
    spec: SandboxSpec,
    state: dict[str, Any],
    redis_url: str,
    key_path: Path,
    defaults: dict[str, Any] | None,
) -> dict[str, Any]:
    # Windows sized for the sandbox's traffic: enough requests per window for a verdict.
    per_group_rps = spec.rate_per_s / max(1, len(spec.groups))
    window_s = max(5.0, round(260 / per_group_rps, 1)) if per_group_rps else 5.0
    window_s = max(window_s, 2 * spec.exporter_refresh_s)  # what the metrics can resolve
    config = _bot_config(spec, state, redis_url, key_path, defaults, window_s)
    if spec.backend == "docker":
        # The rehearsal's containers are plain APISIX: on their bridge network they cannot reach
        # the control-plane stand-in on the host's loopback, so the bot is given none (each CP
        # step is skipped with a note, as for any plain-APISIX fleet).
        del config["control_plane"]
        for group in config["groups"]:
            del group["gateway_group"]
    return config


def _bot_config(
    spec: SandboxSpec,
    state: dict[str, Any],
    redis_url: str,
    key_path: Path,
    defaults: dict[str, Any] | None,
    window_s: float,
) -> dict[str, Any]:
    return {
        "groups": [
            {
                "name": group,
                "production": group.startswith("prod"),
                "gateway_group": group,
                "backend": backend_section(spec, state, group, directory=key_path.parent),
                "image": {"repository": image_repository(spec)},
            }
            for group in spec.groups
        ],
        "control_plane": {
            "url": state["cp_url"],
            "api_key_file": str(key_path),
            # a new instance heartbeats at once, and reports a revision it was sent one
            # heartbeat later: two intervals and a margin suffice, and keep a demo short
            "verify_timeout_s": round(2 * spec.heartbeat_interval_s + 5, 1),
            "verify_interval_s": max(0.2, round(spec.heartbeat_interval_s / 4, 2)),
        },
        "metrics": {"type": "scrape", "exporter_refresh_s": spec.exporter_refresh_s},
        "redis_url": redis_url,
        "changelog": CHANGELOG_FILE,
        "backup": {
            "type": "command",
            "command": [
                sys.executable,
                "-m",
                "upgrade_bot.sandbox.backup",
                "--cp-url",
                state["cp_url"],
                "--key-file",
                str(key_path),
                "--out",
                str(key_path.parent / "backups" / "cp-{run_id}.json"),
            ],
            "artifact": str(key_path.parent / "backups" / "cp-{run_id}.json"),
            "timeout_s": 60,
        },
        "defaults": defaults
        or {
            "rollout": {
                "batch_size": 1,
                "ready_timeout_s": 20,
                "baseline_window_s": window_s,
                "settle_s": window_s,
                # The rehearsal shows each group's verdict at its gate. At the sandbox's few
                # requests per batch a watch would halt a bad release after one slot or two,
                # depending on timing; tests/engine/test_watch.py shows the watch on its own.
                "watch": False,
            },
            "observation": {"window_s": 5, "checkin_interval_s": 5},
            # The gateway's own mock route: it proves the instance serves, while the metric
            # verdict judges the proxied traffic.
            "smoke": {"path": "/smoke", "expect_status": [200], "count": 3, "enabled": spec.smoke},
            # The on-call user group of the Slack stand-in (bob, carol), and `--as oncall` for
            # the headless CLI.
            "policy": {
                "approve": list(SANDBOX_APPROVERS),
                "resume": list(SANDBOX_APPROVERS),
                "abort": list(SANDBOX_APPROVERS),
            },
        },
        # The channel of the Slack stand-in's workspace (`upgrade-bot demo`,
        # `python -m upgrade_bot.slackstub`).
        "slack": {"channel": SANDBOX_CHANNEL},
    }


def backend_section(
    spec: SandboxSpec, state: dict[str, Any], group: str, *, directory: Path
) -> dict[str, Any]:
    """How the bot reaches the group's instances: the sandbox's control API, or (docker) the
    Docker host and the group's compose labels."""
    if spec.backend != "docker":
        return {
            "type": "local",
            "sandbox_url": state["control_url"],
            "readiness": {"mode": spec.readiness},
        }
    return {
        "type": "docker",
        "base_url": spec.docker_host,
        "labels": {PROJECT_LABEL: container_project(directory), SERVICE_LABEL: group},
        "readiness": {"mode": spec.readiness},
        "stop_timeout_s": 30,
        # The front doors see a new member after the fleet's next look at the containers and
        # the next health check (0.2 s each, idle; seconds on a loaded machine): wait that long
        # before another instance goes out.
        "drain_s": 2.0,
    }


def write_changelog(path: Path, version: str) -> None:
    """Release notes for the sandbox's versions, in the vendors' format (one ``## X.Y.Z`` each).

    The text is the sandbox's own, not a vendor's: it only gives the changelog step something
    to show and to be acknowledged.
    """
    *head, last = (int(p) for p in version.split("."))  # 3.8.0, or API7's 3.2.14.5
    prefix = ".".join(str(p) for p in head)
    versions = [f"{prefix}.{p}" for p in range(last, last + 4)]
    if len(head) == 2:  # APISIX: the next minor too
        major, minor = head
        versions += [f"{major}.{minor + 1}.0", f"{major}.{minor + 1}.1"]
    lines = ["# Sandbox gateway release notes", ""]
    for v in reversed(versions):
        lines += [
            f"## {v}",
            "",
            f"- Sandbox release {v}: no behaviour change unless a fault knob is set for it.",
            "",
        ]
    path.write_text("\n".join(lines))


def status(directory: Path) -> dict[str, Any]:
    state = read_state(directory.resolve())
    if not state:
        raise SandboxError(f"no sandbox is up in {directory}")
    try:
        resp = httpx.get(state["control_url"] + "/status", timeout=30)
        resp.raise_for_status()
    except httpx.HTTPError as exc:
        raise SandboxError(f"the sandbox does not answer ({type(exc).__name__})") from None
    data = resp.json()
    return {"slots": data["slots"], "traffic": data["traffic"], "front_doors": data["front_doors"]}


def down(directory: Path, timeout_s: float = 60.0) -> bool:
    """Stop everything ``up`` started. Returns False when nothing was up."""
    directory = directory.resolve()
    state = read_state(directory)
    if state:
        with contextlib.suppress(httpx.HTTPError):
            httpx.post(state["control_url"] + "/shutdown", timeout=10)
        pid = int(state["pid"])
        deadline = time.monotonic() + timeout_s
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _pid_alive(pid):
            _kill(pid)
    # Instances the daemon did not stop: it was killed just above, or it had died before (a
    # crash, an OOM kill). Found by the tag the fleet gives them, never by a stale pid.
    orphans = _stop_orphans(directory)
    with contextlib.suppress(FileNotFoundError):
        (directory / STATE_FILE).unlink()  # left by a daemon that died
    stopped_redis = _stop_redis(directory)
    return bool(state) or bool(orphans) or stopped_redis


def _stop_orphans(directory: Path, timeout_s: float = 10.0) -> list[int]:
    """SIGKILL the instances of a dead daemon; returns their pids.

    Not SIGTERM: an orphan's stdout is a pipe that nobody reads any more, and the simulator's
    signal handlers write an event there before they exit, so they fail and it keeps running.
    """
    orphans = tagged_processes(str(directory))
    for pid in orphans:
        _kill(pid)
    deadline = time.monotonic() + timeout_s
    while tagged_processes(str(directory)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return orphans


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)


def _stop_redis(directory: Path) -> bool:
    return bool(stop_from_pidfile(directory / REDIS_DIR))


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return ""


def _tail(path: Path, lines: int = 5) -> str:
    text = _read(path)
    return " | ".join(text.splitlines()[-lines:]) or "(no log)"
