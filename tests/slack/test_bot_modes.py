"""A full run approved by button, by reaction and by text, in both connection modes.

In Socket Mode people's commands, clicks and reactions arrive as envelopes on the bot's
websocket; in HTTP mode they arrive as Slack-signed requests on ``/slack/events``, and each must
be answered 200 within Slack's 3 seconds (slow work after the ack). Every group is production,
so Approve by reaction goes through the ephemeral Confirm button.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from .harness import ALICE, BOB, CHANNEL, Harness, buttons, completed, poll, running_bot

pytestmark = pytest.mark.traffic


class Person:
    """Someone in the channel, acting through Slack in the bot's connection mode."""

    def __init__(self, bot: Harness, user: str, http: bool) -> None:
        self.bot, self.user, self.http = bot, user, http
        self.deliveries: list[float] = []

    async def _deliver(self, kind: str, payload: dict[str, Any]) -> None:
        if not self.http:
            await self.bot.stub.socket.deliver(kind, payload)
            return
        assert self.bot.sender is not None
        answer = await self.bot.sender.send(kind, payload)
        assert answer.status == 200, (kind, answer.status, answer.body)
        self.deliveries.append(answer.elapsed)
        assert answer.within_deadline, f"{kind} acked after {answer.elapsed:.2f}s (limit 3 s)"

    async def types(self, text: str) -> None:
        users = self.bot.stub.users
        await self._deliver("slash_commands", users.slash_command(self.user, CHANNEL, text))

    async def clicks(self, message: dict[str, Any], action_id: str, stale: bool = False) -> None:
        payload = self.bot.stub.users.button_click(
            self.user, CHANNEL, message, action_id, stale=stale
        )
        await self._deliver("interactive", payload)

    async def reacts(self, message: dict[str, Any], name: str) -> None:
        payload = self.bot.stub.users.reaction_added(self.user, CHANNEL, message["ts"], name)
        await self._deliver("events_api", payload)


@pytest.mark.parametrize("how", ["button", "reaction", "text"])
@pytest.mark.parametrize("mode", ["socket", "http"])
async def test_a_full_run_completes_after_approvals(tmp_path: Path, mode: str, how: str) -> None:
    http = mode == "http"
    async with running_bot(tmp_path, http=http, groups=2) as bot:
        alice, bob = Person(bot, ALICE, http), Person(bot, BOB, http)
        await alice.types("start 3.8.1")
        changelog = await poll(lambda: bot.with_button("changelog_ack"), "the changelog")
        await alice.clicks(changelog, "changelog_ack")
        for group in ("prod-eu", "prod-us"):
            gate = await poll(lambda g=group: bot.open_gate(g), f"the gate of {group}")
            run_id = json.loads(buttons(gate)["gate_approve"])["run"]
            if how == "button":
                await bob.clicks(gate, "gate_approve")
            elif how == "text":
                await bob.types(f"approve {run_id}")
            else:
                seen = len(bot.stub.ephemerals(CHANNEL, BOB))
                await bob.reacts(gate, "white_check_mark")
                confirm = await poll(
                    lambda n=seen: (
                        len(bot.stub.ephemerals(CHANNEL, BOB)) > n
                        and bot.stub.ephemerals(CHANNEL, BOB)[-1]
                    ),
                    "the ephemeral Confirm",
                )
                assert "reaction_confirm" in buttons(confirm)
                assert "gate_approve" in buttons(bot.stub.message(CHANNEL, gate["ts"]))
                await bob.clicks({**confirm, "ts": confirm["message_ts"]}, "reaction_confirm", True)
            decided = await poll(lambda ts=gate["ts"]: bot.decided(ts), f"{group} decided")
            assert "Approved by" in decided["text"] and BOB in decided["text"], decided["text"]
            if not http and group == "prod-eu":
                # Slack asks the app to reconnect (it does, routinely): the bot carries on.
                before = bot.stub.socket.connections_opened
                await bot.stub.socket.disconnect(reason="refresh_requested")
                await asyncio.wait_for(bot.stub.socket.wait_connected(after=before), 30)
        await completed(bot)
        await poll(
            lambda: "Upgraded to 3.8.1" in (bot.run_message() or {}).get("text", ""),
            "the run message edited to its end state",
        )
        truth = bot.handle.status()["slots"]
        assert {(s["version"], s["replacements"]) for s in truth} == {("3.8.1", 1)}
        assert len(bot.run_messages()) == 1
        assert bot.postings_are_unique()
        charts = sorted(f["name"] for m in bot.thread() for f in m.get("files", []))
        assert charts == [f"{bot.run_id()}-{g}.png" for g in ("prod-eu", "prod-us")]
        if http:  # every request of the run went over signed HTTP
            assert len(alice.deliveries) == 2 and len(bob.deliveries) >= 2
