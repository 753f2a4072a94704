"""Builders for ``decide`` tests: a config, a scripted fleet, and runs driven by the real runner.

``Sim.drive`` hands the run to the engine's own ``Runner`` with three test ports: a store that
keeps the one record in memory (every save goes through JSON and ``load_run``, as through Redis),
a performer that answers each effect from the scripted fleet, and a clock whose time is a number
the test moves (waiting for ``wake_at`` just sets it). ``Sim.tick``/``cmd``/``apply`` call
``decide`` directly, one decision at a time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import yaml

from upgrade_bot.engine import runner as runner_module
from upgrade_bot.engine.config import Config, parse_config
from upgrade_bot.engine.cpview import group_view, verified
from upgrade_bot.engine.decide import (
    Command,
    Decision,
    Event,
    Failure,
    Outcome,
    Tick,
    decide,
    initial_run,
    plan_groups,
)
from upgrade_bot.engine.metrics import InstanceSample, Snapshot, summary_since
from upgrade_bot.engine.model import PAUSED, WAITING, Pending, Run
from upgrade_bot.engine.runner import Runner
from upgrade_bot.engine.schema import load_run, plan_hash

from ..support import merge

REPO = "api7/api7-ee-3-gateway"
OLD, NEW = "3.8.0", "3.8.1"
T0 = 1_000_000.0
REQUESTER = "UREQ"
ESCALATION = "<!subteam^SONCALL>"
WAIVER = "the test fleet has no backup hook"


def image(version: str) -> str:
    return f"{REPO}:{version}"


# --- configuration ------------------------------------------------------------------------------


APPROVAL = {
    "required": 1,
    "expiry_s": 3600,
    "reminder_interval_s": 900,
    "escalate_after_reminders": 2,
    "escalation_mention": ESCALATION,
}


def config_data() -> dict[str, Any]:
    """Two groups: ``staging`` (3 slots) then ``prod-eu`` (6 slots, two approvers)."""
    backend = {"type": "local", "sandbox_url": "http://127.0.0.1:1"}
    return {
        "groups": [
            {"name": "staging", "image": {"repository": REPO}, "backend": backend},
            {
                "name": "prod-eu",
                "production": True,
                "image": {"repository": REPO},
                "backend": backend,
                "approval": {**APPROVAL, "required": 2},
            },
        ],
        "defaults": {
            "policy": {"approve": [REQUESTER, "UALICE", "UBOB", "SONCALL"]},
            "approval": APPROVAL,
            "rollout": {
                "batch_size": 2,
                "ready_timeout_s": 120,
                "baseline_window_s": 30,
                "settle_s": 60,
            },
            "observation": {"window_s": 300, "checkin_interval_s": 120},
        },
    }


def make_config(changes: dict[str, Any] | None = None) -> Config:
    """The YAML a user would write: ``config_data()`` with ``changes`` merged in."""
    return parse_config(yaml.safe_dump(merge(config_data(), changes or {})))


BACKUP_HOOK = {"backup": {"type": "command", "command": ["backup.sh"], "artifact": "/b/{run_id}"}}


# --- a scripted fleet -------------------------------------------------------------------------

BOUNDS = (5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, math.inf)


@dataclass
class Traffic:
    """What each instance of one version serves, per second."""

    rps: float = 10.0
    ratio_5xx: float = 0.0
    latency_ms: float = 20.0


@dataclass
class Instance:
    id: str
    image: str
    started_at: float
    ready: bool = True

    @property
    def version(self) -> str:
        return self.image.rsplit(":", 1)[1]

    def as_slot(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "image": self.image,
            "digest": f"sha256:{self.version}",
            "version": self.version,
            "ready": self.ready,
            "endpoints": {"proxy": f"http://{self.id}:9080", "metrics": f"http://{self.id}:9091"},
        }


class Fleet:
    """The gateway instances as the backends would report them, and what the adapters answer."""

    def __init__(self, sizes: dict[str, int] | None = None, version: str = OLD) -> None:
        sizes = sizes or {"staging": 3, "prod-eu": 6}
        self.groups = {
            g: [Instance(f"{g}-{i}", image(version), started_at=T0 - 3600) for i in range(n)]
            for g, n in sizes.items()
        }
        self.traffic: dict[str, Traffic] = {}
        self.cp_version: str | None = NEW
        self.changelog: list[dict[str, str]] | None = [
            {"version": NEW, "text": "- fix: upstream keepalive pool leak"}
        ]
        self.revision = 7
        # the control plane's own view: slot id → status (absent: not listed); versions that
        # cannot reach the CP are never listed
        self.cp_status: dict[str, str] = {}
        self.cp_unreachable_versions: set[str] = set()
        self.cp_extra: dict[str, list[dict[str, Any]]] = {}
        self.cp_lists_instances = False  # the pre-check reads instances only when True
        self.warnings: list[str] = []
        self.smoke_failures: list[str] = []
        # slot id → errors returned by its next ensure_slots calls, one per call
        self.faults: dict[str, list[dict[str, Any]]] = {}

    def instance(self, slot_id: str) -> Instance:
        for instances in self.groups.values():
            for i in instances:
                if i.id == slot_id:
                    return i
        raise KeyError(slot_id)

    def versions(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for instances in self.groups.values():
            for i in instances:
                out[i.version] = out.get(i.version, 0) + 1
        return out

    # effect kind → result
    def list_slots(self, effect: Pending, now: float) -> dict[str, Any]:
        return {
            "groups": {g: [i.as_slot() for i in self.groups[g]] for g in effect.args["groups"]},
            "warnings": list(self.warnings),
        }

    def cp_instances(self, group: str) -> list[dict[str, Any]]:
        """What GET /api/instances lists for ``group``: each instance under its slot id as
        host name, plus ``cp_extra`` (instances the runtime no longer has)."""
        listed = [
            {
                "id": f"uid-{i.id}",
                "hostname": i.id,
                "version": i.version,
                "status": self.cp_status.get(i.id, "Healthy"),
            }
            for i in self.groups[group]
            if i.version not in self.cp_unreachable_versions
        ]
        return listed + self.cp_extra.get(group, [])

    def check_control_plane(self, effect: Pending, now: float) -> dict[str, Any]:
        if self.cp_version is None:
            return {"skipped": True}
        if not self.cp_lists_instances:
            return {"version": self.cp_version}
        groups = {
            g: {"instances": self.cp_instances(g), "hostnames": [i.id for i in xs]}
            for g, xs in self.groups.items()
        }
        return {"version": self.cp_version, "groups": groups}

    def verify_control_plane(self, effect: Pending, now: float) -> dict[str, Any]:
        group = effect.args["group"]
        hostnames = [i.id for i in self.groups[group]]
        view = group_view(self.cp_instances(group), hostnames, effect.args["target"])
        return {"view": view, "waited_s": 0.0 if verified(view) else effect.args["timeout_s"]}

    def load_changelog(self, effect: Pending, now: float) -> dict[str, Any]:
        if self.changelog is None:
            return {"skipped": "no changelog configured"}
        return {"entries": list(self.changelog), "source": "CHANGELOG.md"}

    def read_config_revision(self, effect: Pending, now: float) -> dict[str, Any]:
        return {"revision": self.revision}

    def run_backup(self, effect: Pending, now: float) -> dict[str, Any]:
        return {"artifact": "/b/run-1", "bytes": 4096}

    def snapshot(self, group: str, now: float) -> Snapshot:
        samples = []
        for i in self.groups[group]:
            t = self.traffic.get(i.version, Traffic())
            n = int(t.rps * max(0.0, now - i.started_at))
            errors = round(n * t.ratio_5xx)
            samples.append(
                InstanceSample(
                    instance_id=f"{i.id}@{i.version}",
                    requests=n,
                    s2xx=n - errors,
                    s5xx=errors,
                    buckets=tuple((b, n if t.latency_ms <= b else 0) for b in BOUNDS),
                    latency_sum=n * t.latency_ms,
                    latency_count=n,
                    version=i.version,
                )
            )
        return Snapshot(taken_at=now, instances=tuple(samples))

    def scrape(self, effect: Pending, now: float) -> dict[str, Any]:
        """What the scraping metrics source answers: a window's mark, or its summary."""
        snapshot = self.snapshot(effect.args["group"], now)
        if "mark" in effect.args:
            summary = {"summary": summary_since(effect.args["mark"], snapshot).to_dict()}
            if effect.args.get("restart"):  # the next window starts where this one ends
                return {**summary, "mark": dataclasses.asdict(snapshot)}
            return summary
        return {"mark": dataclasses.asdict(snapshot)}

    def ensure_slots(self, effect: Pending, now: float) -> dict[str, Any]:
        out: dict[str, Any] = {"slots": {}, "errors": {}}
        for slot_id in effect.args["slots"]:
            if self.faults.get(slot_id):
                out["errors"][slot_id] = self.faults[slot_id].pop(0)
                continue
            i = self.instance(slot_id)
            if i.image != effect.args["image"]:
                i.image, i.started_at = effect.args["image"], now
            out["slots"][slot_id] = i.as_slot()
        return out

    def smoke(self, effect: Pending, now: float) -> dict[str, Any]:
        n = 5 * len(effect.args["endpoints"])
        return {
            "passed": not self.smoke_failures,
            "requests": n,
            "failures": list(self.smoke_failures),
        }

    def checkin(self, effect: Pending, now: float) -> dict[str, Any]:
        groups = {
            g: {
                "ready": len(xs),
                "slots": len(xs),
                "versions": sorted({x.version for x in xs}),
                # what each instance served over the last minute, as the source would say
                "since_upgrade": summary_since(
                    dataclasses.asdict(self.snapshot(g, now - 60)), self.snapshot(g, now)
                ).to_dict(),
            }
            for g, xs in self.groups.items()
        }
        return {"groups": groups, "revision": self.revision}


# --- the run and its driver ---------------------------------------------------------------


def start_run(
    config: Config,
    *,
    target: str = NEW,
    requester: str = REQUESTER,
    now: float = T0,
    groups: list[str] | None = None,
    approval_mode: str = "human",
    overrides: tuple[str, ...] = (),
    waiver: str | None = WAIVER,
    changelog_ack: str | None = REQUESTER,
    run_id: str = "run-1",
) -> tuple[Run, list[dict[str, Any]]]:
    names = groups or [g.name for g in config.groups]
    group_runs = plan_groups(config, target, names)
    return initial_run(
        run_id=run_id,
        target_version=target,
        requester=requester,
        groups=group_runs,
        plan_hash=plan_hash(target, group_runs),
        now=now,
        approval_mode=approval_mode,
        overrides=overrides,
        waiver=waiver,
        changelog_ack=changelog_ack,
    )


Script = Callable[[Pending, float], "dict[str, Any] | Outcome | Failure"]


@dataclass
class Sim:
    """One run, driven the way the runner drives it, against a scripted fleet."""

    config: Config = field(default_factory=make_config)
    fleet: Fleet = field(default_factory=Fleet)
    now: float = T0
    start: dict[str, Any] = field(default_factory=dict)
    run: Run = field(init=False)
    events: list[dict[str, Any]] = field(init=False)
    performed: list[Pending] = field(default_factory=list)
    decisions: list[tuple[Run, Event, float, Decision]] = field(default_factory=list)
    script: dict[str, Script] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.run, self.events = start_run(self.config, now=self.now, **self.start)

    # one decision, saved as the store would save it
    def apply(self, event: Event) -> Decision:
        d = decide(self.run, event, self.now, self.config)
        self.decisions.append((self.run, event, self.now, d))
        self.run = load_run(json.loads(json.dumps(d.run.to_dict())))
        self.events.extend(d.events)
        return d

    def tick(self) -> Decision:
        return self.apply(Tick())

    def cmd(self, action: str, user: str, **kw: Any) -> Decision:
        return self.apply(Command(action=action, user=user, **kw))

    def result_of(self, effect: Pending) -> Outcome | Failure:
        fn = self.script.get(effect.kind) or getattr(self.fleet, effect.kind)
        result = fn(effect, self.now)
        if isinstance(result, Outcome | Failure):
            return result
        return Outcome(key=effect.key, result=result)

    def perform(self, effect: Pending) -> Decision:
        self.performed.append(effect)
        return self.apply(self.result_of(effect))

    def step(self) -> Decision:
        """One turn of the runner's loop: Tick, then perform the effect it asks for."""
        d = self.tick()
        if d.effects:
            self.perform(d.effects[0])
        return d

    def drive(
        self,
        until: Callable[[Sim], bool] | None = None,
        before: Callable[[Pending], bool] | None = None,
        max_steps: int = 500,
    ) -> Pending | None:
        """Run the engine's runner until the run ends or needs a person, ``until`` holds, or (with
        ``before``) a matching effect is saved as pending but not yet performed (returned)."""
        if self.run.terminal or self.run.state in (WAITING, PAUSED):
            return None
        if until is not None and until(self):
            return None
        ports = _Ports(self, until, before, max_steps)
        runner = Runner(
            store=ports,  # type: ignore[arg-type]
            performer=ports,
            config=self.config,
            identity="sim",
            clock=ports,
            poll_interval_s=math.inf,  # sleep only until the decision's wake_at
        )

        async def drive() -> Pending | None:
            ports.driver = asyncio.current_task()
            try:
                await runner.drive(self.run.id)
            except _Stop as stop:
                return stop.effect
            return None

        with ports.recording():
            return asyncio.run(drive())

    def drive_to_gate(self, group: str) -> None:
        self.drive()
        assert self.run.state == WAITING and self.run.gate is not None, self.run.reason
        assert self.run.gate.group == group

    def approve(self, *users: str) -> Decision:
        assert self.run.gate is not None
        d = None
        for u in users:
            d = self.cmd("approve", u, gate_id=self.run.gate.id)
            assert d.refusal is None, d.refusal
        assert d is not None
        return d

    # reading what happened
    def of(self, type_: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == type_]

    def types(self) -> list[str]:
        return [e["type"] for e in self.events]

    def kinds(self) -> list[str]:
        return [p.kind for p in self.performed]

    def slot(self, slot_id: str) -> Any:
        for _, s in self.run.slots():
            if s.id == slot_id:
                return s
        raise KeyError(slot_id)


class _Stop(Exception):
    """Ends a drive where the test asked; ``effect``: saved as pending, not performed."""

    def __init__(self, effect: Pending | None = None) -> None:
        super().__init__(effect)
        self.effect = effect


@dataclass(frozen=True)
class _Fence:
    run_id: str
    token: int


class _Ports:
    """The runner's store, performer and clock for one ``Sim.drive``.

    Store: the Sim's one record, at a revision. Each time the runner reads it to decide afresh
    (not to apply an outcome just performed), the drive may stop there, as the old loop did:
    the run needs a person, ``until`` holds, or too many steps. Performer: the scripted fleet,
    unless ``before`` picks the effect. Clock: ``sim.now``; only the driving task moves it (to
    the last decision's ``wake_at``), any other task (the lease renewer) waits for the end.
    """

    def __init__(
        self,
        sim: Sim,
        until: Callable[[Sim], bool] | None,
        before: Callable[[Pending], bool] | None,
        max_steps: int,
    ) -> None:
        self.sim, self.until, self.before, self.max_steps = sim, until, before, max_steps
        self.rev, self.token, self.steps = 1, 0, 0
        self.applying = False  # an effect was performed: the next read applies its outcome
        self.wake_at: float | None = None
        self.driver: asyncio.Task[Any] | None = None

    @contextmanager
    def recording(self) -> Iterator[None]:
        """Every decision the runner takes lands in ``sim.decisions``, as ``Sim.apply`` does."""
        real = runner_module.decide

        def decide_and_record(run: Run, event: Event, now: float, config: Config) -> Decision:
            d = real(run, event, now, config)
            self.sim.decisions.append((run, event, now, d))
            self.wake_at = d.wake_at
            return d

        with mock.patch.object(runner_module, "decide", decide_and_record):
            yield

    # --- store
    async def load(self, run_id: str) -> tuple[dict[str, Any], int]:
        if self.applying:
            self.applying = False
        elif not self.sim.run.terminal:
            if self.sim.run.state in (WAITING, PAUSED):
                raise _Stop()
            if self.until is not None and self.until(self.sim):
                raise _Stop()
            self.steps += 1
            if self.steps > self.max_steps:
                raise AssertionError("the run did not settle")
        return self.sim.run.to_dict(), self.rev

    async def save(
        self,
        run_id: str,
        record: dict[str, Any],
        *,
        expected_rev: int,
        fence: Any,
        events: list[dict[str, Any]],
    ) -> int:
        assert expected_rev == self.rev and (fence is None or fence.token == self.token)
        self.sim.run = load_run(json.loads(json.dumps(record)))
        self.sim.events.extend(events)
        self.rev += 1
        return self.rev

    async def finish(self, run_id: str) -> None:
        pass

    async def acquire_lease(self, run_id: str, identity: str, ttl_s: float) -> _Fence:
        self.token += 1
        return _Fence(run_id, self.token)

    async def renew_lease(self, fence: _Fence, ttl_s: float) -> bool:
        return fence.token == self.token

    async def release_lease(self, fence: _Fence) -> None:
        pass

    async def check_fence(self, fence: _Fence) -> bool:
        return fence.token == self.token

    async def newest_token(self, run_id: str) -> int:
        return self.token

    async def lease_holder(self, run_id: str) -> dict[str, Any] | None:
        return None

    # --- performer
    async def perform(self, run: Run, effect: Pending, fence: Any) -> Outcome | Failure:
        if self.before is not None and self.before(effect):
            raise _Stop(effect)
        self.sim.performed.append(effect)
        self.applying = True
        return self.sim.result_of(effect)

    # --- clock
    def now(self) -> float:
        return self.sim.now

    async def sleep(self, seconds: float) -> None:
        if asyncio.current_task() is not self.driver:
            await asyncio.get_running_loop().create_future()  # cancelled when the drive ends
        run = self.sim.run
        if math.isinf(seconds):
            raise AssertionError(f"stuck: {run.state} {run.step} {run.phase}")
        assert seconds > 0 and self.wake_at is not None, "woken for a time that has already come"
        self.sim.now = self.wake_at


__all__ = [
    "BACKUP_HOOK",
    "ESCALATION",
    "NEW",
    "OLD",
    "REQUESTER",
    "T0",
    "WAIVER",
    "Command",
    "Failure",
    "Fleet",
    "Outcome",
    "Sim",
    "Tick",
    "Traffic",
    "config_data",
    "image",
    "make_config",
    "start_run",
]
