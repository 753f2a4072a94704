"""``upgrade-bot serve``: the Slack bot. Wires settings, store, backends, engine and bot together.

Socket Mode when ``SLACK_APP_TOKEN`` is set (no public URL needed); ``--http`` serves the Events
API, interactivity and slash commands on ``/slack/events``. On start it resumes every unfinished
run and its notifier carries on from its cursor, so a restarted bot re-attaches to its messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from slack_sdk.errors import SlackApiError
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.web.async_client import AsyncWebClient

from .bot.app import build_app, web_client
from .bot.listeners import BotContext
from .bot.notifier import UNREACHABLE, Notifier
from .bot.settings import SlackSettings, slack_settings
from .bot.usergroups import UserGroups
from .engine import Engine, LeaseBusy, LeaseLost
from .engine.adapters.controlplane import host_port
from .engine.config import Config, load_config
from .engine.errors import ConfigError
from .engine.runner import Clock
from .wiring import engine_for, redis_url_for

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SlackSecrets:
    bot_token: str
    app_token: str | None
    signing_secret: str | None
    api_url: str | None

    @property
    def base_url(self) -> str:
        return self.api_url or "https://slack.com/api/"

    @classmethod
    def from_env(cls, *, http: bool, environ: dict[str, str] | None = None) -> SlackSecrets:
        env = dict(os.environ if environ is None else environ)
        problems = []
        if not env.get("SLACK_BOT_TOKEN"):
            problems.append("SLACK_BOT_TOKEN is not set (the bot token, xoxb-…)")
        if http and not env.get("SLACK_SIGNING_SECRET"):
            problems.append("SLACK_SIGNING_SECRET is not set (HTTP mode verifies every request)")
        if not http and not env.get("SLACK_APP_TOKEN"):
            problems.append(
                "SLACK_APP_TOKEN is not set (Socket Mode needs an app token, xapp-…; or use --http)"
            )
        if problems:
            raise ConfigError("environment", problems)
        return cls(
            bot_token=env["SLACK_BOT_TOKEN"],
            app_token=env.get("SLACK_APP_TOKEN"),
            signing_secret=env.get("SLACK_SIGNING_SECRET"),
            api_url=env.get("SLACK_API_URL"),
        )


def approvers_of(config: Config) -> Callable[[str], list[str]]:
    """The policy entries (user IDs, user group IDs, ``*``) that may approve a group."""

    def lookup(group: str) -> list[str]:
        try:
            return list(config.policy_for(group).approve)
        except KeyError:
            return []

    return lookup


def escalation_of(config: Config) -> Callable[[str], str | None]:
    def lookup(group: str) -> str | None:
        try:
            return config.approval_for(group).escalation_mention
        except KeyError:
            return None

    return lookup


class DriverSupervisor:
    """Keeps one driver task per unfinished run; the scheduler only wakes it (state is in Redis)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.tasks: dict[str, asyncio.Task[None]] = {}

    async def supervise(self) -> None:
        for run_id in await self.engine.active():
            task = self.tasks.get(run_id)
            if task is None or task.done():
                self.tasks[run_id] = asyncio.create_task(self._drive(run_id), name=run_id)

    async def _drive(self, run_id: str) -> None:
        try:
            await self.engine.drive(run_id, until_human=False)
        except LeaseBusy:
            log.debug("run %s is driven elsewhere", run_id)
        except LeaseLost as exc:
            log.warning("%s", exc)
        except Exception:
            log.exception("driver of run %s stopped", run_id)

    async def stop(self) -> None:
        for task in self.tasks.values():
            task.cancel()
        for task in self.tasks.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


class StartupError(Exception):
    """``serve`` cannot start: the message says what to fix."""


SLACK_AUTH_ERRORS = frozenset(
    {"invalid_auth", "not_authed", "account_inactive", "token_revoked", "token_expired"}
)


async def check_slack(
    client: AsyncWebClient,
    app_client: AsyncWebClient,
    secrets: SlackSecrets,
    *,
    http: bool,
    channel: str,
    config_path: str = "<config>",
) -> str:
    """Ask Slack (``auth.test``, ``apps.connections.open`` for Socket Mode, and a look at the
    channel) whether the tokens and the channel work before serving, so that a wrong token or
    channel is one clear line, not a retry loop or a run nobody sees. Returns who the bot is."""
    where = secrets.base_url
    try:
        auth = await client.auth_test()
        try:
            await client.conversations_history(channel=channel, limit=1)
        except SlackApiError as exc:
            error = exc.response.get("error")
            if error not in ("channel_not_found", "not_in_channel"):
                raise
            raise ConfigError(
                config_path,
                [
                    f"slack.channel: the bot cannot see channel {channel} ({error}): check the "
                    f"ID, and invite the bot there (/invite @{auth.get('user')})"
                ],
            ) from None
        if not http:
            try:
                await app_client.apps_connections_open(app_token=secrets.app_token)
            except SlackApiError as exc:
                error = exc.response.get("error")
                raise ConfigError(
                    "environment",
                    [
                        f"SLACK_APP_TOKEN was refused by Slack ({error}): Socket Mode needs an "
                        "app-level token (xapp-…) with connections:write"
                    ],
                ) from None
    except SlackApiError as exc:
        error = exc.response.get("error")
        if error in SLACK_AUTH_ERRORS:
            raise ConfigError(
                "environment", [f"SLACK_BOT_TOKEN was refused by Slack ({error})"]
            ) from None
        raise StartupError(f"Slack answered auth.test with an error: {error}") from None
    except UNREACHABLE as exc:
        raise StartupError(
            f"the Slack Web API at {host_port(where)} is unreachable ({type(exc).__name__}); "
            "check the network or SLACK_API_URL"
        ) from None
    return f"@{auth.get('user')} in {auth.get('team')}"


async def serve(
    config_path: Path,
    *,
    http: bool = False,
    host: str = "0.0.0.0",
    port: int = 3000,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[dict[str, object]], Awaitable[None]] | None = None,
    environ: dict[str, str] | None = None,
    clock: Clock | None = None,
) -> None:
    """Serve until ``stop`` is set. ``clock`` (tests) injects the engine's time."""
    config = load_config(config_path)
    settings: SlackSettings = slack_settings(config.slack, str(config_path))
    secrets = SlackSecrets.from_env(http=http, environ=environ)
    env = dict(os.environ if environ is None else environ)
    redis_url = env.get("REDIS_URL") or redis_url_for(config, require_env=True)
    stop = stop or asyncio.Event()
    async with engine_for(
        config,
        config_dir=config_path.resolve().parent,
        redis_url=redis_url,
        identity=env.get("UPGRADE_BOT_IDENTITY") or None,
        clock=clock,
    ) as engine:
        client = web_client(secrets.bot_token, secrets.api_url)
        app_client = AsyncWebClient(base_url=secrets.base_url)  # app-level token calls
        identity = await check_slack(
            client,
            app_client,
            secrets,
            http=http,
            channel=settings.channel,
            config_path=str(config_path),
        )
        principals = [
            p
            for g in config.groups
            for field in ("start", "approve", "pause", "resume", "abort", "rollback", "override")
            for p in getattr(config.policy_for(g.name), field)
        ]
        usergroups = UserGroups(client, principals, ttl_s=settings.usergroup_cache_s)
        notifier = Notifier(
            engine,
            client,
            settings,
            approvers_of=approvers_of(config),
            escalation_of=escalation_of(config),
        )
        ctx = BotContext(engine=engine, settings=settings, usergroups=usergroups, notifier=notifier)
        app = build_app(ctx, client=client, signing_secret=secrets.signing_secret if http else None)
        supervisor = DriverSupervisor(engine)
        scheduler = AsyncIOScheduler()
        scheduler.add_job(
            supervisor.supervise,
            "interval",
            seconds=1.0,
            max_instances=1,
            coalesce=True,
            id="supervise",
        )
        await supervisor.supervise()  # resume unfinished runs at once
        scheduler.start()
        notifier_task = asyncio.create_task(notifier.run_forever(stop))
        runner: web.AppRunner | None = None
        socket: SocketModeClient | None = None
        info: dict[str, object] = {"mode": "http" if http else "socket"}
        try:
            if http:
                runner = web.AppRunner(app.web_app(path="/slack/events"), access_log=None)
                await runner.setup()
                site = web.TCPSite(runner, host, port)
                await site.start()
                info["url"] = f"http://{host}:{port}/slack/events"
            else:
                from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler

                handler = AsyncSocketModeHandler(
                    app,
                    secrets.app_token,
                    web_client=app_client,
                )
                await handler.connect_async()
                socket = handler.client  # type: ignore[assignment]
            log.info(
                "upgrade-bot serving (%s) as %s; Slack: %s; channel %s",
                info["mode"],
                engine.identity,
                identity,
                settings.channel,
            )
            if on_ready is not None:
                await on_ready(info)
            await stop.wait()
        finally:
            scheduler.shutdown(wait=False)
            await supervisor.stop()
            await notifier_task
            if socket is not None:
                await socket.close()
            if runner is not None:
                await runner.cleanup()


@contextlib.asynccontextmanager
async def serving(
    config_path: Path, *, ready_within_s: float = 60.0, **options: Any
) -> AsyncIterator[dict[str, object]]:
    """``serve`` in this process for the block's length (the demo, tests): yields once the bot
    is connected (``on_ready``'s info), raises serve's own error if it cannot start, and stops
    it gracefully when the block ends."""
    stop, ready = asyncio.Event(), asyncio.Event()
    info: dict[str, object] = {}

    async def on_ready(reported: dict[str, object]) -> None:
        info.update(reported)
        ready.set()

    task = asyncio.create_task(serve(config_path, stop=stop, on_ready=on_ready, **options))
    waiter = asyncio.create_task(ready.wait())
    try:
        await asyncio.wait(
            {task, waiter}, timeout=ready_within_s, return_when=asyncio.FIRST_COMPLETED
        )
        if task.done():
            task.result()  # serve could not start: its error, as it is
        if not ready.is_set():
            raise StartupError(f"the bot was not ready within {ready_within_s:g}s")
        yield info
    finally:
        waiter.cancel()
        stop.set()
        await asyncio.wait_for(task, 60)
