"""The stub's record as lines a person can follow: who said what, where, and what they clicked.

One line per visible thing — a bot post, edit, ephemeral answer, reaction or upload; a person's
command, click or reaction; a failed call; a Socket Mode disconnect — prefixed with the seconds
since the first record and where it happened (``#channel`` or ``#channel > thread of m1``).
Messages are named ``m1``, ``m2``… in the order they appear, so that edits and clicks can be
followed to the message they are on.
Read-only calls (history, users.info, auth.test, …) are left out.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from .blocks import parse_blocks_param
from .recorder import Call
from .workspace import Workspace

if TYPE_CHECKING:
    from .server import SlackStub

WIDTH = 110
QUIET = {
    "auth.test",
    "apps.connections.open",
    "conversations.history",
    "conversations.replies",
    "users.info",
    "usergroups.users.list",
    "chat.getPermalink",
    "files.getUploadURLExternal",
    "upload_url",
}


def _clip(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= WIDTH else line[: WIDTH - 1] + "…"


def _buttons(blocks: list[Any] | None) -> str:
    labels: list[str] = []
    for block in blocks or []:
        if not isinstance(block, dict):
            continue
        elements = block.get("elements", []) if block.get("type") == "actions" else []
        elements = [*elements, block.get("accessory")]
        for el in elements:
            if isinstance(el, dict) and el.get("type") == "button":
                labels.append(f"[{el.get('text', {}).get('text', '?')}]")
    return (" " + " ".join(labels)) if labels else ""


def _first_text(blocks: list[Any] | None) -> str:
    for block in blocks or []:
        text = block.get("text") if isinstance(block, dict) else None
        if isinstance(text, dict) and text.get("text"):
            return str(text["text"])
    return ""


_REFERENCE = re.compile(r"<([@#!][^>|]*)(?:\|([^>]*))?>")


def as_shown(text: str, workspace: Workspace | None = None) -> str:
    """Slack's mrkdwn references as a Slack client shows them: ``<@U…>`` → @name, ``<#C…>`` →
    #name, ``<!subteam^S…>`` → @handle, ``<!date^…|fallback>`` → the fallback."""

    def one(m: re.Match[str]) -> str:
        ref, label = m.group(1), m.group(2)
        if label:
            return label if ref.startswith("!date") else ref[0] + label
        if ref.startswith("@") and workspace is not None:
            return "@" + workspace.user(ref[1:]).name
        if ref.startswith("#") and workspace is not None:
            return "#" + workspace.channel_name(ref[1:])
        if ref.startswith("!subteam^") and workspace is not None:
            group = workspace.usergroups.get(ref.removeprefix("!subteam^"))
            return "@" + group.handle if group is not None else ref
        return ref if ref.startswith(("@", "#")) else "@" + ref[1:]

    return _REFERENCE.sub(one, text)


def summary(params: dict[str, Any], workspace: Workspace | None = None) -> str:
    """A message's gist: its text (or first block text) and its buttons."""
    blocks, _ = parse_blocks_param(params.get("blocks"))
    text = params.get("text") or _first_text(blocks) or "(no text)"
    return _clip(as_shown(str(text), workspace)) + _buttons(blocks)


class _Renderer:
    def __init__(self, stub: SlackStub) -> None:
        self.ws = stub.workspace
        self.bot = self.ws.bot_name
        self.labels: dict[str, str] = {}

    def label(self, ts: str | None) -> str:
        """A short name for a message (``m1``, ``m2``… in the order they appear) instead of
        its timestamp, so that a reader can follow which message an edit or click is on."""
        if not ts:
            return "m?"
        if ts not in self.labels:
            self.labels[ts] = f"m{len(self.labels) + 1}"
        return self.labels[ts]

    def gist(self, params: dict[str, Any]) -> str:
        return summary(params, self.ws)

    def who(self, user_id: str | None) -> str:
        return "@" + self.ws.user(user_id).name if user_id else "@someone"

    def where(self, channel: str | None, thread_ts: str | None = None) -> str:
        place = "#" + self.ws.channel_name(channel) if channel else "#?"
        return f"{place} > thread of {self.label(thread_ts)}" if thread_ts else place

    def api(self, c: Call) -> str | None:
        p, r = c.params, c.response if isinstance(c.response, dict) else {}
        if not c.ok:
            return (
                f"{self.where(p.get('channel') or p.get('channel_id'))} ! {c.method} failed: "
                f"{c.error or c.status}"
            )
        if c.method in QUIET:
            return None
        channel = r.get("channel") or p.get("channel") or p.get("channel_id")
        match c.method:
            case "chat.postMessage":
                where = self.where(channel, p.get("thread_ts"))
                return f"{where} {self.bot} [{self.label(r.get('ts'))}]: {self.gist(p)}"
            case "chat.update":
                return (
                    f"{self.where(channel)} {self.bot} edited [{self.label(p.get('ts'))}]: "
                    f"{self.gist(p)}"
                )
            case "chat.delete":
                return f"{self.where(channel)} {self.bot} deleted [{self.label(p.get('ts'))}]"
            case "chat.postEphemeral":
                return (
                    f"{self.where(channel, p.get('thread_ts'))} (only {self.who(p.get('user'))} "
                    f"sees) {self.bot}: {self.gist(p)}"
                )
            case "reactions.add":
                return (
                    f"{self.where(channel)} {self.bot} reacted :{p.get('name')}: to "
                    f"[{self.label(p.get('timestamp'))}]"
                )
            case "files.completeUploadExternal":
                titles = ", ".join(f.get("title", "?") for f in r.get("files", []))
                return f"{self.where(channel, p.get('thread_ts'))} {self.bot} uploaded {titles}"
        return f"{self.where(channel)} {self.bot} called {c.method}"

    def inbound(self, c: Call) -> list[str]:
        p = c.params
        if c.method == "disconnect":
            return [f"~ socket mode: Slack asked the app to reconnect ({p.get('reason')})"]
        via = "" if c.kind == "socket" else " (http)"
        lines: list[str] = []
        if c.method == "slash_commands":
            where = self.where(p.get("channel_id"))
            lines.append(
                f"{where} {self.who(p.get('user_id'))}: {p.get('command')} "
                f"{p.get('text', '')}".rstrip()
                + via
            )
            if c.status == 102:
                lines.append(f"{where} … waiting for the app to acknowledge")
            elif c.status >= 400 or (c.kind == "socket" and not c.extra.get("acked", True)):
                lines.append(f"{where} ! the app did not answer in time (operation_timeout)")
            else:
                answer = (
                    c.response
                    if isinstance(c.response, dict)
                    else ({"text": c.response} if c.response else {})
                )
                if answer.get("text") or answer.get("blocks"):
                    seen = (
                        "everyone sees"
                        if answer.get("response_type") == "in_channel"
                        else (f"only {self.who(p.get('user_id'))} sees")
                    )
                    lines.append(f"{where} ({seen}) {self.bot}: {self.gist(answer)}")
        elif c.method == "interactive" and p.get("type") == "block_actions":
            container = p.get("container", {})
            where = self.where(container.get("channel_id"), container.get("thread_ts"))
            for action in p.get("actions", []):
                label = action.get("text", {}).get("text", action.get("action_id"))
                lines.append(
                    f"{where} {self.who(p.get('user', {}).get('id'))} clicked "
                    f"[{label}] on [{self.label(container.get('message_ts'))}]{via}"
                )
        elif c.method == "events_api" and p.get("event", {}).get("type") == "reaction_added":
            e = p["event"]
            lines.append(
                f"{self.where(e['item'].get('channel'))} {self.who(e.get('user'))} "
                f"reacted :{e.get('reaction')}: to [{self.label(e['item'].get('ts'))}]{via}"
            )
        elif c.method == "events_api":
            lines.append(f"event {p.get('event', {}).get('type')}{via}")
        else:
            lines.append(f"{c.method} {p.get('type', '')}{via}".rstrip())
        return lines

    def response_url(self, c: Call) -> str:
        target = c.extra.get("target") or {}
        where = self.where(target.get("channel"))
        p = c.params
        if c.status != 200:
            return f"{where} ! response_url refused: {c.response}"
        if p.get("delete_original"):
            return f"{where} {self.bot} deleted [{self.label(target.get('message_ts'))}]"
        if p.get("replace_original"):
            return (
                f"{where} {self.bot} replaced [{self.label(target.get('message_ts'))}]: "
                f"{self.gist(p)}"
            )
        if p.get("response_type") == "in_channel":
            return f"{where} {self.bot}: {self.gist(p)} (response_url)"
        return f"{where} (only {self.who(target.get('user'))} sees) {self.bot}: {self.gist(p)}"


def transcript(stub: SlackStub) -> list[str]:
    """The recorded calls and deliveries, in order, as readable lines."""
    r = _Renderer(stub)
    timeline = stub.timeline
    start = timeline[0].timestamp if timeline else 0.0
    out: list[str] = []
    for c in timeline:
        if c.kind == "api":
            lines = [line] if (line := r.api(c)) else []
        elif c.kind == "response_url":
            lines = [r.response_url(c)]
        else:
            lines = r.inbound(c)
        out.extend(f"+{c.timestamp - start:7.2f}s  {line}" for line in lines)
    return out
