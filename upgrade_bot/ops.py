"""The bot's own operability: ``/healthz``, ``/readyz`` and ``/metrics`` on a port of their own
(in Socket Mode and in HTTP mode alike), and the metrics behind ``/metrics``.

- ``/healthz``: 200 while the process's event loop answers (a liveness probe).
- ``/readyz``: 200 when Redis answers a PING and Slack is connected (Socket Mode: the socket is
  open; HTTP mode: the tokens were accepted and ``/slack/events`` listens); 503 otherwise, and
  from the moment the bot is told to stop — with a JSON body naming what is not ready.
- ``/metrics``: Prometheus text exposition (prometheus_client ``generate_latest``), this
  replica's view: runs by state, gate wait time, step durations, Slack API calls / errors /
  retries, lease takeovers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

from .engine import FINAL_KINDS, EventKind, Run, kind_of

log = logging.getLogger(__name__)

DEFAULT_PORT = 8080
CHECK_TIMEOUT_S = 2.0

Check = Callable[[], Awaitable[str | None]]
"""A readiness check: None when fine, else what is wrong (one line, no secret)."""


class BotMetrics:
    """The metrics ``/metrics`` serves, in a registry of their own (one per bot)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.runs = Gauge(
            "upgrade_bot_runs",
            "Unfinished runs by state, as this replica last read them from Redis",
            ["state"],
            registry=r,
        )
        self.runs_finished = Counter(
            "upgrade_bot_runs_finished",
            "Runs that ended, by final state (counted by the replica that posted the end)",
            ["state"],
            registry=r,
        )
        self.gate_wait = Histogram(
            "upgrade_bot_gate_wait_seconds",
            "Time from an approval gate opening to its decision",
            buckets=(10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400),
            registry=r,
        )
        self.step = Histogram(
            "upgrade_bot_step_duration_seconds",
            "Duration of run steps: slot_replace (replacing → replaced), group (started → gate "
            "or end), rollback (started → rolled back)",
            ["step"],
            buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
            registry=r,
        )
        self.slack_calls = Counter(
            "upgrade_bot_slack_api_calls",
            "Slack Web API calls, by method and outcome (ok, Slack's error code, unreachable)",
            ["method", "outcome"],
            registry=r,
        )
        self.slack_errors = Counter(
            "upgrade_bot_slack_api_errors",
            "Slack Web API calls that failed, by method and error",
            ["method", "error"],
            registry=r,
        )
        self.slack_retries = Counter(
            "upgrade_bot_slack_api_retries",
            "Slack Web API calls sent again by slack_sdk, by method and reason",
            ["method", "reason"],
            registry=r,
        )
        self.lease_takeovers = Counter(
            "upgrade_bot_lease_takeovers",
            "Runs this replica took over after another driver held them",
            registry=r,
        )
        self.runs_driven = Gauge(
            "upgrade_bot_runs_driven",
            "Runs this replica is driving (holds the lease of)",
            registry=r,
        )
        self.ready = Gauge("upgrade_bot_ready", "1 when /readyz answers 200", registry=r)
        self._states: set[str] = set()
        self._opened: dict[str, float] = {}
        self._started: dict[tuple[str, str], float] = {}

    # --- Slack (bot.app.SlackCalls)

    def called(self, method: str, outcome: str) -> None:
        self.slack_calls.labels(method, outcome).inc()
        if outcome != "ok":
            self.slack_errors.labels(method, outcome).inc()

    def retried(self, method: str, reason: str) -> None:
        self.slack_retries.labels(method, reason).inc()

    # --- runs

    def set_runs(self, runs: list[Run]) -> None:
        counts: dict[str, int] = {}
        for run in runs:
            counts[str(run.state)] = counts.get(str(run.state), 0) + 1
        for state in self._states - set(counts):  # states no longer seen drop to 0
            self.runs.labels(state).set(0)
        for state, n in counts.items():
            self.runs.labels(state).set(n)
        self._states |= set(counts)

    def observe(self, run: Run, event: dict[str, Any]) -> None:
        """An event the notifier delivered (once per event across replicas): durations."""
        kind, at = event.get("type"), float(event.get("at") or 0.0)
        if kind == EventKind.GATE_OPENED:
            self._opened[str(event.get("gate"))] = at
            self._ended(run.id, f"group:{event.get('group')}", "group", at)
        elif kind == EventKind.GATE_DECIDED:
            opened = self._opened.pop(str(event.get("gate")), None)
            if opened is None and run.gate is not None and run.gate.id == event.get("gate"):
                opened = run.gate.opened_at
            if opened is not None:
                self.gate_wait.observe(max(0.0, at - opened))
        elif kind == EventKind.SLOT_REPLACING:
            self._started[(run.id, f"slot:{event.get('slot')}")] = at
        elif kind == EventKind.SLOT_REPLACED:
            self._ended(run.id, f"slot:{event.get('slot')}", "slot_replace", at)
        elif kind == EventKind.GROUP_STARTED:
            self._started[(run.id, f"group:{event.get('group')}")] = at
        elif kind == EventKind.ROLLBACK_STARTED:
            self._started[(run.id, "rollback")] = at
        if kind_of(event) in FINAL_KINDS:
            if kind == EventKind.RUN_ROLLED_BACK:
                self._ended(run.id, "rollback", "rollback", at)
            for key in [k for k in self._started if k[0] == run.id]:
                if key[1].startswith("group:"):
                    self._ended(run.id, key[1], "group", at)
                self._started.pop(key, None)
            self.runs_finished.labels(str(kind).removeprefix("run_")).inc()

    def _ended(self, run_id: str, key: str, step: str, at: float) -> None:
        started = self._started.pop((run_id, key), None)
        if started is not None:
            self.step.labels(step).observe(max(0.0, at - started))


class OpsServer:
    """The health and metrics endpoints, on their own port."""

    def __init__(self, metrics: BotMetrics, *, host: str, port: int) -> None:
        self.metrics = metrics
        self.host = host
        self.port = port
        self.checks: dict[str, Check] = {}
        self.before_scrape: Callable[[], Awaitable[None]] | None = None
        """Brings gauges read from elsewhere (runs by state, from Redis) up to date."""
        self.stopping = False
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            self._runner = None
            raise OSError(
                f"the ops port {self.host}:{self.port} (health and metrics) cannot be "
                f"opened: {exc.strerror or exc}; set --ops-port or UPGRADE_BOT_OPS_PORT"
            ) from None

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def problems(self) -> dict[str, str]:
        if self.stopping:
            return {"bot": "stopping"}
        if not self.checks:
            return {"bot": "starting"}

        async def one(check: Check) -> str | None:
            try:
                return await asyncio.wait_for(check(), CHECK_TIMEOUT_S)
            except TimeoutError:
                return f"no answer within {CHECK_TIMEOUT_S:g}s"
            except Exception as exc:  # a check must answer, not crash the probe
                return f"{type(exc).__name__}"

        names = list(self.checks)
        results = await asyncio.gather(*(one(self.checks[n]) for n in names))
        return {n: r for n, r in zip(names, results, strict=True) if r is not None}

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def _readyz(self, request: web.Request) -> web.Response:
        problems = await self.problems()
        self.metrics.ready.set(0 if problems else 1)
        if problems:
            return web.json_response({"status": "not ready", "problems": problems}, status=503)
        return web.json_response({"status": "ready", "checks": sorted(self.checks)})

    async def _metrics(self, request: web.Request) -> web.Response:
        if self.before_scrape is not None:
            try:
                await asyncio.wait_for(self.before_scrape(), CHECK_TIMEOUT_S)
            except Exception:  # Redis away: serve the last values (and /readyz says why)
                log.debug("could not refresh the runs by state", exc_info=True)
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
