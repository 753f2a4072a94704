"""The real bot when things go wrong: an approval nobody gives in time (reminders, escalation,
expiry), Slack answering ``ratelimited`` or refusing a message, the bot killed with ``kill -9`` at
an open gate, and the bot dying between posting a message and recording that it did.

Time is the engine's injected clock (``Harness.clock``), moved forward by the test. The bot runs
in this process (``serve``), except where it is killed: there it is an ``upgrade-bot serve``
process, or (to die at one exact line) a notifier the test builds and stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from upgrade_bot.bot.app import web_client
from upgrade_bot.bot.notifier import CONSUMER, Notifier
from upgrade_bot.bot.settings import slack_settings
from upgrade_bot.engine import Engine
from upgrade_bot.engine.config import Config, load_config
from upgrade_bot.serve import approvers_of, escalation_of
from upgrade_bot.wiring import engine_for

from ..conftest import free_port
from .harness import (
    ALICE,
    BOB,
    CAROL,
    CHANNEL,
    ONCALL,
    Harness,
    bot_env,
    bot_process,
    buttons,
    completed,
    poll,
    running_bot,
    stand_in,
    start_and_acknowledge,
)

pytestmark = pytest.mark.traffic

ONCALL_MENTION = f"<!subteam^{ONCALL}>"
ESCALATION = f"<@{CAROL}>"
META_GATE = "upgrade_gate"


def gate_messages(bot: Harness) -> list[dict[str, Any]]:
    return [m for m in bot.thread() if (m.get("metadata") or {}).get("event_type") == META_GATE]


def texts_with(bot: Harness, words: str) -> list[str]:
    return [m.get("text", "") for m in bot.thread() if words in m.get("text", "")]


def meta_key(params: dict[str, Any]) -> str:
    return json.dumps(params.get("metadata"), sort_keys=True)


def shown_once(bot: Harness) -> bool:
    """No message is in the channel twice: as people see it, and as the bot posted it (a call
    Slack refused posted nothing)."""
    shown = [
        meta_key(m) for m in bot.stub.messages(CHANNEL, include_replies=True) if m.get("metadata")
    ]
    posted = [
        meta_key(c.params)
        for c in bot.stub.calls_of("chat.postMessage")
        if c.ok and c.params.get("metadata")
    ]
    return len(shown) == len(set(shown)) == len(posted) == len(set(posted))


def quiet(bot: Harness, seconds: float) -> bool:
    """The bot has called no Web API method for ``seconds`` (its throttled edits are done)."""
    calls = bot.stub.calls
    return bool(calls) and time.time() - calls[-1].timestamp >= seconds


# --- approval deadlines ---------------------------------------------------------------------------


async def test_an_expired_approval_pauses_the_run_refuses_the_old_gate_and_resume_asks_again(
    tmp_path: Path,
) -> None:
    approval = {"expiry_s": 600, "reminder_interval_s": 3600}
    async with running_bot(tmp_path, groups=1, instances=2, defaults={"approval": approval}) as bot:
        stub = bot.stub
        run_id = await start_and_acknowledge(bot)
        gate = await poll(lambda: bot.open_gate("prod-eu"), "the gate")

        bot.clock.advance(601)
        expired = await poll(lambda: bot.decided(gate["ts"]), "the gate edited as expired")
        assert "gate_approve" not in buttons(expired)
        assert "expired" in json.dumps(expired).lower()
        paused = await poll(
            lambda: [t for t in texts_with(bot, "Paused") if "expired" in t], "the pause said"
        )
        assert f"resume {run_id}" in paused[0]  # and how to go on
        await poll(
            lambda: "paused" in (bot.run_message() or {}).get("text", ""),
            "the run message showing the pause",
        )

        # Bob still had the old gate on screen: his click is refused and explained, privately.
        before = len(bot.ephemerals_to(BOB))
        click = stub.users.button_click(BOB, CHANNEL, gate, "gate_approve", stale=True)
        await stub.socket.deliver("interactive", click)
        refusal = await bot.answer_to(BOB, "the stale gate refused", before)
        assert "no longer pending" in refusal and "expired" in refusal, refusal
        assert "paused" in (bot.run_message() or {}).get("text", "")
        assert not texts_with(bot, "Approved by")

        # Resuming asks again: a new gate, whose approval completes the run.
        await stub.users.run_command(BOB, CHANNEL, f"resume {run_id}")
        again = await poll(
            lambda: (g := bot.open_gate("prod-eu")) and g["ts"] != gate["ts"] and g,
            "a new gate after the resume",
        )
        await stub.users.click(BOB, CHANNEL, again, "gate_approve")
        await completed(bot)
        assert len(gate_messages(bot)) == 2
        assert shown_once(bot)
        assert {s["version"] for s in bot.handle.status()["slots"]} == {"3.8.1"}


async def test_reminders_mention_the_approvers_once_each_then_escalate(tmp_path: Path) -> None:
    approval = {
        "expiry_s": 10_000,
        "reminder_interval_s": 100,
        "escalate_after_reminders": 2,
        "escalation_mention": ESCALATION,
    }
    async with running_bot(
        tmp_path, groups=1, instances=2, production=False, defaults={"approval": approval}
    ) as bot:
        await start_and_acknowledge(bot)
        gate = await poll(lambda: bot.open_gate("prod-eu"), "the gate")
        assert not texts_with(bot, "Reminder")  # nothing before the interval has passed

        for n in (1, 2, 3):
            bot.clock.advance(100)
            reminder = await poll(
                lambda n=n: texts_with(bot, f"Reminder {n}:"), f"reminder {n} in the thread"
            )
            assert ONCALL_MENTION in reminder[0]
            assert (ESCALATION in reminder[0]) == (n >= 2), reminder[0]

        # Messages go out in the order of events: once the approval shows, every reminder that
        # would ever be posted has been.
        await bot.stub.users.click(BOB, CHANNEL, gate, "gate_approve")
        await poll(lambda: bot.decided(gate["ts"]), "the gate decided")
        await poll(lambda: texts_with(bot, "Approved by"), "the approval in the thread")
        assert [len(texts_with(bot, f"Reminder {n}:")) for n in (1, 2, 3, 4)] == [1, 1, 1, 0]
        assert shown_once(bot)


# --- Slack refusing calls -------------------------------------------------------------------------


async def test_ratelimited_calls_are_retried_after_retry_after_and_post_once(
    tmp_path: Path,
) -> None:
    async with running_bot(tmp_path, groups=1, instances=2, production=False) as bot:
        stub = bot.stub
        # The run message and the first edit are both answered 429 first (twice for the post).
        stub.rate_limit_next("chat.postMessage", retry_after=1, times=2)
        stub.rate_limit_next("chat.update", retry_after=1)
        await start_and_acknowledge(bot)
        gate = await poll(lambda: bot.open_gate("prod-eu"), "the gate")
        await bot.stub.users.click(BOB, CHANNEL, gate, "gate_approve")
        await completed(bot)

        waits = []
        for method in ("chat.postMessage", "chat.update"):
            calls = stub.calls_of(method)
            limited = [i for i, c in enumerate(calls) if c.status == 429]
            assert limited, f"no 429 answered to {method}"
            for i in limited:
                retry = calls[i + 1]  # the same call again, after waiting
                assert retry.params.get("ts") == calls[i].params.get("ts")
                assert meta_key(retry.params) == meta_key(calls[i].params)
                waits.append(retry.timestamp - calls[i].timestamp)
        assert len(waits) == 3
        assert min(waits) >= 1.0, f"a retry came before Retry-After: {waits}"
        assert len(bot.run_messages()) == 1
        assert shown_once(bot)
        assert all(c.ok for c in stub.calls_of("chat.postMessage")[2:])
        print(f"waits after 429 (Retry-After: 1): {[round(w, 2) for w in waits]}")


async def test_a_post_whose_answer_was_lost_is_found_not_posted_again(tmp_path: Path) -> None:
    """Slack carried out the post but the connection dropped before its answer: the bot may
    not post again blindly (slack_sdk would, by default). It reads the channel or thread back
    and finds the message by its metadata."""
    async with running_bot(tmp_path, groups=1, instances=2, production=False) as bot:
        stub = bot.stub
        # The run message (in the channel) and the first post in its thread, and one edit.
        stub.lose_answer_next("chat.postMessage", times=2)
        stub.lose_answer_next("chat.update")
        await start_and_acknowledge(bot)
        gate = await poll(lambda: bot.open_gate("prod-eu"), "the gate")
        await bot.stub.users.click(BOB, CHANNEL, gate, "gate_approve")
        await completed(bot)

        lost = [c for c in stub.calls if c.extra.get("answer_lost")]
        assert [c.method for c in lost] == ["chat.postMessage", "chat.postMessage", "chat.update"]
        assert len(bot.run_messages()) == 1
        assert shown_once(bot)
        for call in lost[:2]:  # each lost post is in the channel exactly once, and was sent once
            key = meta_key(call.params)
            assert [meta_key(c.params) for c in stub.calls_of("chat.postMessage")].count(key) == 1
        assert "Upgraded to 3.8.1" in (bot.run_message() or {}).get("text", "")


async def test_a_refused_edit_is_retried_and_a_message_refused_for_good_stops_nothing_else(
    tmp_path: Path,
) -> None:
    async with running_bot(tmp_path, groups=1, instances=2, production=False) as bot:
        stub = bot.stub
        await start_and_acknowledge(bot)
        gate = await poll(lambda: bot.open_gate("prod-eu"), "the gate")
        posted = len(stub.calls_of("chat.postMessage"))
        await poll(lambda: quiet(bot, 2.0), "the bot done with its edits for the gate")
        # The next message the bot posts is refused for good (a bug in its blocks, say), and the
        # next edit (the gate's, after the approval) once (Slack had a bad moment).
        stub.fail_next("chat.postMessage", "invalid_blocks", times=5)
        stub.fail_next("chat.update", "internal_error")
        await stub.users.click(BOB, CHANNEL, gate, "gate_approve")
        await completed(bot)
        await poll(lambda: bot.decided(gate["ts"]), "the gate edited after all", 20)
        (refused_edit,) = [c for c in stub.calls_of("chat.update") if not c.ok]
        assert (refused_edit.error, refused_edit.params["ts"]) == ("internal_error", gate["ts"])

        refused = [c for c in stub.calls_of("chat.postMessage")[posted:] if not c.ok]
        assert [c.error for c in refused] == ["invalid_blocks"] * 5
        assert len({meta_key(c.params) for c in refused}) == 1  # one message, tried 5 times
        key = json.loads(meta_key(refused[0].params))
        shown = [m.get("metadata") for m in stub.messages(CHANNEL, include_replies=True)]
        assert key not in shown  # given up, not posted broken
        assert shown_once(bot)
        # The bot is alive and answering.
        before = len(bot.ephemerals_to(ALICE))
        await stub.users.run_command(ALICE, CHANNEL, "history")
        await bot.answer_to(ALICE, "the answer to /upgrade history", before)


# --- the bot dying --------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def bot_subprocess(bot: Harness, log: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    """``upgrade-bot serve`` as its own process, connected over Socket Mode; always killed."""
    opened = bot.stub.socket.connections_opened
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "upgrade_bot",
            "serve",
            "--config",
            str(bot.handle.config_path),
            env={
                **os.environ,
                **bot_env(bot.stub, bot.handle),
                "UPGRADE_BOT_OPS_HOST": "127.0.0.1",
                "UPGRADE_BOT_OPS_PORT": str(free_port()),
            },
            stdout=out,
            stderr=out,
        )
    try:
        await poll(
            lambda: (
                proc.returncode is not None
                or any(c.seq > opened for c in bot.stub.socket.open_connections)
            ),
            "the bot process to connect",
            60,
        )
        assert proc.returncode is None, log.read_text()[-3000:]
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def test_a_bot_killed_at_an_open_gate_takes_the_click_after_restart_and_posts_nothing_twice(
    tmp_path: Path,
) -> None:
    log = tmp_path / "bot.log"
    async with stand_in(tmp_path, groups=1, instances=2) as bot:
        stub = bot.stub
        async with bot_subprocess(bot, log) as first:
            await start_and_acknowledge(bot)
            gate = await poll(lambda: bot.open_gate("prod-eu"), "the gate")
            first.send_signal(signal.SIGKILL)
            assert await first.wait() == -signal.SIGKILL
        await poll(lambda: not stub.socket.open_connections, "the dead connection closed", 30)
        posted_before = len(stub.calls_of("chat.postMessage"))

        async with bot_subprocess(bot, log) as second:
            await stub.users.click(BOB, CHANNEL, gate, "gate_approve")
            decided = await poll(lambda: bot.decided(gate["ts"]), "the gate decided")
            assert BOB in json.dumps(decided)
            await completed(bot)
            assert second.returncode is None, log.read_text()[-3000:]

        assert len(stub.calls_of("chat.postMessage")) > posted_before
        assert len(bot.run_messages()) == 1
        assert len(gate_messages(bot)) == 1
        assert bot.postings_are_unique(), "a message was posted twice"
        assert shown_once(bot)
        assert {(s["version"], s["replacements"]) for s in bot.handle.status()["slots"]} == {
            ("3.8.1", 1)
        }


class Died(Exception):
    """The notifier's process ended here (simulated)."""


async def test_a_message_posted_just_before_the_bot_died_is_not_posted_again(
    tmp_path: Path,
) -> None:
    async with stand_in(tmp_path, groups=1, instances=2, production=False) as bot:
        stub, handle = bot.stub, bot.handle
        config = load_config(handle.config_path)
        async with engine_for(
            config,
            config_dir=handle.config_path.parent,
            redis_url=handle.redis_url,
            identity="e2e-bot",
        ) as engine:
            run = await engine.start(
                "3.8.1", requester=ALICE, acknowledge_changelog=True, channel=CHANNEL
            )
            assert (await engine.drive(run.id)).reason == "waiting"  # at the gate
            events = await engine.feed.events(run.id)
            opened = next(i for i, e in events if e["type"] == "gate_opened")

            # A first bot life posts everything up to the gate, then dies right after posting the
            # gate message, before its cursor records that.
            real_advance = engine.feed.advance_cursor

            async def advance_then_die(consumer: str, run_id: str, event_id: str) -> None:
                if event_id == opened:
                    raise Died(event_id)
                await real_advance(consumer, run_id, event_id)

            engine.feed.advance_cursor = advance_then_die  # type: ignore[method-assign]
            with pytest.raises(Died):
                await first_life(engine, bot, config).deliver(run.id)
            engine.feed.advance_cursor = real_advance  # type: ignore[method-assign]
            cursor = await engine.feed.cursor(CONSUMER, run.id)
            undelivered = await engine.feed.events(run.id, after=cursor)
            assert undelivered[0][0] == opened
            assert len(gate_messages(bot)) == 1
            posted = len(stub.calls_of("chat.postMessage"))

        # The next life (the real bot, empty memory) delivers from the cursor: it finds the gate
        # message by its metadata and acts on it.
        async with bot_process(bot):
            gate = gate_messages(bot)[0]
            await stub.users.click(BOB, CHANNEL, gate, "gate_approve")
            await poll(lambda: bot.decided(gate["ts"]), "the gate edited with the decision")
            await completed(bot)
        assert len(stub.calls_of("chat.postMessage")) > posted
        assert len(gate_messages(bot)) == 1, "the gate message was posted again"
        assert len(bot.run_messages()) == 1
        assert shown_once(bot)


def first_life(engine: Engine, bot: Harness, config: Config) -> Notifier:
    """The Slack notifier as ``serve`` builds it."""
    return Notifier(
        engine,
        web_client(bot.stub.workspace.bot_token, bot.stub.api_url),
        slack_settings(config.slack),
        approvers_of=approvers_of(config),
        escalation_of=escalation_of(config),
    )


# --- replicas -------------------------------------------------------------------------------------


async def test_two_replicas_post_each_message_once_and_hand_over_when_one_stops(
    tmp_path: Path,
) -> None:
    """Two bots (identities a and b) share Redis and the workspace: commands reach the newest
    connection, runs are driven by whoever holds their lease, and one notifier at a time posts.
    When the one posting stops, the other carries on at once."""
    async with stand_in(tmp_path, groups=2, instances=2, production=False) as bot:
        stub = bot.stub
        async with contextlib.AsyncExitStack() as first:
            await first.enter_async_context(bot_process(bot, identity="bot-a"))  # posts first
            async with bot_process(bot, identity="bot-b"):
                await start_and_acknowledge(bot)
                gate = await poll(lambda: bot.open_gate("prod-eu"), "the gate of prod-eu")
                await stub.users.click(BOB, CHANNEL, gate, "gate_approve")
                await poll(lambda: bot.decided(gate["ts"]), "the gate decided")
                await first.aclose()  # bot-a stops: bot-b carries the run and its messages
                gate = await poll(lambda: bot.open_gate("prod-us"), "the gate of prod-us")
                await stub.users.click(BOB, CHANNEL, gate, "gate_approve")
                await completed(bot)
        assert len(bot.run_messages()) == 1
        assert len(gate_messages(bot)) == 2
        assert shown_once(bot), "two replicas posted the same message"
