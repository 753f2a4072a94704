"""The approval gate after each group: open it, remind, expire, record its decision."""

from __future__ import annotations

from .config import Config
from .events import EventKind
from .model import ApprovalMode, Gate, GateDecision, GroupPhase, GroupRun, GroupStatus, RunState
from .rollback import start_rollback
from .transition import Acc
from .verdict import Phase


def open_gate(acc: Acc, config: Config, *, human: bool = False) -> None:
    """Ask for approval of the current group — or, in auto mode, let its verdict decide."""
    run = acc.run
    g = run.current_group
    assert g is not None
    verdict = (g.verdict or {}).get("phase", Phase.INCONCLUSIVE.value)
    if run.approval_mode == ApprovalMode.AUTO and not human:
        if verdict == Phase.PASS.value:
            acc.emit(
                EventKind.APPROVAL_RECORDED,
                group=g.name,
                user="auto",
                gate=None,
                count=1,
                required=1,
            )
            gate_approved(acc, g, ("auto",), config)
        elif verdict == Phase.FAIL.value:
            start_rollback(acc, f"verdict fail on {g.name}", by="auto", automatic=True)
        else:
            acc.set(
                state=RunState.PAUSED,
                paused_from=RunState.RUNNING,
                reason=f"verdict inconclusive on {g.name}: a human decides",
            )
            acc.emit(EventKind.PAUSED, by="auto", reason=acc.run.reason)
        return
    policy = config.approval_for(g.name)
    seq = run.gate_seq + 1
    gate = Gate(
        id=f"{run.id}:{g.name}:{seq}",
        group=g.name,
        opened_at=acc.now,
        expires_at=acc.now + policy.expiry_s,
        next_reminder_at=acc.now + policy.reminder_interval_s,
        required=policy.required,
        verdict=verdict,
    )
    acc.group(g.with_(status=GroupStatus.AWAITING_APPROVAL))
    acc.set(
        state=RunState.WAITING, gate=gate, gate_seq=seq, reason=f"waiting for approval of {g.name}"
    )
    acc.emit(
        EventKind.GATE_OPENED,
        group=g.name,
        gate=gate.id,
        verdict=g.verdict,
        required=gate.required,
        expires_at=gate.expires_at,
        production=g.production,
        recommend="rollback" if verdict == Phase.FAIL.value else "approve",
    )
    acc.wake(min(gate.expires_at, gate.next_reminder_at))


def waiting(acc: Acc, config: Config) -> None:
    """A waiting run's deadlines: the gate's reminders and its expiry."""
    gate = acc.run.gate
    if gate is None or gate.decision is not None:
        return  # waiting on the changelog acknowledgement: no deadline
    if acc.now >= gate.expires_at:
        acc.set(
            gate=gate.with_(decision=GateDecision.EXPIRED, decided_at=acc.now),
            state=RunState.PAUSED,
            paused_from=RunState.RUNNING,
            reason=f"approval of {gate.group} expired; resume to ask again",
        )
        acc.emit(EventKind.GATE_EXPIRED, group=gate.group, gate=gate.id)
        acc.emit(EventKind.PAUSED, by="engine", reason=acc.run.reason)
        return
    if acc.now >= gate.next_reminder_at:
        policy = config.approval_for(gate.group)
        reminders = gate.reminders + 1
        escalate = reminders >= policy.escalate_after_reminders
        gate = gate.with_(
            reminders=reminders, next_reminder_at=gate.next_reminder_at + policy.reminder_interval_s
        )
        acc.set(gate=gate)
        acc.emit(
            EventKind.GATE_REMINDER,
            group=gate.group,
            gate=gate.id,
            reminders=reminders,
            escalate=escalate,
            escalation_mention=policy.escalation_mention if escalate else None,
        )
    acc.wake(min(gate.expires_at, gate.next_reminder_at))


def gate_approved(acc: Acc, g: GroupRun, deciders: tuple[str, ...], config: Config) -> None:
    """The group is approved: the run moves on to the next group."""
    if acc.run.gate is not None and acc.run.gate.decision is None:
        acc.set(
            gate=acc.run.gate.with_(
                decision=GateDecision.APPROVED, decided_by=deciders, decided_at=acc.now
            )
        )
    acc.group(acc.run.group(g.name).with_(status=GroupStatus.APPROVED, finished_at=acc.now))
    acc.emit(
        EventKind.GATE_DECIDED,
        group=g.name,
        gate=acc.run.gate.id if acc.run.gate else None,
        decision=GateDecision.APPROVED,
        by=list(deciders),
    )
    acc.set(
        state=RunState.RUNNING,
        reason=None,
        group_index=acc.run.group_index + 1,
        phase=GroupPhase.BASELINE_START,
    )


def close_gate(acc: Acc, decision: GateDecision, user: str) -> None:
    """Decide an open gate as paused or aborted (its buttons go stale)."""
    gate = acc.run.gate
    if gate is not None and gate.decision is None:
        acc.set(gate=gate.with_(decision=decision, decided_by=(user,), decided_at=acc.now))
        acc.emit(
            EventKind.GATE_DECIDED, group=gate.group, gate=gate.id, decision=decision, by=[user]
        )
