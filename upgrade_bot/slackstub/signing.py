"""Signed HTTP requests to an app's ``/slack/events`` URL, formatted exactly as Slack sends them.

Request URL mode ("Verifying requests from Slack", docs.slack.dev/authentication/
verifying-requests-from-slack): the body is signed as ``v0:{timestamp}:{body}`` with HMAC-SHA256
and the signing secret; headers ``X-Slack-Request-Timestamp`` and ``X-Slack-Signature: v0=<hex>``.
Apps must refuse a timestamp more than five minutes from now. Bodies by kind:

* ``slash_commands`` — ``application/x-www-form-urlencoded`` fields (``token=…&team_id=…``);
* ``interactive`` — ``application/x-www-form-urlencoded`` with one field, ``payload=<JSON>``;
* ``events_api`` — ``application/json``, the ``event_callback`` (or ``url_verification``) body.

Retried event deliveries carry ``X-Slack-Retry-Num`` and ``X-Slack-Retry-Reason``
(``http_timeout``, ``http_error``, …). Slack waits 3 seconds for the response;
:attr:`HttpDelivery.within_deadline` tells whether the app made it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import aiohttp

from .recorder import Call

if TYPE_CHECKING:
    from .server import SlackStub

KINDS = ("slash_commands", "interactive", "events_api")
SLACK_DEADLINE_S = 3.0
USER_AGENT = "Slackbot 1.0 (+https://api.slack.com/robots)"


def sign(signing_secret: str, timestamp: int | str, body: str) -> str:
    """``v0=<hex>`` for this body and timestamp."""
    base = f"v0:{timestamp}:{body}".encode()
    return "v0=" + hmac.new(signing_secret.encode(), base, hashlib.sha256).hexdigest()


def encode_body(kind: str, payload: dict[str, Any]) -> tuple[str, str]:
    """``(body, content_type)`` for one kind of request."""
    if kind == "slash_commands":
        return urlencode({k: str(v) for k, v in payload.items()}), (
            "application/x-www-form-urlencoded"
        )
    if kind == "interactive":
        compact = json.dumps(payload, separators=(",", ":"))
        return urlencode({"payload": compact}), "application/x-www-form-urlencoded"
    if kind == "events_api":
        return json.dumps(payload, separators=(",", ":")), "application/json"
    raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")


def url_verification(challenge: str, token: str = "stubverificationtoken000") -> dict[str, Any]:
    """The handshake Slack sends when a Request URL is saved."""
    return {"token": token, "challenge": challenge, "type": "url_verification"}


@dataclass
class HttpDelivery:
    """What the app answered."""

    status: int
    body: str
    headers: dict[str, str]
    elapsed: float

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)

    @property
    def within_deadline(self) -> bool:
        """Whether the app answered within Slack's 3 seconds."""
        return self.elapsed <= SLACK_DEADLINE_S


class SignedSender:
    """Posts Slack-signed requests to one URL (an app's ``/slack/events``).

    Given the stub, it also records each delivery (``kind="http"``) and, for slash commands,
    shows the app's response the way Slack would (ephemeral unless ``in_channel``).
    """

    def __init__(
        self,
        signing_secret: str,
        url: str,
        *,
        stub: SlackStub | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.signing_secret = signing_secret
        self.url = url
        self.stub = stub
        self.timeout = timeout

    async def send(
        self,
        kind: str,
        payload: dict[str, Any],
        retry_num: int | None = None,
        timestamp: int | None = None,
        bad_signature: bool = False,
        retry_reason: str = "http_timeout",
    ) -> HttpDelivery:
        """Sign and POST one payload; returns status, body, headers and elapsed seconds.

        ``timestamp`` defaults to now (pass an old one to test replay protection);
        ``bad_signature`` signs with a wrong secret; ``retry_num`` adds the retry headers.
        """
        body, content_type = encode_body(kind, payload)
        ts = int(time.time()) if timestamp is None else timestamp
        secret = self.signing_secret + ("-wrong" if bad_signature else "")
        headers = {
            "Content-Type": content_type,
            "User-Agent": USER_AGENT,
            "X-Slack-Request-Timestamp": str(ts),
            "X-Slack-Signature": sign(secret, ts, body),
        }
        if retry_num is not None:
            headers["X-Slack-Retry-Num"] = str(retry_num)
            headers["X-Slack-Retry-Reason"] = retry_reason
        # Recorded before sending so the record keeps the order things happened in.
        call = (
            None
            if self.stub is None
            else self.stub.recorder.record("http", kind, payload, None, 102, retry_num=retry_num)
        )
        started = time.monotonic()
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(self.url, data=body.encode(), headers=headers) as resp,
        ):
            text = await resp.text()
            result = HttpDelivery(resp.status, text, dict(resp.headers), time.monotonic() - started)
        if self.stub is not None and call is not None:
            self._complete(self.stub, call, kind, payload, result)
        return result

    @staticmethod
    def _complete(
        stub: SlackStub, call: Call, kind: str, payload: dict[str, Any], result: HttpDelivery
    ) -> None:
        response: Any = result.body
        if result.headers.get("Content-Type", "").startswith("application/json") and result.body:
            response = result.json()
        call.response, call.status = response, result.status
        call.extra["elapsed"] = result.elapsed
        if kind == "slash_commands" and result.status == 200:
            stub.apply_command_response(payload, response)
