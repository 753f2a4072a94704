"""Simulated people: what Slack sends an app when someone types a command, clicks a button or
reacts to a message.

The builders return payloads exactly as Slack sends them (the same dict goes into a Socket Mode
envelope's ``payload`` or, form/JSON-encoded by :class:`~.signing.SignedSender`, into an HTTP
request). They refuse what a person could not do — a command in a channel that does not exist, a
click on a button that is not (or no longer) on the message, a reaction to a missing message —
with ``ValueError``. Shapes follow Slack's references: slash command fields ("Implementing slash
commands"), the ``block_actions`` payload ("Block actions"), and the ``reaction_added`` event
inside an ``event_callback`` (Events API).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .workspace import Channel, Workspace

if TYPE_CHECKING:
    from .server import SlackStub


def _trigger_id() -> str:
    return f"{secrets.randbelow(10**13)}.{secrets.randbelow(10**13)}.{secrets.token_hex(16)}"


def _now_ts() -> str:
    now = time.time_ns() // 1000
    return f"{now // 1_000_000}.{now % 1_000_000:06d}"


def _elements(blocks: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(block, element) for every interactive element on a message."""
    for block in blocks:
        for el in block.get("elements", []) if block.get("type") == "actions" else []:
            yield block, el
        accessory = block.get("accessory")
        if isinstance(accessory, dict):
            yield block, accessory


def buttons(message: dict[str, Any] | None) -> dict[str, str]:
    """action_id → value of every button a person sees on ``message``."""
    return {
        el["action_id"]: el.get("value", "")
        for _, el in _elements((message or {}).get("blocks", []))
        if el.get("type") == "button" and "action_id" in el
    }


class Users:
    """The people of the stub's workspace, acting through Slack."""

    def __init__(self, stub: SlackStub) -> None:
        self.stub = stub
        self._event_seq = 0

    @property
    def _ws(self) -> Workspace:
        return self.stub.workspace

    def _channel(self, channel: str) -> Channel:
        ch = self._ws.resolve_channel(channel)
        if ch is None:
            raise ValueError(f"no channel {channel!r} in the stub workspace")
        return ch

    # -- payload builders ---------------------------------------------------------------------

    def slash_command(
        self, user: str, channel: str, text: str, command: str = "/upgrade"
    ) -> dict[str, str]:
        """The fields of a slash command invocation (all strings, as Slack form-encodes them)."""
        if not command.startswith("/"):
            raise ValueError("a slash command starts with '/'")
        ch, who = self._channel(channel), self._ws.user(user)
        return {
            "token": self._ws.verification_token,
            "team_id": self._ws.team_id,
            "team_domain": self._ws.team_domain,
            "channel_id": ch.id,
            "channel_name": ch.name,
            "user_id": who.id,
            "user_name": who.name,
            "command": command,
            "text": text,
            "api_app_id": self._ws.app_id,
            "is_enterprise_install": "false",
            "response_url": self.stub.response_urls.issue(self.stub.url, "commands", ch.id, who.id),
            "trigger_id": _trigger_id(),
        }

    def button_click(
        self,
        user: str,
        channel: str,
        message: dict[str, Any],
        action_id: str,
        value: str | None = None,
        *,
        stale: bool = False,
    ) -> dict[str, Any]:
        """A ``block_actions`` payload for a click on the button ``action_id`` of ``message``.

        The message is taken as the stub holds it now (the person sees the current version), so
        its blocks, block_ids, ts and metadata are Slack's; ``stale=True`` uses the given copy
        instead, to simulate a click on an outdated screen. ``value`` defaults to the button's
        own and, if given, must match it (a person cannot change a button's value).
        """
        ch, who = self._channel(channel), self._ws.user(user)
        current = self.stub.message(ch.id, message["ts"])
        if current is None and not stale:
            raise ValueError(f"message {message['ts']} is not in {ch.id} (deleted?)")
        shown = message if stale or current is None else current
        found = next(
            (
                (b, el)
                for b, el in _elements(shown.get("blocks", []))
                if el.get("action_id") == action_id
            ),
            None,
        )
        if found is None:
            raise ValueError(f"no element with action_id {action_id!r} on message {shown['ts']}")
        block, element = found
        if element.get("type") != "button":
            raise ValueError(f"only buttons are simulated, not {element.get('type')!r}")
        if value is not None and "value" in element and value != element["value"]:
            raise ValueError(f"the button's value is {element['value']!r}, not {value!r}")
        action: dict[str, Any] = {
            "action_id": action_id,
            "block_id": block["block_id"],
            "text": element["text"],
            "type": "button",
            "action_ts": _now_ts(),
        }
        if "value" in element or value is not None:
            action["value"] = element.get("value", value)
        if "style" in element:
            action["style"] = element["style"]
        container: dict[str, Any] = {
            "type": "message",
            "message_ts": shown["ts"],
            "channel_id": ch.id,
            "is_ephemeral": False,
        }
        if shown.get("thread_ts") and shown["thread_ts"] != shown["ts"]:
            container["thread_ts"] = shown["thread_ts"]
        return {
            "type": "block_actions",
            "user": {
                "id": who.id,
                "username": who.name,
                "name": who.name,
                "team_id": self._ws.team_id,
            },
            "api_app_id": self._ws.app_id,
            "token": self._ws.verification_token,
            "container": container,
            "trigger_id": _trigger_id(),
            "team": {"id": self._ws.team_id, "domain": self._ws.team_domain},
            "enterprise": None,
            "is_enterprise_install": False,
            "channel": {"id": ch.id, "name": ch.name},
            "message": json.loads(json.dumps(shown)),
            "state": {"values": {}},
            "response_url": self.stub.response_urls.issue(
                self.stub.url, "actions", ch.id, who.id, shown["ts"]
            ),
            "actions": [action],
        }

    def reaction_added(self, user: str, channel: str, ts: str, reaction: str) -> dict[str, Any]:
        """The person reacts (the reaction is stored on the message, as Slack would) and this
        returns the ``event_callback`` Slack sends for it."""
        ch, who = self._channel(channel), self._ws.user(user)
        reaction = reaction.strip(":")
        target = self.stub.state.find(ch.id, ts)
        if target is None:
            raise ValueError(f"no message {ts} in {ch.id}")
        error = self.stub.state.add_reaction(ch.id, ts, reaction, who.id)
        if error:
            raise ValueError(f"{who.name} cannot add :{reaction}: to {ts}: {error}")
        self._event_seq += 1
        return {
            "token": self._ws.verification_token,
            "team_id": self._ws.team_id,
            "context_team_id": self._ws.team_id,
            "api_app_id": self._ws.app_id,
            "event": {
                "type": "reaction_added",
                "user": who.id,
                "reaction": reaction,
                "item": {"type": "message", "channel": ch.id, "ts": ts},
                "item_user": target.get("user"),
                "event_ts": _now_ts(),
            },
            "type": "event_callback",
            "event_id": f"Ev0STUB{self._event_seq:06d}",
            "event_time": int(time.time()),
            "authorizations": [
                {
                    "enterprise_id": None,
                    "team_id": self._ws.team_id,
                    "user_id": self._ws.bot_user_id,
                    "is_bot": True,
                    "is_enterprise_install": False,
                }
            ],
            "is_ext_shared_channel": False,
            "event_context": f"4-eyJldCI6InJlYWN0aW9uX2FkZGVkIn0-{self._event_seq}",
        }

    def say(
        self, user: str, channel: str, text: str, thread_ts: str | None = None
    ) -> dict[str, Any]:
        """The person posts a message (stored; no event is sent)."""
        ch, who = self._channel(channel), self._ws.user(user)
        fields: dict[str, Any] = {
            "user": who.id,
            "text": text,
            "team": self._ws.team_id,
            "client_msg_id": secrets.token_hex(16),
        }
        if thread_ts:
            fields["thread_ts"] = thread_ts
        return self.stub.state.post(ch.id, fields)

    # -- do it over Socket Mode ---------------------------------------------------------------

    async def run_command(
        self, user: str, channel: str, text: str, command: str = "/upgrade"
    ) -> dict[str, Any] | None:
        """Type the command; returns the app's ack payload (its immediate response)."""
        payload = self.slash_command(user, channel, text, command)
        return await self.stub.socket.deliver("slash_commands", payload)

    async def click(
        self,
        user: str,
        channel: str,
        message: dict[str, Any],
        action_id: str,
        value: str | None = None,
    ) -> dict[str, Any] | None:
        """Click the button; returns the ack payload."""
        payload = self.button_click(user, channel, message, action_id, value)
        return await self.stub.socket.deliver("interactive", payload)

    async def react(self, user: str, channel: str, ts: str, reaction: str) -> dict[str, Any] | None:
        """React to the message; returns the ack payload."""
        payload = self.reaction_added(user, channel, ts, reaction)
        return await self.stub.socket.deliver("events_api", payload)
