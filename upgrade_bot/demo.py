"""``upgrade-bot demo``: the full runbook on the sandbox, with a scripted approver.

The sandbox comes up under steady traffic; a run upgrades every group through the engine; a
scripted on-call approver approves a ``pass`` verdict and rolls back on anything else, as a
careful person would; the transcript is rendered from the run's durable event stream; the report
compares the engine's record with the sandbox's own observed truth.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .engine import PAUSED, WAITING, Command, Engine, Run
from .engine.config import load_config
from .headless import EXIT_COMPLETED, EXIT_FAILED, EXIT_ROLLED_BACK, drive_with_transcript
from .sandbox import manage
from .sandbox.spec import SandboxSpec, group_names, parse_fault
from .wiring import engine_for

REQUESTER = "demo-requester"
APPROVER = "demo-oncall"
BAD_RELEASES = ("never-ready", "errors", "latency")


def add_arguments(demo: argparse.ArgumentParser, version_type: Any, positive: Any) -> None:
    demo.add_argument("--dir", type=Path, default=Path(".demo"))
    demo.add_argument("--groups", type=positive, default=3)
    demo.add_argument("--instances", type=positive, default=3)
    demo.add_argument("--from", dest="from_version", type=version_type, default="3.8.0")
    demo.add_argument("--to", dest="to_version", type=version_type, default="3.8.1")
    demo.add_argument("--bad-release", choices=BAD_RELEASES, default=None)
    demo.add_argument("--report", type=Path, default=None)
    demo.add_argument("--rate", type=float, default=150.0)


async def scripted_approver(engine: Engine, run_id: str) -> Run:
    """Drive the run; at each gate approve a pass, roll back anything else."""
    while True:
        run = await drive_with_transcript(engine, run_id)
        if run.terminal:
            return run
        if run.state == WAITING and run.gate is not None:
            verdict = run.gate.verdict
            action = "approve" if verdict == "pass" else "rollback"
            reason = None if action == "approve" else f"verdict {verdict}: not approving"
            decision = await engine.command(
                run_id, Command(action, APPROVER, gate_id=run.gate.id, reason=reason)
            )
        elif run.state == WAITING:
            decision = await engine.command(run_id, Command("acknowledge", REQUESTER))
        elif run.state == PAUSED:
            decision = await engine.command(
                run_id, Command("rollback", APPROVER, reason=f"paused: {run.reason}")
            )
        else:
            continue
        if decision.refusal:
            raise RuntimeError(f"the scripted approver was refused: {decision.refusal}")


def build_report(
    run: Run, truth: dict[str, Any], traffic_before: dict[str, int], duration_s: float
) -> dict[str, Any]:
    traffic = truth["traffic"]
    slots = {s["id"]: s for s in truth["slots"]}
    groups = []
    for g in run.groups:
        before, after = g.before or {}, g.after or {}
        groups.append(
            {
                "name": g.name,
                "verdict": (g.verdict or {}).get("phase"),
                "p99_ms_before": before.get("p99_ms"),
                "p99_ms_after": after.get("p99_ms"),
                "error_ratio_before": before.get("ratio_5xx"),
                "error_ratio_after": after.get("ratio_5xx"),
                "instances": [
                    {
                        "id": s.id,
                        "version_before": (slots[s.id]["history"] or [None])[0],
                        "version_after": slots[s.id]["version"],
                        "replacements": slots[s.id]["replacements"],
                        "restorations": slots[s.id]["restorations"],
                        "served_before_ready": slots[s.id]["served_before_ready"],
                    }
                    for s in g.slots
                ],
            }
        )
    return {
        "state": run.state,
        "run_id": run.id,
        "reason": run.reason,
        "duration_s": round(duration_s, 1),
        "requests_total": traffic["total"] - traffic_before["total"],
        "requests_failed": traffic["failed"] - traffic_before["failed"],
        "requests_5xx": traffic["requests_5xx"] - traffic_before["requests_5xx"],
        "groups": groups,
    }


@dataclass(frozen=True)
class Rehearsal:
    """A finished demo run while its sandbox is still up (``rehearse``)."""

    run: Run
    """The engine's final record of the run."""
    report: dict[str, Any]
    """``build_report``: the run compared with the sandbox's observed truth."""
    sandbox: manage.SandboxHandle


def demo_spec(args: argparse.Namespace) -> SandboxSpec:
    faults = {}
    if args.bad_release:
        version, fault = parse_fault(f"{args.to_version}={args.bad_release}")
        faults[version] = fault
    return SandboxSpec(
        groups=group_names(args.groups),
        instances=args.instances,
        version=args.from_version,
        cp_version=args.to_version,
        faults=faults,
        rate_per_s=args.rate,
    )


@asynccontextmanager
async def rehearse(args: argparse.Namespace) -> AsyncIterator[Rehearsal]:
    """Bring the sandbox up, carry out the run with the scripted approver, report.

    The sandbox stays up while the caller's block runs (so that it can still be asked about
    what happened) and is taken down when the block ends, whatever happened.
    """
    spec = demo_spec(args)
    print(
        f"sandbox: {len(spec.groups)} groups x {args.instances} instances on "
        f"{args.from_version}, {spec.rate_per_s:g} requests/s through the groups' front doors"
        + (
            f"; release {args.to_version} is secretly bad ({args.bad_release})"
            if args.bad_release
            else ""
        )
    )
    directory = Path(args.dir)
    if manage.read_state(directory.resolve()) is None:
        # A rehearsal starts clean: runs (and group locks) left by an interrupted demo go.
        shutil.rmtree(directory / manage.REDIS_DIR, ignore_errors=True)
    handle = manage.up(directory, spec)
    try:
        config = load_config(handle.config_path)
        async with engine_for(config, config_dir=handle.dir, redis_url=handle.redis_url) as engine:
            traffic_before = handle.status()["traffic"]
            started = time.monotonic()
            run = await engine.start(args.to_version, requester=REQUESTER)
            run = await scripted_approver(engine, run.id)
            duration = time.monotonic() - started
        report = build_report(run, handle.status(), traffic_before, duration)
        yield Rehearsal(run=run, report=report, sandbox=handle)
    finally:
        manage.down(handle.dir)


def exit_status(report: dict[str, Any], bad_release: str | None) -> int:
    """0 when the rehearsal went as it should: a good release completes, a bad one rolls back."""
    if report["requests_failed"]:
        return EXIT_FAILED
    if bad_release is not None:
        return 0 if report["state"] == "rolled_back" else EXIT_FAILED
    return {"completed": EXIT_COMPLETED, "rolled_back": EXIT_ROLLED_BACK}.get(
        report["state"], EXIT_FAILED
    )


async def run_demo(
    args: argparse.Namespace,
    *,
    inspect: Callable[[Rehearsal], Awaitable[None]] | None = None,
) -> int:
    """``upgrade-bot demo``; ``inspect`` (tests) sees the rehearsal before the sandbox goes."""
    async with rehearse(args) as rehearsal:
        if inspect is not None:
            await inspect(rehearsal)
    report = rehearsal.report
    print_report(report)
    if args.report:
        args.report.write_text(json.dumps(report, indent=2))
        print(f"report: {args.report}")
    return exit_status(report, args.bad_release)


def print_report(report: dict[str, Any]) -> None:
    print()
    print(f"run {report['run_id']}: {report['state']} in {report['duration_s']}s")
    print(
        f"traffic during the run: {report['requests_total']} requests, "
        f"{report['requests_failed']} failed, {report['requests_5xx']} answered 5xx by a gateway"
    )
    for g in report["groups"]:
        fmt_ratio = lambda v: "n/a" if v is None else f"{v * 100:.2f}%"  # noqa: E731
        fmt_ms = lambda v: "n/a" if v is None else f"{v:.0f}ms"  # noqa: E731
        print(
            f"  {g['name']}: verdict {g['verdict']}, p99 {fmt_ms(g['p99_ms_before'])} → "
            f"{fmt_ms(g['p99_ms_after'])}, 5xx {fmt_ratio(g['error_ratio_before'])} → "
            f"{fmt_ratio(g['error_ratio_after'])}"
        )
        for i in g["instances"]:
            print(
                f"    {i['id']:<12} {i['version_before']} → {i['version_after']}  "
                f"replaced {i['replacements']}x, restored {i['restorations']}x"
            )
