"""The bot's own operability, piece by piece (the fast lane): its logs (JSON or text, with run /
group / slot ids, secrets redacted), its metrics (from a whole run's events), and the health,
readiness and metrics endpoints on their own port. tests/slack/test_replicas.py shows them on
real replicas."""

from __future__ import annotations

import io
import json
import logging

import httpx
import pytest

from upgrade_bot.engine import COMPLETED, logctx
from upgrade_bot.logs import MASK, configure, secrets_in
from upgrade_bot.ops import BotMetrics, OpsServer

from .conftest import free_port
from .engine.runs import REQUESTER, Sim

SECRETS = {
    "SLACK_BOT_TOKEN": "xoxb-1111-2222-abcdefabcdef",
    "SLACK_APP_TOKEN": "xapp-1-A0-3333-abcdefabcdef",
    "SLACK_SIGNING_SECRET": "8f14e45fceea167a5a36dedd4bea2543",
    "CP_API_KEY": "a7ee-key-0123456789",
    "REDIS_URL": "redis://upgrade-bot:s3cr3t-pa55word@redis.internal:6379/0",
    "REDIS_SENTINEL_PASSWORD": "sentinel-pass-42",
}


@pytest.fixture
def logged():  # type: ignore[no-untyped-def]
    """Configure the root logger like ``serve`` does, into a buffer; restore it afterwards."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    buffers: list[io.StringIO] = []

    def setup(fmt: str, level: str = "DEBUG") -> io.StringIO:
        buffers.append(io.StringIO())
        configure(fmt, level, environ=SECRETS, stream=buffers[-1])
        return buffers[-1]

    yield setup
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def leak_everything(log: logging.Logger) -> None:
    """Every way a secret reaches a log line: the message, its arguments, a URL, a traceback."""
    log.info("token %s and app token %s", SECRETS["SLACK_BOT_TOKEN"], SECRETS["SLACK_APP_TOKEN"])
    log.debug("signing with %s; key %s", SECRETS["SLACK_SIGNING_SECRET"], SECRETS["CP_API_KEY"])
    log.warning("connecting to %s", SECRETS["REDIS_URL"])
    log.warning("some other URL https://someone:other-password@example.invalid/x")
    try:
        raise ConnectionError(f"AUTH failed for {SECRETS['REDIS_SENTINEL_PASSWORD']}")
    except ConnectionError:
        log.exception("sentinel refused")


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_no_secret_reaches_a_log_line_whatever_logs_it(logged, fmt: str) -> None:  # type: ignore[no-untyped-def]
    out = logged(fmt)
    leak_everything(logging.getLogger("slack_sdk.web"))
    text = out.getvalue()
    for name, value in [*SECRETS.items(), ("redis password", "s3cr3t-pa55word")]:
        if name != "REDIS_URL":
            assert value not in text, f"{name} leaked in {fmt} logs"
    assert "other-password" not in text
    assert "redis.internal:6379" in text  # where it connects stays readable
    assert text.count(MASK) >= 7
    assert "sentinel refused" in text and "ConnectionError" in text


def test_secrets_are_found_by_name_and_inside_urls() -> None:
    found = secrets_in({**SECRETS, "HOME": "/root", "SHORT_TOKEN": "abc", "X_URL": "http://h/"})
    assert "s3cr3t-pa55word" in found
    assert SECRETS["SLACK_BOT_TOKEN"] in found and SECRETS["CP_API_KEY"] in found
    assert "/root" not in found and "abc" not in found and "http://h/" not in found


def test_json_lines_carry_the_run_group_and_slot_they_are_about(logged) -> None:  # type: ignore[no-untyped-def]
    out = logged("json", "INFO")
    log = logging.getLogger("upgrade_bot.engine.backends.docker")
    log.info("before any run")
    with logctx.bound(run="up-3.8.1-x"):
        log.info("driving")
        with logctx.bound(group="prod-eu", slot="prod-eu/1"):
            log.warning("replacing %s", "gw-1")
        log.debug("not at INFO")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [x["message"] for x in lines] == ["before any run", "driving", "replacing gw-1"]
    assert "run" not in lines[0]
    assert lines[1]["run"] == "up-3.8.1-x" and "group" not in lines[1]
    assert {k: lines[2][k] for k in ("run", "group", "slot", "level", "logger")} == {
        "run": "up-3.8.1-x",
        "group": "prod-eu",
        "slot": "prod-eu/1",
        "level": "WARNING",
        "logger": "upgrade_bot.engine.backends.docker",
    }


def test_text_lines_name_the_run_too(logged) -> None:  # type: ignore[no-untyped-def]
    out = logged("text", "INFO")
    with logctx.bound(run="up-1", group="g"):
        logging.getLogger("x").info("hello")
    assert "[run=up-1] [group=g] hello" in out.getvalue()


def test_a_bad_log_setting_is_named() -> None:
    with pytest.raises(ValueError, match="log format 'xml'"):
        configure("xml")
    with pytest.raises(ValueError, match="log level 'LOUD'"):
        configure("json", "LOUD")


# --- metrics ------------------------------------------------------------------------------------


def sample(metrics: BotMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels or None)
    return 0.0 if value is None else value


def test_a_whole_run_becomes_gate_waits_step_durations_and_an_outcome() -> None:
    sim = Sim()
    sim.drive_to_gate("staging")
    sim.now += 90  # the on-call engineer takes 90 s to approve
    sim.approve("UALICE")
    sim.drive_to_gate("prod-eu")
    sim.now += 600
    sim.approve("UALICE", "UBOB")
    sim.drive()
    assert sim.run.state == COMPLETED

    metrics = BotMetrics()
    for event in sim.events:
        metrics.observe(sim.run, event)

    slots = sum(len(g.slots) for g in sim.run.groups)
    assert sample(metrics, "upgrade_bot_gate_wait_seconds_count") == 2
    assert sample(metrics, "upgrade_bot_gate_wait_seconds_sum") == pytest.approx(690, abs=1)
    assert sample(metrics, "upgrade_bot_step_duration_seconds_count", step="slot_replace") == slots
    assert sample(metrics, "upgrade_bot_step_duration_seconds_count", step="group") == len(
        sim.run.groups
    )
    assert sample(metrics, "upgrade_bot_runs_finished_total", state="completed") == 1
    assert sample(metrics, "upgrade_bot_runs_finished_total", state="rolled_back") == 0


def test_runs_by_state_follow_what_is_unfinished() -> None:
    waiting, paused = Sim(), Sim(start={"run_id": "run-2"})
    waiting.drive_to_gate("staging")
    paused.drive_to_gate("staging")
    paused.cmd("pause", REQUESTER)
    metrics = BotMetrics()
    metrics.set_runs([waiting.run, paused.run])
    assert sample(metrics, "upgrade_bot_runs", state="waiting") == 1
    assert sample(metrics, "upgrade_bot_runs", state="paused") == 1
    metrics.set_runs([waiting.run])
    assert sample(metrics, "upgrade_bot_runs", state="paused") == 0


def test_slack_calls_errors_and_retries_are_counted() -> None:
    metrics = BotMetrics()
    metrics.called("chat.postMessage", "ok")
    metrics.called("chat.postMessage", "ratelimited")
    metrics.retried("chat.postMessage", "ratelimited")
    metrics.called("chat.update", "unreachable")
    assert sample(metrics, "upgrade_bot_slack_api_calls_total", method="chat.postMessage",
                  outcome="ok") == 1  # fmt: skip
    assert sample(metrics, "upgrade_bot_slack_api_errors_total", method="chat.postMessage",
                  error="ratelimited") == 1  # fmt: skip
    assert sample(metrics, "upgrade_bot_slack_api_errors_total", method="chat.update",
                  error="unreachable") == 1  # fmt: skip
    assert sample(metrics, "upgrade_bot_slack_api_retries_total", method="chat.postMessage",
                  reason="ratelimited") == 1  # fmt: skip


# --- the endpoints ------------------------------------------------------------------------------


async def test_health_readiness_and_metrics_answer_on_their_own_port() -> None:
    server = OpsServer(BotMetrics(), host="127.0.0.1", port=free_port())
    await server.start()
    redis_down: list[str] = []

    async def redis_check() -> str | None:
        return redis_down[0] if redis_down else None

    async def slack_check() -> str | None:
        return None

    try:
        async with httpx.AsyncClient(base_url=server.url) as http:
            assert (await http.get("/healthz")).json() == {"status": "alive"}
            starting = await http.get("/readyz")
            assert starting.status_code == 503
            assert starting.json()["problems"] == {"bot": "starting"}

            server.checks = {"redis": redis_check, "slack": slack_check}
            ready = await http.get("/readyz")
            assert ready.status_code == 200, ready.text
            redis_down.append("Redis at 10.0.0.5:6379 is unreachable (ConnectionError)")
            down = await http.get("/readyz")
            assert down.status_code == 503
            assert down.json()["problems"] == {"redis": redis_down[0]}
            redis_down.clear()

            server.stopping = True
            assert (await http.get("/readyz")).json()["problems"] == {"bot": "stopping"}
            assert (await http.get("/healthz")).status_code == 200  # alive while it stops

            metrics = await http.get("/metrics")
            assert metrics.headers["content-type"].startswith("text/plain")
            for name in (
                "upgrade_bot_runs",
                "upgrade_bot_gate_wait_seconds",
                "upgrade_bot_step_duration_seconds",
                "upgrade_bot_slack_api_calls_total",
                "upgrade_bot_slack_api_retries_total",
                "upgrade_bot_lease_takeovers_total",
            ):
                assert f"# TYPE {name.removesuffix('_total')}" in metrics.text, name
    finally:
        await server.stop()


async def test_a_taken_ops_port_is_a_clear_error() -> None:
    port = free_port()
    first = OpsServer(BotMetrics(), host="127.0.0.1", port=port)
    await first.start()
    try:
        with pytest.raises(OSError, match=rf"ops port 127.0.0.1:{port} .* UPGRADE_BOT_OPS_PORT"):
            await OpsServer(BotMetrics(), host="127.0.0.1", port=port).start()
    finally:
        await first.stop()
