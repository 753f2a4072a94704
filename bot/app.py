"""Building the slack-bolt app: one AsyncApp, listeners attached, Web API calls that honour
Slack's rate limits."""

from __future__ import annotations

from slack_bolt.async_app import AsyncApp
from slack_sdk.http_retry.async_handler import RetryState
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
)
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.web.async_client import AsyncWebClient

from .listeners import BotContext, register

SAFE_TO_RESEND = ("chat.update", "conversations.", "users.", "usergroups.", "auth.test")
"""Methods whose repetition has no second effect: re-sent after a dropped connection."""


class ResendSafeOnly(AsyncConnectionErrorRetryHandler):
    """slack_sdk re-sends any call after a dropped connection by default. A post whose answer
    was lost may well have landed, and sending it again would show it twice: only calls that
    are safe to repeat are re-sent here. The notifier recovers a lost post itself, by finding
    it in the thread by its metadata."""

    async def _can_retry_async(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        method = request.url.rsplit("/", 1)[-1]
        return method.startswith(SAFE_TO_RESEND) and await super()._can_retry_async(
            state=state, request=request, response=response, error=error
        )


def web_client(token: str, base_url: str | None = None) -> AsyncWebClient:
    """A Web API client that waits out ``ratelimited`` answers (HTTP 429, Retry-After) and
    re-sends after a dropped connection only what is safe to repeat."""
    return AsyncWebClient(
        token=token,
        base_url=base_url or "https://slack.com/api/",
        retry_handlers=[
            ResendSafeOnly(max_retry_count=2),
            AsyncRateLimitErrorRetryHandler(max_retry_count=5),
        ],
    )


def build_app(ctx: BotContext, *, client: AsyncWebClient, signing_secret: str | None) -> AsyncApp:
    """The bot's AsyncApp. ``signing_secret`` is required for HTTP mode (requests are verified:
    a bad signature or a timestamp older than 5 minutes is answered 401)."""
    app = AsyncApp(
        client=client,
        signing_secret=signing_secret,
        # Socket Mode has no signature; HTTP mode always verifies.
        request_verification_enabled=signing_secret is not None,
        process_before_response=False,
    )
    register(app, ctx)
    return app
