"""Rolling back: newest group first, each touched slot back to its recorded previous image."""

from __future__ import annotations

from .config import Config
from .events import EventKind
from .model import EffectKind, GateDecision, GroupRun, GroupStatus, Rollback, RunState, SlotStatus
from .transition import Acc, finish, wrap_up


def start_rollback(acc: Acc, reason: str, *, by: str, automatic: bool) -> None:
    """Switch the run to rolling back (deciding an open gate as "rollback")."""
    gate = acc.run.gate
    if gate is not None and gate.decision is None:
        acc.set(
            gate=gate.with_(decision=GateDecision.ROLLBACK, decided_by=(by,), decided_at=acc.now)
        )
        acc.emit(
            EventKind.GATE_DECIDED,
            group=gate.group,
            gate=gate.id,
            decision=GateDecision.ROLLBACK,
            by=[by],
        )
    acc.set(
        state=RunState.ROLLING_BACK,
        reason=reason,
        pending=None,
        hold=None,
        paused_from=None,
        rollback=Rollback(reason=reason, by=by, automatic=automatic, started_at=acc.now),
    )
    acc.emit(
        EventKind.ROLLBACK_STARTED,
        reason=reason,
        by=by,
        automatic=automatic,
        groups=[g.name for g in reversed(acc.run.groups) if needs_restore(g)],
    )


def needs_restore(g: GroupRun) -> bool:
    return any(s.touched for s in g.slots)


def rollback_step(acc: Acc, config: Config) -> None:
    """The next restore (newest group, last slot first), or the end of the rollback."""
    for g in reversed(acc.run.groups):
        for s in reversed(g.slots):
            if s.touched:
                if g.status != GroupStatus.ROLLING_BACK:
                    acc.group(g.with_(status=GroupStatus.ROLLING_BACK))
                acc.group(acc.run.group(g.name).with_slot(s.with_(status=SlotStatus.RESTORING)))
                acc.act(
                    EffectKind.ENSURE_SLOTS,
                    f"restore:{s.id}:{s.restorations}",
                    group=g.name,
                    slots=[s.id],
                    image=s.previous_image,
                    restore=True,
                    ready_timeout_s=config.rollout_for(g.name).ready_timeout_s,
                )
                return
        if g.status == GroupStatus.ROLLING_BACK:
            acc.group(g.with_(status=GroupStatus.ROLLED_BACK, finished_at=acc.now))
    reason = acc.run.rollback.reason if acc.run.rollback else acc.run.reason
    wrap_up(acc, RunState.ROLLED_BACK, reason or "rolled back")


def rollback_failed(acc: Acc, error: str) -> None:
    """A restore failed for good: the run fails, every slot's state shown, approvers paged."""
    acc.set(pending=None)
    acc.emit(
        EventKind.ROLLBACK_FAILED,
        error=error,
        fleet=acc.run.mixed_fleet(),
        slots=acc.run.slot_table(),
        page=True,
    )
    finish(acc, RunState.FAILED, f"rollback failed: {error}")
