"""The real bot (slack-bolt over Socket Mode) against the local Slack stand-in and a real sandbox:
a run started by slash command completes after button approvals, with policy enforced."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from upgrade_bot.sandbox import manage
from upgrade_bot.sandbox.spec import SandboxSpec, group_names
from upgrade_bot.serve import serve
from upgrade_bot.slackstub import SignedSender, SlackStub

from ..conftest import free_port

pytestmark = pytest.mark.traffic

CHANNEL = "C0UPGRADES"
ALICE, BOB, CAROL = "U0ALICE001", "U0BOB00002", "U0CAROL003"  # bob and carol are on call
ONCALL = "S0ONCALL01"

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


async def poll(predicate: Callable[[], Any], what: str, within: float = 120) -> Any:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}\n" + "\n".join(TRANSCRIPT[-1]()[-40:]))


def buttons(message: dict[str, Any]) -> dict[str, str]:
    out = {}
    for block in message.get("blocks", []):
        for element in block.get("elements", []) if block.get("type") == "actions" else []:
            out[element["action_id"]] = element.get("value", "")
    return out


TRANSCRIPT: list[Callable[[], list[str]]] = [lambda: []]


class Harness:
    def __init__(self, stub: SlackStub, handle: manage.SandboxHandle) -> None:
        self.stub = stub
        self.handle = handle
        self.sender: SignedSender | None = None

    def run_message(self) -> dict[str, Any] | None:
        for message in self.stub.messages(CHANNEL):
            meta = message.get("metadata") or {}
            if meta.get("event_type") == "upgrade_run":
                return message
        return None

    def thread(self) -> list[dict[str, Any]]:
        top = self.run_message()
        return self.stub.thread(CHANNEL, top["ts"])[1:] if top else []

    def with_button(self, action_id: str) -> dict[str, Any] | None:
        for message in reversed(self.thread()):
            if action_id in buttons(message):
                return message
        return None

    def ephemerals_to(self, user: str) -> list[str]:
        return [e.get("text", "") for e in self.stub.ephemerals(CHANNEL, user)]


@contextlib.asynccontextmanager
async def bot_process(
    stub: SlackStub, handle: manage.SandboxHandle, *, http: bool = False
) -> AsyncIterator[None]:
    """The bot alone, as one process's life: started, then stopped (or 'killed')."""
    env = {
        "SLACK_BOT_TOKEN": stub.workspace.bot_token,
        "SLACK_APP_TOKEN": stub.workspace.app_token,
        "SLACK_API_URL": stub.api_url,
        "REDIS_URL": handle.redis_url,
        "UPGRADE_BOT_IDENTITY": "e2e-bot",
        "SLACK_SIGNING_SECRET": stub.workspace.signing_secret,
    }
    stop, ready = asyncio.Event(), asyncio.Event()

    async def on_ready(info: dict[str, object]) -> None:
        ready.set()

    connections = len(stub.socket.open_connections)
    task = asyncio.create_task(
        serve(
            handle.config_path,
            http=http,
            host="127.0.0.1",
            port=free_port(),
            stop=stop,
            on_ready=on_ready,
            environ=env,
        )
    )
    try:
        await asyncio.wait_for(ready.wait(), 60)
        await poll(lambda: len(stub.socket.open_connections) > connections, "a connection", 30)
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


@contextlib.asynccontextmanager
async def running_bot(
    tmp_path: Path, *, http: bool = False, production: bool = True
) -> AsyncIterator[Harness]:
    spec = SandboxSpec(
        groups=group_names(2),
        instances=2,
        version="3.8.0",
        cp_version="3.8.1",
        rate_per_s=60.0,
        latency_ms=20.0,
        ready_delay_s=0.3,
    )
    handle = manage.up(tmp_path / "fleet", spec, sandbox_defaults=DEFAULTS)
    config = handle.config_path
    data = yaml.safe_load(config.read_text())
    for group in data["groups"]:
        group["production"] = production
    data["slack"] = {"channel": CHANNEL}
    config.write_text(yaml.safe_dump(data))
    stub = SlackStub()
    await stub.start()
    env = {
        "SLACK_BOT_TOKEN": stub.workspace.bot_token,
        "SLACK_APP_TOKEN": stub.workspace.app_token,
        "SLACK_API_URL": stub.api_url,
        "REDIS_URL": handle.redis_url,
        "UPGRADE_BOT_IDENTITY": "e2e-bot",
        "SLACK_SIGNING_SECRET": stub.workspace.signing_secret,
    }
    port = free_port()
    stop = asyncio.Event()
    ready = asyncio.Event()

    async def on_ready(info: dict[str, object]) -> None:
        ready.set()

    task = asyncio.create_task(
        serve(
            config,
            http=http,
            host="127.0.0.1",
            port=port,
            stop=stop,
            on_ready=on_ready,
            environ=env,
        )
    )
    try:
        await asyncio.wait_for(ready.wait(), 60)
        if not http:
            await poll(lambda: stub.socket.connected, "the bot to connect over Socket Mode", 30)
        TRANSCRIPT.append(stub.transcript)
        harness = Harness(stub, handle)
        harness.sender = SignedSender(
            stub.workspace.signing_secret, f"http://127.0.0.1:{port}/slack/events", stub=stub
        )
        yield harness
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
        await stub.stop()
        manage.down(handle.dir)


@pytest.fixture
async def bot(tmp_path: Path) -> AsyncIterator[Harness]:
    async with running_bot(tmp_path) as harness:
        yield harness


async def test_a_run_started_by_slash_command_completes_after_button_approvals(
    bot: Harness,
) -> None:
    stub = bot.stub
    await stub.users.run_command(ALICE, CHANNEL, "start 3.8.1")
    run_message = await poll(bot.run_message, "the run message")
    assert "3.8.1" in run_message["text"]

    # The requester acknowledges the changelog entries between the versions.
    changelog = await poll(lambda: bot.with_button("changelog_ack"), "the changelog message")
    await stub.users.click(ALICE, CHANNEL, changelog, "changelog_ack")

    for group in ("prod-eu", "prod-us"):
        gate = await poll(lambda g=group: _open_gate(bot, g), f"the gate of {group}")
        # Alice is not on call: her click is refused, privately, and changes nothing.
        refusals = len(bot.ephemerals_to(ALICE))
        await stub.users.click(ALICE, CHANNEL, gate, "gate_approve")
        await poll(lambda n=refusals: len(bot.ephemerals_to(ALICE)) > n, "the policy refusal")
        assert "may not approve" in bot.ephemerals_to(ALICE)[-1]
        assert "gate_approve" in buttons(stub.message(CHANNEL, gate["ts"]) or {})
        await stub.users.click(BOB, CHANNEL, gate, "gate_approve")
        decided = await poll(lambda ts=gate["ts"]: _decided(bot, ts), f"{group} gate decided")
        assert "gate_approve" not in buttons(decided)  # buttons gone after the decision
        assert BOB in json.dumps(decided)  # the decider is shown

    await poll(
        lambda: any("completed" in m.get("text", "") for m in bot.thread()),
        "the final summary in the thread",
        180,
    )
    await poll(
        lambda: "Upgraded to 3.8.1" in (bot.run_message() or {}).get("text", ""),
        "the run message edited to its end state",
    )
    truth = {s["id"]: s for s in bot.handle.status()["slots"]}
    assert {(s["version"], s["replacements"]) for s in truth.values()} == {("3.8.1", 1)}
    # Every message the bot posted is valid Block Kit and none was posted twice.
    posts = stub.calls_of("chat.postMessage")
    keys = [json.dumps(c.params.get("metadata"), sort_keys=True) for c in posts]
    assert len(keys) == len(set(keys))
    assert all(c.response.get("ok") for c in posts)


def _open_gate(bot: Harness, group: str) -> dict[str, Any] | None:
    for message in reversed(bot.thread()):
        if "gate_approve" in buttons(message) and group in json.dumps(message):
            return message
    return None


def _decided(bot: Harness, ts: str) -> dict[str, Any] | None:
    message = bot.stub.message(CHANNEL, ts)
    return message if message and "gate_approve" not in buttons(message) else None


async def test_http_mode_verifies_signatures_and_a_replay_has_no_second_effect(
    tmp_path: Path,
) -> None:
    async with running_bot(tmp_path, http=True, production=False) as bot:
        stub, sender = bot.stub, bot.sender
        assert sender is not None
        command = stub.users.slash_command(ALICE, CHANNEL, "start 3.8.1 prod-eu")
        forged = await sender.send("slash_commands", command, bad_signature=True)
        assert forged.status == 401
        stale = await sender.send("slash_commands", command, timestamp=int(time.time()) - 360)
        assert stale.status == 401
        assert bot.run_message() is None  # neither had any effect

        first = await sender.send("slash_commands", command)
        assert first.status == 200 and first.within_deadline
        again = await sender.send("slash_commands", command, retry_num=1)
        assert again.status == 200 and again.within_deadline
        await poll(bot.run_message, "the run message")
        changelog = await poll(lambda: bot.with_button("changelog_ack"), "the changelog")
        click = stub.users.button_click(ALICE, CHANNEL, changelog, "changelog_ack")
        assert (await sender.send("interactive", click)).status == 200
        gate = await poll(lambda: _open_gate(bot, "prod-eu"), "the gate of prod-eu")
        # A reaction approves a non-production gate (no confirmation step).
        reaction = stub.users.reaction_added(BOB, CHANNEL, gate["ts"], "white_check_mark")
        assert (await sender.send("events_api", reaction)).status == 200
        # Slack retries the same event: answered 200, no second approval.
        assert (await sender.send("events_api", reaction, retry_num=1)).status == 200
        await poll(
            lambda: any("completed" in m.get("text", "") for m in bot.thread()),
            "the run to complete",
            180,
        )
        runs = [
            m
            for m in stub.messages(CHANNEL)
            if (m.get("metadata") or {}).get("event_type") == "upgrade_run"
        ]
        assert len(runs) == 1  # the repeated command started nothing more
        approvals = [m for m in bot.thread() if "Approved by" in json.dumps(m)]
        assert len(approvals) == 1


async def test_a_reaction_on_a_production_gate_asks_for_confirmation_and_text_approves(
    tmp_path: Path,
) -> None:
    async with running_bot(tmp_path) as bot:
        stub = bot.stub
        await stub.users.run_command(ALICE, CHANNEL, "start 3.8.1 prod-eu")
        changelog = await poll(lambda: bot.with_button("changelog_ack"), "the changelog")
        await stub.users.click(ALICE, CHANNEL, changelog, "changelog_ack")
        gate = await poll(lambda: _open_gate(bot, "prod-eu"), "the gate of prod-eu")
        before = len(bot.ephemerals_to(BOB))
        await stub.users.react(BOB, CHANNEL, gate["ts"], "white_check_mark")
        confirm = await poll(
            lambda: (
                len(stub.ephemerals(CHANNEL, BOB)) > before and stub.ephemerals(CHANNEL, BOB)[-1]
            ),
            "the ephemeral confirmation",
        )
        assert "reaction_confirm" in buttons(confirm)
        assert "gate_approve" in buttons(stub.message(CHANNEL, gate["ts"]) or {})  # not yet
        # The text fallback works too: /upgrade approve RUN
        run_id = json.loads(buttons(gate)["gate_approve"])["run"]
        await stub.users.run_command(CAROL, CHANNEL, f"approve {run_id}")
        await poll(lambda ts=gate["ts"]: _decided(bot, ts), "the gate decided by text")
        # The confirmation of the older reaction now points at a gate no longer pending.
        # Ephemeral messages carry message_ts; a click on one reports that ts.
        shown = {**confirm, "ts": confirm["message_ts"]}
        click = stub.users.button_click(BOB, CHANNEL, shown, "reaction_confirm", stale=True)
        await stub.socket.deliver("interactive", click)
        stale_words = ("no longer pending", "no approval pending", "already ended")
        await poll(
            lambda: any(w in bot.ephemerals_to(BOB)[-1].lower() for w in stale_words),
            "the stale confirmation refused",
        )


async def test_a_bot_restarted_at_an_open_gate_takes_the_approval_and_posts_nothing_twice(
    tmp_path: Path,
) -> None:
    spec = SandboxSpec(
        groups=group_names(1),
        instances=2,
        version="3.8.0",
        cp_version="3.8.1",
        rate_per_s=60.0,
        latency_ms=20.0,
        ready_delay_s=0.3,
    )
    handle = manage.up(tmp_path / "fleet", spec, sandbox_defaults=DEFAULTS)
    data = yaml.safe_load(handle.config_path.read_text())
    data["slack"] = {"channel": CHANNEL}
    handle.config_path.write_text(yaml.safe_dump(data))
    stub = SlackStub()
    await stub.start()
    TRANSCRIPT.append(stub.transcript)
    bot = Harness(stub, handle)
    try:
        async with bot_process(stub, handle):
            await stub.users.run_command(ALICE, CHANNEL, "start 3.8.1")
            changelog = await poll(lambda: bot.with_button("changelog_ack"), "the changelog")
            await stub.users.click(ALICE, CHANNEL, changelog, "changelog_ack")
            gate = await poll(lambda: _open_gate(bot, "prod-eu"), "the gate")
        posted_before = len(stub.calls_of("chat.postMessage"))
        async with bot_process(stub, handle):  # a new process: same identity, same Redis
            await stub.users.click(BOB, CHANNEL, gate, "gate_approve")
            await poll(
                lambda: any("completed" in m.get("text", "") for m in bot.thread()),
                "the run to complete after the restart",
                180,
            )
        assert len(stub.calls_of("chat.postMessage")) > posted_before
        runs = [
            m
            for m in stub.messages(CHANNEL)
            if (m.get("metadata") or {}).get("event_type") == "upgrade_run"
        ]
        assert len(runs) == 1
        keys = [
            json.dumps(c.params.get("metadata"), sort_keys=True)
            for c in stub.calls_of("chat.postMessage")
        ]
        assert len(keys) == len(set(keys)), "a message was posted twice"
        gates = [
            m for m in bot.thread() if (m.get("metadata") or {}).get("event_type") == "upgrade_gate"
        ]
        assert len(gates) == 1
    finally:
        await stub.stop()
        manage.down(handle.dir)
