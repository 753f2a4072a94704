"""What every test that waits or needs a fleet shares: ``eventually()`` and ``Sandboxes``.

``eventually(check, what)`` waits for a condition with a deadline, never for a fixed time.
``Sandboxes`` brings sandbox fleets up (``manage.up``) for one test and takes every one of them
down afterwards, failing the test if a process it started is left behind. Tests get it through
the ``sandboxes`` fixture (tests/conftest.py), or ``open_sandboxes(root)`` in a context manager.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import inspect
import json
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx

from upgrade_bot.sandbox import manage
from upgrade_bot.sandbox.spec import SandboxSpec, group_names

T = TypeVar("T")

# --- waiting ----------------------------------------------------------------------------------


async def eventually(
    check: Callable[[], T | Awaitable[T]],
    what: str = "the condition",
    *,
    within: float = 30.0,
    interval: float = 0.05,
    explain: Callable[[], str] | None = None,
) -> T:
    """Call ``check`` (sync or async) until it returns something truthy, and return that.

    Fails with an AssertionError naming ``what`` and the last value once ``within`` seconds have
    passed (``explain()`` adds context, e.g. a transcript). Deadlines are generous on purpose:
    they bound a failing test, and a passing one never waits for them.
    """
    deadline = time.monotonic() + within
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result  # type: ignore[return-value]
        if time.monotonic() > deadline:
            detail = f"\n{explain()}" if explain is not None else ""
            raise AssertionError(
                f"timed out after {within:g}s waiting for {what} (last: {result!r}){detail}"
            )
        await asyncio.sleep(interval)


# --- processes --------------------------------------------------------------------------------


def start_time(pid: int) -> str | None:
    """When ``pid`` started (clock ticks since boot), or None if it is gone or a zombie.

    Together with the pid it names one process: pids are reused (pid_max may be small), and a
    test must never take a stranger that inherited a pid for one of its own.
    """
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else fields[19]


def identify(pids: set[int]) -> dict[int, str]:
    return {pid: t for pid in pids if (t := start_time(pid)) is not None}


def still_running(procs: dict[int, str]) -> list[int]:
    return [pid for pid, started in procs.items() if start_time(pid) == started]


def pid_alive(pid: int) -> bool:
    return start_time(pid) is not None


def cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def pids_mentioning(text: str) -> set[int]:
    """Live processes whose command line contains ``text`` (e.g. a sandbox folder)."""
    pids = (int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit())
    return {p for p in pids if p != os.getpid() and text in cmdline(p) and pid_alive(p)}


def sandbox_pids(directory: Path) -> set[int]:
    """Every process a sandbox folder accounts for: daemon, instances (live ones), Redis."""
    pids: set[int] = set()
    with contextlib.suppress(FileNotFoundError, ValueError):
        state = json.loads((directory / "state.json").read_text())
        pids.add(int(state["pid"]))
        pids.update(int(p) for p in state["instance_pids"])
        with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
            control = state["control_url"]
            for group in json.loads((directory / "sandbox.json").read_text())["groups"]:
                resp = httpx.get(f"{control}/groups/{group}/slots", timeout=30)
                for slot in resp.json()["slots"]:
                    pids.update(int(i["pid"]) for i in slot["instances"])
    with contextlib.suppress(FileNotFoundError, ValueError):
        pids.add(int((directory / "redis" / "redis-server.pid").read_text().strip()))
    return pids


# --- sandbox fleets ---------------------------------------------------------------------------


def merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes`` merged in, nested mappings key by key (neither is modified)."""
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def fleet_spec(groups: int = 2, instances: int = 2, **options: Any) -> SandboxSpec:
    """The usual test fleet: 3.8.0 with a 3.8.1 control plane, 60 requests/s at 20 ms."""
    defaults: dict[str, Any] = {
        "version": "3.8.0",
        "cp_version": "3.8.1",
        "rate_per_s": 60.0,
        "latency_ms": 20.0,
        "ready_delay_s": 0.3,
        "heartbeat_interval_s": 0.5,
    }
    return SandboxSpec(groups=group_names(groups), instances=instances, **{**defaults, **options})


class Sandboxes:
    """Brings sandboxes up for one test; ``down_all`` takes every one of them down."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dirs: list[Path] = []
        self.procs: dict[int, str] = {}  # pid -> start time, of every process seen

    def track(self, pids: set[int]) -> None:
        self.procs.update(identify(pids))

    def up_blocking(
        self,
        spec: SandboxSpec,
        *,
        name: str = "fleet",
        defaults: dict[str, Any] | None = None,
        timeout_s: float = 120.0,
    ) -> manage.SandboxHandle:
        """``manage.up`` in ``root/name``; ``defaults`` go into its config.yaml's defaults."""
        directory = self.root / name
        self.dirs.append(directory)
        handle = manage.up(directory, spec, timeout_s=timeout_s, sandbox_defaults=defaults)
        self.track(sandbox_pids(handle.dir))
        return handle

    async def up(
        self,
        spec: SandboxSpec,
        name: str = "fleet",
        *,
        defaults: dict[str, Any] | None = None,
        timeout_s: float = 120.0,
    ) -> manage.SandboxHandle:
        """``up_blocking`` off the event loop (the test's own servers keep answering)."""
        return await asyncio.to_thread(
            self.up_blocking, spec, name=name, defaults=defaults, timeout_s=timeout_s
        )

    def down_all(self) -> None:
        leaked: dict[int, str] = {}
        for directory in self.dirs:
            self.track(sandbox_pids(directory) | pids_mentioning(str(directory)))
            try:
                manage.down(directory)
            finally:
                self.track(pids_mentioning(str(directory)))
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and still_running(self.procs):
                    time.sleep(0.1)  # teardown is synchronous: no event loop to yield to
                for pid in still_running(self.procs):
                    leaked[pid] = cmdline(pid)[:160]
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            assert not (directory / "state.json").exists(), "the daemon left its state file"
        assert not leaked, f"processes left behind after sandbox down: {leaked}"


@contextlib.contextmanager
def open_sandboxes(root: Path) -> Iterator[Sandboxes]:
    """``Sandboxes`` in ``root``, all taken down (and checked for leftovers) on the way out."""
    boxes = Sandboxes(root)
    try:
        yield boxes
    finally:
        boxes.down_all()


__all__ = [
    "Sandboxes",
    "cmdline",
    "eventually",
    "fleet_spec",
    "identify",
    "merge",
    "open_sandboxes",
    "pid_alive",
    "pids_mentioning",
    "sandbox_pids",
    "start_time",
    "still_running",
]
