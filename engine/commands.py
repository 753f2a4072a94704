"""People's requests (approve, pause, hold, resume, abort, rollback, acknowledge) and intents.

A course change (pause, hold, abort, rollback) asked while an effect is under way is recorded
as the run's :class:`~.model.Intent` and applied as soon as that effect's outcome is saved — a
slot is never left half-replaced, and every outcome is counted exactly once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .config import Config
from .events import EventKind
from .gates import close_gate, gate_approved, open_gate
from .model import (
    Action,
    Approval,
    ApprovalMode,
    GateDecision,
    GroupPhase,
    Hold,
    Intent,
    Run,
    RunState,
    RunStep,
)
from .rollback import start_rollback
from .transition import Acc, Decision, finish


@dataclass(frozen=True)
class Command:
    """A person's (or the automatic approver's) request."""

    action: Action | str  # a string the engine does not know is refused, not raised
    user: str
    user_groups: tuple[str, ...] = ()
    gate_id: str | None = None
    reason: str | None = None
    until: float | None = None


Handler = Callable[[Acc, Command, Config], "Decision | None"]
"""Answers a Decision when done, or None: accepted, and the run moves on (``decide`` ticks)."""

STALE_GATE = "this approval request is no longer pending"

# Of several course changes asked while an effect is under way, the strongest wins.
INTENT_RANK = {Action.PAUSE: 1, Action.HOLD: 1, Action.ROLLBACK: 2, Action.ABORT: 3}


def allowed(principals: list[str], user: str, user_groups: tuple[str, ...]) -> bool:
    """Whether ``user`` (or one of their groups) is among ``principals`` ("*": anyone)."""
    return "*" in principals or user in principals or any(g in principals for g in user_groups)


def command(acc: Acc, cmd: Command, config: Config) -> Decision | None:
    """Authorize ``cmd`` against the group's policy and carry it out (see :data:`Handler`)."""
    run = acc.run
    if run.terminal:
        return _refuse(acc, cmd, f"run {run.id} has already ended ({run.state})")
    try:
        action = Action(cmd.action)
    except ValueError:
        return _refuse(acc, cmd, f"unknown action '{cmd.action}'")
    group = _policy_group(run, action)
    permission = {Action.ACKNOWLEDGE: "start", Action.HOLD: "pause"}.get(action, action.value)
    principals = getattr(config.policy_for(group), permission)
    if not allowed(principals, cmd.user, cmd.user_groups):
        verb = {Action.ROLLBACK: "roll back", Action.ACKNOWLEDGE: "acknowledge the changelog"}.get(
            action, action.value
        )
        return _refuse(acc, cmd, f"{cmd.user} may not {verb} on {group} (not in its policy)")
    return _HANDLERS[action](acc, cmd, config)


def _refuse(acc: Acc, cmd: Command, why: str) -> Decision:
    acc.emit(EventKind.REFUSED, action=cmd.action, user=cmd.user, reason=why)
    return Decision(acc.run, (), tuple(acc.events), refusal=why)


def _policy_group(run: Run, action: Action) -> str:
    if action == Action.APPROVE and run.gate is not None:
        return run.gate.group
    g = run.current_group
    return g.name if g else run.groups[min(run.group_index, len(run.groups) - 1)].name


def _stale_gate(run: Run, cmd: Command) -> bool:
    """A command sent from a gate (button, reaction) that is no longer the pending one."""
    return cmd.gate_id is not None and (
        run.gate is None or run.gate.id != cmd.gate_id or run.gate.decision is not None
    )


def _under_way(run: Run) -> bool:
    """An effect is being performed: a course change waits for its outcome."""
    return run.pending is not None and run.state != RunState.HELD


def _approve(acc: Acc, cmd: Command, config: Config) -> Decision | None:
    run = acc.run
    gate = run.gate
    if _stale_gate(run, cmd):
        return _refuse(acc, cmd, STALE_GATE)
    if run.state != RunState.WAITING or gate is None or gate.decision is not None:
        return _refuse(acc, cmd, "there is no approval pending on this run")
    policy = config.approval_for(gate.group)
    if cmd.user == run.requester and not policy.allow_self_approval:
        return _refuse(acc, cmd, f"{cmd.user} started this run and may not approve it")
    if any(a.user == cmd.user for a in gate.approvals):
        return _refuse(
            acc,
            cmd,
            f"{cmd.user} has already approved; {gate.required} distinct approvers are needed",
        )
    gate = gate.with_(approvals=(*gate.approvals, Approval(user=cmd.user, at=acc.now)))
    acc.set(gate=gate)
    acc.emit(
        EventKind.APPROVAL_RECORDED,
        group=gate.group,
        gate=gate.id,
        user=cmd.user,
        count=len(gate.approvals),
        required=gate.required,
    )
    if len(gate.approvals) < gate.required:
        return acc.decision()
    gate_approved(acc, run.group(gate.group), tuple(a.user for a in gate.approvals), config)
    return None


def _pause(acc: Acc, cmd: Command, config: Config) -> Decision | None:
    """Pause, or hold until a time (``hold``)."""
    run = acc.run
    if _stale_gate(run, cmd):
        return _refuse(acc, cmd, STALE_GATE)
    if run.state == RunState.PAUSED:
        return _refuse(acc, cmd, f"run {run.id} is already paused")
    if RunState.ROLLING_BACK in (run.state, run.paused_from):
        return _refuse(acc, cmd, "a rollback cannot be paused; abort stops it where it is")
    reason = cmd.reason or f"paused by {cmd.user}"
    if cmd.action == Action.HOLD and (cmd.until is None or cmd.until <= acc.now):
        return _refuse(acc, cmd, "a hold needs a resume time in the future")
    if _under_way(run):
        return _intent(acc, cmd)
    if cmd.action == Action.HOLD:
        assert cmd.until is not None
        acc.set(
            state=RunState.HELD,
            paused_from=_resume_state(run),
            hold=Hold(reason=reason, until=cmd.until, by=cmd.user),
        )
        close_gate(acc, GateDecision.PAUSED, cmd.user)
        acc.emit(EventKind.HELD, reason=reason, until=cmd.until, by=cmd.user)
        acc.wake(cmd.until)
        return acc.decision()
    pause_now(acc, cmd.user, reason)
    return acc.decision()


def _resume_state(run: Run) -> RunState:
    if run.state in (RunState.WAITING, RunState.HELD, RunState.PAUSED):
        return RunState.RUNNING
    return run.state


def pause_now(acc: Acc, user: str, reason: str) -> None:
    """Pause where the run stands (a window under way is measured again from its start)."""
    run = acc.run
    acc.set(state=RunState.PAUSED, paused_from=_resume_state(run), hold=None, reason=reason)
    close_gate(acc, GateDecision.PAUSED, user)
    if run.step == RunStep.GROUP and run.phase in (GroupPhase.BASELINE_END, GroupPhase.SETTLE_END):
        restart = {
            GroupPhase.BASELINE_END: GroupPhase.BASELINE_START,
            GroupPhase.SETTLE_END: GroupPhase.SETTLE_START,
        }
        acc.set(phase=restart[run.phase])
    acc.emit(EventKind.PAUSED, by=user, reason=reason)


def _intent(acc: Acc, cmd: Command) -> Decision:
    """Record a course change; it takes effect once the effect under way has settled.

    Of several requests made meanwhile, the strongest wins (abort > rollback > pause): a pause
    asked after an abort must not undo the abort.
    """
    action = Action(cmd.action)
    current = acc.run.intent
    if current and INTENT_RANK[current.action] > INTENT_RANK[action]:
        return _refuse(acc, cmd, f"{current.action} was already requested by {current.user}")
    acc.set(intent=Intent(action=action, user=cmd.user, reason=cmd.reason, until=cmd.until))
    acc.emit(
        EventKind.INTENT_RECORDED,
        action=action,
        by=cmd.user,
        note="takes effect when the current step finishes",
    )
    return acc.decision()


def apply_intent(acc: Acc, config: Config) -> None:
    """Apply the recorded course change, if any, once no effect is under way."""
    intent = acc.run.intent
    if intent is None or _under_way(acc.run):
        return
    acc.set(intent=None)
    if acc.run.terminal:
        return
    user = intent.user
    if intent.action == Action.ABORT:
        _abort_now(acc, user, intent.reason)
    elif intent.action == Action.ROLLBACK:
        if acc.run.state != RunState.ROLLING_BACK:
            start_rollback(
                acc, intent.reason or rollback_reason(acc.run, user), by=user, automatic=False
            )
    elif intent.action == Action.HOLD and intent.until and acc.now < intent.until:
        hold = Hold(reason=intent.reason or f"held by {user}", until=intent.until, by=user)
        acc.set(pending=None, state=RunState.HELD, paused_from=_resume_state(acc.run), hold=hold)
        acc.emit(EventKind.HELD, reason=hold.reason, until=intent.until, by=user)
    elif intent.action == Action.PAUSE and acc.run.state != RunState.ROLLING_BACK:
        acc.set(pending=None)
        pause_now(acc, user, intent.reason or f"paused by {user}")


def _resume(acc: Acc, cmd: Command, config: Config) -> Decision | None:
    run = acc.run
    if run.state not in (RunState.PAUSED, RunState.HELD):
        return _refuse(acc, cmd, f"run {run.id} is not paused (it is {run.state})")
    seen = run.seen_revision
    if seen is not None and seen != run.config_revision:
        acc.emit(
            EventKind.FREEZE_REVISION_ACCEPTED,
            before=run.config_revision,
            after=seen,
            by=cmd.user,
        )
        acc.set(config_revision=seen)
    acc.set(state=run.paused_from or RunState.RUNNING, paused_from=None, hold=None, reason=None)
    in_group = acc.run.step == RunStep.GROUP
    if in_group and acc.run.phase == GroupPhase.GATE:
        acc.set(gate=None)  # a new gate opens: old buttons stay stale
    if in_group and acc.run.phase == GroupPhase.FREEZE_CHECK:
        acc.set(phase=GroupPhase.GATE)
    acc.emit(EventKind.RESUMED, by=cmd.user)
    if in_group and acc.run.phase == GroupPhase.GATE and acc.run.approval_mode == ApprovalMode.AUTO:
        # Auto mode paused on an inconclusive verdict: whoever resumes hands it to a person.
        open_gate(acc, config, human=True)
        return acc.decision()
    return None


def _abort(acc: Acc, cmd: Command, config: Config) -> Decision | None:
    if _under_way(acc.run):
        return _intent(acc, cmd)
    _abort_now(acc, cmd.user, cmd.reason)
    return acc.decision()


def _abort_now(acc: Acc, user: str, reason: str | None) -> None:
    close_gate(acc, GateDecision.ABORTED, user)
    finish(acc, RunState.ABORTED, reason or f"aborted by {user}")


def _rollback(acc: Acc, cmd: Command, config: Config) -> Decision | None:
    run = acc.run
    if run.state == RunState.ROLLING_BACK:
        return _refuse(acc, cmd, f"run {run.id} is already rolling back")
    if _stale_gate(run, cmd):
        return _refuse(acc, cmd, STALE_GATE)
    if _under_way(run):
        return _intent(acc, cmd)
    start_rollback(acc, cmd.reason or rollback_reason(run, cmd.user), by=cmd.user, automatic=False)
    return None


def rollback_reason(run: Run, user: str) -> str:
    """Who asked, and at an open gate the verdict they saw (the rule and its numbers)."""
    reason = f"rollback requested by {user}"
    if run.state == RunState.PAUSED and run.reason:
        return f"{reason} while paused: {run.reason}"
    gate = run.gate
    if gate is None or gate.decision is not None:
        return reason
    verdict = run.group(gate.group).verdict or {}
    phase, reasons = verdict.get("phase"), verdict.get("reasons") or []
    if phase in (None, "pass"):
        return f"{reason} at the {gate.group} gate"
    return f"{reason} at the {gate.group} gate, verdict {phase}: " + "; ".join(reasons)


def _acknowledge(acc: Acc, cmd: Command, config: Config) -> Decision | None:
    run = acc.run
    if run.changelog_ack:
        return _refuse(acc, cmd, f"the changelog was already acknowledged by {run.changelog_ack}")
    if cmd.user != run.requester:
        return _refuse(acc, cmd, "only the requester acknowledges the changelog")
    acc.set(changelog_ack=cmd.user)
    acc.emit(EventKind.CHANGELOG_ACKNOWLEDGED, by=cmd.user)
    if run.state == RunState.WAITING and run.step == RunStep.CHANGELOG:
        acc.set(state=RunState.RUNNING, reason=None, step=RunStep.FREEZE)
        return None
    return acc.decision()


_HANDLERS: dict[Action, Handler] = {
    Action.APPROVE: _approve,
    Action.PAUSE: _pause,
    Action.HOLD: _pause,
    Action.RESUME: _resume,
    Action.ABORT: _abort,
    Action.ROLLBACK: _rollback,
    Action.ACKNOWLEDGE: _acknowledge,
}
