"""Every slash command, its bad input, and every policy refusal, through the real bot (slack-bolt
over Socket Mode) against the Slack stand-in and a real sandbox fleet.

People type and click through the stand-in; the tests read what they would see: the private
(ephemeral) answers addressed to them, the run message, the run's thread and the gate message.
Refusals must also change nothing and leave an audit entry, read back through the engine the way
the app itself reads a run's audit stream.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from upgrade_bot.engine.config import load_config
from upgrade_bot.wiring import engine_for

from .harness import (
    ALICE,
    BOB,
    CAROL,
    CHANNEL,
    ONCALL,
    Harness,
    buttons,
    poll,
    running_bot,
    start_and_acknowledge,
)

pytestmark = pytest.mark.traffic

SUBCOMMANDS = (
    "plan",
    "start",
    "status",
    "pause",
    "resume",
    "approve",
    "rollback",
    "abort",
    "history",
    "help",
)

# Bob alone approves, aborts and rolls back; Carol (on call) may resume but none of those three;
# nobody may use an override.
NARROW_POLICY = {"policy": {"approve": [BOB], "abort": [BOB], "rollback": [BOB], "override": []}}


async def test_bad_input_gets_a_private_answer_with_the_right_usage(tmp_path: Path) -> None:
    async with running_bot(tmp_path, groups=2, production=False, defaults=NARROW_POLICY) as bot:
        first, second = group_names(bot)

        help_text = await ask(bot, ALICE, "help")
        assert all(f"/upgrade {name}" in help_text for name in SUBCOMMANDS)
        assert await ask(bot, ALICE, "") == help_text
        unknown = await ask(bot, ALICE, "frobnicate now")
        assert "frobnicate" in unknown and "/upgrade help" in unknown

        for text, problem, usage in [
            ("start 3.8", "`3.8` is not a version", "/upgrade start VERSION"),
            ("start latest", "`latest` is not a version", "/upgrade start VERSION"),
            ("plan v3", "`v3` is not a version", "/upgrade plan VERSION"),
            ("start", "Which version?", "/upgrade start VERSION"),
            ("start 3.8.1 --frob", "--frob", "/upgrade start VERSION"),
            ("approve", "Which run?", "/upgrade approve RUN"),
            ("resume r1 r2", "Too many words", "/upgrade resume RUN"),
            ("history lots", "`lots` is not a count", "/upgrade history [COUNT]"),
        ]:
            answer = await ask(bot, ALICE, text)
            assert problem in answer and usage in answer, (text, answer)

        unknown_group = await ask(bot, ALICE, "start 3.8.1 nowhere")
        assert "nowhere" in unknown_group
        assert first in unknown_group and second in unknown_group  # the valid groups, listed
        for text in ("approve nosuchrun", "status nosuchrun", "pause nosuchrun"):
            answer = await ask(bot, ALICE, text)
            assert "There is no run `nosuchrun`" in answer and "/upgrade status" in answer

        assert "No upgrade is running" in await ask(bot, BOB, "status")
        # Typed where the bot may not post (a DM, a channel it is not in): the answer comes
        # through the command's response_url instead of being lost.
        bot.stub.fail_next("chat.postEphemeral", "channel_not_found")
        assert "No upgrade is running" in await ask(bot, BOB, "status")
        assert bot.stub.calls_of("chat.postEphemeral")[-1].error == "channel_not_found"
        assert [c.kind for c in bot.stub.timeline][-1] == "response_url"
        plan = await ask(bot, BOB, "plan 3.8.1")
        assert "Plan" in plan and "3.8.1" in plan
        assert first in last_blocks(bot, BOB) and second in last_blocks(bot, BOB)

        # An override by someone the policy leaves out: refused, nothing started, audited.
        refusal = await ask(bot, CAROL, "start 3.8.1 --override cp-version")
        assert f"<@{CAROL}> may not use overrides" in refusal and "cp-version" in refusal
        assert await audited(bot, "global", "override", CAROL)
        assert bot.run_message() is None  # neither the plan nor the refused start did anything


async def test_commands_on_a_live_run_then_on_the_finished_run(tmp_path: Path) -> None:
    async with running_bot(tmp_path, groups=2, production=False, defaults=NARROW_POLICY) as bot:
        first, _ = group_names(bot)
        run_id = await start_run(bot, f"start 3.8.1 {first}")

        # The group is busy: the answer names the run holding it and that run's channel.
        busy = await ask(bot, BOB, "start 3.8.1")
        assert f"`{first}` is busy" in busy and run_id in busy and f"<#{CHANNEL}>" in busy
        assert len(bot.run_messages()) == 1

        for text in ("status", f"status {run_id}", "history"):
            answer = await ask(bot, BOB, text)
            assert run_id in answer + last_blocks(bot, BOB), text
            assert "3.8.1" in answer + last_blocks(bot, BOB), text
            if text == "status":
                assert "1 run under way" in answer, answer

        # Pause and resume the live run: visible in the run message and in its thread.
        assert run_id in await ask(bot, ALICE, f"pause {run_id} checking dashboards")
        await poll(lambda: "paused" in run_text(bot), "the run message to show the pause")
        await poll(
            lambda: bot.thread_says("Paused by", ALICE, "checking dashboards"), "the pause post"
        )
        resumed = await ask(bot, CAROL, f"resume {run_id}")
        assert run_id in resumed and "resumed" in resumed
        await poll(lambda: "paused" not in run_text(bot), "the run message to show it resumed")
        await poll(lambda: bot.thread_says("Resumed by", CAROL), "the resume post")

        # At the gate, Carol (on call, but no approver here) is refused three times, to no effect.
        gate = await poll(lambda: bot.open_gate(first), f"the gate of {first}")
        # The run message is edited to say so a moment later (edits are throttled): take the
        # picture once it has been, so that only the refusals could change it.
        await poll(lambda: "waiting for approval" in run_text(bot), "the run message at the gate")
        before = (run_text(bot), bot.stub.message(CHANNEL, gate["ts"]))
        assert f"<@{CAROL}> may not approve on {first}" in await click(bot, CAROL, gate)
        for action, verb in (("abort", "abort"), ("rollback", "roll back")):
            refusal = await ask(bot, CAROL, f"{action} {run_id} no reason")
            assert f"<@{CAROL}> may not {verb} on {first}" in refusal
        for action in ("approve", "abort", "rollback"):
            assert await audited(bot, run_id, action, CAROL), action
        assert (run_text(bot), bot.stub.message(CHANNEL, gate["ts"])) == before
        assert "waiting for approval" in run_text(bot)

        assert run_id in await ask(bot, BOB, f"abort {run_id} enough")
        await poll(lambda: "aborted" in run_text(bot), "the run message to show the abort")

        # Every command on the finished run: it has ended, and its state is named.
        for action in ("approve", "pause", "abort", "rollback", "resume"):
            answer = await ask(bot, BOB, f"{action} {run_id}")
            assert f"Run `{run_id}` has already ended (aborted)" in answer, answer
        assert "No upgrade is running" in await ask(bot, BOB, "status")
        await ask(bot, BOB, "history")
        assert run_id in last_blocks(bot, BOB) and "aborted" in last_blocks(bot, BOB)
        assert bot.postings_are_unique()


async def test_approval_refusals_and_a_two_approver_gate(tmp_path: Path) -> None:
    defaults = {
        "approval": {"required": 2, "allow_self_approval": False},
        # Alice may approve, so only the self-approval rule stands between her and her own run.
        "policy": {"approve": [ALICE, ONCALL]},
    }
    async with running_bot(
        tmp_path, groups=1, production=False, defaults=defaults, slack={"charts": False}
    ) as bot:
        (group,) = group_names(bot)
        run_id = await start_run(bot)
        gate = await poll(lambda: bot.open_gate(group), f"the gate of {group}")
        assert "Needs 2 approvals" in json.dumps(gate)

        before = bot.stub.message(CHANNEL, gate["ts"])
        answer = await click(bot, ALICE, gate)
        assert f"<@{ALICE}> started this run and may not approve it" in answer
        assert await audited(bot, run_id, "approve", ALICE)
        assert bot.stub.message(CHANNEL, gate["ts"]) == before  # no effect

        # The first of two approvals: the gate stays open, edited in place to show it.
        await bot.stub.users.click(BOB, CHANNEL, gate, "gate_approve")
        half = await poll(
            lambda: (
                "1/2 so far" in json.dumps(bot.stub.message(CHANNEL, gate["ts"]))
                and bot.stub.message(CHANNEL, gate["ts"])
            ),
            "the gate to show one approval of two",
        )
        assert BOB in json.dumps(half) and "gate_approve" in buttons(half)
        assert "waiting for approval" in run_text(bot)

        answer = await click(bot, BOB, half)
        assert f"<@{BOB}> has already approved" in answer and "2 distinct approvers" in answer
        assert await audited(bot, run_id, "approve", BOB)
        assert bot.stub.message(CHANNEL, gate["ts"]) == half  # still one of two

        # A second, distinct approver decides the gate: buttons gone, both deciders shown.
        await bot.stub.users.click(CAROL, CHANNEL, half, "gate_approve")
        decided = await poll(lambda: bot.decided(gate["ts"]), "the gate decided")
        shown = json.dumps(decided)
        assert "Approved by" in shown and f"<@{BOB}>" in shown and f"<@{CAROL}>" in shown
        assert not buttons(decided)
        await poll(
            lambda: "waiting for approval" not in run_text(bot), "the run to go on after approval"
        )
        assert bot.postings_are_unique()
        assert not bot.stub.files  # charts: false in this workspace's configuration


# --- helpers --------------------------------------------------------------------------------------


async def ask(bot: Harness, user: str, text: str) -> str:
    """Type ``/upgrade text`` as ``user``; the one private answer, checked to be for them only."""
    mine = len(bot.ephemerals_to(user))
    others = {u: len(bot.ephemerals_to(u)) for u in (ALICE, BOB, CAROL) if u != user}
    channel = len(bot.stub.messages(CHANNEL))
    await bot.stub.users.run_command(user, CHANNEL, text)
    answer = await bot.answer_to(user, f"the answer to `/upgrade {text}`", mine)
    assert answer.strip() and "Traceback" not in answer and "Error(" not in answer, answer
    assert {u: len(bot.ephemerals_to(u)) for u in others} == others  # nobody else saw it
    assert all(answer != m.get("text") for m in bot.stub.messages(CHANNEL)[channel:])
    return answer


async def click(bot: Harness, user: str, message: dict[str, Any]) -> str:
    """Click Approve on ``message`` as ``user``; the private answer that follows."""
    n = len(bot.ephemerals_to(user))
    await bot.stub.users.click(user, CHANNEL, message, "gate_approve")
    return await bot.answer_to(user, "the answer to an Approve click", n)


async def start_run(bot: Harness, text: str = "start 3.8.1") -> str:
    """Alice starts a run and acknowledges the changelog; returns the run ID once she has been
    told privately that it started (so that later answers to her are not confused with it)."""
    n = len(bot.ephemerals_to(ALICE))
    run_id = await start_and_acknowledge(bot, text)
    assert "started" in await bot.answer_to(ALICE, "the start confirmation", n)
    assert run_id in bot.ephemerals_to(ALICE)[n]
    return run_id


def group_names(bot: Harness) -> list[str]:
    return [g.name for g in load_config(bot.handle.config_path).groups]


def last_blocks(bot: Harness, user: str) -> str:
    """The blocks of the latest private answer to ``user``, as text."""
    return json.dumps(bot.stub.ephemerals(CHANNEL, user)[-1].get("blocks"))


def run_text(bot: Harness) -> str:
    return str((bot.run_message() or {}).get("text", ""))


async def audited(bot: Harness, run_id: str, action: str, user: str) -> bool:
    """Whether the audit stream of ``run_id`` (``global``: actions not tied to a run) records a
    refusal of ``action`` to ``user``."""
    config = load_config(bot.handle.config_path)
    async with engine_for(
        config, config_dir=bot.handle.config_path.parent, redis_url=bot.handle.redis_url
    ) as engine:
        events = [event for _, event in await engine.feed.events(run_id)]
    return any(
        e.get("type") == "refused" and e.get("action") == action and e.get("user") == user
        for e in events
    )
