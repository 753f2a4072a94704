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
from .engine.errors import ConfigError, StoreUnavailable
from .engine.runner import Clock
from .ops import DEFAULT_PORT, BotMetrics, OpsServer
from .redis_server import free_port
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
    """Keeps one driver task per unfinished run; the scheduler only wakes it (state is in Redis).

    With several replicas every one tries each run, and the run's lease lets exactly one drive
    it; when that one dies, its lease lapses after ``store.lease_ttl_s`` and the next try of
    another replica takes the run over (counted in ``upgrade_bot_lease_takeovers_total``)."""

    def __init__(self, engine: Engine, metrics: BotMetrics | None = None) -> None:
        self.engine = engine
        self.metrics = metrics or BotMetrics()
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.held_elsewhere: dict[str, str] = {}
        self.driving: set[str] = set()
        self.stopping = False

    async def supervise(self) -> None:
        if self.stopping:
            return
        for run_id in await self.engine.active():
            task = self.tasks.get(run_id)
            if task is None or task.done():
                self.tasks[run_id] = asyncio.create_task(self._drive(run_id), name=run_id)

    async def count_runs(self) -> None:
        """Runs by state, read from Redis when ``/metrics`` is scraped (not every second)."""
        runs = []
        for run_id in await self.engine.active():
            with contextlib.suppress(Exception):  # a run that just ended, an old schema
                runs.append(await self.engine.status(run_id))
        self.metrics.set_runs(runs)

    def _acquired(self, run_id: str) -> None:
        self.driving.add(run_id)
        self.metrics.runs_driven.set(len(self.driving))
        previous = self.held_elsewhere.pop(run_id, None)
        if previous is not None:
            self.metrics.lease_takeovers.inc()
            log.warning("run %s: taken over from %s, whose lease lapsed", run_id, previous)

    async def _drive(self, run_id: str) -> None:
        try:
            result = await self.engine.drive(run_id, until_human=False, on_acquired=self._acquired)
            if result.reason == "stopped":
                log.info("run %s: stopped driving it (lease released)", run_id)
        except LeaseBusy as exc:
            if exc.holder is not None:
                self.held_elsewhere[run_id] = exc.holder
            log.debug("%s", exc)
        except LeaseLost as exc:
            log.warning("%s", exc)
        except Exception:
            log.exception("driver of run %s stopped", run_id)
        finally:
            self.driving.discard(run_id)
            self.metrics.runs_driven.set(len(self.driving))

    async def stop(self, grace_s: float = 20.0) -> None:
        """Take no new run; let each driver finish its step (a save is never cut) and give its
        lease up; after ``grace_s`` an effect still under way is abandoned (the next driver
        redoes it), and a driver still not done after that is cancelled."""
        self.stopping = True
        self.engine.stop_driving()
        tasks = [t for t in self.tasks.values() if not t.done()]
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=max(0.0, grace_s - 2.0))
        if pending:
            log.warning("%d driver(s) mid-effect at the grace's end: abandoning", len(pending))
            self.engine.abandon_effects()
            _, pending = await asyncio.wait(pending, timeout=2.0)
        for task in pending:
            task.cancel()
        for task in pending:
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


DEFAULT_GRACE_S = 25.0
"""SIGTERM to exit: the chart's terminationGracePeriodSeconds (30) less a margin."""


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
    ops_host: str = "0.0.0.0",
    ops_port: int = DEFAULT_PORT,
    shutdown_grace_s: float = DEFAULT_GRACE_S,
) -> None:
    """Serve until ``stop`` is set, then stop within ``shutdown_grace_s``: take no new command
    or run, let each driver finish its step and release its lease, deliver what is left, exit.
    ``clock`` (tests) injects the engine's time."""
    config = load_config(config_path)
    settings: SlackSettings = slack_settings(config.slack, str(config_path))
    secrets = SlackSecrets.from_env(http=http, environ=environ)
    env = dict(os.environ if environ is None else environ)
    redis_url = env.get("REDIS_URL") or redis_url_for(config, require_env=True)
    stop = stop or asyncio.Event()
    metrics = BotMetrics()
    ops = OpsServer(metrics, host=ops_host, port=ops_port)
    try:
        await ops.start()  # /healthz answers while the bot connects
    except OSError as exc:
        raise StartupError(str(exc)) from None
    try:
        async with engine_for(
            config,
            config_dir=config_path.resolve().parent,
            redis_url=redis_url,
            identity=env.get("UPGRADE_BOT_IDENTITY") or None,
            clock=clock,
            environ=env,
        ) as engine:
            await _serve(
                engine,
                config,
                config_path,
                settings,
                secrets,
                metrics,
                ops,
                http=http,
                host=host,
                port=port,
                stop=stop,
                on_ready=on_ready,
                shutdown_grace_s=shutdown_grace_s,
            )
    finally:
        await ops.stop()


async def _serve(
    engine: Engine,
    config: Config,
    config_path: Path,
    settings: SlackSettings,
    secrets: SlackSecrets,
    metrics: BotMetrics,
    ops: OpsServer,
    *,
    http: bool,
    host: str,
    port: int,
    stop: asyncio.Event,
    on_ready: Callable[[dict[str, object]], Awaitable[None]] | None,
    shutdown_grace_s: float,
) -> None:
    client = web_client(secrets.bot_token, secrets.api_url, observer=metrics)
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
        observe=metrics.observe,
    )
    ctx = BotContext(engine=engine, settings=settings, usergroups=usergroups, notifier=notifier)
    app = build_app(ctx, client=client, signing_secret=secrets.signing_secret if http else None)
    supervisor = DriverSupervisor(engine, metrics)
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
    notifier_stop = asyncio.Event()
    notifier_task = asyncio.create_task(notifier.run_forever(notifier_stop))
    runner: web.AppRunner | None = None
    socket: SocketModeClient | None = None
    info: dict[str, object] = {"mode": "http" if http else "socket", "ops": ops.url}

    async def redis_ready() -> str | None:
        try:
            await engine.store.ping()
        except StoreUnavailable as exc:
            return str(exc)
        return None

    async def slack_ready() -> str | None:
        if http:
            return None if runner is not None else "/slack/events is not listening"
        if socket is None or not await socket.is_connected():
            return "the Socket Mode connection to Slack is not open"
        return None

    try:
        if http:
            web_runner = web.AppRunner(app.web_app(path="/slack/events"), access_log=None)
            await web_runner.setup()
            site = web.TCPSite(web_runner, host, port)
            await site.start()
            runner = web_runner
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
        ops.checks = {"redis": redis_ready, "slack": slack_ready}
        ops.before_scrape = supervisor.count_runs
        log.info(
            "upgrade-bot serving (%s) as %s; Slack: %s; channel %s; health and metrics on %s",
            info["mode"],
            engine.identity,
            identity,
            settings.channel,
            ops.url,
        )
        if on_ready is not None:
            await on_ready(info)
        await stop.wait()
        log.info("stopping: no new commands or runs; drivers finish their step")
    finally:
        deadline = asyncio.get_running_loop().time() + shutdown_grace_s
        ops.stopping = True  # /readyz: 503 from now on
        # 1. No new work: commands go to the other replicas, no driver starts here.
        scheduler.shutdown(wait=False)
        if socket is not None:
            await socket.close()
        if runner is not None:
            await runner.cleanup()
        # 2. Drivers return at their next step boundary and release their leases.
        await supervisor.stop(grace_s=max(1.0, deadline - asyncio.get_running_loop().time() - 2))
        # 3. What they recorded is delivered, then the notifier lets another replica deliver.
        notifier_stop.set()
        left = max(0.5, deadline - asyncio.get_running_loop().time())
        try:
            await asyncio.wait_for(notifier_task, left)
        except TimeoutError:
            log.warning("the notifier did not finish within the grace; the next bot delivers")


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

    if "ops_port" not in options:  # several bots in one process (tests): a port each
        options.update(ops_host="127.0.0.1", ops_port=free_port())
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
