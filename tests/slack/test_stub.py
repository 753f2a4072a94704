"""The Slack stand-in, exercised only through real clients: slack_sdk's AsyncWebClient, slack-bolt's
AsyncApp over Socket Mode and over signed HTTP, and a bare websocket where the protocol itself is
the subject. Nothing sleeps for a fixed time: every wait polls a condition under a deadline.
"""

from __future__ import annotations

import asyncio
import json
import struct
import sys
import time
import zlib
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from slack_bolt.adapter.socket_mode.aiohttp import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient

from upgrade_bot.slackstub import AckTimeout, SignedSender, SlackStub

from ..support import eventually

CHANNEL = "C0UPGRADES"
OTHER = "C0OTHER001"
ALICE, BOB = "U0ALICE001", "U0BOB00002"
DEADLINE_S = 10.0


async def within(awaitable: Awaitable[Any], seconds: float = DEADLINE_S) -> Any:
    """Await with a deadline."""
    return await asyncio.wait_for(awaitable, seconds)


def approval_blocks(text: str = "Approve group *gw-a*?") -> list[dict[str, Any]]:
    return [
        {"type": "section", "text": {"type": "mrkdwn", "text": text}},
        {
            "type": "actions",
            "block_id": "gate",
            "elements": [
                {
                    "type": "button",
                    "action_id": "approve",
                    "value": "gate-1",
                    "style": "primary",
                    "text": {"type": "plain_text", "text": "Approve"},
                },
                {
                    "type": "button",
                    "action_id": "rollback",
                    "value": "gate-1",
                    "style": "danger",
                    "text": {"type": "plain_text", "text": "Roll back"},
                },
            ],
        },
    ]


METADATA = {"event_type": "upgrade_gate", "event_payload": {"run_id": "r-1", "gate": 1}}


def tiny_png() -> bytes:
    """A valid 1x1 PNG, built here so no binary fixture is needed."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00\xff\x00\x00")
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.fixture
async def stub() -> AsyncIterator[SlackStub]:
    async with SlackStub(channels={CHANNEL: "upgrades", OTHER: "other"}) as s:
        yield s


@pytest.fixture
def client(stub: SlackStub) -> AsyncWebClient:
    return AsyncWebClient(token=stub.workspace.bot_token, base_url=stub.api_url)


# -- Web API ----------------------------------------------------------------------------------


async def test_post_update_thread_and_metadata_round_trip(
    stub: SlackStub, client: AsyncWebClient
) -> None:
    posted = await client.chat_postMessage(
        channel=CHANNEL, text="Approve gw-a?", blocks=approval_blocks(), metadata=METADATA
    )
    ts = posted["ts"]
    sec, frac = ts.split(".")
    assert posted["channel"] == CHANNEL and sec.isdigit() and len(frac) == 6
    assert posted["message"]["metadata"] == METADATA
    assert posted["message"]["bot_id"] == stub.workspace.bot_id
    # Slack gives every block a block_id; the app's own is kept.
    assert [b["block_id"] for b in posted["message"]["blocks"]][1] == "gate"
    assert posted["message"]["blocks"][0]["block_id"]

    reply = await client.chat_postMessage(
        channel=CHANNEL, thread_ts=ts, text="gw-a: 3/3 healthy", metadata=METADATA
    )
    assert float(reply["ts"]) > float(ts)

    plain = await client.conversations_replies(channel=CHANNEL, ts=ts)
    assert [m["ts"] for m in plain["messages"]] == [ts, reply["ts"]]
    assert all("metadata" not in m for m in plain["messages"])
    full = await client.conversations_replies(channel=CHANNEL, ts=ts, include_all_metadata=True)
    assert [m["metadata"] for m in full["messages"]] == [METADATA, METADATA]
    assert full["messages"][0]["reply_count"] == 1
    assert full["messages"][1]["thread_ts"] == ts

    updated = await client.chat_update(
        channel=CHANNEL, ts=ts, text="Approved by bob", blocks=approval_blocks("Approved")[:1]
    )
    assert updated["ts"] == ts and updated["text"] == "Approved by bob"
    assert stub.thread(CHANNEL, ts)[0]["text"] == "Approved by bob"
    assert stub.thread(CHANNEL, ts)[0]["metadata"] == METADATA  # kept when not given
    assert len(stub.thread(CHANNEL, ts)[0]["blocks"]) == 1

    history = await client.conversations_history(channel=CHANNEL)
    assert [m["ts"] for m in history["messages"]] == [ts]  # replies stay in the thread
    link = await client.chat_getPermalink(channel=CHANNEL, message_ts=reply["ts"])
    assert link["permalink"].endswith(f"?thread_ts={ts}&cid={CHANNEL}")

    await client.reactions_add(channel=CHANNEL, timestamp=ts, name="white_check_mark")
    eph = await client.chat_postEphemeral(channel=CHANNEL, user=ALICE, text="only you")
    assert stub.ephemerals(CHANNEL, ALICE)[0]["message_ts"] == eph["message_ts"]
    assert stub.messages(CHANNEL)[0]["reactions"][0]["users"] == [stub.workspace.bot_user_id]

    # Recorded in order, from Python and over HTTP.
    methods = [c.method for c in stub.calls]
    assert methods[:3] == ["chat.postMessage", "chat.postMessage", "conversations.replies"]
    assert stub.calls_of("chat.update")[0].params["ts"] == ts
    async with aiohttp.ClientSession() as http, http.get(f"{stub.url}/_stub/calls") as resp:
        served = (await resp.json())["calls"]
    assert [c["method"] for c in served] == methods


async def test_directory_methods(stub: SlackStub, client: AsyncWebClient) -> None:
    auth = await client.auth_test()
    assert auth["user_id"] == stub.workspace.bot_user_id
    assert "chat:write" in auth.headers["x-oauth-scopes"]
    members = await client.usergroups_users_list(usergroup="S0ONCALL01")
    assert members["users"] == [BOB, "U0CAROL003"]
    info = await client.users_info(user=BOB)
    assert info["user"]["name"] == "bob"
    with pytest.raises(SlackApiError) as e:
        await client.users_info(user="U0NOBODY00")
    assert e.value.response["error"] == "user_not_found"


async def test_posting_to_a_user_id_lands_in_the_dm(
    stub: SlackStub, client: AsyncWebClient
) -> None:
    posted = await client.chat_postMessage(channel=BOB, text="You are on call for gw-a")
    assert posted["channel"] == "D0BOB00002"
    assert stub.messages("D0BOB00002")[0]["text"] == "You are on call for gw-a"
    assert any("#dm-bob" in line for line in stub.transcript())


async def test_51_blocks_are_invalid(client: AsyncWebClient) -> None:
    blocks = [{"type": "divider"} for _ in range(51)]
    with pytest.raises(SlackApiError) as e:
        await client.chat_postMessage(channel=CHANNEL, text="x", blocks=blocks)
    assert e.value.response["error"] == "invalid_blocks"
    assert "50" in e.value.response["errors"][0]
    ok = await client.chat_postMessage(channel=CHANNEL, text="x", blocks=blocks[:50])
    assert len(ok["message"]["blocks"]) == 50


@pytest.mark.parametrize(
    "block",
    [
        {"type": "section", "text": "a bare string is not a text object"},
        {"type": "section", "text": {"type": "mrkdwn", "text": "x" * 3001}},
        {
            "type": "actions",
            "elements": [
                {
                    "type": "button",
                    "action_id": "a",
                    "text": {"type": "plain_text", "text": "y" * 76},
                }
            ],
        },
        {
            "type": "actions",
            "elements": [
                {"type": "button", "action_id": "a", "text": {"type": "plain_text", "text": "A"}},
            ]
            * 2,
        },
        {"type": "no_such_block"},
        {"type": "divider", "colour": "red"},
        {"text": {"type": "mrkdwn", "text": "no type"}},
    ],
    ids=["bare-text", "long-section", "long-button", "dup-action", "unknown", "extra", "no-type"],
)
async def test_a_malformed_block_is_invalid(client: AsyncWebClient, block: dict[str, Any]) -> None:
    with pytest.raises(SlackApiError) as e:
        await client.chat_postMessage(channel=CHANNEL, text="x", blocks=[block])
    assert e.value.response["error"] == "invalid_blocks"
    assert "json-pointer:/blocks/0" in e.value.response["errors"][0]


async def test_duplicate_block_ids_are_invalid(client: AsyncWebClient) -> None:
    dup = [{"type": "divider", "block_id": "same"}, {"type": "divider", "block_id": "same"}]
    with pytest.raises(SlackApiError) as e:
        await client.chat_postMessage(channel=CHANNEL, text="x", blocks=dup)
    assert e.value.response["error"] == "invalid_blocks"


async def test_form_encoded_blocks_are_parsed_and_validated(stub: SlackStub) -> None:
    """slack_sdk sends JSON for chat.postMessage; other clients send a form with JSON strings."""
    url = f"{stub.api_url}chat.postMessage"
    headers = {"Authorization": f"Bearer {stub.workspace.bot_token}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        form = {
            "channel": "#upgrades",
            "text": "hi",
            "blocks": json.dumps(approval_blocks()),
            "metadata": json.dumps(METADATA),
        }
        async with http.post(url, data=form) as resp:
            ok = await resp.json()
        async with http.post(url, data={"channel": CHANNEL, "blocks": "{not json"}) as resp:
            bad = await resp.json()
    assert ok["ok"] and ok["channel"] == CHANNEL and ok["message"]["metadata"] == METADATA
    assert bad == {"ok": False, "error": "invalid_blocks_format"}


async def test_msg_too_long(client: AsyncWebClient) -> None:
    with pytest.raises(SlackApiError) as e:
        await client.chat_postMessage(channel=CHANNEL, text="x" * 40_001)
    assert e.value.response["error"] == "msg_too_long"
    assert (await client.chat_postMessage(channel=CHANNEL, text="x" * 40_000))["ok"]


async def test_errors_like_slack(stub: SlackStub, client: AsyncWebClient) -> None:
    async def error_of(call: Awaitable[Any]) -> str:
        with pytest.raises(SlackApiError) as e:
            await call
        return str(e.value.response["error"])

    assert await error_of(client.chat_postMessage(channel="C0NOWHERE0", text="x")) == (
        "channel_not_found"
    )
    assert await error_of(client.chat_update(channel=CHANNEL, ts="1.000001", text="x")) == (
        "message_not_found"
    )
    with pytest.warns(UserWarning, match="text"):  # slack_sdk warns before sending; Slack refuses
        assert await error_of(client.chat_postMessage(channel=CHANNEL)) == "no_text"
    assert await error_of(client.chat_postMessage(channel=CHANNEL, text="x", thread_ts="0")) == (
        "invalid_thread_ts"
    )
    assert await error_of(client.conversations_replies(channel=CHANNEL, ts="1.000001")) == (
        "thread_not_found"
    )
    wrong = AsyncWebClient(token="xoxb-not-the-token", base_url=stub.api_url)
    assert await error_of(wrong.auth_test()) == "invalid_auth"
    anonymous = AsyncWebClient(base_url=stub.api_url)
    assert await error_of(anonymous.auth_test()) == "not_authed"
    assert await error_of(client.apps_connections_open(app_token=stub.workspace.bot_token)) == (
        "not_allowed_token_type"
    )
    with pytest.raises(SlackApiError):
        await client.chat_postMessage(channel=CHANNEL, text="x", metadata={"event_payload": {}})
    assert stub.calls[-1].error == "invalid_metadata_schema"


async def test_ratelimited_then_retried_by_slack_sdk(
    stub: SlackStub, client: AsyncWebClient
) -> None:
    stub.rate_limit_next("chat.postMessage", retry_after=1)
    with pytest.raises(SlackApiError) as e:
        await client.chat_postMessage(channel=CHANNEL, text="first")
    assert e.value.response.status_code == 429
    assert e.value.response["error"] == "ratelimited"
    assert e.value.response.headers["Retry-After"] == "1"

    stub.rate_limit_next("chat.postMessage", retry_after=1)
    patient = AsyncWebClient(
        token=stub.workspace.bot_token,
        base_url=stub.api_url,
        retry_handlers=[AsyncRateLimitErrorRetryHandler(max_retry_count=1)],
    )
    started = time.monotonic()
    ok = await patient.chat_postMessage(channel=CHANNEL, text="second")
    assert ok["ok"] and time.monotonic() - started >= 1.0  # it honoured Retry-After
    statuses = [c.status for c in stub.calls_of("chat.postMessage")]
    assert statuses == [429, 429, 200]
    assert [m["text"] for m in stub.messages(CHANNEL)] == ["second"]


async def test_fail_next_over_http(stub: SlackStub, client: AsyncWebClient) -> None:
    async with aiohttp.ClientSession() as http:
        body = {"method": "chat.update", "error": "internal_error", "status": 500}
        async with http.post(f"{stub.url}/_stub/fail", json=body) as resp:
            assert (await resp.json())["pending"] == {"chat.update": 1}
    ts = (await client.chat_postMessage(channel=CHANNEL, text="a"))["ts"]
    with pytest.raises(SlackApiError) as e:
        await client.chat_update(channel=CHANNEL, ts=ts, text="b")
    assert e.value.response.status_code == 500
    assert (await client.chat_update(channel=CHANNEL, ts=ts, text="b"))["ok"]


async def test_a_lost_answer_means_the_call_was_carried_out_but_never_answered(
    stub: SlackStub,
) -> None:
    client = AsyncWebClient(
        token=stub.workspace.bot_token, base_url=stub.api_url, retry_handlers=[]
    )
    stub.lose_answer_next("chat.postMessage")
    with pytest.raises(aiohttp.ClientError):
        await client.chat_postMessage(channel=CHANNEL, text="did this land?")
    assert [m["text"] for m in stub.messages(CHANNEL)] == ["did this land?"]
    assert stub.calls_of("chat.postMessage")[-1].extra["answer_lost"] is True
    assert (await client.chat_postMessage(channel=CHANNEL, text="next"))["ok"]  # one call only


async def test_files_upload_v2_shares_the_png_in_the_thread(
    stub: SlackStub, client: AsyncWebClient
) -> None:
    parent = await client.chat_postMessage(channel=CHANNEL, text="gw-a upgraded")
    png = tiny_png()
    done = await client.files_upload_v2(
        channel=CHANNEL,
        thread_ts=parent["ts"],
        file=png,
        filename="p99.png",
        title="p99 latency",
        initial_comment="evidence",
    )
    file_id = done["file"]["id"]
    assert done["file"] == {"id": file_id, "title": "p99 latency"}  # Slack returns only these

    thread = stub.thread(CHANNEL, parent["ts"])
    assert len(thread) == 2
    shared = thread[1]["files"][0]
    assert (shared["id"], shared["filetype"], shared["mimetype"]) == (file_id, "png", "image/png")
    assert thread[1]["text"] == "evidence" and thread[1]["thread_ts"] == parent["ts"]
    assert stub.files[file_id].content == png
    assert [c.method for c in stub.calls][-3:] == [
        "files.getUploadURLExternal",
        "upload_url",
        "files.completeUploadExternal",
    ]
    headers = {"Authorization": f"Bearer {stub.workspace.bot_token}"}
    async with (
        aiohttp.ClientSession(headers=headers) as http,
        http.get(shared["url_private"]) as resp,
    ):
        assert await resp.read() == png


# -- Socket Mode ------------------------------------------------------------------------------


class Seen:
    """What the bolt app's listeners received."""

    def __init__(self) -> None:
        self.commands: list[dict[str, Any]] = []
        self.actions: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []


def bolt_app(stub: SlackStub, seen: Seen, **kwargs: Any) -> AsyncApp:
    """A real bolt app whose every Web API call goes to the stub."""
    app = AsyncApp(
        client=AsyncWebClient(token=stub.workspace.bot_token, base_url=stub.api_url), **kwargs
    )

    @app.command("/upgrade")
    async def on_upgrade(ack: Any, command: dict[str, Any]) -> None:
        seen.commands.append(command)
        await ack(f"Planning upgrade to {command['text']}")

    @app.action("approve")
    async def on_approve(ack: Any, body: dict[str, Any], respond: Any) -> None:
        await ack()
        seen.actions.append(body)
        await respond(replace_original=True, text=f"Approved by <@{body['user']['id']}>")

    @app.event("reaction_added")
    async def on_reaction(event: dict[str, Any]) -> None:
        seen.events.append(event)

    return app


@pytest.fixture
async def socket_app(stub: SlackStub) -> AsyncIterator[tuple[Seen, AsyncSocketModeHandler]]:
    seen = Seen()
    handler = AsyncSocketModeHandler(bolt_app(stub, seen), app_token=stub.workspace.app_token)
    await handler.connect_async()
    try:
        yield seen, handler
    finally:
        await handler.close_async()


async def test_bolt_over_socket_mode(
    stub: SlackStub, socket_app: tuple[Seen, AsyncSocketModeHandler], client: AsyncWebClient
) -> None:
    seen, _ = socket_app
    ack = await within(stub.users.run_command(ALICE, CHANNEL, "3.8.1"))
    assert ack == {"text": "Planning upgrade to 3.8.1"}
    assert seen.commands[0]["user_id"] == ALICE and seen.commands[0]["channel_id"] == CHANNEL
    # Slack shows the immediate response to the one who typed the command.
    assert stub.ephemerals(CHANNEL, ALICE)[0]["text"] == "Planning upgrade to 3.8.1"

    posted = await client.chat_postMessage(
        channel=CHANNEL, text="Approve?", blocks=approval_blocks(), metadata=METADATA
    )
    message = stub.message(CHANNEL, posted["ts"])
    assert message is not None
    await within(stub.users.click(BOB, CHANNEL, message, "approve"))
    body = (await eventually(lambda: seen.actions))[0]
    action = body["actions"][0]
    assert (action["block_id"], action["value"]) == ("gate", "gate-1")
    assert body["message"]["metadata"] == METADATA
    assert body["container"]["message_ts"] == posted["ts"]
    # respond(replace_original=True) went to the response_url and replaced the message.
    await eventually(lambda: stub.messages(CHANNEL)[0]["text"] == f"Approved by <@{BOB}>")
    assert "blocks" not in stub.messages(CHANNEL)[0]
    with pytest.raises(ValueError, match="approve"):  # the button is gone now
        stub.users.button_click(BOB, CHANNEL, message, "approve")

    await within(stub.users.react(BOB, CHANNEL, posted["ts"], "+1"))
    event = (await eventually(lambda: seen.events))[0]
    assert event["item"] == {"type": "message", "channel": CHANNEL, "ts": posted["ts"]}
    assert event["item_user"] == stub.workspace.bot_user_id

    lines = stub.transcript()
    assert any("@alice: /upgrade 3.8.1" in line for line in lines)
    assert any("only @alice sees" in line and "Planning upgrade" in line for line in lines)
    assert any("@bob clicked [Approve]" in line for line in lines)
    assert any("@bob reacted :+1:" in line for line in lines)


async def test_disconnect_makes_the_client_reconnect(
    stub: SlackStub, socket_app: tuple[Seen, AsyncSocketModeHandler]
) -> None:
    seen, _ = socket_app
    await within(stub.users.run_command(ALICE, CHANNEL, "first"))
    before = stub.socket.connections_opened
    await within(stub.socket.disconnect(reason="refresh_requested"))
    await within(stub.socket.wait_connected(after=before))
    ack = await within(stub.users.run_command(ALICE, CHANNEL, "second"))
    assert ack == {"text": "Planning upgrade to second"}
    assert [c["text"] for c in seen.commands] == ["first", "second"]
    assert len(stub.calls_of("apps.connections.open")) == 2  # a new URL for the new connection


async def test_socket_protocol_hello_ack_and_event_redelivery(stub: SlackStub) -> None:
    """A bare websocket client, to see the frames themselves."""
    opened = await stub.web_client(token=stub.workspace.app_token).apps_connections_open(
        app_token=stub.workspace.app_token
    )
    assert opened["url"].startswith(f"ws://127.0.0.1:{stub.port}/link/?ticket=")
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(opened["url"]) as ws:
            hello = json.loads((await within(ws.receive())).data)
            assert hello["type"] == "hello"
            assert hello["connection_info"] == {"app_id": stub.workspace.app_id}

            payload = stub.users.reaction_added(
                BOB, CHANNEL, stub.users.say(ALICE, CHANNEL, "hi")["ts"], "eyes"
            )
            delivery = asyncio.create_task(
                stub.socket.deliver("events_api", payload, ack_timeout=0.3)
            )
            first = json.loads((await within(ws.receive())).data)
            assert (first["type"], first["retry_attempt"], first["retry_reason"]) == (
                "events_api",
                0,
                "",
            )
            assert first["accepts_response_payload"] is False
            retry = json.loads((await within(ws.receive())).data)  # not acked: redelivered
            assert (retry["retry_attempt"], retry["retry_reason"]) == (1, "timeout")
            assert retry["envelope_id"] != first["envelope_id"]
            assert retry["payload"]["event_id"] == first["payload"]["event_id"]
            await ws.send_str(json.dumps({"envelope_id": retry["envelope_id"]}))
            assert await within(delivery) is None  # acked without a payload

            command = stub.users.slash_command(ALICE, CHANNEL, "3.8.1")
            with pytest.raises(AckTimeout):  # commands are not retried
                await stub.socket.deliver("slash_commands", command, ack_timeout=0.2)
            envelope = json.loads((await within(ws.receive())).data)
            assert envelope["accepts_response_payload"] is True
            assert "retry_attempt" not in envelope
        # The ticket was single-use.
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await http.ws_connect(opened["url"])


# -- signed HTTP ------------------------------------------------------------------------------


@pytest.fixture
async def http_app(stub: SlackStub, port: int) -> AsyncIterator[tuple[Seen, str]]:
    seen = Seen()
    app = bolt_app(stub, seen, signing_secret=stub.workspace.signing_secret)
    runner = web.AppRunner(app.web_app(path="/slack/events"), handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield seen, f"http://127.0.0.1:{port}/slack/events"
    finally:
        await runner.cleanup()


async def test_bolt_over_signed_http(
    stub: SlackStub, http_app: tuple[Seen, str], client: AsyncWebClient
) -> None:
    seen, url = http_app
    sender = SignedSender(stub.workspace.signing_secret, url, stub=stub)
    command = stub.users.slash_command(ALICE, CHANNEL, "3.8.1")

    valid = await sender.send("slash_commands", command)
    assert valid.status == 200 and valid.within_deadline
    assert "Planning upgrade to 3.8.1" in valid.body
    assert stub.ephemerals(CHANNEL, ALICE)[0]["text"] == "Planning upgrade to 3.8.1"

    forged = await sender.send("slash_commands", command, bad_signature=True)
    assert forged.status == 401
    replayed = await sender.send("slash_commands", command, timestamp=int(time.time()) - 6 * 60)
    assert replayed.status == 401
    assert len(seen.commands) == 1

    posted = await client.chat_postMessage(channel=CHANNEL, text="ok?", blocks=approval_blocks())
    message = stub.message(CHANNEL, posted["ts"])
    assert message is not None
    clicked = await sender.send(
        "interactive", stub.users.button_click(BOB, CHANNEL, message, "approve")
    )
    assert clicked.status == 200
    await eventually(lambda: seen.actions)
    event = stub.users.reaction_added(BOB, CHANNEL, posted["ts"], "tada")
    retried = await sender.send("events_api", event, retry_num=1)
    assert retried.status == 200
    await eventually(lambda: seen.events)
    assert [c.kind for c in stub.timeline if c.kind == "http"] == ["http"] * 5


# -- standalone -------------------------------------------------------------------------------


async def test_runs_standalone_and_prints_one_json_line(port: int) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "upgrade_bot.slackstub",
        "--port",
        str(port),
        "--channel",
        "C0DEMO0001=demo",
        "--channel",
        "C0DEMO0002",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        info = json.loads(await within(proc.stdout.readline()))
        assert info["url"] == f"http://127.0.0.1:{port}"
        assert info["channels"] == {"C0DEMO0001": "demo", "C0DEMO0002": "c0demo0002"}
        demo = AsyncWebClient(token=info["bot_token"], base_url=info["api_url"])
        posted = await demo.chat_postMessage(channel="#demo", text="hello")
        assert posted["channel"] == "C0DEMO0001"
        envelope = {"type": "slash_commands", "payload": {}, "connect_timeout": 0.1}
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{info['url']}/_stub/deliver", json=envelope) as resp,
        ):
            assert (await resp.json())["error"] == "not_connected"
    finally:
        if proc.returncode is None:
            proc.terminate()
        await within(proc.wait())
    assert proc.returncode == 0
