""":class:`SlackStub`: the Web API, Socket Mode, response URLs and control routes on one port.

Routes (all on ``http://127.0.0.1:P``):

* ``/api/<method>`` — the Web API (:mod:`.webapi`); point slack_sdk at it with
  ``AsyncWebClient(token=…, base_url=stub.api_url)``.
* ``/link/?ticket=…`` — Socket Mode websockets (:mod:`.socketmode`), reached through the URL that
  ``apps.connections.open`` returns.
* ``/upload/v1/<opaque>`` — the file upload URL of files.getUploadURLExternal;
  ``/files-pri/<team>-<file>/<name>`` — a file's ``url_private``.
* ``/commands/…``, ``/actions/…`` — response URLs (:mod:`.response_urls`).
* ``/_stub/…`` — for tests and the demo, not part of Slack: ``GET calls`` (``?method=&kind=``),
  ``POST fail`` (``{"method", "error", "status"?, "retry_after"?, "times"?}``), ``GET messages``
  (``?channel=``), ``GET thread`` (``?channel=&ts=``), ``GET ephemerals``, ``POST deliver``
  (``{"type", "payload", "ack_timeout"?, "connect_timeout"?}`` → ``{"ok", "ack"}``),
  ``POST disconnect`` (``{"reason"}``), ``GET transcript``, ``GET info``.

Runs on the caller's event loop: ``async with SlackStub(channels={"C1": "upgrades"}) as stub``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from aiohttp import web
from slack_sdk.web.async_client import AsyncWebClient

from .recorder import Call, Fault, Faults, Recorder
from .response_urls import ResponseUrls
from .socketmode import AckTimeout, Delivery, NotConnected, SocketModeServer
from .store import SlackState, StoredFile
from .transcript import transcript
from .users import Users
from .webapi import WebApi
from .workspace import Workspace

LOOPBACK = ("127.0.0.1", "::1", "localhost")
MAX_BODY = 64 * 1024 * 1024  # room for chart PNGs and then some


class SlackStub:
    """A faithful local Slack for one workspace and one app."""

    def __init__(
        self,
        *,
        channels: Mapping[str, str] | Iterable[str] | None = None,
        users: Mapping[str, str] | None = None,
        usergroups: Mapping[str, tuple[str, Iterable[str]]] | None = None,
        workspace: Workspace | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        ack_timeout: float = 3.0,
    ) -> None:
        if host not in LOOPBACK:
            raise ValueError(f"the Slack stub listens on loopback only, not {host!r}")
        self.workspace = workspace or Workspace.build(channels, users, usergroups)
        self.host = host
        self._port = port
        self.recorder = Recorder()
        self.faults = Faults()
        self.state = SlackState(self.workspace)
        self.api = WebApi(
            self.workspace,
            self.state,
            self.recorder,
            self.faults,
            base_url=lambda: self.url,
            socket_url=lambda: self.socket.issue_url(self.ws_url),
        )
        self.socket = SocketModeServer(self.workspace, self.recorder, ack_timeout=ack_timeout)
        self.socket.on_ack = self._on_socket_ack
        self.response_urls = ResponseUrls(self.workspace, self.state, self.api, self.recorder)
        self.users = Users(self)
        self._runner: web.AppRunner | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    def build_app(self) -> web.Application:
        """The aiohttp application (exposed for embedding in another server)."""
        app = web.Application(client_max_size=MAX_BODY)
        r = app.router
        r.add_route("*", "/api/{method}", self.api.handle)
        r.add_get("/link/", self.socket.handle)
        r.add_post("/upload/v1/{opaque}", self.api.handle_upload)
        r.add_get("/files-pri/{ref}/{name}", self.api.handle_file_download)
        for kind in ("commands", "actions"):
            r.add_post(f"/{kind}/{{team}}/{{id}}/{{secret}}", self.response_urls.handle)
        r.add_get("/_stub/calls", self._h_calls)
        r.add_post("/_stub/fail", self._h_fail)
        r.add_get("/_stub/messages", self._h_messages)
        r.add_get("/_stub/thread", self._h_thread)
        r.add_get("/_stub/ephemerals", self._h_ephemerals)
        r.add_post("/_stub/deliver", self._h_deliver)
        r.add_post("/_stub/disconnect", self._h_disconnect)
        r.add_get("/_stub/transcript", self._h_transcript)
        r.add_get("/_stub/info", self._h_info)
        app.on_shutdown.append(lambda _app: self.socket.close())
        return app

    async def start(self) -> SlackStub:
        """Listen on the loopback port (0 picks a free one)."""
        self._runner = web.AppRunner(self.build_app(), handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self._port)
        await site.start()
        self._port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        """Close websockets and stop listening."""
        if self._runner is not None:
            await self.socket.close()
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> SlackStub:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- addresses ----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port listened on."""
        return self._port

    @property
    def url(self) -> str:
        """``http://127.0.0.1:P`` (no trailing slash)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self._port}"

    @property
    def api_url(self) -> str:
        """The Web API base URL for slack_sdk's ``base_url`` (with the trailing slash)."""
        return f"{self.url}/api/"

    @property
    def ws_url(self) -> str:
        """``ws://127.0.0.1:P``."""
        return "ws" + self.url.removeprefix("http")

    def environ(self) -> dict[str, str]:
        """The environment a bot needs to use this stand-in as its Slack (tokens, signing
        secret, ``SLACK_API_URL``)."""
        ws = self.workspace
        return {
            "SLACK_BOT_TOKEN": ws.bot_token,
            "SLACK_APP_TOKEN": ws.app_token,
            "SLACK_SIGNING_SECRET": ws.signing_secret,
            "SLACK_API_URL": self.api_url,
        }

    def web_client(self, token: str | None = None, **kwargs: Any) -> AsyncWebClient:
        """A real slack_sdk client pointed at the stub (bot token unless told otherwise)."""
        return AsyncWebClient(
            token=token or self.workspace.bot_token, base_url=self.api_url, **kwargs
        )

    def info(self) -> dict[str, Any]:
        """URLs, tokens and directory, as JSON-able data (the CLI prints this)."""
        return {
            "url": self.url,
            "api_url": self.api_url,
            "ws_url": self.ws_url,
            **self.workspace.public(),
        }

    # -- what happened ------------------------------------------------------------------------

    @property
    def timeline(self) -> list[Call]:
        """Everything recorded, in order (Web API, deliveries, response URLs)."""
        return list(self.recorder.timeline)

    @property
    def calls(self) -> list[Call]:
        """Web API calls, in order."""
        return self.recorder.calls()

    def calls_of(self, method: str) -> list[Call]:
        """Web API calls of one method, in order."""
        return self.recorder.calls(method)

    def messages(self, channel: str, *, include_replies: bool = False) -> list[dict[str, Any]]:
        """A channel's messages, oldest first, with metadata: the top-level ones as
        conversations.history shows them, or every message including thread replies."""
        if include_replies:
            return self.state.all_messages(channel)
        return self.state.history(channel, include_metadata=True)

    def thread(self, channel: str, ts: str) -> list[dict[str, Any]]:
        """A thread (parent first), with metadata; empty if there is none."""
        return self.state.thread(channel, ts, include_metadata=True)

    def message(self, channel: str, ts: str) -> dict[str, Any] | None:
        """One message as conversations.replies would show it (with metadata), or None."""
        msg = self.state.find(channel, ts)
        return None if msg is None else self.state.view(channel, msg, include_metadata=True)

    def ephemerals(
        self, channel: str | None = None, user: str | None = None
    ) -> list[dict[str, Any]]:
        """Ephemeral messages (chat.postEphemeral, command responses), optionally filtered."""
        return [
            dict(e)
            for e in self.state.ephemerals
            if channel in (None, e["channel"]) and user in (None, e["user"])
        ]

    @property
    def files(self) -> dict[str, StoredFile]:
        """Uploaded files by ID."""
        return self.state.files

    def transcript(self) -> list[str]:
        """The recorded conversation as readable lines (see :mod:`.transcript`)."""
        return transcript(self)

    # -- faults -------------------------------------------------------------------------------

    def fail_next(self, method: str, error: str, status: int = 200, *, times: int = 1) -> None:
        """Make the next call(s) of ``method`` (``"*"``: any) answer ``{"ok": false, error}``."""
        self.faults.add(method, Fault(error, status), times)

    def rate_limit_next(self, method: str, retry_after: int = 1, *, times: int = 1) -> None:
        """Make the next call(s) of ``method`` answer HTTP 429 ``ratelimited`` with
        ``Retry-After: retry_after``."""
        self.faults.add(method, Fault("ratelimited", 429, retry_after), times)

    def lose_answer_next(self, method: str, *, times: int = 1) -> None:
        """Carry out the next call(s) of ``method``, then drop the connection before answering
        (the request landed; the client cannot know). Exactly-once posting must survive this."""
        self.faults.add(method, Fault("", lose_answer=True), times)

    # -- Slack's handling of command responses -------------------------------------------------

    def apply_command_response(self, command: Mapping[str, Any], response: Any) -> None:
        """Show a slash command's immediate response as Slack does: ephemeral to the user, or
        in the channel with ``response_type: in_channel``. ``response`` is the ack payload (or
        the HTTP body: a dict, or plain text); empty means nothing is shown."""
        if isinstance(response, str):
            response = {"text": response} if response.strip() else None
        if not isinstance(response, Mapping):
            return
        text, blocks = response.get("text"), response.get("blocks")
        if not text and not blocks:
            return
        channel, user = str(command.get("channel_id")), str(command.get("user_id"))
        content: dict[str, Any] = {"text": text or ""} | ({"blocks": blocks} if blocks else {})
        if response.get("response_type") == "in_channel":
            self.api.post_message(channel, content)
        else:
            self.state.add_ephemeral(channel, user, content | {"source": "command_response"})

    def _on_socket_ack(self, delivery: Delivery) -> None:
        if delivery.type == "slash_commands":
            self.apply_command_response(delivery.payload, delivery.ack_payload)

    # -- control routes -----------------------------------------------------------------------

    async def _h_calls(self, request: web.Request) -> web.Response:
        method, kind = request.query.get("method"), request.query.get("kind")
        calls = [
            c.to_dict()
            for c in self.recorder.timeline
            if method in (None, c.method) and kind in (None, c.kind)
        ]
        return web.json_response({"calls": calls}, dumps=lambda o: json.dumps(o, default=str))

    async def _h_fail(self, request: web.Request) -> web.Response:
        body = await request.json()
        method, times = body["method"], int(body.get("times", 1))
        if body.get("retry_after") is not None or body.get("error") == "ratelimited":
            self.rate_limit_next(method, int(body.get("retry_after") or 1), times=times)
        else:
            self.fail_next(method, body["error"], int(body.get("status", 200)), times=times)
        return web.json_response({"ok": True, "pending": self.faults.pending()})

    async def _h_messages(self, request: web.Request) -> web.Response:
        channel = request.query.get("channel", "")
        replies = request.query.get("include_replies") in ("1", "true")
        return web.json_response({"messages": self.messages(channel, include_replies=replies)})

    async def _h_thread(self, request: web.Request) -> web.Response:
        q = request.query
        return web.json_response({"messages": self.thread(q.get("channel", ""), q.get("ts", ""))})

    async def _h_ephemerals(self, request: web.Request) -> web.Response:
        q = request.query
        return web.json_response({"ephemerals": self.ephemerals(q.get("channel"), q.get("user"))})

    async def _h_deliver(self, request: web.Request) -> web.Response:
        body = await request.json()
        try:
            ack = await self.socket.deliver(
                body["type"],
                body["payload"],
                ack_timeout=body.get("ack_timeout"),
                connect_timeout=body.get("connect_timeout"),
            )
        except AckTimeout as e:
            return web.json_response({"ok": False, "error": "ack_timeout", "detail": str(e)})
        except NotConnected as e:
            return web.json_response({"ok": False, "error": "not_connected", "detail": str(e)})
        except ValueError as e:
            return web.json_response({"ok": False, "error": "invalid_type", "detail": str(e)})
        return web.json_response({"ok": True, "ack": ack})

    async def _h_disconnect(self, request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else {}
        await self.socket.disconnect(body.get("reason", "refresh_requested"))
        return web.json_response({"ok": True})

    async def _h_transcript(self, request: web.Request) -> web.Response:
        return web.json_response({"lines": self.transcript()})

    async def _h_info(self, request: web.Request) -> web.Response:
        return web.json_response(self.info())
