"""``upgrade-bot demo``: the full runbook on the sandbox, driven through the real bot in Slack.

The sandbox comes up under steady traffic; the Slack stand-in comes up and the real bot
(``serve``, slack-bolt over Socket Mode) connects to it; scripted people act in the channel —
the requester types ``/upgrade start``, acknowledges the changelog; the on-call engineer clicks
Approve on a ``pass`` verdict and Roll back on anything else, as a careful person would. The
transcript printed is the stand-in's record of what the bot posted and what people did; the
report compares the engine's record with the sandbox's own observed truth.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import yaml

from . import podman
from .bot.settings import slack_settings
from .engine import EventKind, Run, ms, pct
from .engine.config import load_config
from .engine.metrics_config import PrometheusMetrics
from .headless import EXIT_COMPLETED, EXIT_FAILED, EXIT_ROLLED_BACK
from .prometheus_server import PrometheusError, PrometheusServer, TargetSync
from .sandbox import manage
from .sandbox.spec import READINESS_MODES, SandboxSpec, group_names, parse_fault
from .serve import serving
from .slackstub import SlackStub, buttons
from .wiring import engine_for

if TYPE_CHECKING:
    # Imported where used: the emulated cluster needs the `sandbox` extra (kmock), which
    # `serve` and the container image do without.
    from .sandbox.kube.rehearsal import KubeSandboxProcess

REQUESTER = "U0ALICE001"  # alice, in the Slack stand-in's workspace
APPROVER = "U0BOB00002"  # bob, on call (user group S0ONCALL01)
BAD_RELEASES = ("never-ready", "errors", "latency", "no-config", "errors@1", "no-cp")
TCP_READINESS_RELEASES = ("no-config", "no-cp")
"""Bad releases that a real readiness check would catch (a gateway without its configuration
answers 503 on /status/ready): for them the demo judges readiness by TCP only, as the vendors'
Helm charts do, so that only the metric verdict (no-config) or the control-plane check (no-cp:
instances that cannot reach the CP) can stop them."""
NO_SMOKE_RELEASES = ("no-config",)
"""Bad releases a smoke request would catch: the demo sends none for them."""
ENDED = frozenset({"completed", "rolled_back", "failed", "aborted"})


def add_arguments(demo: argparse.ArgumentParser, version_type: Any, positive: Any) -> None:
    demo.add_argument("--dir", type=Path, default=Path(".demo"))
    demo.add_argument("--groups", type=positive, default=3)
    demo.add_argument("--instances", type=positive, default=3)
    demo.add_argument("--from", dest="from_version", type=version_type, default="3.8.0")
    demo.add_argument("--to", dest="to_version", type=version_type, default="3.8.1")
    demo.add_argument("--bad-release", choices=BAD_RELEASES, default=None)
    demo.add_argument("--report", type=Path, default=None)
    demo.add_argument(
        "--readiness",
        choices=READINESS_MODES,
        default=None,
        help="how the bot judges a new instance ready (the groups' backend.readiness.mode); "
        f"default status, tcp for --bad-release {'|'.join(TCP_READINESS_RELEASES)}",
    )
    demo.add_argument("--rate", type=float, default=150.0)
    demo.add_argument(
        "--backend",
        choices=("local", "docker", "kubernetes"),
        default="local",
        help="local: gateway processes; docker: containers on DOCKER_HOST (default: a podman "
        "service started under --dir); kubernetes: an emulated cluster where each group is a "
        "Helm release of the APISIX chart, upgraded with the kubernetes backend",
    )
    demo.add_argument(
        "--metrics",
        choices=("scrape", "prometheus"),
        default="scrape",
        help="where the verdicts' evidence comes from: scraping every instance (default), or "
        "a Prometheus server (the system's `prometheus`, started under --dir, scraping the "
        "sandbox through file-based service discovery)",
    )
    demo.add_argument(
        "--quiet", action="store_true", help="print only the report, not the live transcript"
    )


class ScriptedPeople:
    """Alice (who asks for the upgrade) and Bob (on call), acting in the Slack stand-in as
    people do: typing the command, clicking the buttons they see, reading what the bot posted.

    Bob approves a gate whose verdict is ``pass`` and rolls back anything else, as a careful
    on-call engineer would; a run that pauses by itself is rolled back by command.
    """

    def __init__(self, stub: SlackStub, channel: str, poll_s: float = 0.1) -> None:
        self.stub = stub
        self.channel = channel
        self.poll_s = poll_s
        self.clicked: set[str] = set()

    def run_message(self) -> dict[str, Any] | None:
        for message in self.stub.messages(self.channel):
            if _meta(message).get("event_type") == "upgrade_run":
                return message
        return None

    def thread(self) -> list[dict[str, Any]]:
        top = self.run_message()
        return self.stub.thread(self.channel, top["ts"])[1:] if top else []

    async def upgrade(self, version: str, timeout_s: float = 900) -> str:
        """Ask for the upgrade, see it through to its end; returns the run ID."""
        answer = await self.stub.users.run_command(REQUESTER, self.channel, f"start {version}")
        if answer and answer.get("text"):
            raise DemoError(f"the bot refused the command: {answer['text']}")
        deadline = time.monotonic() + timeout_s
        rolled_back_by_command = False
        while time.monotonic() < deadline:
            top = self.run_message()
            payload = _payload(top)
            if payload.get("state") in ENDED:
                return str(payload["run_id"])
            refusal = self._latest_refusal()
            if refusal:
                raise DemoError(f"the bot refused a scripted person: {refusal}")
            for message in self.thread():
                await self._act_on(message)
            if payload.get("state") == "paused" and not rolled_back_by_command:
                rolled_back_by_command = True
                # No reason of their own: the run records why it paused (the rule and numbers).
                await self.stub.users.run_command(
                    APPROVER, self.channel, f"rollback {payload['run_id']}"
                )
            await asyncio.sleep(self.poll_s)
        raise DemoError(f"the run did not end within {timeout_s:g}s")

    async def _act_on(self, message: dict[str, Any]) -> None:
        actions = set(buttons(message))
        key = f"{message['ts']}:" + ",".join(sorted(actions))
        if not actions or key in self.clicked:
            return
        payload = _payload(message)
        if "changelog_ack" in actions:
            self.clicked.add(key)
            await self.stub.users.click(REQUESTER, self.channel, message, "changelog_ack")
        elif "gate_approve" in actions and payload.get("verdict"):
            self.clicked.add(key)
            action = "gate_approve" if payload["verdict"] == "pass" else "gate_rollback"
            await self.stub.users.click(APPROVER, self.channel, message, action)

    def _latest_refusal(self) -> str | None:
        for user in (REQUESTER, APPROVER):
            for answer in self.stub.ephemerals(self.channel, user):
                text = answer.get("text", "")
                if text.startswith(":no_entry"):
                    return text
        return None


class DemoError(RuntimeError):
    """The rehearsal could not be carried out (not: the upgrade went wrong)."""


def _meta(message: dict[str, Any] | None) -> dict[str, Any]:
    return (message or {}).get("metadata") or {}


def _payload(message: dict[str, Any] | None) -> dict[str, Any]:
    return _meta(message).get("event_payload") or {}


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
    sandbox: manage.SandboxHandle | KubeSandboxProcess
    slack: SlackStub
    """The Slack stand-in (stopped): every Web API call the bot made is in its record."""


@asynccontextmanager
async def docker_host(args: argparse.Namespace) -> AsyncIterator[str | None]:
    """The Docker host of ``--backend docker``: ``DOCKER_HOST`` when set, else a podman
    service of the demo's own under ``--dir`` (podman installed first when missing, as root on
    Debian). None for the local backend."""
    if getattr(args, "backend", "local") != "docker":
        yield None
        return
    if os.environ.get("DOCKER_HOST"):
        yield os.environ["DOCKER_HOST"]
        return
    await asyncio.to_thread(podman.ensure_installed)
    service = podman.PodmanService(Path(args.dir) / "podman")
    url = await asyncio.to_thread(service.start)
    print(f"docker: a podman service of the demo's own at {url}")
    try:
        yield url
    finally:
        await asyncio.to_thread(service.stop)


def demo_spec(args: argparse.Namespace, host: str | None = None) -> SandboxSpec:
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
        readiness=demo_readiness(args),
        smoke=args.bad_release not in NO_SMOKE_RELEASES,
        backend="docker" if host else "local",
        docker_host=host,
    )


def demo_readiness(args: argparse.Namespace) -> str:
    if args.readiness:
        return str(args.readiness)
    return "tcp" if args.bad_release in TCP_READINESS_RELEASES else "status"


async def follow(stub: SlackStub, stop: asyncio.Event, interval_s: float = 0.2) -> None:
    """Print the stand-in's transcript as it grows (what people in the channel would see)."""
    shown = 0
    while True:
        lines = stub.transcript()
        for line in lines[shown:]:
            print(line, flush=True)
        shown = len(lines)
        if stop.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)


@asynccontextmanager
async def rehearse(args: argparse.Namespace) -> AsyncIterator[Rehearsal]:
    """Bring the sandbox and the Slack stand-in up, run the real bot against them, have the
    scripted people carry out the upgrade in Slack, report.

    The sandbox stays up while the caller's block runs (so that it can still be asked about
    what happened) and is taken down when the block ends, whatever happened.
    """
    async with docker_host(args) as host, _rehearse(args, demo_spec(args, host)) as rehearsal:
        yield rehearsal


@asynccontextmanager
async def _rehearse(args: argparse.Namespace, spec: SandboxSpec) -> AsyncIterator[Rehearsal]:
    print(
        f"sandbox: {_count(len(spec.groups), 'group')} x {_count(args.instances, 'instance')} on "
        f"{args.from_version}"
        + (" (containers)" if spec.backend == "docker" else "")
        + f", {spec.rate_per_s:g} requests/s through the groups' front doors"
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
    handle: manage.SandboxHandle | KubeSandboxProcess
    kubernetes = getattr(args, "backend", "local") == "kubernetes"
    if kubernetes and getattr(args, "metrics", "scrape") == "prometheus":
        raise DemoError("--metrics prometheus rehearses the local sandbox only (not --backend)")
    if kubernetes:
        print("kubernetes: an emulated cluster; each group is a Helm release of the APISIX chart")
        try:
            from .sandbox.kube.rehearsal import KubeSandboxProcess
        except ModuleNotFoundError as exc:
            raise manage.SandboxError(
                f"--backend kubernetes needs the sandbox extra ({exc.name} is missing): "
                "pip install 'upgrade-bot[sandbox]'"
            ) from None
        handle = await asyncio.to_thread(KubeSandboxProcess(directory, spec).up)
    else:
        handle = manage.up(directory, spec)
    stub = SlackStub()
    metrics = contextlib.ExitStack()
    try:
        if getattr(args, "metrics", "scrape") == "prometheus":
            assert isinstance(handle, manage.SandboxHandle)
            metrics.enter_context(prometheus_for(handle, spec.groups))
        config = load_config(handle.config_path)
        settings = slack_settings(config.slack, str(handle.config_path))
        await stub.start()
        print(
            f"slack: the bot connects over Socket Mode to the local Slack stand-in at "
            f"{stub.url}; {stub.workspace.user(REQUESTER).name} asks for the upgrade, "
            f"{stub.workspace.user(APPROVER).name} (on call) decides at each gate\n"
        )
        printed = asyncio.Event()
        printer = None if args.quiet else asyncio.create_task(follow(stub, printed))
        try:
            environ = {
                **stub.environ(),
                "REDIS_URL": handle.redis_url,
                "UPGRADE_BOT_IDENTITY": "demo-bot",
            }
            async with serving(handle.config_path, environ=environ):
                traffic_before = handle.status()["traffic"]
                started = time.monotonic()
                run_id = await ScriptedPeople(stub, settings.channel).upgrade(args.to_version)
                duration = time.monotonic() - started
        finally:
            printed.set()
            if printer is not None:
                await printer
            await stub.stop()
        async with engine_for(config, config_dir=handle.dir, redis_url=handle.redis_url) as engine:
            run = await engine.status(run_id)
            events = [e for _, e in await engine.feed.events(run_id)]
        report = build_report(run, handle.status(), traffic_before, duration)
        report["backends"] = backends_said(events)
        report["slack"] = slack_summary(stub)
        report["charts"] = save_charts(stub, handle.dir / "charts")
        if not isinstance(handle, manage.SandboxHandle):
            report["helm_releases"] = await asyncio.to_thread(handle.releases)
        yield Rehearsal(run=run, report=report, sandbox=handle, slack=stub)
    finally:
        metrics.close()
        if not isinstance(handle, manage.SandboxHandle):
            await asyncio.to_thread(handle.down)
        else:
            manage.down(handle.dir)


@contextlib.contextmanager
def prometheus_for(handle: manage.SandboxHandle, groups: list[str]) -> Iterator[str]:
    """The system's Prometheus under the sandbox's folder, scraping its instances (file SD
    kept current as they are replaced), and the bot's config pointed at it; its URL."""
    server = PrometheusServer(handle.dir / "prometheus", scrape_interval_s=1.0)
    try:
        url = server.start()
    except PrometheusError as exc:
        raise DemoError(str(exc)) from None
    sync = TargetSync(server, "sandbox", handle.control_url, groups)
    try:
        sync.start()
        data = yaml.safe_load(handle.config_path.read_text())
        refresh = float((data.get("metrics") or {}).get("exporter_refresh_s", 0))
        settings = PrometheusMetrics(
            type="prometheus", url=url, scrape_interval_s=1.0, exporter_refresh_s=refresh
        )
        data["metrics"] = settings.model_dump(include={"type", "url", "scrape_interval_s"})
        data["metrics"]["exporter_refresh_s"] = refresh
        rollout = data.setdefault("defaults", {}).setdefault("rollout", {})
        for key in ("baseline_window_s", "settle_s"):  # what Prometheus can resolve
            rollout[key] = max(float(rollout.get(key, 0)), settings.min_window_s())
        handle.config_path.write_text(
            "# Written by `upgrade-bot demo --metrics prometheus`.\n"
            + yaml.safe_dump(data, sort_keys=False)
        )
        print(f"metrics: Prometheus at {url} scrapes the sandbox (file SD under {server.dir})")
        wait_until_scraped(url, groups)
        yield url
    finally:
        sync.stop()
        server.stop()


def wait_until_scraped(url: str, groups: list[str], timeout_s: float = 60.0) -> None:
    """Until every group's status counter is in Prometheus (the run's preflight asks the same):
    ``count by (group) (apisix_http_status)`` through ``/api/v1/query``
    (prometheus/prometheus docs/querying/api.md)."""
    deadline = time.monotonic() + timeout_s
    seen: set[str] = set()
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
            resp = httpx.get(
                f"{url}/api/v1/query",
                params={"query": "count by (group) (apisix_http_status)"},
                timeout=5,
            )
            seen = {r["metric"].get("group", "") for r in resp.json()["data"]["result"]}
            if seen >= set(groups):
                return
        time.sleep(0.2)
    raise DemoError(f"Prometheus did not scrape every group within {timeout_s:g}s (seen: {seen})")


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def save_charts(stub: SlackStub, directory: Path) -> list[str]:
    """The charts the bot shared in the thread, written where the person running the demo can
    open them (they were uploaded to the stand-in, which is gone when the demo ends)."""
    saved = []
    for f in stub.files.values():
        if f.completed and f.content and f.filetype == "png":
            directory.mkdir(parents=True, exist_ok=True)
            (directory / f.name).write_bytes(f.content)
            saved.append(str(directory / f.name))
    return saved


def slack_summary(stub: SlackStub) -> dict[str, Any]:
    """What the bot did in Slack, from the stand-in's record of its Web API calls."""
    by_method: dict[str, int] = {}
    for call in stub.calls:
        if call.method.startswith(("chat.", "reactions.", "files.", "conversations.")):
            by_method[call.method] = by_method.get(call.method, 0) + 1
    return {
        "calls": dict(sorted(by_method.items())),
        "failed_calls": sum(1 for c in stub.calls if not c.ok),
        "deliveries": {
            kind: sum(1 for c in stub.timeline if c.kind == "socket" and c.method == kind)
            for kind in ("slash_commands", "interactive", "events_api")
        },
    }


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
    for chart in report["charts"]:
        print(f"chart: {chart}")
    if args.report:
        args.report.write_text(json.dumps(report, indent=2))
        print(f"report: {args.report}")
    return exit_status(report, args.bad_release)


def backends_said(events: list[dict[str, Any]]) -> dict[str, Any]:
    """What the backends said once the run was over (``backend_finished``): per group, the
    compose change and the containers kept for a rollback that were removed."""
    said: dict[str, Any] = {}
    for e in events:
        if e.get("type") == EventKind.BACKEND_FINISHED:
            said.update(e["groups"])
    return said


def print_report(report: dict[str, Any]) -> None:
    print()
    print(f"run {report['run_id']}: {report['state']} in {report['duration_s']}s")
    if report.get("reason"):
        print(f"reason: {report['reason']}")
    print(
        f"traffic during the run: {report['requests_total']} requests, "
        f"{report['requests_failed']} failed, {report['requests_5xx']} answered 5xx by a gateway"
    )
    for group, said in report.get("backends", {}).items():
        if said.get("compose"):
            print(f"  {group} compose: {said['compose']}")
    for g in report["groups"]:
        print(
            f"  {g['name']}: verdict {g['verdict']}, "
            f"p99 {ms(g['p99_ms_before'])} → {ms(g['p99_ms_after'])}, "
            f"5xx {pct(g['error_ratio_before'])} → "
            f"{pct(g['error_ratio_after'])}"
        )
        for i in g["instances"]:
            print(
                f"    {i['id']:<12} {i['version_before']} → {i['version_after']}  "
                f"replaced {i['replacements']}x, restored {i['restorations']}x"
            )
    for group, history in (report.get("helm_releases") or {}).items():
        revisions = ", ".join(f"{h['revision']} {h['status']}" for h in history)
        print(f"  helm release {group}/apisix: revisions {revisions}")
