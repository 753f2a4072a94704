"""Building the slack-bolt app: one AsyncApp, listeners attached, Web API calls that honour
Slack's rate limits."""

from __future__ import annotations

from typing import Any, Protocol

from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.async_handler import RetryState
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
)
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse

from .listeners import BotContext, register


class SlackCalls(Protocol):
    """What the bot's own metrics want to know about its Web API use."""

    def called(self, method: str, outcome: str) -> None:
        """One call ended: ``ok``, Slack's error code (``ratelimited``, ``channel_not_found``,
        …), or ``unreachable`` (no answer)."""

    def retried(self, method: str, reason: str) -> None:
        """slack_sdk is about to send ``method`` again (``ratelimited``, ``connection``)."""


def _method(request: HttpRequest) -> str:
    return request.url.rsplit("/", 1)[-1]

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
        method = _method(request)
        return method.startswith(SAFE_TO_RESEND) and await super()._can_retry_async(
            state=state, request=request, response=response, error=error
        )

    observer: SlackCalls | None = None

    async def prepare_for_next_attempt_async(self, **kwargs: Any) -> None:
        if self.observer is not None:
            self.observer.retried(_method(kwargs["request"]), "connection")
        await super().prepare_for_next_attempt_async(**kwargs)


class RateLimitRetries(AsyncRateLimitErrorRetryHandler):
    """slack_sdk's handler for HTTP 429 (waits Retry-After), counted."""

    observer: SlackCalls | None = None

    async def prepare_for_next_attempt_async(self, **kwargs: Any) -> None:
        if self.observer is not None:
            self.observer.retried(_method(kwargs["request"]), "ratelimited")
        await super().prepare_for_next_attempt_async(**kwargs)


class ObservedWebClient(AsyncWebClient):
    """``AsyncWebClient`` whose every call (after slack_sdk's own retries) is reported.
    ``api_call`` is the one method every Web API method goes through (slack_sdk
    ``web/async_base_client.py``); a Slack error arrives as ``SlackApiError``."""

    observer: SlackCalls | None = None

    async def api_call(self, api_method: str, **kwargs: Any) -> AsyncSlackResponse:
        if self.observer is None:
            return await super().api_call(api_method, **kwargs)
        try:
            response = await super().api_call(api_method, **kwargs)
        except SlackApiError as exc:
            self.observer.called(api_method, str(exc.response.get("error") or "error"))
            raise
        except Exception:
            self.observer.called(api_method, "unreachable")
            raise
        self.observer.called(api_method, "ok")
        return response


def web_client(
    token: str, base_url: str | None = None, *, observer: SlackCalls | None = None
) -> AsyncWebClient:
    """A Web API client that waits out ``ratelimited`` answers (HTTP 429, Retry-After) and
    re-sends after a dropped connection only what is safe to repeat; ``observer`` hears of
    every call and retry."""
    resend = ResendSafeOnly(max_retry_count=2)
    ratelimit = RateLimitRetries(max_retry_count=5)
    client = ObservedWebClient(
        token=token,
        base_url=base_url or "https://slack.com/api/",
        retry_handlers=[resend, ratelimit],
    )
    client.observer = resend.observer = ratelimit.observer = observer
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
