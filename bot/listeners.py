"""Slack listeners: thin. Each acks at once, de-duplicates the delivery, then hands the request
to the engine and answers the person privately (ephemeral) when something is refused."""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncRespond
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from upgrade_bot.engine import (
    Command,
    Decision,
    Duplicate,
    Engine,
    EngineError,
    EventKind,
    GroupBusy,
    Refused,
    Run,
    TemporaryError,
    UnknownRun,
)

from . import messages, render
from .commands import COMMANDS, ParseError, Request, Subcommand, parse
from .notifier import UNREACHABLE, Notifier
from .settings import SlackSettings
from .usergroups import UserGroups

log = logging.getLogger(__name__)

GATE_ACTIONS = {
    render.ACTION_APPROVE: "approve",
    render.ACTION_PAUSE: "pause",
    render.ACTION_ROLLBACK: "rollback",
}


@dataclass
class BotContext:
    engine: Engine
    settings: SlackSettings
    usergroups: UserGroups
    notifier: Notifier


RESPOND: contextvars.ContextVar[AsyncRespond | None] = contextvars.ContextVar(
    "respond", default=None
)
"""bolt's ``respond`` of the command or click being answered (each listener runs in its own
task, so each sees its own); None for events, which have no ``response_url``."""


async def _ephemeral(
    client: AsyncWebClient,
    channel: str,
    user: str,
    text: str,
    blocks: list[dict[str, Any]] | None = None,
) -> None:
    """Answer one person privately. Where the bot cannot post (a DM, a channel it was not
    invited to) the answer goes through the request's ``response_url``, which works anywhere."""
    try:
        await client.chat_postEphemeral(channel=channel, user=user, text=text, blocks=blocks)
        return
    except SlackApiError as exc:
        error = exc.response.get("error")
    respond = RESPOND.get()
    if respond is None or error not in ("channel_not_found", "not_in_channel", "is_archived"):
        log.warning("ephemeral answer to %s failed: %s", user, error)
        return
    try:
        await respond(text=text, blocks=blocks, response_type="ephemeral", replace_original=False)
    except UNREACHABLE as exc:
        log.warning("answer to %s through response_url failed: %s", user, type(exc).__name__)


async def _show(client: AsyncWebClient, channel: str, user: str, message: render.Message) -> None:
    """A rendered message (a plan, a status), shown to one person privately."""
    await _ephemeral(client, channel, user, message.text, message.block_dicts())


def register(app: AsyncApp, ctx: BotContext) -> None:
    """Attach every listener of the bot to ``app``."""

    @app.command(ctx.settings.command)
    async def on_command(
        ack: AsyncAck, body: dict[str, Any], client: AsyncWebClient, respond: AsyncRespond
    ) -> None:
        """The slash command: parse errors answered in the ack itself; work after the ack."""
        RESPOND.set(respond)
        try:
            request = parse(body.get("text", ""))
        except ParseError as exc:
            await ack(text=messages.usage_error(str(exc), exc.usage, ctx.settings.command))
            return
        answer = ANSWERS.get(COMMANDS[request.action].answer or "")
        if answer is None:  # help: answered in the ack itself
            await ack(text=messages.help_text(ctx.settings.command))
            return
        await ack()
        user, channel = body["user_id"], body["channel_id"]
        dedupe = f"slack:cmd:{body.get('trigger_id') or body.get('command_ts', '')}"
        try:
            await answer(ctx, client, request, user, channel, dedupe)
        except Duplicate:
            log.info("duplicate delivery of a command from %s ignored", user)
        except UnknownRun as exc:
            await _ephemeral(
                client, channel, user, messages.unknown_run(exc.run_id, ctx.settings.command)
            )
        except (Refused, GroupBusy) as exc:
            await _ephemeral(client, channel, user, messages.refused(str(exc), user))
        except TemporaryError as exc:
            await _ephemeral(client, channel, user, messages.try_again(str(exc)))
        except EngineError as exc:
            await _ephemeral(client, channel, user, messages.refused(str(exc), user))

    @app.action({"action_id": "gate_approve"})
    @app.action({"action_id": "gate_pause"})
    @app.action({"action_id": "gate_rollback"})
    async def on_gate_button(
        ack: AsyncAck, body: dict[str, Any], client: AsyncWebClient, respond: AsyncRespond
    ) -> None:
        """A gate button: approve, pause or roll back — only while that gate is pending."""
        await ack()
        RESPOND.set(respond)
        action = body["actions"][0]
        await _gate_action(
            ctx,
            client,
            body,
            GATE_ACTIONS[action["action_id"]],
            render.read_value(action.get("value") or "{}"),
        )

    @app.action({"action_id": "reaction_confirm"})
    async def on_reaction_confirm(
        ack: AsyncAck, body: dict[str, Any], client: AsyncWebClient, respond: AsyncRespond
    ) -> None:
        """The ephemeral Confirm after a reaction on a production gate."""
        await ack()
        RESPOND.set(respond)
        value = render.read_value(body["actions"][0].get("value") or "{}")
        await _gate_action(ctx, client, body, value.get("action", "approve"), value)

    @app.action({"action_id": "observe_rollback"})
    async def on_observe_rollback(
        ack: AsyncAck, body: dict[str, Any], client: AsyncWebClient, respond: AsyncRespond
    ) -> None:
        """Roll back from an observation alert (as the rollback command, with its policy)."""
        await ack()
        RESPOND.set(respond)
        await _gate_action(
            ctx,
            client,
            body,
            "rollback",
            render.read_value(body["actions"][0].get("value") or "{}"),
        )

    @app.action({"action_id": "changelog_ack"})
    async def on_changelog_ack(
        ack: AsyncAck, body: dict[str, Any], client: AsyncWebClient, respond: AsyncRespond
    ) -> None:
        """The requester acknowledges the changelog entries between versions."""
        await ack()
        RESPOND.set(respond)
        value = render.read_value(body["actions"][0].get("value") or "{}")
        await _run_command(
            ctx, client, body, value.get("run", ""), Command("acknowledge", body["user"]["id"])
        )

    @app.event("reaction_added")
    async def on_reaction(
        body: dict[str, Any], event: dict[str, Any], client: AsyncWebClient
    ) -> None:
        """A reaction on a gate message acts like its button; on production it asks first."""
        names = ctx.settings.reactions
        action = {names.approve: "approve", names.pause: "pause", names.rollback: "rollback"}.get(
            event.get("reaction", "")
        )
        item = event.get("item") or {}
        if action is None or item.get("type") != "message":
            return
        if not await ctx.engine.feed.first_delivery(f"slack:event:{body.get('event_id')}"):
            return
        found = await ctx.notifier.gate_at(item["channel"], item["ts"])
        if found is None:
            return
        run_id, gate_id = found
        user = event["user"]
        run = await ctx.engine.status(run_id)
        group = gate_id.split(":")[-2] if gate_id.count(":") >= 2 else ""
        production = any(g.production for g in run.groups if g.name == group)
        if production and _pending(run, gate_id):
            message = render.reaction_confirm(
                run_id, gate_id, action, group, reactions=ctx.settings.reactions
            )
            await _show(client, item["channel"], user, message)
            return
        decision = await ctx.engine.command(
            run_id, Command(action, user, await ctx.usergroups.groups_of(user), gate_id=gate_id)
        )
        if decision.refusal:
            answer = await _refusal(ctx, decision, user, gate_id)
            await _ephemeral(client, item["channel"], user, answer)


async def _gate_action(
    ctx: BotContext,
    client: AsyncWebClient,
    body: dict[str, Any],
    action: str,
    value: dict[str, str],
) -> None:
    user = body["user"]["id"]
    channel = (body.get("channel") or {}).get("id") or ctx.settings.channel
    key = "slack:action:" + ":".join(
        str(x)
        for x in (
            body.get("container", {}).get("message_ts"),
            user,
            body["actions"][0].get("action_id"),
            body["actions"][0].get("action_ts"),
        )
    )
    if not await ctx.engine.feed.first_delivery(key):
        return
    await _run_command(
        ctx,
        client,
        body,
        value.get("run", ""),
        Command(action, user, await ctx.usergroups.groups_of(user), gate_id=value.get("gate")),
        channel=channel,
    )


async def _run_command(
    ctx: BotContext,
    client: AsyncWebClient,
    body: dict[str, Any],
    run_id: str,
    command: Command,
    channel: str | None = None,
) -> None:
    channel = channel or (body.get("channel") or {}).get("id") or ctx.settings.channel
    try:
        decision = await ctx.engine.command(run_id, command)
    except (Refused, EngineError) as exc:
        await _ephemeral(client, channel, command.user, messages.refused(str(exc), command.user))
        return
    if decision.refusal:
        answer = await _refusal(ctx, decision, command.user, command.gate_id)
        await _ephemeral(client, channel, command.user, answer)


def _pending(run: Run, gate_id: str) -> bool:
    return run.gate is not None and run.gate.id == gate_id and run.gate.decision is None


async def _refusal(
    ctx: BotContext, decision: Decision, user: str, gate_id: str | None = None
) -> str:
    """Why a person's request was refused, in the bot's words: a gate no longer pending says
    how it was decided and by whom; a finished run says it has ended."""
    run = decision.run
    if gate_id is not None and not _pending(run, gate_id):
        outcome, by = await _gate_outcome(ctx.engine, run, gate_id)
        if outcome is not None or not run.terminal:
            return messages.stale_gate(outcome, by)
    if run.terminal:
        return messages.run_finished(run.id, run.state)
    return messages.refused(decision.refusal or "", user)


async def _gate_outcome(
    engine: Engine, run: Run, gate_id: str
) -> tuple[str | None, tuple[str, ...]]:
    """How a gate was decided (approved, rollback, paused, expired, aborted) and by whom."""
    if run.gate is not None and run.gate.id == gate_id and run.gate.decision:
        return run.gate.decision, tuple(run.gate.decided_by)
    for _, event in reversed(await engine.feed.events(run.id)):
        if event.get("gate") == gate_id and event.get("type") == EventKind.GATE_EXPIRED:
            return "expired", ()
        if event.get("gate") == gate_id and event.get("type") == EventKind.GATE_DECIDED:
            return event.get("decision"), tuple(event.get("by") or ())
    return None, ()


# --- answers to the slash command: one per entry named in commands.COMMANDS ----------------------

Answer = Callable[[BotContext, AsyncWebClient, Request, str, str, str], Awaitable[None]]
"""(ctx, client, request, user, channel, dedupe key) → the person answered."""


async def _answer_plan(
    ctx: BotContext, client: AsyncWebClient, request: Request, user: str, channel: str, dedupe: str
) -> None:
    """``plan``: what a run would do, shown to the asker."""
    plan = await ctx.engine.plan(request.version or "", list(request.groups) or None)
    await _show(client, channel, user, render.plan_message(plan))


async def _answer_start(
    ctx: BotContext, client: AsyncWebClient, request: Request, user: str, channel: str, dedupe: str
) -> None:
    """``start``: a new run, announced in the channel; the asker gets where to follow it."""
    engine = ctx.engine
    try:
        run = await engine.start(
            request.version or "",
            list(request.groups) or None,
            requester=user,
            user_groups=await ctx.usergroups.groups_of(user),
            approval_mode="auto" if request.auto else "human",
            overrides=request.overrides,
            waiver=request.waiver,
            request_id=dedupe,
            channel=ctx.settings.channel,
        )
    except GroupBusy as exc:
        holder = await engine.status(exc.run_id)
        await _ephemeral(
            client,
            channel,
            user,
            messages.group_busy(exc.group, exc.run_id, holder.channel or ctx.settings.channel),
        )
        return
    await _ephemeral(client, channel, user, messages.started(run.id, ctx.settings.channel))


async def _answer_status(
    ctx: BotContext, client: AsyncWebClient, request: Request, user: str, channel: str, dedupe: str
) -> None:
    """``status``: one run in detail, or the runs under way."""
    engine = ctx.engine
    if request.run_id:
        await _show(
            client, channel, user, render.status_message(await engine.status(request.run_id))
        )
    elif not (active := await engine.active()):
        await _ephemeral(client, channel, user, messages.no_active_run(ctx.settings.command))
    else:
        runs = [await engine.status(r) for r in active]
        await _show(client, channel, user, render.history_message(runs, active=True))


async def _answer_history(
    ctx: BotContext, client: AsyncWebClient, request: Request, user: str, channel: str, dedupe: str
) -> None:
    """``history``: recent runs, one line each."""
    runs = await ctx.engine.history(request.limit)
    await _show(client, channel, user, render.history_message(runs))


async def _answer_unlock(
    ctx: BotContext, client: AsyncWebClient, request: Request, user: str, channel: str, dedupe: str
) -> None:
    """``unlock``: break-glass, free a group whose run is gone."""
    former = await ctx.engine.break_lock(
        request.groups[0],
        user=user,
        user_groups=await ctx.usergroups.groups_of(user),
        reason=request.reason or "",
    )
    await _ephemeral(client, channel, user, messages.unlocked(request.groups[0], former))


async def _answer_run(
    ctx: BotContext, client: AsyncWebClient, request: Request, user: str, channel: str, dedupe: str
) -> None:
    """``pause``, ``resume``, ``approve``, ``rollback``, ``abort``, ``ack``: a command to a run."""
    action = "acknowledge" if request.action == "ack" else request.action
    decision = await ctx.engine.command(
        request.run_id or "",
        Command(action, user, await ctx.usergroups.groups_of(user), reason=request.reason),
        request_id=dedupe,
    )
    if decision.refusal:
        await _ephemeral(client, channel, user, await _refusal(ctx, decision, user))
    else:
        await _ephemeral(
            client,
            channel,
            user,
            messages.done(request.action, decision.run.id, decision.run.state),
        )


ANSWERS: dict[str, Answer] = {
    "plan": _answer_plan,
    "start": _answer_start,
    "status": _answer_status,
    "history": _answer_history,
    "unlock": _answer_unlock,
    "run": _answer_run,
}
"""The answers ``commands.COMMANDS`` names; a name missing here fails at import, not in use."""


def unanswered(commands: Iterable[Subcommand], answers: Mapping[str, Answer]) -> set[str]:
    """Subcommands whose answer is named but not defined."""
    return {c.name for c in commands if c.answer is not None and c.answer not in answers}


if missing := unanswered(COMMANDS.values(), ANSWERS):
    raise ImportError(f"subcommands without an answer in bot/listeners.py: {sorted(missing)}")


__all__ = ["ANSWERS", "BotContext", "register"]
