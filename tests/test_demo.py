"""``upgrade-bot demo``: the full rehearsal on the sandbox through the real bot in the Slack
stand-in, judged by its report and by what it printed and what the stand-in recorded.

The default demo and three bad releases go through the real CLI in a subprocess, as a user runs
them. The ``errors`` release runs in-process through ``run_demo`` (the same function the CLI
calls), so that the test can still ask the sandbox about the traffic before it goes down and
compare the report with the engine's own record of the run.

Each demo brings up its own sandbox with its own embedded Redis (no REDIS_URL is passed on).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from upgrade_bot.bot import charts
from upgrade_bot.cli import build_parser
from upgrade_bot.demo import Rehearsal, run_demo
from upgrade_bot.sandbox import manage
from upgrade_bot.sandbox.spec import group_names

from .support import pids_mentioning

pytestmark = [pytest.mark.traffic, pytest.mark.timeout(400)]

OLD, NEW = "3.8.0", "3.8.1"
GROUPS = group_names(3)
INSTANCES = 3
DEMO_TIMEOUT_S = 360.0  # ~60-90 s on an idle machine; generous for a loaded one
# The report must show steady traffic throughout the run: at least this rate (the demo offers
# 150/s), with a margin for the start and end of the run.
MIN_RATE_PER_S = 50.0
RATE_MARGIN = 0.8
# The metric verdict (gateways' Prometheus counters over the after-window) and the traffic
# generator (its per-second buckets, weighted by their overlap with that window) count the same
# requests; they differ only by requests at the window's edges (bucketed by launch time vs.
# counted at completion, ~50 ms apart: about 1 % of a 5 s window at each edge). Measured: at
# most 0.007 apart over 5 runs, while one window's sampling noise around the release's nominal
# 20 % is ~0.025: the comparison checks the measurement, not just the fault knob.
RATIO_TOLERANCE = 0.03


def demo_cli(
    tmp_path: Path, *extra: str, teardown: Callable[[Path], Any] = manage.down
) -> dict[str, Any]:
    """Run ``python -m upgrade_bot demo`` to its end; return its JSON report (with its printed
    output under ``"stdout"``). ``teardown(directory)`` runs whatever happened and returns what
    it found still up (nothing may be)."""
    directory, report = tmp_path / "demo", tmp_path / "report.json"
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    try:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "upgrade_bot",
                "demo",
                "--dir",
                str(directory),
                "--report",
                str(report),
                *extra,
            ],
            capture_output=True,
            text=True,
            timeout=DEMO_TIMEOUT_S,
            env=env,
            cwd=tmp_path,
        )
    finally:
        leftover = teardown(directory)  # whatever happened, nothing stays up
    output = f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}"
    assert proc.returncode == 0, output
    assert not leftover, "the demo left its sandbox up\n" + output
    data: dict[str, Any] = json.loads(report.read_text())
    data["stdout"] = proc.stdout
    return data


def instances(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [i for g in report["groups"] for i in g["instances"]]


def check_rolled_back(report: dict[str, Any]) -> None:
    assert report["state"] == "rolled_back", report["reason"]
    assert [g["name"] for g in report["groups"]] == GROUPS
    slots = instances(report)
    assert len(slots) == len(GROUPS) * INSTANCES
    for i in slots:
        assert (i["version_before"], i["version_after"]) == (OLD, OLD), i
    # Only the first group was ever touched: the bad release is found there.
    for i in instances({"groups": report["groups"][1:]}):
        assert (i["replacements"], i["restorations"]) == (0, 0), i
    for g in report["groups"][1:]:
        assert g["verdict"] is None, g
    assert report["requests_failed"] == 0


def test_default_demo_upgrades_every_slot_once_without_a_failed_request(
    tmp_path: Path,
) -> None:
    report = demo_cli(tmp_path)

    assert report["state"] == "completed", report["reason"]
    assert [g["name"] for g in report["groups"]] == GROUPS
    assert [g["verdict"] for g in report["groups"]] == ["pass"] * len(GROUPS)
    slots = instances(report)
    assert len(slots) == len(GROUPS) * INSTANCES
    assert len({i["id"] for i in slots}) == len(slots)
    for i in slots:
        assert (i["version_before"], i["version_after"]) == (OLD, NEW), i
        assert (i["replacements"], i["restorations"]) == (1, 0), i
    assert report["requests_failed"] == 0
    assert report["requests_5xx"] == 0
    assert report["duration_s"] > 0
    floor = MIN_RATE_PER_S * report["duration_s"] * RATE_MARGIN
    assert report["requests_total"] >= floor, (report["requests_total"], floor)

    # The run went through the bot in Slack: alice typed the command and acknowledged the
    # changelog, bob clicked Approve once per group; the transcript printed shows it as it
    # happened, and the bot's Web API calls all succeeded.
    lines = report["stdout"].splitlines()
    assert any("@alice: /upgrade start 3.8.1" in line for line in lines), lines[:10]
    assert sum("@alice clicked [Acknowledge]" in line for line in lines) == 1
    assert sum("@bob clicked [Approve]" in line for line in lines) == len(GROUPS)
    assert any("Upgrade to 3.8.1 completed" in line for line in lines)
    slack = report["slack"]
    assert slack["failed_calls"] == 0, slack
    assert slack["deliveries"]["slash_commands"] == 1, slack
    assert slack["deliveries"]["interactive"] == len(GROUPS) + 1, slack
    assert slack["calls"]["chat.postMessage"] >= 1 + 2 * len(GROUPS), slack
    # One chart per group was shared in the thread, and saved where the user can open it.
    assert sorted(Path(c).name.removeprefix(report["run_id"] + "-") for c in report["charts"]) == (
        sorted(f"{g}.png" for g in GROUPS)
    )
    assert all(Path(c).read_bytes().startswith(b"\x89PNG") for c in report["charts"])


@pytest.mark.parametrize("kind", ["never-ready", "latency", "no-cp"])
def test_bad_release_is_rolled_back_without_a_failed_request(tmp_path: Path, kind: str) -> None:
    report = demo_cli(tmp_path, "--bad-release", kind)

    check_rolled_back(report)
    first = report["groups"][0]
    if kind == "no-cp":
        # TCP readiness (the demo's choice for this release, as API7's chart ships) let every
        # new instance in; only the control plane's instance list shows them missing.
        assert report["reason"].startswith(
            f"control-plane check failed on {GROUPS[0]}: the CP lists 0 of {INSTANCES} "
            f"instances Healthy on {NEW}; not listed: "
        ), report["reason"]
        for i in first["instances"]:
            assert (i["replacements"], i["restorations"]) == (1, 1), i
        # the dashboard key the bot used appears in no message (stdout: the channel) or report
        key = (tmp_path / "demo" / "cp_api_key").read_text().strip()
        assert len(key) >= 16 and key not in json.dumps(report), "the CP key leaked"
    elif kind == "never-ready":
        # The new instance never became ready: no slot was handed over, none to restore.
        for i in first["instances"]:
            assert (i["replacements"], i["restorations"]) == (0, 0), i
    else:
        assert first["verdict"] == "fail", first
        assert first["p99_ms_after"] > first["p99_ms_before"], first
        for i in first["instances"]:
            assert (i["replacements"], i["restorations"]) == (1, 1), i
        # the report's reason is the rule and its numbers, not only who clicked
        assert "verdict fail: p99 " in report["reason"] and " ms after vs " in report["reason"]


@pytest.mark.parametrize(
    ("kind", "rule"),
    [
        # Ready by TCP, answers 404 Route Not Found: only the 404 rule can stop it.
        ("no-config", "404 ratio 100.0% after vs 0.0% before (limit 2.0%)"),
        # One instance of three errs: named by the outlier rule.
        ("errors@1", "instance prod-eu/1: 5xx ratio"),
    ],
)
def test_a_release_only_the_metric_rules_can_catch_is_rolled_back_naming_the_rule(
    tmp_path: Path, kind: str, rule: str
) -> None:
    report = demo_cli(tmp_path, "--bad-release", kind)

    check_rolled_back(report)
    first = report["groups"][0]
    assert first["verdict"] == "fail", first
    assert rule in report["reason"], report["reason"]
    assert report["reason"].startswith("rollback requested by U0BOB00002 at the prod-eu gate")
    # The printed report says it too.
    assert f"reason: {report['reason']}" in report["stdout"], report["stdout"][-3000:]
    if kind == "no-config":  # and it was told that TCP readiness cannot catch such a release
        assert "readiness is only a TCP connect" in report["stdout"], report["stdout"][:3000]


def generator_ratio(series: list[dict[str, Any]], start: float, end: float) -> tuple[float, float]:
    """The generator's 5xx ratio over [start, end]: per-second buckets weighted by overlap.

    Returns (ratio, weighted request count).
    """
    total = errors = 0.0
    for bucket in series:
        t = bucket["t"]
        overlap = max(0.0, min(t + 1, end) - max(t, start))
        total += overlap * bucket["total"]
        errors += overlap * bucket["requests_5xx"]
    assert total > 0, "the traffic generator sent nothing during the window"
    return errors / total, total


async def test_errors_release_verdict_matches_the_traffic_and_the_report_the_record(
    tmp_path: Path,
) -> None:
    directory, report_path = tmp_path / "demo", tmp_path / "report.json"
    args = build_parser().parse_args(
        ["demo", "--dir", str(directory), "--report", str(report_path), "--bad-release", "errors"]
    )
    seen: dict[str, Any] = {}

    async def inspect(rehearsal: Rehearsal) -> None:
        """While the sandbox is still up: the generator's series for the failing group."""
        failing = rehearsal.run.groups[0].name
        async with httpx.AsyncClient(timeout=30) as client:
            resp = await client.get(
                f"{rehearsal.sandbox.control_url}/traffic", params={"group": failing}
            )
            resp.raise_for_status()
        seen["rehearsal"] = rehearsal
        seen["series"] = resp.json()["series"]

    code = await run_demo(args, inspect=inspect)

    assert not manage.down(directory), "the demo left its sandbox up"
    rehearsal: Rehearsal = seen["rehearsal"]
    report, run = rehearsal.report, rehearsal.run
    assert code == 0, report
    assert json.loads(report_path.read_text()) == report
    check_rolled_back(report)
    assert report["run_id"] == run.id and report["state"] == run.state

    # The failing group: its verdict, and its error ratio as the traffic generator saw it.
    first, g = report["groups"][0], run.groups[0]
    assert first["name"] == g.name == GROUPS[0]
    assert first["verdict"] == "fail", first
    assert first["error_ratio_before"] == 0.0, first
    assert g.settle_snapshot is not None and g.after is not None
    start = float(g.settle_snapshot["taken_at"])
    end = start + float(g.after["duration_s"])
    ratio, requests = generator_ratio(seen["series"], start, end)
    assert requests >= 100, f"too few requests in the window to compare ({requests:.0f})"
    assert first["error_ratio_after"] == pytest.approx(ratio, abs=RATIO_TOLERANCE), (
        f"verdict says {first['error_ratio_after']:.4f}, the traffic generator saw {ratio:.4f} "
        f"over {requests:.0f} requests in [{start:.3f}, {end:.3f}]"
    )

    # Every slot of the report (the sandbox's observed truth) as the engine recorded it.
    recorded = {
        s.id: (s.current_version, s.replacements, s.restorations)
        for g in run.groups
        for s in g.slots
    }
    reported = {
        i["id"]: (i["version_after"], i["replacements"], i["restorations"])
        for i in instances(report)
    }
    assert reported == recorded
    for i in report["groups"][0]["instances"]:
        assert (i["replacements"], i["restorations"]) == (1, 1), i
    assert report["reason"].startswith("rollback requested by U0BOB00002 at the prod-eu gate")
    assert "verdict fail: 5xx ratio" in report["reason"], report["reason"]

    # The chart of the failing group, drawn from this run's record: a time series over the
    # whole window, the replacements at their recorded moments, small enough for a phone.
    png = charts.group_chart(run, g.name)
    assert png is not None and png.startswith(b"\x89PNG") and len(png) < charts.MAX_BYTES
    origin = float(g.baseline_snapshot["taken_at"])
    marks = sorted(
        line.get_xdata()[0]
        for line in charts.group_figure(run, g.name).axes[0].get_lines()
        if line.get_color() == charts.REPLACED_COLOR
    )
    assert marks == pytest.approx(sorted(t - origin for t in g.replaced_at))
    assert len(marks) == INSTANCES
    assert g.points[0]["kind"] == "baseline" and g.points[-1]["kind"] == "settle"

    # In Slack: bob read the FAIL verdict on the gate and clicked Roll back; the gate message
    # was edited in place to say so; the run message ends rolled back; nothing posted twice.
    stub = rehearsal.slack
    clicks = [
        c.params["actions"][0]["action_id"]
        for c in stub.timeline
        if c.kind == "socket" and c.method == "interactive"
    ]
    assert clicks == ["changelog_ack", "gate_rollback"], clicks
    gates = [
        m
        for m in stub.messages("C0UPGRADES", include_replies=True)
        if (m.get("metadata") or {}).get("event_type") == "upgrade_gate"
    ]
    assert len(gates) == 1 and gates[0]["metadata"]["event_payload"]["verdict"] == "fail"
    assert "Rolled back by" in gates[0]["text"] and "U0BOB00002" in gates[0]["text"], gates[0]
    runs = [
        m
        for m in stub.messages("C0UPGRADES")
        if (m.get("metadata") or {}).get("event_type") == "upgrade_run"
    ]
    assert [m["metadata"]["event_payload"]["state"] for m in runs] == ["rolled_back"]
    posted = [
        json.dumps(c.params.get("metadata"), sort_keys=True)
        for c in stub.calls_of("chat.postMessage")
    ]
    assert len(posted) == len(set(posted)), "a message was posted twice"


@pytest.mark.parametrize("bad_release", [None, "errors"])
def test_prometheus_demo_judges_from_a_real_prometheus(
    tmp_path: Path, bad_release: str | None
) -> None:
    """``demo --metrics prometheus``: the system's Prometheus started under --dir, scraping
    the sandbox by file SD (replaced instances included); a good release completes with every
    verdict ``pass``, a bad one is rolled back after the first group; nothing stays up."""
    extra = ["--bad-release", bad_release] if bad_release else []
    report = demo_cli(
        tmp_path, "--metrics", "prometheus", "--groups", "2", "--instances", "2", *extra
    )

    prom_dir = tmp_path / "demo" / "prometheus"
    assert "metrics: Prometheus at http://127.0.0.1:" in report["stdout"]
    config = yaml.safe_load((tmp_path / "demo" / "config.yaml").read_text())
    assert config["metrics"]["type"] == "prometheus"
    assert "Server is ready to receive web requests" in (prom_dir / "prometheus.log").read_text()
    assert not pids_mentioning(str(prom_dir)), "the demo left Prometheus running"
    assert report["requests_failed"] == 0
    verdicts = [g["verdict"] for g in report["groups"]]
    if bad_release is None:
        assert report["state"] == "completed", report["reason"]
        assert verdicts == ["pass", "pass"], report["groups"]
        for i in instances(report):
            assert (i["version_before"], i["version_after"]) == (OLD, NEW), i
    else:
        # stopped in the first group (by the watch while replacing, or at its gate), named by
        # the 5xx rule on Prometheus's numbers; the second group never touched
        assert report["state"] == "rolled_back", report["reason"]
        assert verdicts[0] in ("fail", None) and verdicts[1] is None, report["groups"]
        # what the bot posted in the thread names the rule and its numbers
        assert "5xx ratio" in report["stdout"], report["stdout"][-3000:]
        for i in report["groups"][1]["instances"]:
            assert (i["replacements"], i["restorations"]) == (0, 0), i
        for i in instances(report):
            assert i["version_after"] == OLD, i
