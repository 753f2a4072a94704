"""What the performed effects reported: one handler per effect kind, and failures.

Each handler receives the pending effect (already cleared from the run) and its result, and
records what it means: slots replaced, a window measured and judged, the freeze broken, ...
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .config import Config
from .cpoutcomes import on_cp_check, on_cp_verify
from .events import EventKind
from .metrics import Summary, window_point
from .model import (
    ApprovalMode,
    EffectKind,
    GroupPhase,
    GroupRun,
    GroupStatus,
    Hold,
    Pending,
    RunState,
    RunStep,
    SlotRun,
    SlotStatus,
)
from .rollback import rollback_failed, start_rollback
from .transition import Acc, Failure, Outcome, fail, finish, wrap_up
from .verdict import Phase, Verdict, inconclusive, judge
from .versions import Version, path_warning

MAX_ATTEMPTS = 5
BACKOFF_CAP_S = 60.0

OutcomeHandler = Callable[[Acc, Pending, dict[str, Any], Config], None]


def on_outcome(acc: Acc, event: Outcome, config: Config) -> None:
    """Record the pending effect's result."""
    pending = acc.run.pending
    assert pending is not None
    acc.set(pending=None)
    _OUTCOMES[pending.kind](acc, pending, event.result, config)


def _on_inventory(acc: Acc, p: Pending, result: dict[str, Any], config: Config) -> None:
    run = acc.run
    unready: list[str] = []
    versions: list[str] = []
    for g in run.groups:
        slots = []
        for s in result["groups"][g.name]:
            if not s.get("ready"):
                unready.append(s["id"])
            if s.get("version"):
                versions.append(s["version"])
            slots.append(
                SlotRun(
                    id=s["id"],
                    previous_image=s["image"],
                    previous_digest=s.get("digest"),
                    previous_version=s.get("version"),
                    current_image=s["image"],
                    current_digest=s.get("digest"),
                    current_version=s.get("version"),
                    status=SlotStatus.DONE if s["image"] == g.target_image else SlotStatus.PENDING,
                    endpoints=s.get("endpoints", {}),
                )
            )
        acc.group(acc.run.group(g.name).with_(slots=tuple(slots)))
        if not slots:
            fail(acc, f"group {g.name} has no instances")
            return
    current = min(versions, key=Version) if versions else None
    acc.set(current_version=current)
    acc.emit(EventKind.INVENTORY, fleet=acc.run.mixed_fleet(), current_version=current)
    for warning in result.get("warnings", []):
        acc.emit(EventKind.WARNING, text=warning)
    if problems := result.get("metrics_problems"):
        fail(acc, "no metric evidence, so no verdict could be trusted: " + "; ".join(problems))
        return
    if current:
        if warning := path_warning(current, run.target_version):
            acc.emit(EventKind.WARNING, text=warning)
    if unready:
        if "unhealthy" not in run.overrides:
            fail(
                acc,
                f"instances not ready before the upgrade: {', '.join(unready)} "
                "(fix them, or start with the 'unhealthy' override)",
            )
            return
        acc.emit(EventKind.OVERRIDE_USED, override="unhealthy", by=run.requester, slots=unready)
    acc.set(step=RunStep.CP_CHECK)


def _on_changelog(acc: Acc, p: Pending, result: dict[str, Any], config: Config) -> None:
    if result.get("skipped"):
        acc.emit(EventKind.PRECHECK, check="changelog", status="skipped", note=result["skipped"])
        acc.set(step=RunStep.FREEZE)
        return
    entries = tuple({"version": e["version"], "text": e["text"]} for e in result["entries"])
    acc.set(changelog=entries)
    acc.emit(EventKind.CHANGELOG, entries=list(entries), source=result.get("source"))
    if acc.run.changelog_ack or not entries:
        if acc.run.changelog_ack:
            acc.emit(EventKind.CHANGELOG_ACKNOWLEDGED, by=acc.run.changelog_ack)
        acc.set(step=RunStep.FREEZE)
    else:
        acc.set(
            state=RunState.WAITING, reason="waiting for the requester to acknowledge the changelog"
        )


def _on_config_revision(acc: Acc, p: Pending, result: dict[str, Any], config: Config) -> None:
    if p.key == "freeze":  # the freeze starts
        if result.get("skipped"):
            acc.emit(
                EventKind.PRECHECK, check="config_freeze", status="skipped", note=result["skipped"]
            )
        else:
            acc.set(config_revision=int(result["revision"]))
            acc.emit(EventKind.FREEZE_STARTED, revision=int(result["revision"]))
        acc.set(step=RunStep.BACKUP)
        return
    if config_moved(acc, result):  # the freeze check before a gate
        return
    if acc.run.step == RunStep.GROUP:
        acc.set(phase=GroupPhase.GATE)


def _on_backup(acc: Acc, p: Pending, result: dict[str, Any], config: Config) -> None:
    acc.set(backup=result)
    acc.emit(EventKind.BACKUP_DONE, **result)
    acc.set(step=RunStep.GROUP, group_index=0, phase=GroupPhase.BASELINE_START)


def _on_measure(acc: Acc, p: Pending, result: dict[str, Any], config: Config) -> None:
    """A window starts (the source's mark) or ends (the source's summary since the mark)."""
    run = acc.run
    g = run.current_group
    assert g is not None
    rollout = config.rollout_for(g.name)
    if run.phase == GroupPhase.BASELINE_START:
        until = acc.now + rollout.baseline_window_s
        acc.group(g.with_(baseline_snapshot=result["mark"], window_until=until))
        acc.set(phase=GroupPhase.BASELINE_END)
    elif run.phase == GroupPhase.BASELINE_END:
        before = Summary.from_dict(result["summary"]).to_dict()
        acc.group(
            g.with_(
                before=before,
                window_until=None,
                watch_snapshot=result.get("mark"),
                points=(*g.points, window_point("baseline", p.args.get("mark"), before)),
            )
        )
        acc.set(phase=GroupPhase.REPLACE)
    elif run.phase == GroupPhase.REPLACE and "watch" in p.args:
        summary = Summary.from_dict(result["summary"])
        g = g.with_(
            watch_snapshot=result.get("mark"),
            points=(*g.points, window_point("watch", p.args.get("mark"), summary.to_dict())),
        )
        _on_watch(acc, g, summary, int(p.args["watch"]), config)
    elif run.phase == GroupPhase.SETTLE_START:
        acc.group(
            g.with_(
                settle_snapshot=result["mark"],
                window_until=acc.now + rollout.settle_s,
                status=GroupStatus.VERIFYING,
            )
        )
        acc.set(phase=GroupPhase.SETTLE_END)
    elif run.phase == GroupPhase.SETTLE_END:
        after = Summary.from_dict(result["summary"])
        if g.before is None:  # the baseline could not be measured
            verdict = inconclusive("no baseline metrics to compare with")
        else:
            verdict = judge(Summary.from_dict(g.before), after, config.thresholds_for(g.name))
        points = (*g.points, window_point("settle", p.args.get("mark"), after.to_dict()))
        points += tuple({"kind": "source", **point} for point in result.get("series") or ())
        acc.group(
            g.with_(
                after=after.to_dict(),
                verdict=verdict.to_dict(),
                window_until=None,
                points=points,
            )
        )
        acc.emit(
            EventKind.METRICS_SUMMARY,
            group=g.name,
            before=g.before,
            after=after.to_dict(),
            verdict=verdict.to_dict(),
        )
        acc.set(phase=GroupPhase.FREEZE_CHECK)


def _on_watch(acc: Acc, g: GroupRun, now: Summary, done: int, config: Config) -> None:
    """The metrics since the group's first replacement, judged before its next batch."""
    if g.before is None:
        acc.group(g.with_(watched=done))
        return
    thresholds = config.thresholds_for(g.name)
    needed = config.rollout_for(g.name).watch_min_requests or 2 * thresholds.min_requests
    verdict = judge(
        Summary.from_dict(g.before), now, thresholds.model_copy(update={"min_requests": needed})
    )
    acc.group(
        g.with_(
            watched=done,
            watch={"after": now.to_dict(), "verdict": verdict.to_dict(), "done": done},
        )
    )
    if verdict.phase is not Phase.FAIL:
        return
    total = len(g.slots)
    reason = (
        f"metrics watched during the replacement of {g.name} failed after {done} of {total} "
        "slots: " + "; ".join(verdict.reasons)
    )
    acc.emit(
        EventKind.WATCH_FAILED,
        group=g.name,
        done=done,
        total=total,
        before=g.before,
        after=now.to_dict(),
        verdict=verdict.to_dict(),
    )
    if config.rollout_for(g.name).on_watch_fail == "rollback":
        start_rollback(acc, reason, by="engine", automatic=True)
        return
    acc.set(
        state=RunState.PAUSED,
        paused_from=RunState.RUNNING,
        reason=reason + " — resume to go on with the next slot, or roll back",
    )
    acc.emit(EventKind.PAUSED, by="engine", reason=acc.run.reason)


def _on_ensure_slots(acc: Acc, p: Pending, result: dict[str, Any], config: Config) -> None:
    run = acc.run
    g = run.group(p.args["group"])
    restoring = run.state == RunState.ROLLING_BACK
    errors: dict[str, dict[str, Any]] = result.get("errors", {})
    for slot_id, info in result.get("slots", {}).items():
        s = g.slot(slot_id)
        changed = info["image"] != s.current_image
        observed = {
            "current_image": info["image"],
            "current_digest": info.get("digest"),
            "current_version": info.get("version"),
            "endpoints": info.get("endpoints", s.endpoints),
        }
        if restoring:
            s = s.with_(
                status=SlotStatus.RESTORED,
                restorations=s.restorations + (1 if changed else 0),
                **observed,
            )
            acc.emit(
                EventKind.SLOT_RESTORED,
                group=g.name,
                slot=slot_id,
                image=info["image"],
                version=info.get("version"),
            )
        else:
            s = s.with_(
                status=SlotStatus.DONE,
                replacements=s.replacements + (1 if changed else 0),
                **observed,
            )
            done = sum(1 for x in g.slots if x.status == SlotStatus.DONE) + 1
            acc.emit(
                EventKind.SLOT_REPLACED,
                group=g.name,
                slot=slot_id,
                image=info["image"],
                version=info.get("version"),
                digest=info.get("digest"),
                done=done,
                total=len(g.slots),
            )
            g = g.with_(replaced_at=(*g.replaced_at, acc.now))
        g = g.with_slot(s)
    acc.group(g)
    if not errors:
        return
    temporary = {k: v for k, v in errors.items() if v.get("temporary")}
    permanent = {k: v for k, v in errors.items() if not v.get("temporary")}
    if permanent or p.attempt >= MAX_ATTEMPTS:
        failed = permanent or temporary
        text = "; ".join(f"{k}: {v['error']}" for k, v in failed.items())
        if restoring:
            rollback_failed(acc, text)
            return
        for slot_id in failed:
            group = acc.run.group(g.name)
            acc.group(group.with_slot(group.slot(slot_id).with_(status=SlotStatus.FAILED)))
        acc.emit(
            EventKind.SLOT_FAILED, group=g.name, errors={k: v["error"] for k, v in failed.items()}
        )
        start_rollback(acc, f"replacement failed: {text}", by="engine", automatic=True)
        return
    retry = Pending(
        key=p.key, kind=p.kind, attempt=p.attempt + 1, args={**p.args, "slots": sorted(temporary)}
    )
    delay = max(v.get("delay_s", 2.0) for v in temporary.values())
    backoff(acc, retry, delay, "; ".join(f"{k}: {v['error']}" for k, v in temporary.items()))


def _on_smoke(acc: Acc, p: Pending, result: dict[str, Any], config: Config) -> None:
    g = acc.run.current_group
    assert g is not None
    acc.group(g.with_(smoke=result))
    if result.get("passed"):
        acc.emit(EventKind.SMOKE_PASSED, group=g.name, requests=result.get("requests"))
        acc.set(phase=GroupPhase.SETTLE_START)
    else:
        acc.emit(EventKind.SMOKE_FAILED, group=g.name, failures=result.get("failures", []))
        start_rollback(
            acc,
            f"smoke requests failed on {g.name}: " + "; ".join(result.get("failures", [])[:3]),
            by="engine",
            automatic=True,
        )


def config_moved(acc: Acc, result: dict[str, Any]) -> bool:
    """The configuration revision moved during the freeze: pause (resume accepts it)."""
    if result.get("skipped") or acc.run.config_revision is None:
        return False
    revision = int(result["revision"])
    if revision == acc.run.config_revision:
        return False
    acc.emit(EventKind.CONFIG_CHANGED, before=acc.run.config_revision, after=revision)
    # Resume accepts the new revision: the person resuming has looked at the change.
    acc.set(
        state=RunState.PAUSED,
        paused_from=RunState.RUNNING,
        reason=f"configuration changed during the freeze (revision {acc.run.config_revision}"
        f" → {revision}); check the change, then resume",
        seen_revision=revision,
    )
    acc.emit(EventKind.PAUSED, by="engine", reason=acc.run.reason)
    return True


def _on_checkin(acc: Acc, p: Pending, result: dict[str, Any], config: Config) -> None:
    acc.emit(EventKind.CHECKIN, groups=result.get("groups", {}), final=p.args.get("final", False))
    if config_moved(acc, result):
        acc.set(next_checkin_at=acc.now + config.defaults.observation.checkin_interval_s)
        return
    if _observation_alert(acc, result, config):
        acc.set(next_checkin_at=acc.now + config.defaults.observation.checkin_interval_s)
        return
    if p.args.get("final"):
        wrap_up(acc, RunState.COMPLETED, "every group upgraded and observed")
        return
    acc.set(next_checkin_at=acc.now + config.defaults.observation.checkin_interval_s)


def _observation_alert(acc: Acc, result: dict[str, Any], config: Config) -> bool:
    """The runbook's step 9 judged by the verdict's rules: a group whose metrics since its
    upgrade newly fail is reported, and the run pauses (rolls back in auto mode) so that a
    rollback stays possible. True when the run stopped."""
    alerts: list[tuple[str, Verdict]] = []
    for name, info in (result.get("groups") or {}).items():
        g = acc.run.group(name)
        since = info.get("since_upgrade")
        if not since or g.before is None:
            continue
        verdict = judge(
            Summary.from_dict(g.before), Summary.from_dict(since), config.thresholds_for(name)
        )
        was_failing = (g.observed or {}).get("phase") == Phase.FAIL.value
        acc.group(g.with_(observed=verdict.to_dict()))
        if verdict.phase is Phase.FAIL and not was_failing:
            alerts.append((name, verdict))
            acc.emit(
                EventKind.OBSERVATION_ALERT,
                group=name,
                before=g.before,
                after=since,
                verdict=verdict.to_dict(),
            )
    if not alerts:
        return False
    reason = "observation: " + "; ".join(
        f"{name} fails since its upgrade: {'; '.join(v.reasons)}" for name, v in alerts
    )
    if acc.run.approval_mode == ApprovalMode.AUTO:
        start_rollback(acc, reason, by="auto", automatic=True)
        return True
    acc.set(
        state=RunState.PAUSED,
        paused_from=RunState.RUNNING,
        reason=reason + " — roll back, or resume to keep observing",
    )
    acc.emit(EventKind.PAUSED, by="engine", reason=acc.run.reason)
    return True


def _on_finish_backends(acc: Acc, p: Pending, result: dict[str, Any], config: Config) -> None:
    groups = {name: said for name, said in (result.get("groups") or {}).items() if said}
    if groups:
        acc.emit(EventKind.BACKEND_FINISHED, groups=groups)
    _end(acc, p)


def _end(acc: Acc, p: Pending) -> None:
    """The run ends as ``wrap_up`` decided, whatever the backends managed to tidy."""
    finish(acc, RunState(p.args["state"]), str(p.args["reason"]))
    acc.emit(EventKind.FREEZE_LIFTED, revision=acc.run.config_revision)


_OUTCOMES: dict[EffectKind, OutcomeHandler] = {
    EffectKind.LIST_SLOTS: _on_inventory,
    EffectKind.CHECK_CONTROL_PLANE: on_cp_check,
    EffectKind.VERIFY_CONTROL_PLANE: on_cp_verify,
    EffectKind.LOAD_CHANGELOG: _on_changelog,
    EffectKind.READ_CONFIG_REVISION: _on_config_revision,
    EffectKind.RUN_BACKUP: _on_backup,
    EffectKind.MEASURE: _on_measure,
    EffectKind.ENSURE_SLOTS: _on_ensure_slots,
    EffectKind.SMOKE: _on_smoke,
    EffectKind.CHECKIN: _on_checkin,
    EffectKind.FINISH_BACKENDS: _on_finish_backends,
}


# --- failures ---------------------------------------------------------------------------------


def on_failure(acc: Acc, event: Failure, config: Config) -> None:
    """The pending effect failed: retry with backoff, or decide what its failure means."""
    p = acc.run.pending
    assert p is not None
    if event.temporary and p.attempt < MAX_ATTEMPTS:
        backoff(acc, p.with_(attempt=p.attempt + 1), event.delay_s, event.error)
        return
    acc.set(pending=None)
    acc.emit(EventKind.EFFECT_FAILED, kind=p.kind, error=event.error, attempts=p.attempt)
    if p.kind == EffectKind.FINISH_BACKENDS:
        acc.emit(EventKind.WARNING, text=f"tidying up after the run failed: {event.error}")
        _end(acc, p)
    elif acc.run.state == RunState.ROLLING_BACK:
        rollback_failed(acc, event.error)
    elif p.kind in (EffectKind.MEASURE, EffectKind.CHECKIN):
        _metrics_unavailable(acc, p, event.error, config)
    elif any(s.touched or s.status == SlotStatus.REPLACING for _, s in acc.run.slots()):
        start_rollback(acc, f"{p.kind} failed: {event.error}", by="engine", automatic=True)
    else:
        fail(acc, f"{p.kind} failed: {event.error}")


def _metrics_unavailable(acc: Acc, p: Pending, error: str, config: Config) -> None:
    """Metrics that cannot be read never pass: the verdict is inconclusive, a human decides."""
    g = acc.run.current_group
    if p.kind == EffectKind.CHECKIN or g is None:
        acc.emit(EventKind.WARNING, text=f"check-in metrics unavailable: {error}")
        if p.args.get("final"):
            wrap_up(acc, RunState.COMPLETED, "every group upgraded; final check-in had no metrics")
        else:
            acc.set(next_checkin_at=acc.now + config.defaults.observation.checkin_interval_s)
        return
    verdict = inconclusive(f"metrics unavailable: {error}")
    acc.group(g.with_(verdict=verdict.to_dict(), window_until=None))
    acc.emit(
        EventKind.METRICS_SUMMARY,
        group=g.name,
        before=g.before,
        after=None,
        verdict=verdict.to_dict(),
    )
    after_phases = (GroupPhase.SETTLE_START, GroupPhase.SETTLE_END)
    acc.set(phase=GroupPhase.FREEZE_CHECK if acc.run.phase in after_phases else GroupPhase.REPLACE)


def backoff(acc: Acc, retry: Pending, delay_s: float, error: str) -> None:
    """Hold the run, then perform ``retry`` (exponential delay, capped)."""
    delay = min(BACKOFF_CAP_S, delay_s * (2 ** (retry.attempt - 2)))
    hold = Hold(reason=f"backoff after: {error}", until=acc.now + delay)
    acc.set(pending=retry, state=RunState.HELD, paused_from=acc.run.state, hold=hold)
    acc.emit(EventKind.HELD, reason=hold.reason, until=acc.now + delay, attempt=retry.attempt)
    acc.wake(acc.now + delay)
