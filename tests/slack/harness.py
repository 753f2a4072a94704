"""The scenario harness for the Slack tests: a real sandbox, the Slack stand-in, and the real bot
(``serve``: slack-bolt over Socket Mode or signed HTTP) in this process, with its own Redis.

People act through the stand-in (``stub.users``) exactly as Slack would deliver their commands,
clicks and reactions; tests read what they would see: the channel, the run's thread, and the
ephemeral answers addressed to them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import yaml

from upgrade_bot.engine.runner import SystemClock
from upgrade_bot.sandbox import manage
from upgrade_bot.serve import serving
from upgrade_bot.slackstub import SignedSender, SlackStub, buttons

from ..conftest import free_port
from ..support import Sandboxes, eventually, fleet_spec, merge, open_sandboxes

CHANNEL = "C0UPGRADES"
ALICE, BOB, CAROL = "U0ALICE001", "U0BOB00002", "U0CAROL003"  # bob and carol are on call
ONCALL = "S0ONCALL01"
META_GATE = "upgrade_gate"

DEFAULTS: dict[str, Any] = {
    "rollout": {"batch_size": 1, "ready_timeout_s": 30, "baseline_window_s": 1.0, "settle_s": 1.0},
    "thresholds": {"min_requests": 10},
    "observation": {"window_s": 1, "checkin_interval_s": 1},
    "smoke": {"path": "/smoke", "expect_status": [200], "count": 2},
    "policy": {
        "start": ["*"],
        "approve": [ONCALL],
        "pause": ["*"],
        "resume": [ONCALL],
        "abort": [ONCALL],
        "rollback": ["*"],
        "override": [],
    },
}

_TRANSCRIPTS: list[Callable[[], list[str]]] = [lambda: []]


def _transcript_tail() -> str:
    return "\n".join(_TRANSCRIPTS[-1]()[-40:])


async def poll(predicate: Callable[[], Any], what: str, within: float = 120) -> Any:
    """``eventually()``, failing with the end of the stand-in's transcript."""
    return await eventually(predicate, what, within=within, explain=_transcript_tail)


class ShiftedClock(SystemClock):
    """Wall-clock time plus an offset the test moves forward (expiry, reminders, escalation)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        return super().now() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


class Harness:
    def __init__(self, stub: SlackStub, handle: manage.SandboxHandle) -> None:
        self.stub = stub
        self.handle = handle
        self.sender: SignedSender | None = None
        self.clock = ShiftedClock()

    def run_message(self) -> dict[str, Any] | None:
        for message in self.stub.messages(CHANNEL):
            meta = message.get("metadata") or {}
            if meta.get("event_type") == "upgrade_run":
                return message
        return None

    def run_messages(self) -> list[dict[str, Any]]:
        return [
            m
            for m in self.stub.messages(CHANNEL)
            if (m.get("metadata") or {}).get("event_type") == "upgrade_run"
        ]

    def thread(self) -> list[dict[str, Any]]:
        top = self.run_message()
        return self.stub.thread(CHANNEL, top["ts"])[1:] if top else []

    def with_button(self, action_id: str) -> dict[str, Any] | None:
        for message in reversed(self.thread()):
            if action_id in buttons(message):
                return message
        return None

    def open_gate(self, group: str) -> dict[str, Any] | None:
        for message in reversed(self.thread()):
            if "gate_approve" in buttons(message) and group in json.dumps(message):
                return message
        return None

    def decided(self, ts: str) -> dict[str, Any] | None:
        message = self.stub.message(CHANNEL, ts)
        return message if message and "gate_approve" not in buttons(message) else None

    def ephemerals_to(self, user: str) -> list[str]:
        return [e.get("text", "") for e in self.stub.ephemerals(CHANNEL, user)]

    async def answer_to(self, user: str, what: str, after: int) -> str:
        """The next ephemeral answer to ``user`` (after ``after`` earlier ones)."""
        await poll(lambda: len(self.ephemerals_to(user)) > after, what)
        return self.ephemerals_to(user)[-1]

    def thread_says(self, *words: str) -> dict[str, Any] | None:
        for message in self.thread():
            text = json.dumps(message)
            if all(w in text for w in words):
                return message
        return None

    def run_id(self) -> str:
        meta = (self.run_message() or {}).get("metadata") or {}
        return str((meta.get("event_payload") or {}).get("run_id", ""))

    def postings_are_unique(self) -> bool:
        keys = [
            json.dumps(c.params.get("metadata"), sort_keys=True)
            for c in self.stub.calls_of("chat.postMessage")
            if c.params.get("metadata")
        ]
        return len(keys) == len(set(keys))


def bot_env(stub: SlackStub, handle: manage.SandboxHandle) -> dict[str, str]:
    return {**stub.environ(), "REDIS_URL": handle.redis_url, "UPGRADE_BOT_IDENTITY": "e2e-bot"}


def sandbox(
    boxes: Sandboxes,
    *,
    groups: int = 2,
    instances: int = 2,
    production: bool = True,
    defaults: dict[str, Any] | None = None,
    slack: dict[str, Any] | None = None,
    faults: dict[str, Any] | None = None,
) -> manage.SandboxHandle:
    """A sandbox fleet whose config.yaml has a Slack section for the stand-in."""
    spec = fleet_spec(groups, instances, faults=faults or {})
    handle = boxes.up_blocking(spec, defaults=merge(DEFAULTS, defaults or {}))
    data = yaml.safe_load(handle.config_path.read_text())
    for group in data["groups"]:
        group["production"] = production
    data["slack"] = {"channel": CHANNEL, **(slack or {})}
    handle.config_path.write_text(yaml.safe_dump(data))
    return handle


@contextlib.asynccontextmanager
async def bot_process(
    harness: Harness, *, http: bool = False, port: int | None = None, identity: str = "e2e-bot"
) -> AsyncIterator[int]:
    """One life of the bot: ``serve`` started, then stopped when the block ends. Yields the port
    of its HTTP endpoint (HTTP mode)."""
    stub, handle = harness.stub, harness.handle
    connections = len(stub.socket.open_connections)
    port = port or free_port()
    async with serving(
        handle.config_path,
        http=http,
        host="127.0.0.1",
        port=port,
        environ={**bot_env(stub, handle), "UPGRADE_BOT_IDENTITY": identity},
        clock=harness.clock,
    ):
        if not http:
            await poll(lambda: len(stub.socket.open_connections) > connections, "a connection", 30)
        harness.sender = SignedSender(
            stub.workspace.signing_secret, f"http://127.0.0.1:{port}/slack/events", stub=stub
        )
        yield port


def gate_messages(bot: Harness) -> list[dict[str, Any]]:
    return [m for m in bot.thread() if (m.get("metadata") or {}).get("event_type") == META_GATE]


@contextlib.asynccontextmanager
async def serve_process(
    harness: Harness,
    log: Path,
    *,
    identity: str = "e2e-bot",
    env: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """``upgrade-bot serve`` as its own process (a replica), connected over Socket Mode; yields
    it and the base URL of its health and metrics endpoints; always killed at the end."""
    stub = harness.stub
    opened = stub.socket.connections_opened
    ops_port = free_port()
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "upgrade_bot",
            "serve",
            "--config",
            str(harness.handle.config_path),
            *args,
            env={
                **os.environ,
                **bot_env(stub, harness.handle),
                "UPGRADE_BOT_IDENTITY": identity,
                "UPGRADE_BOT_OPS_HOST": "127.0.0.1",
                "UPGRADE_BOT_OPS_PORT": str(ops_port),
                **(env or {}),
            },
            stdout=out,
            stderr=out,
        )
    try:
        await poll(
            lambda: (
                proc.returncode is not None
                or any(c.seq > opened for c in stub.socket.open_connections)
            ),
            f"the bot process {identity} to connect",
            60,
        )
        assert proc.returncode is None, log.read_text()[-3000:]
        yield proc, f"http://127.0.0.1:{ops_port}"
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


@contextlib.asynccontextmanager
async def running_bot(
    tmp_path: Path, *, http: bool = False, **sandbox_options: Any
) -> AsyncIterator[Harness]:
    """Sandbox + stand-in + one bot life around the block; everything torn down after."""
    async with stand_in(tmp_path, **sandbox_options) as harness, bot_process(harness, http=http):
        yield harness


@contextlib.asynccontextmanager
async def stand_in(tmp_path: Path, **sandbox_options: Any) -> AsyncIterator[Harness]:
    """Sandbox + stand-in without a bot: the test starts bot lives itself (restarts, kills)."""
    with open_sandboxes(tmp_path) as boxes:
        handle = sandbox(boxes, **sandbox_options)
        stub = SlackStub()
        try:
            await stub.start()
            _TRANSCRIPTS.append(stub.transcript)
            yield Harness(stub, handle)
        finally:
            await stub.stop()


async def start_and_acknowledge(bot: Harness, text: str = "start 3.8.1") -> str:
    """Alice starts a run and acknowledges the changelog; returns the run ID."""
    await bot.stub.users.run_command(ALICE, CHANNEL, text)
    changelog = await poll(lambda: bot.with_button("changelog_ack"), "the changelog message")
    await bot.stub.users.click(ALICE, CHANNEL, changelog, "changelog_ack")
    await poll(bot.run_id, "the run message")
    return bot.run_id()


async def completed(bot: Harness, within: float = 180) -> None:
    await poll(
        lambda: any("completed" in m.get("text", "") for m in bot.thread()),
        "the final summary in the thread",
        within,
    )
