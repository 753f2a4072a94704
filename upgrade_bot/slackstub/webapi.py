"""The Web API half of the stand-in: ``/api/<method>`` as Slack serves it.

Transport, as Slack and slack_sdk do it: POST (or GET) with parameters in the query string, a
form-encoded or multipart body, or a JSON body (slack_sdk sends JSON for chat.postMessage,
chat.update and chat.postEphemeral, query parameters for most others); a form body's ``blocks``,
``attachments`` and ``metadata`` are JSON strings. The token comes as ``Authorization: Bearer …``
or a ``token`` parameter: none → ``not_authed``, an unknown one → ``invalid_auth``, a bot token on
``apps.connections.open`` or an app-level token elsewhere → ``not_allowed_token_type``. Errors are
HTTP 200 with ``{"ok": false, "error": …}``; ``ratelimited`` is HTTP 429 with ``Retry-After``.
Responses carry ``X-OAuth-Scopes`` (bolt reads the bot's scopes from auth.test's header).

Shapes follow Slack's method reference pages (docs.slack.dev/reference/methods/…): e.g.
chat.postMessage → ``{"ok", "channel", "ts", "message"}``, chat.update → ``{"ok", "channel",
"ts", "text", "message"}``, chat.postEphemeral → ``{"ok", "message_ts"}``, conversations.* →
``{"ok", "messages", "has_more", "response_metadata"?}``, files.completeUploadExternal →
``{"ok", "files": [{"id", "title"}]}`` (only those two fields — as on Slack), a permalink
``https://<domain>.slack.com/archives/<C>/p<ts without dot>`` (plus ``?thread_ts=…&cid=…`` for a
reply). A well-formed ``thread_ts`` naming no message is accepted and the reply is then visible
nowhere, as Slack does; a malformed one is ``invalid_thread_ts``.
"""

from __future__ import annotations

import base64
import copy
import json
import mimetypes
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .blocks import normalise_blocks, parse_blocks_param, validate_blocks
from .recorder import Faults, Recorder
from .store import SlackState, StoredFile, is_ts, ts_key
from .workspace import Workspace

MAX_TEXT = 40_000
BOT, APP = "bot", "app"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class ApiError(Exception):
    """A Slack error response (``{"ok": false, "error": code, **extra}``)."""

    def __init__(self, code: str, **extra: Any) -> None:
        super().__init__(code)
        self.code = code
        self.extra = extra


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes")
    return bool(value)


class Params(dict[str, Any]):
    """Request parameters with Slack's loose typing (``"1"``/``"true"``/``true`` all true)."""

    def text(self, name: str) -> str | None:
        """A parameter as a string, None when absent or empty."""
        value = self.get(name)
        if value is None or value == "":
            return None
        return value if isinstance(value, str) else json.dumps(value)

    def required(self, name: str) -> str:
        """A required string parameter; ``invalid_arguments`` when missing."""
        value = self.text(name)
        if value is None:
            raise ApiError(
                "invalid_arguments",
                response_metadata={"messages": [f"[ERROR] missing required field: {name}"]},
            )
        return value

    def flag(self, name: str) -> bool:
        """A boolean parameter."""
        return _truthy(self.get(name))

    def number(self, name: str, default: int) -> int:
        """An integer parameter; ``invalid_arguments`` when not a number."""
        value = self.get(name)
        if value is None or value == "":
            return default
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ApiError("invalid_arguments") from None

    def json_value(self, name: str) -> Any:
        """A parameter that is JSON in form bodies and already decoded in JSON bodies."""
        value = self.get(name)
        if isinstance(value, str) and value:
            try:
                return json.loads(value)
            except ValueError:
                raise ApiError("invalid_arguments") from None
        return value


def _cursor(offset: int) -> str:
    return base64.b64encode(f"next_offset:{offset}".encode()).decode()


def _offset(cursor: str | None) -> int:
    if not cursor:
        return 0
    try:
        return int(base64.b64decode(cursor).decode().split(":", 1)[1])
    except (ValueError, IndexError):
        raise ApiError("invalid_cursor") from None


def _page(items: list[Any], p: Params, default_limit: int) -> tuple[list[Any], dict[str, Any]]:
    start = _offset(p.text("cursor"))
    limit = max(1, min(p.number("limit", default_limit), 1000))
    page = items[start : start + limit]
    more = start + limit < len(items)
    extra: dict[str, Any] = {"has_more": more}
    if more:
        extra["response_metadata"] = {"next_cursor": _cursor(start + limit)}
    return page, extra


@dataclass
class Upload:
    """Where the bytes of an announced file go (the ``upload_url`` of getUploadURLExternal)."""

    file_id: str


class WebApi:
    """Slack Web API methods over :class:`SlackState`, recorded, with injectable faults."""

    def __init__(
        self,
        workspace: Workspace,
        state: SlackState,
        recorder: Recorder,
        faults: Faults,
        base_url: Callable[[], str],
        socket_url: Callable[[], str],
    ) -> None:
        self.ws = workspace
        self.state = state
        self.recorder = recorder
        self.faults = faults
        self._base_url = base_url
        self._socket_url = socket_url
        self._uploads: dict[str, Upload] = {}
        self._file_seq = 0
        self.methods: dict[str, tuple[str, Callable[[Params], dict[str, Any]]]] = {
            "auth.test": (BOT, self.auth_test),
            "apps.connections.open": (APP, self.apps_connections_open),
            "chat.postMessage": (BOT, self.chat_post_message),
            "chat.update": (BOT, self.chat_update),
            "chat.delete": (BOT, self.chat_delete),
            "chat.postEphemeral": (BOT, self.chat_post_ephemeral),
            "chat.getPermalink": (BOT, self.chat_get_permalink),
            "conversations.history": (BOT, self.conversations_history),
            "conversations.replies": (BOT, self.conversations_replies),
            "reactions.add": (BOT, self.reactions_add),
            "usergroups.users.list": (BOT, self.usergroups_users_list),
            "users.info": (BOT, self.users_info),
            "files.getUploadURLExternal": (BOT, self.files_get_upload_url_external),
            "files.completeUploadExternal": (BOT, self.files_complete_upload_external),
            "files.upload": (BOT, self.files_upload),
        }

    # -- transport ----------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.Response:
        """``/api/{method}``: parse, authenticate, maybe fail on purpose, dispatch, record."""
        method = request.match_info["method"]
        params = Params(request.query)
        parse_error: str | None = None
        if request.method == "POST" and request.can_read_body:
            if request.content_type == "application/json":
                try:
                    body = await request.json()
                except ValueError:
                    body, parse_error = {}, "invalid_json"
                if not isinstance(body, dict):
                    body, parse_error = {}, "invalid_json"
                params.update(body)
            else:
                form = await request.post()
                params.update({k: v for k, v in form.items() if isinstance(v, str)})
        header = request.headers.get("Authorization", "")
        token = header[7:].strip() if header.startswith("Bearer ") else None
        token = token or params.pop("token", None)
        params.pop("token", None)
        recorded = copy.deepcopy(dict(params))
        status, body, headers = self._dispatch(method, params, token, parse_error)
        call = self.recorder.record("api", method, recorded, body, status)
        if body.pop("_answer_lost", False):
            # Done, but the answer never arrives: the client sees the connection drop.
            call.extra["answer_lost"] = True
            if request.transport is not None:
                request.transport.close()
        return web.json_response(body, status=status, headers=headers)

    def _dispatch(
        self, method: str, params: Params, token: str | None, parse_error: str | None
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        headers = {"X-OAuth-Scopes": ",".join(self.ws.scopes)}
        entry = self.methods.get(method)
        if entry is None:
            return 200, {"ok": False, "error": "unknown_method"}, {}
        needed, handler = entry
        if not token:
            return 200, {"ok": False, "error": "not_authed"}, {}
        kind = BOT if token == self.ws.bot_token else APP if token == self.ws.app_token else None
        if kind is None:
            return 200, {"ok": False, "error": "invalid_auth"}, {}
        if kind != needed:
            return 200, {"ok": False, "error": "not_allowed_token_type"}, {}
        if parse_error:
            return 200, {"ok": False, "error": parse_error}, headers
        fault = self.faults.take(method)
        if fault is not None and not fault.lose_answer:
            return fault.status, fault.body(), headers | fault.headers()
        lost = {"_answer_lost": True} if fault is not None else {}
        try:
            return 200, {"ok": True, **handler(params), **lost}, headers
        except ApiError as e:
            return 200, {"ok": False, "error": e.code, **e.extra, **lost}, headers

    # -- helpers ------------------------------------------------------------------------------

    def _channel(self, p: Params, name: str = "channel") -> str:
        ch = self.ws.resolve_channel(p.text(name))
        if ch is None:
            raise ApiError("channel_not_found")
        return ch.id

    def _blocks(self, p: Params) -> list[dict[str, Any]] | None:
        blocks, well_formed = parse_blocks_param(p.get("blocks"))
        if not well_formed:
            raise ApiError("invalid_blocks_format")
        if blocks is None:
            return None
        errors = validate_blocks(blocks)
        if errors:
            raise ApiError(
                "invalid_blocks",
                errors=errors,
                response_metadata={"messages": [f"[ERROR] {e}" for e in errors]},
            )
        return blocks

    def _attachments(self, p: Params) -> list[Any] | None:
        value = p.json_value("attachments")
        if value in (None, ""):
            return None
        if not isinstance(value, list):
            raise ApiError("invalid_attachments")
        if len(value) > 100:
            raise ApiError("too_many_attachments")
        return value

    def _metadata(self, p: Params) -> dict[str, Any] | None:
        raw = p.get("metadata")
        if raw in (None, ""):
            return None
        if isinstance(raw, str):
            try:
                raw = json.loads(raw)
            except ValueError:
                raise ApiError("invalid_metadata_format") from None
        if not isinstance(raw, dict):
            raise ApiError("invalid_metadata_format")
        if not isinstance(raw.get("event_type"), str) or not raw["event_type"]:
            raise ApiError("invalid_metadata_schema")
        if not isinstance(raw.get("event_payload", {}), dict):
            raise ApiError("invalid_metadata_schema")
        return {"event_type": raw["event_type"], "event_payload": raw.get("event_payload", {})}

    def _content(self, p: Params, *, require: bool) -> dict[str, Any]:
        """text/blocks/attachments of a message, validated as Slack does."""
        text = p.text("text")
        blocks = self._blocks(p)
        attachments = self._attachments(p)
        if require and text is None and not blocks and not attachments:
            raise ApiError("no_text")
        if text is not None and len(text) > MAX_TEXT:
            raise ApiError("msg_too_long")
        out: dict[str, Any] = {}
        if text is not None:
            out["text"] = text
        if blocks is not None:
            out["blocks"] = blocks
        if attachments is not None:
            out["attachments"] = attachments
        return out

    def _thread_ts(self, channel: str, p: Params) -> str | None:
        thread_ts = p.text("thread_ts")
        if thread_ts is None:
            return None
        if not is_ts(thread_ts):
            raise ApiError(
                "invalid_thread_ts",
                response_metadata={"messages": [f"[ERROR] {thread_ts} is not a valid thread_ts"]},
            )
        target = self.state.find(channel, thread_ts)
        # Replying to a reply lands in the parent's thread.
        return target.get("thread_ts", thread_ts) if target else thread_ts

    def _bot_fields(self) -> dict[str, Any]:
        return {
            "user": self.ws.bot_user_id,
            "bot_id": self.ws.bot_id,
            "app_id": self.ws.app_id,
            "team": self.ws.team_id,
            "bot_profile": {
                "id": self.ws.bot_id,
                "app_id": self.ws.app_id,
                "name": self.ws.bot_name,
                "deleted": False,
                "team_id": self.ws.team_id,
            },
        }

    def permalink(self, channel: str, msg: dict[str, Any]) -> str:
        """The message's permalink, as chat.getPermalink builds it."""
        url = (
            f"https://{self.ws.team_domain}.slack.com/archives/{channel}/"
            f"p{msg['ts'].replace('.', '')}"
        )
        thread_ts = msg.get("thread_ts")
        if thread_ts and thread_ts != msg["ts"]:
            url += f"?thread_ts={thread_ts}&cid={channel}"
        return url

    def post_message(
        self,
        channel: str,
        content: dict[str, Any],
        *,
        thread_ts: str | None = None,
        metadata: dict[str, Any] | None = None,
        broadcast: bool = False,
    ) -> dict[str, Any]:
        """Store a bot message (also used for in_channel response_url posts)."""
        fields = self._bot_fields() | {"text": content.get("text", "")}
        if "attachments" in content:
            fields["attachments"] = content["attachments"]
        if thread_ts:
            fields["thread_ts"] = thread_ts
            if broadcast:
                fields["subtype"] = "thread_broadcast"
        if metadata:
            fields["metadata"] = metadata
        msg = self.state.post(channel, fields)
        if content.get("blocks"):
            msg["blocks"] = normalise_blocks(content["blocks"], msg["ts"])
        return msg

    def update_message(
        self, msg: dict[str, Any], content: dict[str, Any], metadata: dict[str, Any] | None
    ) -> None:
        """Apply chat.update semantics: given fields replace, absent ones are kept."""
        if "text" in content:
            msg["text"] = content["text"]
        if "blocks" in content:
            if content["blocks"]:
                msg["blocks"] = normalise_blocks(content["blocks"], self.state.clock.next())
            else:  # an empty array removes the blocks
                msg.pop("blocks", None)
        if "attachments" in content:
            msg["attachments"] = content["attachments"]
        if metadata is not None:
            msg["metadata"] = metadata
        msg["edited"] = {"user": self.ws.bot_user_id, "ts": self.state.clock.next()}

    # -- methods ------------------------------------------------------------------------------

    def auth_test(self, p: Params) -> dict[str, Any]:
        """auth.test."""
        return {
            "url": f"https://{self.ws.team_domain}.slack.com/",
            "team": self.ws.team_name,
            "user": self.ws.bot_name,
            "team_id": self.ws.team_id,
            "user_id": self.ws.bot_user_id,
            "bot_id": self.ws.bot_id,
            "is_enterprise_install": False,
        }

    def apps_connections_open(self, p: Params) -> dict[str, Any]:
        """apps.connections.open: a one-time Socket Mode URL."""
        return {"url": self._socket_url()}

    def chat_post_message(self, p: Params) -> dict[str, Any]:
        """chat.postMessage."""
        channel = self._channel(p)
        content = self._content(p, require=True)
        metadata = self._metadata(p)
        thread_ts = self._thread_ts(channel, p)
        msg = self.post_message(
            channel,
            content,
            thread_ts=thread_ts,
            metadata=metadata,
            broadcast=p.flag("reply_broadcast"),
        )
        return {
            "channel": channel,
            "ts": msg["ts"],
            "message": self.state.view(channel, msg, include_metadata=True),
        }

    def _own_message(self, p: Params, not_ours: str) -> tuple[str, str, dict[str, Any]]:
        """(channel, ts, message) of the bot's own message named by ``channel`` and ``ts``."""
        channel = self._channel(p)
        ts = p.required("ts")
        msg = self.state.find(channel, ts)
        if msg is None:
            raise ApiError("message_not_found")
        if msg.get("user") != self.ws.bot_user_id:
            raise ApiError(not_ours)
        return channel, ts, msg

    def chat_update(self, p: Params) -> dict[str, Any]:
        """chat.update."""
        channel, ts, msg = self._own_message(p, "cant_update_message")
        content = self._content(p, require=True)
        metadata = self._metadata(p)
        self.update_message(msg, content, metadata)
        return {
            "channel": channel,
            "ts": ts,
            "text": msg.get("text", ""),
            "message": self.state.view(channel, msg, include_metadata=True),
        }

    def chat_delete(self, p: Params) -> dict[str, Any]:
        """chat.delete."""
        channel, ts, _ = self._own_message(p, "cant_delete_message")
        self.state.delete(channel, ts)
        return {"channel": channel, "ts": ts}

    def chat_post_ephemeral(self, p: Params) -> dict[str, Any]:
        """chat.postEphemeral: only ``user`` sees it; nothing is stored in the channel."""
        channel = self._channel(p)
        user = p.required("user")
        if user not in self.ws.users:
            raise ApiError("user_not_found")
        content = self._content(p, require=True)
        fields: dict[str, Any] = {"text": content.get("text", ""), "source": "chat.postEphemeral"}
        if content.get("blocks"):
            fields["blocks"] = normalise_blocks(content["blocks"], self.state.clock.next())
        thread_ts = self._thread_ts(channel, p)
        if thread_ts:
            fields["thread_ts"] = thread_ts
        eph = self.state.add_ephemeral(channel, user, fields)
        return {"message_ts": eph["message_ts"]}

    def chat_get_permalink(self, p: Params) -> dict[str, Any]:
        """chat.getPermalink."""
        channel = self._channel(p)
        msg = self.state.find(channel, p.required("message_ts"))
        if msg is None:
            raise ApiError("message_not_found")
        return {"channel": channel, "permalink": self.permalink(channel, msg)}

    def conversations_history(self, p: Params) -> dict[str, Any]:
        """conversations.history: top-level messages, newest first."""
        channel = self._channel(p)
        msgs = self.state.history(channel, include_metadata=p.flag("include_all_metadata"))
        oldest, latest = p.text("oldest"), p.text("latest")
        inclusive = p.flag("inclusive")

        def within(m: dict[str, Any]) -> bool:
            key = ts_key(m["ts"])
            if oldest and (key < ts_key(oldest) or (key == ts_key(oldest) and not inclusive)):
                return False
            return not (
                latest and (key > ts_key(latest) or (key == ts_key(latest) and not inclusive))
            )

        msgs = [m for m in reversed(msgs) if within(m)]
        page, extra = _page(msgs, p, default_limit=100)
        return {"messages": page, **extra, "pin_count": 0}

    def conversations_replies(self, p: Params) -> dict[str, Any]:
        """conversations.replies: parent then replies, oldest first."""
        channel = self._channel(p)
        msgs = self.state.thread(
            channel, p.required("ts"), include_metadata=p.flag("include_all_metadata")
        )
        if not msgs:
            raise ApiError("thread_not_found")
        page, extra = _page(msgs, p, default_limit=1000)
        return {"messages": page, **extra}

    def reactions_add(self, p: Params) -> dict[str, Any]:
        """reactions.add (by the bot)."""
        channel = self._channel(p)
        name = p.required("name")
        if ":" in name or not name.strip() or " " in name:
            raise ApiError("invalid_name")
        error = self.state.add_reaction(channel, p.required("timestamp"), name, self.ws.bot_user_id)
        if error:
            raise ApiError(error)
        return {}

    def usergroups_users_list(self, p: Params) -> dict[str, Any]:
        """usergroups.users.list."""
        group = self.ws.usergroups.get(p.required("usergroup"))
        if group is None:
            raise ApiError("no_such_subteam")
        return {"users": list(group.users)}

    def users_info(self, p: Params) -> dict[str, Any]:
        """users.info."""
        user = self.ws.users.get(p.required("user"))
        if user is None:
            raise ApiError("user_not_found")
        return {"user": user.to_api(self.ws.team_id)}

    def files_get_upload_url_external(self, p: Params) -> dict[str, Any]:
        """files.getUploadURLExternal: announce a file; returns where to send its bytes."""
        name = p.required("filename")
        length = p.number("length", -1)
        if length < 0:
            raise ApiError("invalid_arguments")
        self._file_seq += 1
        file_id = f"F0STUB{self._file_seq:05d}"
        self.state.files[file_id] = StoredFile(
            file_id,
            name,
            length,
            self.ws.bot_user_id,
            int(time.time()),
            alt_txt=p.text("alt_txt"),
        )
        opaque = secrets.token_urlsafe(18)
        self._uploads[opaque] = Upload(file_id)
        return {"upload_url": f"{self._base_url()}/upload/v1/{opaque}", "file_id": file_id}

    async def handle_upload(self, request: web.Request) -> web.Response:
        """The upload URL: raw bytes or a multipart ``file`` field; answers ``OK - <size>``."""
        upload = self._uploads.get(request.match_info["opaque"])
        if upload is None:
            return web.Response(status=404, text="invalid_upload_url")
        if request.content_type.startswith("multipart/"):
            form = await request.post()
            field = next((v for v in form.values() if isinstance(v, web.FileField)), None)
            data = field.file.read() if field is not None else b""
        else:
            data = await request.read()
        stored = self.state.files[upload.file_id]
        stored.content = data
        self._detect_type(stored)
        self.recorder.record(
            "api",
            "upload_url",
            {"file_id": upload.file_id, "bytes": len(data)},
            f"OK - {len(data)}",
        )
        return web.Response(text=f"OK - {len(data)}", content_type="text/plain")

    @staticmethod
    def _detect_type(f: StoredFile) -> None:
        data = f.content or b""
        if data.startswith(PNG_MAGIC):
            f.mimetype, f.filetype = "image/png", "png"
            return
        guessed, _ = mimetypes.guess_type(f.name)
        f.mimetype = guessed or "application/octet-stream"
        f.filetype = f.name.rsplit(".", 1)[-1].lower() if "." in f.name else "binary"

    def files_complete_upload_external(self, p: Params) -> dict[str, Any]:
        """files.completeUploadExternal: finish uploads; share them, in a thread if asked."""
        items = p.json_value("files")
        if not isinstance(items, list) or not items:
            raise ApiError("invalid_arguments")
        stored: list[StoredFile] = []
        for item in items:
            f = self.state.files.get(item.get("id", "")) if isinstance(item, dict) else None
            if f is None or f.content is None or f.completed:
                raise ApiError("file_not_found")
            stored.append(f)
        channel_ref = p.text("channel_id") or (p.text("channels") or "").split(",")[0] or None
        channel = None
        if channel_ref:
            ch = self.ws.resolve_channel(channel_ref)
            if ch is None:
                raise ApiError("channel_not_found")
            channel = ch.id
        thread_ts = self._thread_ts(channel, p) if channel else None
        for item, f in zip(items, stored, strict=True):
            f.title = item.get("title") or f.name
            f.completed = True
        if channel:
            text = p.text("initial_comment") or ""
            fields = {
                "user": self.ws.bot_user_id,
                "text": text,
                "upload": True,
                "display_as_bot": False,
            }
            if thread_ts:
                fields["thread_ts"] = thread_ts
            msg = self.state.post(channel, fields)
            share = {"channel": channel, "ts": msg["ts"]} | (
                {"thread_ts": thread_ts} if thread_ts else {}
            )
            for f in stored:
                f.shares.append(share)
            msg["files"] = [f.to_api(self._base_url(), self.ws.team_id) for f in stored]
        return {"files": [{"id": f.id, "title": f.title} for f in stored]}

    def files_upload(self, p: Params) -> dict[str, Any]:
        """files.upload (v1): retired by Slack; apps must use the v2 flow."""
        raise ApiError("method_deprecated")

    async def handle_file_download(self, request: web.Request) -> web.Response:
        """``url_private``: the file's bytes, for a request bearing the bot token."""
        header = request.headers.get("Authorization", "")
        if header != f"Bearer {self.ws.bot_token}":
            return web.Response(status=403, text="forbidden")
        file_id = request.match_info["ref"].split("-", 1)[-1]
        f = self.state.files.get(file_id)
        if f is None or f.content is None:
            return web.Response(status=404, text="not found")
        return web.Response(body=f.content, content_type=f.mimetype)
