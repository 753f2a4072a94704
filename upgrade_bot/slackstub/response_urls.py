"""``response_url``: where an app answers a slash command or a button click after the ack.

Slack puts a ``response_url`` (``https://hooks.slack.com/commands/T…/…/…`` or ``…/actions/…``)
in every slash command and block_actions payload; bolt's ``respond()`` POSTs JSON to it:
``text``, ``blocks``, ``response_type`` (``ephemeral``, the default, or ``in_channel``),
``replace_original`` / ``delete_original`` (actions only: change the message the button is on),
``thread_ts``. Slack allows 5 uses within 30 minutes. The URLs here are
``http://127.0.0.1:P/commands/…`` and ``…/actions/…``; the text of error bodies is this stub's.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .blocks import normalise_blocks, validate_blocks
from .recorder import Recorder
from .store import SlackState
from .webapi import WebApi
from .workspace import Workspace

MAX_USES = 5
LIFETIME_S = 30 * 60


@dataclass
class Target:
    """What a response URL answers: a command in a channel, or an action on a message."""

    kind: str  # "commands" | "actions"
    channel: str
    user: str
    message_ts: str | None
    created: float
    uses: int = 0


class ResponseUrls:
    """Issues response URLs and applies what apps post to them."""

    def __init__(
        self, workspace: Workspace, state: SlackState, api: WebApi, recorder: Recorder
    ) -> None:
        self.ws = workspace
        self.state = state
        self.api = api
        self.recorder = recorder
        self._targets: dict[str, Target] = {}

    def issue(
        self, base_url: str, kind: str, channel: str, user: str, message_ts: str | None = None
    ) -> str:
        """A fresh response URL for one command or action."""
        key = f"{secrets.randbelow(10**12):012d}/{secrets.token_urlsafe(18)}"
        self._targets[key] = Target(kind, channel, user, message_ts, time.time())
        return f"{base_url}/{kind}/{self.ws.team_id}/{key}"

    async def handle(self, request: web.Request) -> web.Response:
        """``POST /{commands|actions}/{team}/{id}/{secret}``."""
        key = f"{request.match_info['id']}/{request.match_info['secret']}"
        target = self._targets.get(key)
        status, text, body = 404, "expired_url", {}
        if target is not None and time.time() - target.created <= LIFETIME_S:
            if target.uses >= MAX_USES:
                status, text = 404, "used_url"
            else:
                try:
                    body = json.loads(await request.text())
                    if not isinstance(body, dict):
                        raise ValueError("not an object")
                except ValueError:
                    status, text = 400, "invalid_payload"
                else:
                    target.uses += 1
                    status, text = self._apply(target, body)
        self.recorder.record(
            "response_url",
            "response_url",
            body,
            text,
            status,
            target=None
            if target is None
            else {
                "kind": target.kind,
                "channel": target.channel,
                "user": target.user,
                "message_ts": target.message_ts,
            },
        )
        return web.Response(status=status, text=text, content_type="text/plain")

    def _apply(self, target: Target, body: dict[str, Any]) -> tuple[int, str]:
        blocks = body.get("blocks")
        if blocks is not None and (not isinstance(blocks, list) or validate_blocks(blocks)):
            return 400, "invalid_blocks"
        text = body.get("text")
        if text is None and not blocks and not body.get("delete_original"):
            return 400, "no_text"
        content: dict[str, Any] = {"text": text or ""}
        if blocks:
            content["blocks"] = blocks
        original = (
            self.state.find(target.channel, target.message_ts)
            if target.kind == "actions" and target.message_ts
            else None
        )
        if body.get("delete_original") and original is not None:
            self.state.delete(target.channel, original["ts"])
            return 200, "ok"
        if body.get("replace_original") and original is not None:
            # A replacement is a whole new body: blocks not given are gone.
            self.api.update_message(original, content | {"blocks": blocks or []}, None)
            return 200, "ok"
        thread_ts = body.get("thread_ts")
        if body.get("response_type") == "in_channel":
            self.api.post_message(target.channel, content, thread_ts=thread_ts)
        else:
            fields: dict[str, Any] = {"text": content["text"], "source": "response_url"}
            if blocks:
                fields["blocks"] = normalise_blocks(blocks, self.state.clock.next())
            if thread_ts:
                fields["thread_ts"] = thread_ts
            self.state.add_ephemeral(target.channel, target.user, fields)
        return 200, "ok"
