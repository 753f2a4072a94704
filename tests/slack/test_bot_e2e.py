"""The real bot (slack-bolt over Socket Mode) against the local Slack stand-in and a real sandbox:
a run started by slash command completes after button approvals, with policy enforced."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from upgrade_bot.sandbox import manage
from upgrade_bot.sandbox.spec import SandboxSpec, group_names
from upgrade_bot.serve import serve
from upgrade_bot.slackstub import SlackStub

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


async def poll(predicate: Callable[[], Any], what: str, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
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


@pytest.fixture
async def bot(tmp_path: Path) -> AsyncIterator[Harness]:
    spec = SandboxSpec(
        groups=group_names(2), instances=2, version="3.8.0", cp_version="3.8.1",
        rate_per_s=60.0, latency_ms=20.0, ready_delay_s=0.3,
    )  # fmt: skip
    handle = manage.up(tmp_path / "fleet", spec, sandbox_defaults=DEFAULTS)
    config = handle.config_path
    config.write_text(config.read_text() + f"slack:\n  channel: {CHANNEL}\n")
    stub = SlackStub()
    await stub.start()
    env = {
        "SLACK_BOT_TOKEN": stub.workspace.bot_token,
        "SLACK_APP_TOKEN": stub.workspace.app_token,
        "SLACK_API_URL": stub.api_url,
        "REDIS_URL": handle.redis_url,
        "UPGRADE_BOT_IDENTITY": "e2e-bot",
    }
    stop = asyncio.Event()
    ready = asyncio.Event()

    async def on_ready(info: dict[str, object]) -> None:
        ready.set()

    task = asyncio.create_task(serve(config, stop=stop, on_ready=on_ready, environ=env))
    try:
        await asyncio.wait_for(ready.wait(), 60)
        await poll(lambda: stub.socket.connected, "the bot to connect over Socket Mode", 30)
        TRANSCRIPT.append(stub.transcript)
        yield Harness(stub, handle)
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
        await stub.stop()
        manage.down(handle.dir)


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
