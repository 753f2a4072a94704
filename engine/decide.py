"""The pure transition: ``decide(run, event, now, config)`` → new run, effects, audit events.

Nothing here touches IO or reads the clock. The runner saves the returned run (with its events,
atomically) *before* it performs the effect, performs it, and feeds the outcome back as an
event. An effect is the end result the runner must bring about ("slots prod-eu/0 run image Y
and are ready"), so repeating one after a crash is harmless.

This module is the entry point and the run's forward steps (what to do next); the parts it
hands over to live beside it: ``commands`` (people's requests, and intents: course changes
applied once the effect under way has settled), ``outcomes`` (what effects reported),
``gates``, ``rollback``, and ``verdict`` (judging a group's metrics).
"""

from __future__ import annotations

from typing import Any

from .commands import Command, allowed, apply_intent, command
from .config import Config
from .events import EventKind
from .gates import open_gate, waiting
from .model import (
    ApprovalMode,
    EffectKind,
    GroupPhase,
    GroupRun,
    GroupStatus,
    Run,
    RunState,
    RunStep,
    SlotStatus,
)
from .outcomes import MAX_ATTEMPTS, on_failure, on_outcome
from .rollback import rollback_step
from .transition import Acc, Decision, Failure, Outcome, Tick, fail

OVERRIDES = ("cp-version", "unhealthy", "backup")

Event = Tick | Outcome | Failure | Command


def decide(run: Run, event: Event, now: float, config: Config) -> Decision:
    """The one place where a run changes. Pure: same inputs, same decision."""
    acc = Acc(run, now)
    if isinstance(event, Command):
        decided = command(acc, event, config)
        if decided is not None:
            return decided
        _tick(acc, config)
        return acc.decision()
    if isinstance(event, Outcome | Failure):
        if run.pending is None or run.pending.key != event.key or run.terminal:
            return Decision(run)  # a stale outcome (superseded effect): no effect
        if isinstance(event, Failure):
            on_failure(acc, event, config)
        else:
            on_outcome(acc, event, config)
        apply_intent(acc, config)
        if not acc.run.terminal and acc.run.pending is None:
            _tick(acc, config)
        return acc.decision()
    _tick(acc, config)
    return acc.decision()


# --- ticks: what to do next -------------------------------------------------------------------


def _tick(acc: Acc, config: Config) -> None:
    run = acc.run
    if run.terminal or run.state == RunState.PAUSED:
        return
    if run.state == RunState.HELD:
        assert run.hold is not None
        if acc.now < run.hold.until:
            acc.wake(run.hold.until)
            return
        acc.emit(EventKind.HOLD_ENDED, reason=run.hold.reason)
        acc.set(state=run.paused_from or RunState.RUNNING, hold=None, paused_from=None, reason=None)
        run = acc.run
    if run.pending is not None:
        acc.effects.append(run.pending)  # resumed mid-effect: perform it again (idempotent)
        return
    if run.state == RunState.WAITING:
        waiting(acc, config)
        return
    if run.state == RunState.ROLLING_BACK:
        rollback_step(acc, config)
        return
    _step(acc, config)


def _step(acc: Acc, config: Config) -> None:
    run = acc.run
    if run.step == RunStep.INVENTORY:
        acc.act(EffectKind.LIST_SLOTS, "inventory", groups=[g.name for g in run.groups])
    elif run.step == RunStep.CP_CHECK:
        acc.act(EffectKind.CHECK_CONTROL_PLANE, "cp_check", target=run.target_version)
    elif run.step == RunStep.CHANGELOG:
        acc.act(
            EffectKind.LOAD_CHANGELOG,
            "changelog",
            current=run.current_version,
            target=run.target_version,
        )
    elif run.step == RunStep.FREEZE:
        acc.act(EffectKind.READ_CONFIG_REVISION, "freeze")
    elif run.step == RunStep.BACKUP:
        if config.backup is None:
            if not run.waiver:
                fail(acc, "no backup hook is configured; start again with a waiver and a reason")
                return
            acc.emit(EventKind.BACKUP_WAIVED, reason=run.waiver, by=run.requester)
            _advance(acc, RunStep.GROUP)
            return
        acc.act(EffectKind.RUN_BACKUP, "backup")
    elif run.step == RunStep.GROUP:
        _group_step(acc, config)
    elif run.step == RunStep.OBSERVE:
        _observe_step(acc, config)


def _advance(acc: Acc, step: RunStep) -> None:
    acc.set(step=step, group_index=0, phase=GroupPhase.BASELINE_START, pending=None)
    if step == RunStep.OBSERVE:
        acc.set(observe_until=None, next_checkin_at=None)


def _group_step(acc: Acc, config: Config) -> None:
    run = acc.run
    g = run.current_group
    if g is None:
        _advance(acc, RunStep.OBSERVE)
        _observe_step(acc, config)
        return
    key = f"{g.name}:{run.phase}"
    phase = run.phase
    if phase == GroupPhase.BASELINE_START:
        if g.status == GroupStatus.PENDING:
            acc.group(g.with_(status=GroupStatus.UPGRADING, started_at=acc.now))
            acc.emit(
                EventKind.GROUP_STARTED,
                group=g.name,
                image=g.target_image,
                slots=[s.id for s in g.slots],
            )
        acc.act(EffectKind.MEASURE, key, group=g.name)
    elif phase in (GroupPhase.BASELINE_END, GroupPhase.SETTLE_END):
        if g.window_until is not None and acc.now < g.window_until:
            acc.wake(g.window_until)
            return
        if phase == GroupPhase.BASELINE_END:
            # The baseline's end is the watch window's start: a fresh mark comes back too.
            acc.act(EffectKind.MEASURE, key, group=g.name, mark=g.baseline_snapshot, restart=True)
        else:
            acc.act(
                EffectKind.MEASURE,
                key,
                group=g.name,
                mark=g.settle_snapshot,
                series_from=(g.baseline_snapshot or {}).get("taken_at"),
            )
    elif phase == GroupPhase.REPLACE:
        _replace_step(acc, config, g, key)
    elif phase == GroupPhase.CP_VERIFY:
        _cp_verify_step(acc, config, g, key)
    elif phase == GroupPhase.SMOKE:
        replaced = [s for s in g.slots if s.touched]
        skip = (
            "no slot was replaced"
            if not replaced
            else None
            if config.smoke_for(g.name).enabled
            else "smoke requests are turned off for this group"
        )
        if skip:
            acc.emit(EventKind.SMOKE_SKIPPED, group=g.name, reason=skip)
            acc.set(phase=GroupPhase.SETTLE_START)
            _group_step(acc, config)
            return
        acc.act(
            EffectKind.SMOKE,
            key,
            group=g.name,
            endpoints={s.id: s.endpoints.get("proxy", "") for s in replaced},
        )
    elif phase == GroupPhase.SETTLE_START:
        acc.act(EffectKind.MEASURE, key, group=g.name)
    elif phase == GroupPhase.FREEZE_CHECK:
        acc.act(EffectKind.READ_CONFIG_REVISION, key)
    elif phase == GroupPhase.GATE:
        open_gate(acc, config)


def _replace_step(acc: Acc, config: Config, g: GroupRun, key: str) -> None:
    """The next batch of the group's slots to its target image (or on to the smoke test)."""
    todo = [s for s in g.slots if s.status in (SlotStatus.PENDING, SlotStatus.REPLACING)]
    if not todo:
        acc.set(phase=GroupPhase.CP_VERIFY)
        _group_step(acc, config)
        return
    done = sum(1 for s in g.slots if s.status == SlotStatus.DONE)
    if done > g.watched and g.watch_snapshot is not None and config.rollout_for(g.name).watch:
        # Before the next batch: the metrics since the last look (the baseline's end, or the
        # previous watch), judged.
        acc.act(
            EffectKind.MEASURE,
            f"{key}:watch:{done}",
            group=g.name,
            mark=g.watch_snapshot,
            watch=done,
            restart=True,
        )
        return
    batch = todo[: g.batch_size]
    for s in batch:
        if s.status == SlotStatus.PENDING:
            group = acc.run.group(g.name)
            acc.group(group.with_slot(s.with_(status=SlotStatus.REPLACING)))
            acc.emit(EventKind.SLOT_REPLACING, group=g.name, slot=s.id, image=g.target_image)
    acc.act(
        EffectKind.ENSURE_SLOTS,
        f"{key}:{','.join(s.id for s in batch)}",
        group=g.name,
        slots=[s.id for s in batch],
        image=g.target_image,
        ready_timeout_s=config.rollout_for(g.name).ready_timeout_s,
    )


def _cp_verify_step(acc: Acc, config: Config, g: GroupRun, key: str) -> None:
    """Wait until the control plane lists the group's instances Healthy on the target."""
    cp = config.control_plane
    if cp is None:
        if acc.run.group_index == 0:  # said once per run, not per group
            acc.emit(
                EventKind.CP_VERIFIED,
                group=g.name,
                status="skipped",
                note="no control plane configured: instances are not checked on a CP",
            )
        acc.set(phase=GroupPhase.SMOKE)
        _group_step(acc, config)
        return
    acc.act(
        EffectKind.VERIFY_CONTROL_PLANE,
        key,
        group=g.name,
        target=acc.run.target_version,
        timeout_s=cp.verify_timeout_s,
        interval_s=cp.verify_interval_s,
    )


def _observe_step(acc: Acc, config: Config) -> None:
    run = acc.run
    obs = config.defaults.observation
    if run.observe_until is None:
        acc.set(observe_until=acc.now + obs.window_s, next_checkin_at=acc.now)
        acc.emit(EventKind.OBSERVATION_STARTED, until=acc.now + obs.window_s)
        run = acc.run
    assert run.observe_until is not None and run.next_checkin_at is not None
    final = acc.now >= run.observe_until
    if final or acc.now >= run.next_checkin_at:
        acc.act(
            EffectKind.CHECKIN,
            f"observe:{run.next_checkin_at}:{final}",
            groups=[g.name for g in run.groups],
            final=final,
        )
        return
    acc.wake(min(run.next_checkin_at, run.observe_until))


def plan_groups(
    config: Config, target: str, names: list[str] | tuple[str, ...]
) -> tuple[GroupRun, ...]:
    """The groups a run to ``target`` will upgrade, in order, each with its image and batch."""
    return tuple(
        GroupRun(
            name=name,
            target_image=config.group(name).image.for_version(target),
            production=config.group(name).production,
            batch_size=config.rollout_for(name).batch_size,
        )
        for name in names
    )


def initial_run(
    *,
    run_id: str,
    target_version: str,
    requester: str,
    groups: tuple[GroupRun, ...],
    plan_hash: str,
    now: float,
    approval_mode: ApprovalMode | str = ApprovalMode.HUMAN,
    overrides: tuple[str, ...] = (),
    waiver: str | None = None,
    changelog_ack: str | None = None,
) -> tuple[Run, list[dict[str, Any]]]:
    """A new run record and its first audit events."""
    run = Run(
        id=run_id,
        target_version=target_version,
        requester=requester,
        created_at=now,
        updated_at=now,
        groups=groups,
        plan_hash=plan_hash,
        approval_mode=ApprovalMode(approval_mode),
        overrides=overrides,
        waiver=waiver,
        changelog_ack=changelog_ack,
        step=RunStep.INVENTORY,
    )
    events: list[dict[str, Any]] = [
        {
            "type": EventKind.RUN_STARTED,
            "run_id": run_id,
            "at": now,
            "by": requester,
            "target_version": target_version,
            "groups": [g.name for g in groups],
            "approval_mode": ApprovalMode(approval_mode),
            "plan_hash": plan_hash,
        }
    ]
    for o in overrides:
        events.append(
            {
                "type": EventKind.OVERRIDE_GRANTED,
                "run_id": run_id,
                "at": now,
                "override": o,
                "by": requester,
            }
        )
    if waiver:
        events.append(
            {
                "type": EventKind.WAIVER_GRANTED,
                "run_id": run_id,
                "at": now,
                "waiver": "backup",
                "reason": waiver,
                "by": requester,
            }
        )
    return run, events


__all__ = [
    "MAX_ATTEMPTS",
    "OVERRIDES",
    "Command",
    "Decision",
    "Event",
    "Failure",
    "Outcome",
    "Tick",
    "allowed",
    "decide",
    "initial_run",
]
