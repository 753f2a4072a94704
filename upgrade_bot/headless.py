"""Headless commands for pipelines: plan, run, resume, status, approve, pause, abort, rollback,
history. Each prints what happened and exits with a code a pipeline can branch on."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from .engine import (
    ABORTED,
    COMPLETED,
    FAILED,
    OVERRIDES,
    PAUSED,
    ROLLED_BACK,
    WAITING,
    Command,
    Engine,
    Run,
)
from .engine.config import load_config
from .transcript import render_event
from .wiring import engine_for, redis_url_for

EXIT_COMPLETED = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CONFIG = 3
EXIT_ROLLED_BACK = 4
EXIT_WAITING = 5
EXIT_ABORTED = 6
EXIT_REFUSED = 7

EXIT_BY_STATE = {
    COMPLETED: EXIT_COMPLETED,
    ROLLED_BACK: EXIT_ROLLED_BACK,
    FAILED: EXIT_FAILED,
    ABORTED: EXIT_ABORTED,
}


def exit_code(run: Run) -> int:
    return EXIT_BY_STATE.get(run.state, EXIT_WAITING)


def default_user() -> str:
    with contextlib.suppress(Exception):
        return getpass.getuser().lower()
    return "cli"


@contextlib.asynccontextmanager
async def open_engine(args: argparse.Namespace) -> AsyncIterator[Engine]:
    config = load_config(args.config)
    async with engine_for(
        config,
        config_dir=Path(os.path.dirname(os.path.abspath(args.config))),
        redis_url=redis_url_for(config, require_env=False),
    ) as engine:
        yield engine


class Transcript:
    """Prints a run's events from its durable stream as they arrive.

    Its delivery cursor lives in Redis, so a resumed command carries on after the last line it
    printed instead of starting over.
    """

    CONSUMER = "cli-transcript"

    def __init__(self, engine: Engine, run_id: str, out: Callable[[str], None] = print) -> None:
        self.engine = engine
        self.run_id = run_id
        self.cursor: str | None = None
        self.out = out

    async def flush(self) -> None:
        if self.cursor is None:
            self.cursor = await self.engine.feed.cursor(self.CONSUMER, self.run_id)
        events = await self.engine.feed.events(self.run_id, after=self.cursor)
        for event_id, event in events:
            line = render_event(event)
            if line:
                stamp = time.strftime("%H:%M:%S", time.localtime(event.get("at", time.time())))
                for part in line.splitlines():
                    self.out(f"{stamp}  {part}")
            self.cursor = event_id
        if events:
            await self.engine.feed.advance_cursor(self.CONSUMER, self.run_id, self.cursor)

    async def follow(self, stop: asyncio.Event, interval_s: float = 0.2) -> None:
        while not stop.is_set():
            await self.flush()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)
        await self.flush()


async def drive_with_transcript(
    engine: Engine, run_id: str, *, quiet: bool = False, lease_wait_s: float = 0.0
) -> Run:
    transcript = Transcript(engine, run_id, out=(lambda _: None) if quiet else print)
    stop = asyncio.Event()
    follower = asyncio.create_task(transcript.follow(stop))
    try:
        result = await engine.drive(run_id, lease_wait_s=lease_wait_s)
    finally:
        stop.set()
        await follower
    return result.run


def waiting_hint(run: Run) -> str:
    if run.state == WAITING and run.gate is not None:
        return (
            f"waiting for approval of {run.gate.group}: "
            f"upgrade-bot approve {run.id} --config …  (or rollback)"
        )
    if run.state == WAITING:
        return f"waiting: {run.reason}: upgrade-bot acknowledge {run.id} --config …"
    if run.state == PAUSED:
        return f"paused: {run.reason}: upgrade-bot resume {run.id} --config …"
    return f"{run.state}: {run.reason or ''}"


# --- commands -----------------------------------------------------------------------------


async def cmd_plan(args: argparse.Namespace) -> int:
    async with open_engine(args) as engine:
        plan = await engine.plan(args.to, _groups(args))
        cp_groups = await engine.control_plane_groups() if args.cp_groups else None
    if args.json:
        data = dict(plan.__dict__)
        if args.cp_groups:
            data["cp_groups"] = cp_groups
        print(json.dumps(data, indent=2, default=str))
        return EXIT_COMPLETED
    print(
        f"plan {plan.plan_hash}: upgrade to {plan.target_version} "
        f"(fleet now: {plan.current_version or 'unknown'})"
    )
    for i, g in enumerate(plan.groups, 1):
        prod = " [production]" if g["production"] else ""
        print(
            f"  {i}. {g['name']}{prod}: {g['to_replace']}/{len(g['slots'])} slot(s) → "
            f"{g['image']}, {g['batch_size']} at a time, then an approval gate"
        )
        print(f"     ready when: {g['readiness']}")
    cp = plan.control_plane
    print(f"  control plane: {cp.get('version') or cp.get('skipped')}")
    if args.cp_groups:
        _print_cp_groups(cp_groups)
    print(f"  backup: {plan.backup}")
    entries = plan.changelog.get("entries")
    if entries:
        print(f"  changelog: {', '.join(e['version'] for e in entries)} (acknowledge to start)")
    for w in plan.warnings:
        print(f"  warning: {w}")
    for b in plan.blockers:
        print(f"  BLOCKED: {b}")
    return EXIT_REFUSED if plan.blockers else EXIT_COMPLETED


def _print_cp_groups(rows: list[dict[str, Any]] | None) -> None:
    if rows is None:
        print("  control-plane groups: no control plane configured")
        return
    print(f"  control-plane groups ({len(rows)}):")
    for r in rows:
        versions = ", ".join(f"{v}: {n}" for v, n in sorted(r["versions"].items())) or "-"
        statuses = ", ".join(f"{s} {n}" for s, n in sorted(r["statuses"].items())) or "-"
        print(
            f"    {r['name']} ({r['id']}): {r['instances']} instance(s); "
            f"versions {versions}; {statuses}"
        )


async def cmd_run(args: argparse.Namespace) -> int:
    async with open_engine(args) as engine:
        run = await engine.start(
            args.to,
            _groups(args),
            requester=args.user,
            approval_mode=args.approve,
            overrides=args.override,
            waiver=args.backup_waiver,
            acknowledge_changelog=args.acknowledge_changelog,
        )
        print(f"run {run.id} created")
        run = await drive_with_transcript(engine, run.id, quiet=args.quiet)
    return _finish(run)


def _finish(run: Run) -> int:
    if run.state in (WAITING, PAUSED):
        print(waiting_hint(run), file=sys.stderr)
    return exit_code(run)


async def cmd_resume(args: argparse.Namespace) -> int:
    async with open_engine(args) as engine:
        if args.run:
            run = await engine.status(args.run)
            if run.state in (PAUSED, "held"):
                decision = await engine.command(args.run, Command("resume", args.user))
                if decision.refusal:
                    print(f"refused: {decision.refusal}", file=sys.stderr)
                    return EXIT_REFUSED
            return _finish(
                await drive_with_transcript(
                    engine, args.run, quiet=args.quiet, lease_wait_s=args.wait_lease
                )
            )
        results = await engine.resume_all(lease_wait_s=args.wait_lease)
        if not results:
            print("no unfinished runs")
            return EXIT_COMPLETED
        codes = []
        for run_id, result in results.items():
            if isinstance(result, str):
                print(f"{run_id}: not resumed: {result}", file=sys.stderr)
                codes.append(EXIT_FAILED)
                continue
            print(
                f"{run_id}: {result.run.state}"
                + (
                    f" — {waiting_hint(result.run)}"
                    if result.run.state in (WAITING, PAUSED)
                    else ""
                )
            )
            codes.append(exit_code(result.run))
        # The worst outcome decides: failed > rolled back > aborted > waiting > completed.
        for code in (EXIT_FAILED, EXIT_ROLLED_BACK, EXIT_ABORTED, EXIT_WAITING):
            if code in codes:
                return code
        return EXIT_COMPLETED


async def cmd_status(args: argparse.Namespace) -> int:
    async with open_engine(args) as engine:
        if args.run:
            run = await engine.status(args.run)
            if args.json:
                print(json.dumps(run.to_dict(), indent=2, default=str))
            else:
                print_status(run)
            return exit_code(run)
        active = await engine.active()
        runs = [await engine.status(r) for r in active]
    if args.json:
        print(json.dumps([r.to_dict() for r in runs], indent=2, default=str))
    elif not runs:
        print("no unfinished runs")
    for run in runs if not args.json else []:
        print_status(run)
    return EXIT_COMPLETED


def print_status(run: Run) -> None:
    print(
        f"{run.id}: {run.state} → {run.target_version} (by {run.requester})"
        + (f" — {run.reason}" if run.reason else "")
    )
    for g in run.groups:
        done = sum(1 for s in g.slots if s.current_image == g.target_image)
        verdict = (g.verdict or {}).get("phase", "-")
        print(f"  {g.name:<12} {g.status:<18} {done}/{len(g.slots)} on target, verdict {verdict}")
        for s in g.slots:
            print(
                f"    {s.id:<14} {s.current_version or '?':<8} {s.status:<10} "
                f"replaced {s.replacements}x restored {s.restorations}x"
            )


async def cmd_history(args: argparse.Namespace) -> int:
    async with open_engine(args) as engine:
        runs = await engine.history(args.limit)
    if args.json:
        print(json.dumps([_brief(r) for r in runs], indent=2))
        return EXIT_COMPLETED
    if not runs:
        print("no runs yet")
    for r in runs:
        b = _brief(r)
        print(
            f"{b['created']}  {r.id:<36} {r.state:<12} {r.target_version:<8} "
            f"{','.join(g.name for g in r.groups)} by {r.requester}"
        )
    return EXIT_COMPLETED


def _brief(r: Run) -> dict[str, Any]:
    return {
        "run_id": r.id,
        "state": r.state,
        "target_version": r.target_version,
        "groups": [g.name for g in r.groups],
        "requester": r.requester,
        "created": time.strftime("%Y-%m-%d %H:%M", time.localtime(r.created_at)),
        "reason": r.reason,
    }


async def cmd_simple(args: argparse.Namespace) -> int:
    """approve, pause, abort, rollback, acknowledge: one request, then drive if it moved on."""
    action = args.command
    async with open_engine(args) as engine:
        until = time.time() + args.hold_s if getattr(args, "hold_s", None) else None
        decision = await engine.command(
            args.run,
            Command(
                action if until is None else "hold",
                args.user,
                reason=getattr(args, "reason", None),
                until=until,
            ),
        )
        if decision.refusal:
            print(f"refused: {decision.refusal}", file=sys.stderr)
            return EXIT_REFUSED
        run = decision.run
        print(f"{action}: {run.id} is now {run.state}")
        if not args.drive:
            return EXIT_COMPLETED if not run.terminal else exit_code(run)
        if run.state not in (PAUSED, WAITING) and not run.terminal:
            run = await drive_with_transcript(engine, run.id, quiet=args.quiet)
        return _finish(run)


async def cmd_unlock(args: argparse.Namespace) -> int:
    async with open_engine(args) as engine:
        former = await engine.break_lock(args.group, user=args.user, reason=args.reason)
    print(f"lock of {args.group} broken (was held by {former}); audited")
    return EXIT_COMPLETED


def _groups(args: argparse.Namespace) -> list[str] | None:
    if not args.groups:
        return None
    return [g.strip() for g in args.groups.split(",") if g.strip()]


def add_commands(sub: Any, version_type: Callable[[str], str]) -> dict[str, Any]:
    """Register the headless commands on the CLI's subparsers; returns name → coroutine fn."""

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", required=True, type=Path)
        p.add_argument("--as", dest="user", default=default_user(), help="who is asking")
        p.add_argument("--quiet", action="store_true", help="no transcript")

    plan = sub.add_parser("plan", help="show what a run would do")
    common(plan)
    plan.add_argument("--to", required=True, type=version_type)
    plan.add_argument("--groups", default=None, help="comma-separated, in order")
    plan.add_argument("--json", action="store_true")
    plan.add_argument(
        "--cp-groups",
        action="store_true",
        help="also list the control plane's gateway groups, instance counts and versions",
    )

    run = sub.add_parser("run", help="start a run and drive it in the foreground")
    common(run)
    run.add_argument("--to", required=True, type=version_type)
    run.add_argument("--groups", default=None, help="comma-separated, in order")
    run.add_argument("--approve", choices=["human", "auto"], default="human")
    run.add_argument(
        "--override",
        action="append",
        default=[],
        # the backup override is asked for with --backup-waiver, which carries the reason
        choices=[o for o in OVERRIDES if o != "backup"],
    )
    run.add_argument("--backup-waiver", metavar="REASON", default=None)
    run.add_argument("--acknowledge-changelog", action="store_true")

    resume = sub.add_parser("resume", help="drive unfinished runs (or resume a paused one)")
    common(resume)
    resume.add_argument("run", nargs="?")
    resume.add_argument(
        "--wait-lease",
        type=float,
        default=0.0,
        metavar="S",
        help="wait up to S seconds for another driver's lease to lapse (takeover)",
    )

    status = sub.add_parser("status", help="where runs stand")
    common(status)
    status.add_argument("run", nargs="?")
    status.add_argument("--json", action="store_true")

    history = sub.add_parser("history", help="recent runs")
    common(history)
    history.add_argument("--limit", type=int, default=20)
    history.add_argument("--json", action="store_true")

    for name, text in [
        ("approve", "approve the open gate"),
        ("pause", "pause a run (or --hold-s S for a timed hold)"),
        ("abort", "stop where it is"),
        ("rollback", "roll back every touched group, newest first"),
        ("acknowledge", "acknowledge the changelog"),
    ]:
        p = sub.add_parser(name, help=text)
        common(p)
        p.add_argument("run")
        p.add_argument("--reason", default=None)
        p.add_argument(
            "--no-drive",
            dest="drive",
            action="store_false",
            help="only record the request; a running driver carries it out",
        )
        if name == "pause":
            p.add_argument("--hold-s", type=float, default=None)

    unlock = sub.add_parser("unlock", help="break-glass: free a group whose run is gone")
    common(unlock)
    unlock.add_argument("group")
    unlock.add_argument("--reason", required=True)

    return {
        "plan": cmd_plan,
        "run": cmd_run,
        "resume": cmd_resume,
        "status": cmd_status,
        "history": cmd_history,
        "approve": cmd_simple,
        "pause": cmd_simple,
        "abort": cmd_simple,
        "rollback": cmd_simple,
        "acknowledge": cmd_simple,
        "unlock": cmd_unlock,
    }
