"""A local simulator of one API gateway data-plane instance (Apache APISIX / API7 EE).

One OS process serves three listeners, like a real APISIX node:

* proxy (``--proxy-port``): answers every request as the gateway would after routing it;
* status (``--status-port``): the APISIX status API (``/status``, ``/status/ready``) plus a
  sandbox-only ``/sandbox/stats``;
* metrics (``--metrics-port``): ``/apisix/prometheus/metrics`` with the metric names, label sets
  and buckets of the APISIX 3.x prometheus plugin.

Signals follow nginx: SIGQUIT drains gracefully, SIGTERM and SIGINT stop at once.

This module runs inside containers on its own, so it imports only the standard library,
aiohttp and prometheus_client -- never the rest of upgrade_bot.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import random
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import ClientError, ClientSession, ClientTimeout, web
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

log = logging.getLogger("upgrade_bot.sandbox.simulator")

ENV_PREFIX = "GATEWAY_"
METRICS_PATH = "/apisix/prometheus/metrics"
HEARTBEAT_PATH = "/api/dataplane/heartbeat"
MOCK_ROUTE = "/smoke"
PROBE_AGENTS = ("upgrade-bot-readiness/", "sandbox-")
"""User-Agents of probes, not users: the bot's readiness probe through the proxy port
(engine.backends.readiness.PROBE_USER_AGENT) and the sandbox's own front-door health checks and
version observations."""
"""Answered by the gateway itself, like a route with APISIX's mocking plugin (smoke target)."""
# DEFAULT_BUCKETS of apisix/plugins/prometheus/exporter.lua (milliseconds, 1 ms to 60 s).
LATENCY_BUCKETS_MS: tuple[float, ...] = (
    1,
    2,
    5,
    10,
    20,
    50,
    100,
    200,
    500,
    1000,
    2000,
    5000,
    10000,
    30000,
    60000,
)
# Label sets of the APISIX 3.x exporter, in its declaration order.
STATUS_LABELS = ("code", "route", "matched_uri", "matched_host", "service", "consumer", "node")
LATENCY_LABELS = ("type", "route", "service", "consumer", "node")
BANDWIDTH_LABELS = ("type", "route", "service", "consumer", "node")
CONNECTION_STATES = ("active", "accepted", "handled", "reading", "writing", "waiting")
ETCD_INDEX_KEYS = (
    "consumers",
    "global_rules",
    "max_modify_index",
    "prev_index",
    "protos",
    "routes",
    "services",
    "ssls",
    "stream_routes",
    "upstreams",
    "x_etcd_index",
)
# The one route every ready instance serves; node is the (simulated) upstream address.
ROUTE_ID = "1"
MATCHED_URI = "/*"
UPSTREAM_NODE = "127.0.0.1"
RUNNER_SHUTDOWN_TIMEOUT_S = 0.5
PRODUCT_SERVER_NAME = {"apisix": "APISIX", "api7": "API7"}
FAULT_KEYS = {
    "never_ready": bool,
    "slow_start_s": float,
    "error_ratio": float,
    "added_latency_ms": float,
    "no_cp": bool,
    "no_config": bool,
    "not_found_ratio": float,
}


@dataclass(frozen=True)
class Faults:
    never_ready: bool = False
    slow_start_s: float = 0.0
    error_ratio: float = 0.0
    added_latency_ms: float = 0.0
    no_cp: bool = False
    not_found_ratio: float = 0.0
    """This share of requests finds no route (``404 Route Not Found``): a partial config."""
    no_config: bool = False
    """It never receives its routes: ``404 Route Not Found`` to every request, ``/status/ready``
    503, while its ports accept connections (a TCP readiness check passes it)."""

    @classmethod
    def parse(cls, text: str | None) -> Faults:
        """Parse --faults JSON; unknown keys are rejected so that typos do not pass silently."""
        if text is None or not text.strip():
            return cls()
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"faults is not valid JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise ValueError("faults must be a JSON object")
        unknown = sorted(set(raw) - set(FAULT_KEYS))
        if unknown:
            raise ValueError(f"unknown fault keys: {', '.join(unknown)}")
        values: dict[str, Any] = {}
        for key, kind in FAULT_KEYS.items():
            if key not in raw:
                continue
            value = raw[key]
            if kind is bool:
                if not isinstance(value, bool):
                    raise ValueError(f"fault {key} must be a boolean")
            else:
                # bool is an int subclass; reject it so {"error_ratio": true} is an error
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ValueError(f"fault {key} must be a number")
                value = float(value)
                if not math.isfinite(value) or value < 0:
                    raise ValueError(f"fault {key} must be a finite number >= 0")
            values[key] = value
        faults = cls(**values)
        if faults.error_ratio > 1 or faults.not_found_ratio > 1:
            raise ValueError("fault ratios must be within 0..1")
        return faults


@dataclass(frozen=True)
class Config:
    instance_id: str
    slot: str
    group: str
    version: str
    product: str = "apisix"
    host: str = "127.0.0.1"
    proxy_port: int = 9080
    status_port: int = 7085
    metrics_port: int = 9091
    cp_url: str | None = None
    gateway_group_id: str = "default"
    heartbeat_interval: float = 1.0
    ready_delay: float = 0.3
    latency_ms: float = 5.0
    faults: Faults = field(default_factory=Faults)
    metrics_refresh_s: float = 0.0
    shutdown_timeout: float = 30.0
    seed: int | None = None
    log_level: str = "WARNING"

    @property
    def server_header(self) -> str:
        return f"{PRODUCT_SERVER_NAME[self.product]}/{self.version}"

    @property
    def ready_after_s(self) -> float | None:
        """Seconds from start until ready, or None when the instance never becomes ready."""
        if self.faults.never_ready or self.faults.no_config:
            return None
        return self.ready_delay + self.faults.slow_start_s


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    value = _non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range: {text!r}")
    return value


def env_name(flag: str) -> str:
    """`--gateway-group-id` -> `GATEWAY_GATEWAY_GROUP_ID`."""
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


def build_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m upgrade_bot.sandbox.simulator",
        description="Simulated APISIX / API7 EE data-plane instance for the local sandbox. "
        f"Every flag may also come from an environment variable {ENV_PREFIX}<FLAG_NAME> "
        "(e.g. GATEWAY_VERSION); a flag on the command line wins.",
    )

    def add(flag: str, *, required: bool = False, help: str, **kwargs: Any) -> None:
        env = env_name(flag)
        if env in environ:
            # argparse runs `type` on string defaults, so env values are validated like flags
            kwargs["default"] = environ[env]
            required = False
        parser.add_argument(flag, required=required, help=f"{help} [env {env}]", **kwargs)

    add("--instance-id", required=True, help="unique id of this instance")
    add("--slot", required=True, help="fleet slot, e.g. prod-eu/0 (reported as hostname)")
    add("--group", required=True, help="fleet group, e.g. prod-eu")
    add("--version", required=True, help="gateway version, e.g. 3.8.1")
    add("--product", default="apisix", choices=sorted(PRODUCT_SERVER_NAME), help="product")
    add("--host", default="127.0.0.1", help="address all three listeners bind to")
    add("--proxy-port", type=_port, required=True, help="proxy listener port (0 = any)")
    add("--status-port", type=_port, required=True, help="status API port (0 = any)")
    add("--metrics-port", type=_port, required=True, help="prometheus port (0 = any)")
    add("--cp-url", default=None, help="control-plane base URL for heartbeats")
    add("--gateway-group-id", default="default", help="gateway group id sent in heartbeats")
    add("--heartbeat-interval", type=_positive_float, default=1.0, help="seconds")
    add("--ready-delay", type=_non_negative_float, default=0.3, help="seconds until ready")
    add("--latency-ms", type=_non_negative_float, default=5.0, help="base upstream latency")
    add("--faults", default=None, help="JSON object of injected faults")
    add(
        "--metrics-refresh",
        type=_non_negative_float,
        default=0.0,
        help="serve a cached exposition renewed every N s, as APISIX 3.14+ (0: render each time)",
    )
    add(
        "--shutdown-timeout",
        type=_non_negative_float,
        default=30.0,
        help="seconds SIGQUIT waits for in-flight requests",
    )
    add("--seed", type=int, default=None, help="seed the random source (reproducible runs)")
    add("--log-level", default="WARNING", help="stderr log level")
    return parser


def parse_args(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> Config:
    parser = build_parser(os.environ if environ is None else environ)
    ns = parser.parse_args(argv)
    try:
        faults = Faults.parse(ns.faults)
    except ValueError as exc:
        parser.error(f"--faults: {exc}")
    return Config(
        instance_id=ns.instance_id,
        slot=ns.slot,
        group=ns.group,
        version=ns.version,
        product=ns.product,
        host=ns.host,
        proxy_port=ns.proxy_port,
        status_port=ns.status_port,
        metrics_port=ns.metrics_port,
        cp_url=ns.cp_url or None,
        gateway_group_id=ns.gateway_group_id,
        heartbeat_interval=ns.heartbeat_interval,
        ready_delay=ns.ready_delay,
        latency_ms=ns.latency_ms,
        faults=faults,
        metrics_refresh_s=ns.metrics_refresh,
        shutdown_timeout=ns.shutdown_timeout,
        seed=ns.seed,
        log_level=ns.log_level.upper(),
    )


@dataclass
class _Histogram:
    buckets: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS_MS))
    count: int = 0
    total: float = 0.0

    def observe(self, value: float) -> None:
        value = round(value, 3)  # microsecond precision keeps the _sum lines readable
        self.count += 1
        self.total += value
        for i, bound in enumerate(LATENCY_BUCKETS_MS):
            if value <= bound:
                self.buckets[i] += 1
                break

    def cumulative(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip(LATENCY_BUCKETS_MS, self.buckets, strict=True):
            running += n
            out.append((_fmt_number(bound), running))
        out.append(("+Inf", self.count))
        return out


class GatewayMetrics(Collector):
    """The counters behind the prometheus endpoint, exposed under APISIX's own names.

    A custom collector rather than prometheus_client Counter objects, because those always
    append `_total` and APISIX's `apisix_http_status` / `apisix_bandwidth` have no suffix.
    """

    def __init__(self, gateway: Gateway) -> None:
        self._gw = gateway
        self.status: dict[tuple[str, ...], int] = {}
        self.latency: dict[tuple[str, ...], _Histogram] = {}
        self.bandwidth: dict[tuple[str, ...], int] = {}

    def record(
        self,
        *,
        code: int,
        routed: bool,
        request_ms: float,
        upstream_ms: float | None,
        ingress: int,
        egress: int,
    ) -> None:
        route, uri, node = (ROUTE_ID, MATCHED_URI, UPSTREAM_NODE) if routed else ("", "", "")
        service = consumer = ""
        key = (str(code), route, uri, "", service, consumer, node)
        self.status[key] = self.status.get(key, 0) + 1
        apisix_ms = request_ms - (upstream_ms or 0.0)
        observations = [("request", request_ms), ("apisix", max(apisix_ms, 0.0))]
        if upstream_ms is not None:
            observations.append(("upstream", upstream_ms))
        for kind, value in observations:
            hkey = (kind, route, service, consumer, node)
            self.latency.setdefault(hkey, _Histogram()).observe(value)
        for kind, value in (("ingress", ingress), ("egress", egress)):
            bkey = (kind, route, service, consumer, node)
            self.bandwidth[bkey] = self.bandwidth.get(bkey, 0) + value

    def describe(self) -> Iterable[Metric]:
        return []  # names are fixed and unique; skips the registry's collect-to-describe pass

    def collect(self) -> Iterable[Metric]:
        gw = self._gw
        bandwidth = Metric(
            "apisix_bandwidth", "Total bandwidth in bytes consumed per service in APISIX", "counter"
        )
        for key, value in sorted(self.bandwidth.items()):
            bandwidth.add_sample(
                "apisix_bandwidth", dict(zip(BANDWIDTH_LABELS, key, strict=True)), value
            )
        yield bandwidth

        indexes = GaugeMetricFamily(
            "apisix_etcd_modify_indexes", "Etcd modify index for APISIX keys", labels=["key"]
        )
        revision = gw.config_revision
        for key in ETCD_INDEX_KEYS:
            value = revision if key in ("max_modify_index", "routes", "x_etcd_index") else 0
            indexes.add_metric([key], value)
        yield indexes

        yield GaugeMetricFamily(
            "apisix_etcd_reachable",
            "Config server etcd reachable from APISIX, 0 is unreachable",
            value=0 if gw.config.faults.no_cp else 1,
        )

        status = Metric("apisix_http_status", "HTTP status codes per service in APISIX", "counter")
        for key, value in sorted(self.status.items()):
            status.add_sample(
                "apisix_http_status", dict(zip(STATUS_LABELS, key, strict=True)), value
            )
        yield status

        yield GaugeMetricFamily(
            "apisix_http_requests_total",
            "The total number of client requests since APISIX started",
            value=gw.nginx_requests,
        )

        connections = GaugeMetricFamily(
            "apisix_nginx_http_current_connections", "Number of HTTP connections", labels=["state"]
        )
        for state, value in gw.connection_states().items():
            connections.add_metric([state], value)
        yield connections

        # emitted by the nginx-lua-prometheus library itself; a simulator never fails to count
        errors = Metric(
            "apisix_nginx_metric_errors_total", "Number of nginx-lua-prometheus errors", "counter"
        )
        errors.add_sample("apisix_nginx_metric_errors_total", {}, 0)
        yield errors

        latency = HistogramMetricFamily(
            "apisix_http_latency",
            "HTTP request latency in milliseconds per service in APISIX",
            labels=list(LATENCY_LABELS),
        )
        for key, hist in sorted(self.latency.items()):
            latency.add_metric(list(key), hist.cumulative(), hist.total)
        yield latency

        info = GaugeMetricFamily(
            "apisix_node_info", "Info of APISIX node", labels=["hostname", "version"]
        )
        info.add_metric([gw.config.slot, gw.config.version], 1)
        yield info


def _fmt_number(value: float) -> str:
    """Integral values print without a fraction, as nginx-lua-prometheus does."""
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _escape_label(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def render_text(registry: CollectorRegistry) -> str:
    """Prometheus text format 0.0.4 exactly as the collector names it.

    prometheus_client's generate_latest would rename counters to `<name>_total` in the
    HELP/TYPE lines and sort labels; APISIX does neither.
    """
    lines: list[str] = []
    for metric in registry.collect():
        doc = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
        lines.append(f"# HELP {metric.name} {doc}")
        lines.append(f"# TYPE {metric.name} {metric.type}")
        for sample in metric.samples:
            labels = ",".join(f'{k}="{_escape_label(v)}"' for k, v in sample.labels.items())
            label_part = "{" + labels + "}" if labels else ""
            lines.append(f"{sample.name}{label_part} {_fmt_number(sample.value)}")
    return "\n".join(lines) + "\n"


def emit_event(event: str, **fields: Any) -> None:
    """One JSON line on stdout: the channel a fleet manager reads; logs go to stderr."""
    try:
        sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
        sys.stdout.flush()
    except (BrokenPipeError, OSError, ValueError):
        # Nobody reads our stdout any more (the sandbox daemon died): a signal must still stop
        # the instance, so a lost progress line is not an error.
        pass


def _request_length(request: web.BaseRequest, body_len: int) -> int:
    """Approximate nginx $request_length: request line, headers and body."""
    line = len(request.method) + len(request.raw_path) + len("  HTTP/1.1\r\n")
    headers = sum(len(k) + len(v) + 4 for k, v in request.raw_headers)
    return line + headers + 2 + body_len


def _bytes_sent(response: web.Response) -> int:
    """Approximate nginx $bytes_sent; aiohttp adds Date and Content-Length only at send time."""
    headers = sum(len(k) + len(v) + 4 for k, v in response.headers.items())
    body = len(response.body) if isinstance(response.body, bytes) else 0
    return len("HTTP/1.1 200 OK\r\n") + headers + 70 + 2 + body


class Gateway:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.started_at = time.monotonic()
        self.rng = random.Random(config.seed)
        self.ready = False
        self.proxy_port = self.config.proxy_port
        self.served_before_ready = 0
        self._cached_metrics: str | None = None
        self.requests_total = 0  # proxy listener only
        self.in_flight = 0  # proxy requests being handled
        self.handlers_active = 0  # requests being handled on any listener ("writing")
        self.nginx_requests = 0  # requests on any listener, like nginx's stub_status
        self.accepted = 0
        self.config_revision = 0
        self.heartbeats_sent = 0
        self.metrics = GatewayMetrics(self)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.metrics)
        self._runners: list[web.AppRunner] = []
        self._sites: list[web.TCPSite] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ready_handle: asyncio.TimerHandle | None = None
        self._draining = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._done = asyncio.Event()

    # --- listeners -------------------------------------------------------------------------

    def _make_app(
        self, routes: Sequence[tuple[str, str, Callable[..., Awaitable[Any]]]]
    ) -> web.Application:
        app = web.Application(middlewares=[self._count_middleware])
        for method, path, handler in routes:
            app.router.add_route(method, path, handler)
        app.on_response_prepare.append(self._set_server_header)
        return app

    @web.middleware
    async def _count_middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        self.nginx_requests += 1
        self.handlers_active += 1
        self._idle.clear()
        try:
            return await handler(request)
        finally:
            self.handlers_active -= 1
            if self.handlers_active == 0:
                self._idle.set()

    async def _set_server_header(self, request: web.Request, response: web.StreamResponse) -> None:
        # every APISIX response, error pages included, names the product and version
        response.headers["Server"] = self.config.server_header

    async def start(self) -> dict[str, int]:
        cfg = self.config
        apps = {
            "proxy": (self._make_app([("*", "/{tail:.*}", self._proxy)]), cfg.proxy_port),
            "status": (
                self._make_app(
                    [
                        ("GET", "/status", self._status),
                        ("GET", "/status/ready", self._status_ready),
                        ("GET", "/sandbox/stats", self._stats),
                    ]
                ),
                cfg.status_port,
            ),
            "metrics": (self._make_app([("GET", METRICS_PATH, self._metrics)]), cfg.metrics_port),
        }
        ports: dict[str, int] = {}
        for name, (app, port) in apps.items():
            # _drain does the real waiting (up to --shutdown-timeout); by the time the
            # runner's own shutdown runs, only response writes or overdue handlers remain
            runner = web.AppRunner(
                app,
                access_log=None,
                handle_signals=False,
                shutdown_timeout=RUNNER_SHUTDOWN_TIMEOUT_S,
            )
            await runner.setup()
            self._count_accepts(runner)
            site = web.TCPSite(runner, cfg.host, port)
            await site.start()
            self._runners.append(runner)
            self._sites.append(site)
            ports[f"{name}_port"] = int(runner.addresses[0][1])
        self.proxy_port = ports["proxy_port"]

        ready_after = cfg.ready_after_s
        if ready_after is not None:
            delay = max(0.0, ready_after - (time.monotonic() - self.started_at))
            self._ready_handle = asyncio.get_running_loop().call_later(delay, self._mark_ready)
        if cfg.cp_url and not cfg.faults.no_cp:
            self._spawn(self._heartbeat_loop())
        if cfg.metrics_refresh_s > 0:
            self._spawn(self._refresh_metrics())
        return ports

    async def _refresh_metrics(self) -> None:
        """Render the exposition every ``metrics_refresh_s`` (the exporter's timer); the first
        one only after a full interval, the longest a scraper can meet "no data available"."""
        while True:
            await asyncio.sleep(self.config.metrics_refresh_s)
            self._cached_metrics = render_text(self.registry)

    def _count_accepts(self, runner: web.AppRunner) -> None:
        server = runner.server
        assert server is not None
        original = server.connection_made

        # aiohttp has no public accept hook; wrapping the server's own callback gives
        # nginx's "accepted"/"handled" counters without subclassing private runner internals.
        def connection_made(handler: Any, transport: asyncio.Transport) -> None:
            self.accepted += 1
            original(handler, transport)

        server.connection_made = connection_made  # type: ignore[method-assign]

    def connection_states(self) -> dict[str, int]:
        active = sum(len(r.server.connections) for r in self._runners if r.server is not None)
        writing = self.handlers_active
        return {
            "active": active,
            "accepted": self.accepted,
            "handled": self.accepted,
            "reading": 0,
            "writing": writing,
            "waiting": max(active - writing, 0),
        }

    def _mark_ready(self) -> None:
        self.ready = True
        emit_event(
            "ready",
            pid=os.getpid(),
            instance_id=self.config.instance_id,
            after_s=round(time.monotonic() - self.started_at, 3),
        )

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- handlers --------------------------------------------------------------------------

    async def _proxy(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        self.requests_total += 1
        self.in_flight += 1
        try:
            body = await request.read()
            unrouted = self.ready and self.rng.random() < self.config.faults.not_found_ratio
            if not self.ready or unrouted:
                # real APISIX answers this until its workers have loaded the routes. The bot's
                # own readiness probe is not user traffic served too early.
                probe = request.headers.get("User-Agent", "").startswith(PROBE_AGENTS)
                if not self.ready and not probe:
                    self.served_before_ready += 1
                response = web.Response(
                    status=404,
                    text='{"error_msg":"404 Route Not Found"}\n',
                    content_type="text/plain",
                    charset="utf-8",
                )
                upstream_ms = None
            elif request.path == MOCK_ROUTE:
                # A route the gateway answers itself (APISIX's mocking plugin): no upstream, so
                # the upstream fault knobs (errors, latency) never touch it.
                response = web.json_response(
                    {"slot": self.config.slot, "version": self.config.version, "mock": True}
                )
                upstream_ms = None
            else:
                cfg = self.config
                # draw both before awaiting so a seeded run is reproducible under concurrency
                jitter = self.rng.uniform(0.5, 1.5)
                fail = self.rng.random() < cfg.faults.error_ratio
                delay_ms = cfg.latency_ms * jitter + cfg.faults.added_latency_ms
                upstream_started = time.perf_counter()
                await asyncio.sleep(delay_ms / 1000)
                upstream_ms = (time.perf_counter() - upstream_started) * 1000
                if fail:
                    response = web.json_response(
                        {"error_msg": "simulated upstream failure"}, status=500
                    )
                else:
                    response = web.json_response(
                        {
                            "slot": cfg.slot,
                            "version": cfg.version,
                            "instance": cfg.instance_id,
                        }
                    )
            self.metrics.record(
                code=response.status,
                routed=upstream_ms is not None,
                request_ms=(time.perf_counter() - started) * 1000,
                upstream_ms=upstream_ms,
                ingress=_request_length(request, len(body)),
                egress=_bytes_sent(response),
            )
            return response
        finally:
            self.in_flight -= 1

    async def _status(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _status_ready(self, request: web.Request) -> web.Response:
        if self.config.faults.no_cp:
            # an API7 gateway whose dp-manager is unreachable has no configuration: its status
            # endpoint says so (DESIGN §10; APISIX apisix/status answers 503 until every worker
            # has its configuration)
            return web.json_response(
                {"status": "error", "error": "no configuration from the control plane"},
                status=503,
            )
        if self.ready:
            return web.json_response({"status": "ok"})
        return web.json_response(
            {"status": "error", "error": "worker has not received configuration"}, status=503
        )

    async def _stats(self, request: web.Request) -> web.Response:
        cfg = self.config
        return web.json_response(
            {
                "instance_id": cfg.instance_id,
                "slot": cfg.slot,
                "group": cfg.group,
                "version": cfg.version,
                "ready": self.ready,
                "served_before_ready": self.served_before_ready,
                "requests_total": self.requests_total,
                "in_flight": self.in_flight,
                "pid": os.getpid(),
                "config_revision": self.config_revision,
                "heartbeats_sent": self.heartbeats_sent,
            }
        )

    async def _metrics(self, request: web.Request) -> web.Response:
        if self.config.metrics_refresh_s > 0:
            # APISIX 3.14+ (apisix/plugins/prometheus/exporter.lua get_cached_metrics): the
            # exposition the privileged agent last rendered, or 500 before it first has.
            if self._cached_metrics is None:
                return web.json_response(
                    {"message": "Failed to retrieve metrics: no data available"}, status=500
                )
            text = self._cached_metrics
        else:
            text = render_text(self.registry)
        return web.Response(
            text=text,
            content_type="text/plain",
            charset="utf-8",
            headers={"X-Content-Type-Version": "0.0.4"},
        )

    # --- control plane ---------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        cfg = self.config
        assert cfg.cp_url is not None
        url = cfg.cp_url.rstrip("/") + HEARTBEAT_PATH
        timeout = ClientTimeout(total=min(max(cfg.heartbeat_interval, 1.0), 5.0))
        async with ClientSession(timeout=timeout) as session:
            while True:
                await self._heartbeat_once(session, url)
                await asyncio.sleep(cfg.heartbeat_interval)

    async def _heartbeat_once(self, session: ClientSession, url: str) -> None:
        cfg = self.config
        # The data plane's heartbeat as API7's Admin API reference describes it (api7/
        # docs.apiseven.com enterprise_versioned_docs/version-3.2.14.6/reference/admin-api.json
        # @faf96f0e, DataplaneHeartbeat). hostname: the instance's own (a pod's name), unique
        # per instance like its id.
        payload = {
            "instance_id": cfg.instance_id,
            "hostname": cfg.instance_id,
            "ip": cfg.host,
            "version": cfg.version,
            "ports": [self.proxy_port],
            "conf_server_revision": str(self.config_revision),
            "cores": 1,
        }
        try:
            async with session.post(
                url, params={"gateway_group": cfg.gateway_group_id}, json=payload
            ) as resp:
                self.heartbeats_sent += 1
                if resp.status >= 400:
                    log.debug("heartbeat to %s answered %s", url, resp.status)
                    return
                data = await resp.json(content_type=None)
        except (ClientError, TimeoutError, ValueError) as exc:
            # the CP may be down or restarting during a rehearsal; the DP keeps serving
            log.debug("heartbeat to %s failed: %r", url, exc)
            return
        value = data.get("value") if isinstance(data, dict) else None
        revision = value.get("conf_server_revision") if isinstance(value, dict) else None
        if isinstance(revision, str) and revision.isdigit():
            self.config_revision = int(revision)

    # --- stopping --------------------------------------------------------------------------

    def fast_stop(self, signame: str) -> None:
        """SIGTERM/SIGINT: exit now; the kernel closes the sockets under in-flight requests."""
        emit_event("exit", pid=os.getpid(), mode="fast", signal=signame, in_flight=self.in_flight)
        logging.shutdown()
        os._exit(0)

    def graceful_stop(self, signame: str) -> None:
        if self._draining:
            return
        self._draining = True
        self._spawn(self._drain(signame))

    async def _drain(self, signame: str) -> None:
        """SIGQUIT: refuse new connections at once, let in-flight requests finish, exit 0."""
        cfg = self.config
        for site in self._sites:
            await site.stop()  # closes the listening socket: new connects are refused
        emit_event("draining", pid=os.getpid(), signal=signame, in_flight=self.in_flight)
        # one loop turn lets requests already read off the sockets reach their handlers, so
        # pre_shutdown does not mistake them for idle connections (as aiohttp's cleanup does)
        await asyncio.sleep(0)
        for runner in self._runners:
            if runner.server is not None:
                runner.server.pre_shutdown()  # closes idle keep-alive connections now
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout=cfg.shutdown_timeout)
        # whatever still runs after the timeout is cancelled here, as nginx's
        # worker_shutdown_timeout would do
        await asyncio.gather(*(runner.cleanup() for runner in self._runners))
        self._done.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGQUIT, self.graceful_stop, "SIGQUIT")
        loop.add_signal_handler(signal.SIGTERM, self.fast_stop, "SIGTERM")
        loop.add_signal_handler(signal.SIGINT, self.fast_stop, "SIGINT")
        ports = await self.start()
        cfg = self.config
        emit_event(
            "listening",
            pid=os.getpid(),
            instance_id=cfg.instance_id,
            slot=cfg.slot,
            group=cfg.group,
            version=cfg.version,
            product=cfg.product,
            host=cfg.host,
            **ports,
        )
        await self._done.wait()
        if self._ready_handle is not None:
            self._ready_handle.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        emit_event("exit", pid=os.getpid(), mode="graceful", in_flight=self.in_flight)


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_args(argv)
    logging.basicConfig(
        level=config.log_level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

    async def _run() -> None:
        await Gateway(config).run()

    asyncio.run(_run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
