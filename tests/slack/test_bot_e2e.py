"""The real bot (slack-bolt over Socket Mode and over signed HTTP) against the local Slack
stand-in and a real sandbox: a run started by slash command completes after approvals by button,
reaction and text, with policy enforced, replays without a second effect, and a restart at an
open gate."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from .harness import (
    ALICE,
    BOB,
    CAROL,
    CHANNEL,
    Harness,
    bot_process,
    buttons,
    poll,
    running_bot,
    stand_in,
)

pytestmark = pytest.mark.traffic


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
        gate = await poll(lambda g=group: bot.open_gate(g), f"the gate of {group}")
        # Alice is not on call: her click is refused, privately, and changes nothing.
        refusals = len(bot.ephemerals_to(ALICE))
        await stub.users.click(ALICE, CHANNEL, gate, "gate_approve")
        await poll(lambda n=refusals: len(bot.ephemerals_to(ALICE)) > n, "the policy refusal")
        assert "may not approve" in bot.ephemerals_to(ALICE)[-1]
        assert "gate_approve" in buttons(stub.message(CHANNEL, gate["ts"]) or {})
        await stub.users.click(BOB, CHANNEL, gate, "gate_approve")
        decided = await poll(lambda ts=gate["ts"]: bot.decided(ts), f"{group} gate decided")
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
        # The same click delivered twice (a retry inside the signature window): one effect.
        assert (await sender.send("interactive", click)).status == 200
        gate = await poll(lambda: bot.open_gate("prod-eu"), "the gate of prod-eu")
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
        acknowledged = [m for m in bot.thread() if "Changelog acknowledged" in m.get("text", "")]
        assert len(acknowledged) == 1


async def test_a_reaction_on_a_production_gate_asks_for_confirmation_and_text_approves(
    tmp_path: Path,
) -> None:
    async with running_bot(tmp_path) as bot:
        stub = bot.stub
        await stub.users.run_command(ALICE, CHANNEL, "start 3.8.1 prod-eu")
        changelog = await poll(lambda: bot.with_button("changelog_ack"), "the changelog")
        await stub.users.click(ALICE, CHANNEL, changelog, "changelog_ack")
        gate = await poll(lambda: bot.open_gate("prod-eu"), "the gate of prod-eu")
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
        await poll(lambda ts=gate["ts"]: bot.decided(ts), "the gate decided by text")
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
    async with stand_in(tmp_path, groups=1) as bot:
        stub = bot.stub
        async with bot_process(bot):
            await stub.users.run_command(ALICE, CHANNEL, "start 3.8.1")
            changelog = await poll(lambda: bot.with_button("changelog_ack"), "the changelog")
            await stub.users.click(ALICE, CHANNEL, changelog, "changelog_ack")
            gate = await poll(lambda: bot.open_gate("prod-eu"), "the gate")
        posted_before = len(stub.calls_of("chat.postMessage"))
        async with bot_process(bot):  # a new life: same identity, same Redis
            # The new life knows the gate message: a reaction on it asks for confirmation.
            seen = len(stub.ephemerals(CHANNEL, BOB))
            await stub.users.react(BOB, CHANNEL, gate["ts"], "white_check_mark")
            confirm = await poll(
                lambda: (
                    len(stub.ephemerals(CHANNEL, BOB)) > seen and stub.ephemerals(CHANNEL, BOB)[-1]
                ),
                "the ephemeral Confirm after the restart",
            )
            assert "reaction_confirm" in buttons(confirm)
            await stub.users.click(BOB, CHANNEL, gate, "gate_approve")
            await poll(lambda: bot.decided(gate["ts"]), "the gate decided")
            # The old gate's buttons and reactions no longer act, and say why.
            seen = len(bot.ephemerals_to(CAROL))
            stale = stub.users.button_click(CAROL, CHANNEL, gate, "gate_pause", stale=True)
            await stub.socket.deliver("interactive", stale)
            answer = await bot.answer_to(CAROL, "the stale click answered", seen)
            assert "no longer pending" in answer and f"approved by <@{BOB}>" in answer, answer
            await stub.users.react(CAROL, CHANNEL, gate["ts"], "rewind")
            answer = await bot.answer_to(CAROL, "the stale reaction answered", seen + 1)
            assert "no longer pending" in answer and "reaction_confirm" not in json.dumps(
                stub.ephemerals(CHANNEL, CAROL)[-1]
            )
            await poll(
                lambda: any("completed" in m.get("text", "") for m in bot.thread()),
                "the run to complete after the restart",
                180,
            )
        assert len(stub.calls_of("chat.postMessage")) > posted_before
        assert len(bot.run_messages()) == 1
        assert bot.postings_are_unique(), "a message was posted twice"
        gates = [
            m for m in bot.thread() if (m.get("metadata") or {}).get("event_type") == "upgrade_gate"
        ]
        assert len(gates) == 1
        # The group's chart was shared once in the thread, by the first life only.
        shared = [f for m in bot.thread() for f in m.get("files", [])]
        assert [f["name"] for f in shared] == [f"{bot.run_id()}-prod-eu.png"]
        assert shared[0]["filetype"] == "png" and "prod-eu" in shared[0]["title"]
