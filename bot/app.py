"""Building the slack-bolt app: one AsyncApp, listeners attached, Web API calls that honour
Slack's rate limits."""

from __future__ import annotations

from slack_bolt.async_app import AsyncApp
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient

from .listeners import BotContext, register


def web_client(token: str, base_url: str | None = None) -> AsyncWebClient:
    """A Web API client that waits out ``ratelimited`` answers (HTTP 429, Retry-After)."""
    client = AsyncWebClient(token=token, base_url=base_url or "https://slack.com/api/")
    client.retry_handlers.append(AsyncRateLimitErrorRetryHandler(max_retry_count=5))
    return client


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
