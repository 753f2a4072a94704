"""The pure transition: ``decide(run, event, now, config)`` → new run, effects, audit events.

Nothing here touches IO or reads the clock. The runner saves the returned run (with its events,
atomically) *before* it performs the effect, performs it, and feeds the outcome back as an
event. An effect is the end result the runner must bring about ("slots prod-eu/0 run image Y
and are ready"), so repeating one after a crash is harmless.

Commands that change course (pause, abort, rollback) while an effect is under way are recorded
as an intent and applied as soon as that effect's outcome is saved — a slot is never left
half-replaced, and every outcome is counted exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import metrics as m
from .config import Config
from .model import (
    ABORTED,
    COMPLETED,
    FAILED,
    HELD,
    PAUSED,
    ROLLED_BACK,
    ROLLING_BACK,
    RUNNING,
    WAITING,
    Approval,
    Gate,
    GroupRun,
    Hold,
    Pending,
    Rollback,
    Run,
    SlotRun,
    _build,
)
from .versions import Version, path_warning

MAX_ATTEMPTS = 5
BACKOFF_CAP_S = 60.0
OVERRIDES = ("cp-version", "unhealthy", "backup")


# --- events fed to decide ---------------------------------------------------------------------


@dataclass(frozen=True)
class Tick:
    """Time passed, or the driver (re)started: do the next thing."""


@dataclass(frozen=True)
class Outcome:
    key: str
    result: dict[str, Any]


@dataclass(frozen=True)
class Failure:
    key: str
    error: str
    temporary: bool = False
    delay_s: float = 2.0


@dataclass(frozen=True)
class Command:
    """A person's (or the automatic approver's) request."""

    action: str  # approve | pause | resume | abort | rollback | acknowledge | hold
    user: str
    user_groups: tuple[str, ...] = ()
    gate_id: str | None = None
    reason: str | None = None
    until: float | None = None


Event = Tick | Outcome | Failure | Command


@dataclass(frozen=True)
class Decision:
    run: Run
    effects: tuple[Pending, ...] = ()
    events: tuple[dict[str, Any], ...] = ()
    refusal: str | None = None
    wake_at: float | None = None


@dataclass
class _Acc:
    """Accumulates one decision; a small builder keeps the step functions readable."""

    run: Run
    now: float
    events: list[dict[str, Any]] = field(default_factory=list)
    effects: list[Pending] = field(default_factory=list)
    wake_at: float | None = None
    original: Run | None = None

    def __post_init__(self) -> None:
        self.original = self.run

    def emit(self, type_: str, **data: Any) -> None:
        self.events.append({"type": type_, "run_id": self.run.id, "at": self.now, **data})

    def set(self, **changes: Any) -> None:
        self.run = self.run.with_(**changes)

    def group(self, g: GroupRun) -> None:
        self.run = self.run.with_group(g)

    def act(self, kind: str, key: str, **args: Any) -> None:
        pending = Pending(key=key, kind=kind, args=args)
        self.run = self.run.with_(pending=pending)
        self.effects.append(pending)

    def wake(self, at: float | None) -> None:
        if at is not None:
            self.wake_at = at if self.wake_at is None else min(self.wake_at, at)

    def decision(self, refusal: str | None = None) -> Decision:
        # Only a real change bumps updated_at: a resumed driver re-emitting its pending
        # effect must not write (and so must not look like progress).
        run = self.run
        if run != self.original:
            run = run.with_(updated_at=self.now)
        return Decision(run, tuple(self.effects), tuple(self.events), refusal, self.wake_at)


def decide(run: Run, event: Event, now: float, config: Config) -> Decision:
    """The one place where a run changes. Pure: same inputs, same decision."""
    acc = _Acc(run, now)
    if isinstance(event, Command):
        return _command(acc, event, config)
    if isinstance(event, Outcome | Failure):
        if run.pending is None or run.pending.key != event.key or run.terminal:
            return Decision(run)  # a stale outcome (superseded effect): no effect
        if isinstance(event, Failure):
            _failure(acc, event, config)
        else:
            _outcome(acc, event, config)
        _apply_intent(acc, config)
        if not acc.run.terminal and acc.run.pending is None:
            _tick(acc, config)
        return acc.decision()
    _tick(acc, config)
    return acc.decision()


# --- ticks: what to do next -------------------------------------------------------------------


def _tick(acc: _Acc, config: Config) -> None:
    run = acc.run
    if run.terminal or run.state == PAUSED:
        return
    if run.state == HELD:
        assert run.hold is not None
        if acc.now < run.hold.until:
            acc.wake(run.hold.until)
            return
        acc.emit("hold_ended", reason=run.hold.reason)
        acc.set(state=run.paused_from or RUNNING, hold=None, paused_from=None, reason=None)
        run = acc.run
    if run.pending is not None:
        acc.effects.append(run.pending)  # resumed mid-effect: perform it again (idempotent)
        return
    if run.state == WAITING:
        _waiting(acc, config)
        return
    if run.state == ROLLING_BACK:
        _rollback_step(acc)
        return
    _step(acc, config)


def _step(acc: _Acc, config: Config) -> None:
    run = acc.run
    if run.step == "inventory":
        acc.act("list_slots", "inventory", groups=[g.name for g in run.groups])
    elif run.step == "cp_check":
        acc.act("check_control_plane", "cp_check", target=run.target_version)
    elif run.step == "changelog":
        acc.act(
            "load_changelog",
            "changelog",
            current=run.current_version,
            target=run.target_version,
        )
    elif run.step == "freeze":
        acc.act("read_config_revision", "freeze")
    elif run.step == "backup":
        if config.backup is None:
            if not run.waiver:
                _fail(acc, "no backup hook is configured; start again with a waiver and a reason")
                return
            acc.emit("backup_waived", reason=run.waiver, by=run.requester)
            _advance(acc, "group")
            return
        acc.act("run_backup", "backup")
    elif run.step == "group":
        _group_step(acc, config)
    elif run.step == "observe":
        _observe_step(acc, config)


def _advance(acc: _Acc, step: str) -> None:
    acc.set(step=step, group_index=0, phase="baseline_start", pending=None)
    if step == "observe":
        acc.set(observe_until=None, next_checkin_at=None)


def _group_step(acc: _Acc, config: Config) -> None:
    run = acc.run
    g = run.current_group
    if g is None:
        _advance(acc, "observe")
        _observe_step(acc, config)
        return
    rollout = config.rollout_for(g.name)
    key = f"{g.name}:{run.phase}"
    if run.phase == "baseline_start":
        if g.status == "pending":
            acc.group(g.with_(status="upgrading", started_at=acc.now))
            acc.emit(
                "group_started", group=g.name, image=g.target_image, slots=[s.id for s in g.slots]
            )
        acc.act("scrape", key, group=g.name)
    elif run.phase in ("baseline_end", "settle_end"):
        if g.window_until is not None and acc.now < g.window_until:
            acc.wake(g.window_until)
            return
        acc.act("scrape", key, group=g.name)
    elif run.phase == "replace":
        todo = [s for s in g.slots if s.status in ("pending", "replacing")]
        if not todo:
            acc.set(phase="smoke")
            _group_step(acc, config)
            return
        batch = todo[: g.batch_size]
        for s in batch:
            if s.status == "pending":
                acc.group(acc.run.current_group.with_slot(s.with_(status="replacing")))  # type: ignore[union-attr]
                acc.emit("slot_replacing", group=g.name, slot=s.id, image=g.target_image)
        acc.act(
            "ensure_slots",
            f"{key}:{','.join(s.id for s in batch)}",
            group=g.name,
            slots=[s.id for s in batch],
            image=g.target_image,
            ready_timeout_s=rollout.ready_timeout_s,
        )
    elif run.phase == "smoke":
        replaced = [s for s in g.slots if s.touched]
        if not replaced:
            acc.emit("smoke_skipped", group=g.name, reason="no slot was replaced")
            acc.set(phase="settle_start")
            _group_step(acc, config)
            return
        acc.act(
            "smoke",
            key,
            group=g.name,
            endpoints={s.id: s.endpoints.get("proxy", "") for s in replaced},
        )
    elif run.phase == "settle_start":
        acc.act("scrape", key, group=g.name)
    elif run.phase == "freeze_check":
        acc.act("read_config_revision", key)
    elif run.phase == "gate":
        _open_gate(acc, config)


def _observe_step(acc: _Acc, config: Config) -> None:
    run = acc.run
    obs = config.defaults.observation
    if run.observe_until is None:
        acc.set(observe_until=acc.now + obs.window_s, next_checkin_at=acc.now)
        acc.emit("observation_started", until=acc.now + obs.window_s)
        run = acc.run
    assert run.observe_until is not None and run.next_checkin_at is not None
    final = acc.now >= run.observe_until
    if final or acc.now >= run.next_checkin_at:
        acc.act(
            "checkin",
            f"observe:{run.next_checkin_at}:{final}",
            groups=[g.name for g in run.groups],
            final=final,
        )
        return
    acc.wake(min(run.next_checkin_at, run.observe_until))


# --- outcomes ------------------------------------------------------------------------------------


def _outcome(acc: _Acc, event: Outcome, config: Config) -> None:
    pending = acc.run.pending
    assert pending is not None
    acc.set(pending=None)
    handler = _OUTCOMES[pending.kind]
    handler(acc, pending, event.result, config)


def _on_inventory(acc: _Acc, p: Pending, result: dict[str, Any], config: Config) -> None:
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
                    status="done" if s["image"] == g.target_image else "pending",
                    endpoints=s.get("endpoints", {}),
                )
            )
        acc.group(acc.run.group(g.name).with_(slots=tuple(slots)))
        if not slots:
            _fail(acc, f"group {g.name} has no instances")
            return
    current = min(versions, key=Version) if versions else None
    acc.set(current_version=current)
    acc.emit("inventory", fleet=acc.run.mixed_fleet(), current_version=current)
    for warning in result.get("warnings", []):
        acc.emit("warning", text=warning)
    if current:
        if warning := path_warning(current, run.target_version):
            acc.emit("warning", text=warning)
    if unready:
        if "unhealthy" not in run.overrides:
            _fail(
                acc,
                f"instances not ready before the upgrade: {', '.join(unready)} "
                "(fix them, or start with the 'unhealthy' override)",
            )
            return
        acc.emit("override_used", override="unhealthy", by=run.requester, slots=unready)
    acc.set(step="cp_check")


def _on_cp_check(acc: _Acc, p: Pending, result: dict[str, Any], config: Config) -> None:
    run = acc.run
    if result.get("skipped"):
        acc.emit(
            "precheck",
            check="control_plane",
            status="skipped",
            note="no control plane configured: the CP version pre-check is skipped",
        )
    else:
        cp_version = result["version"]
        acc.set(cp={**(run.cp or {}), "version": cp_version})
        if Version(cp_version) < Version(run.target_version):
            if "cp-version" not in run.overrides:
                _fail(
                    acc,
                    f"control plane runs {cp_version}, older than the target "
                    f"{run.target_version}: upgrade the CP first (runbook: preparation) "
                    "or start with the 'cp-version' override",
                )
                return
            acc.emit(
                "override_used", override="cp-version", by=run.requester, cp_version=cp_version
            )
        else:
            acc.emit("precheck", check="control_plane", status="ok", cp_version=cp_version)
    acc.set(step="changelog")


def _on_changelog(acc: _Acc, p: Pending, result: dict[str, Any], config: Config) -> None:
    if result.get("skipped"):
        acc.emit("precheck", check="changelog", status="skipped", note=result["skipped"])
        acc.set(step="freeze")
        return
    entries = tuple({"version": e["version"], "text": e["text"]} for e in result["entries"])
    acc.set(changelog=entries)
    acc.emit("changelog", entries=list(entries), source=result.get("source"))
    if acc.run.changelog_ack or not entries:
        if acc.run.changelog_ack:
            acc.emit("changelog_acknowledged", by=acc.run.changelog_ack)
        acc.set(step="freeze")
    else:
        acc.set(state=WAITING, reason="waiting for the requester to acknowledge the changelog")


def _on_freeze(acc: _Acc, p: Pending, result: dict[str, Any], config: Config) -> None:
    if result.get("skipped"):
        acc.emit("precheck", check="config_freeze", status="skipped", note=result["skipped"])
    else:
        acc.set(config_revision=int(result["revision"]))
        acc.emit("freeze_started", revision=int(result["revision"]))
    acc.set(step="backup")


def _on_backup(acc: _Acc, p: Pending, result: dict[str, Any], config: Config) -> None:
    acc.set(backup=result)
    acc.emit("backup_done", **result)
    _advance(acc, "group")


def _on_scrape(acc: _Acc, p: Pending, result: dict[str, Any], config: Config) -> None:
    run = acc.run
    g = run.current_group
    assert g is not None
    rollout = config.rollout_for(g.name)
    snapshot = result["snapshot"]
    if run.phase == "baseline_start":
        acc.group(
            g.with_(baseline_snapshot=snapshot, window_until=acc.now + rollout.baseline_window_s)
        )
        acc.set(phase="baseline_end")
    elif run.phase == "baseline_end":
        before = _summary(g.baseline_snapshot, snapshot)
        acc.group(g.with_(before=before, window_until=None))
        acc.set(phase="replace")
    elif run.phase == "settle_start":
        acc.group(
            g.with_(
                settle_snapshot=snapshot,
                window_until=acc.now + rollout.settle_s,
                status="verifying",
            )
        )
        acc.set(phase="settle_end")
    elif run.phase == "settle_end":
        after = _summary(g.settle_snapshot, snapshot)
        if g.before is None:  # the baseline could not be measured
            verdict = m.Verdict(m.Phase.INCONCLUSIVE, ("no baseline metrics to compare with",))
        else:
            verdict = m.judge(
                m.Summary.from_dict(g.before),
                m.Summary.from_dict(after),
                config.thresholds_for(g.name),
            )
        acc.group(g.with_(after=after, verdict=verdict.to_dict(), window_until=None))
        acc.emit(
            "metrics_summary", group=g.name, before=g.before, after=after, verdict=verdict.to_dict()
        )
        acc.set(phase="freeze_check")


def _summary(start: dict[str, Any] | None, end: dict[str, Any]) -> dict[str, Any]:
    before = (
        _build(m.Snapshot, start) if start else m.Snapshot(taken_at=end["taken_at"], instances=())
    )
    window = m.window(before, _build(m.Snapshot, end))
    return m.summarize(window).to_dict()


def _on_ensure_slots(acc: _Acc, p: Pending, result: dict[str, Any], config: Config) -> None:
    run = acc.run
    g = run.group(p.args["group"])
    restoring = run.state == ROLLING_BACK
    errors: dict[str, dict[str, Any]] = result.get("errors", {})
    for slot_id, info in result.get("slots", {}).items():
        s = g.slot(slot_id)
        changed = info["image"] != s.current_image
        if restoring:
            s = s.with_(
                status="restored",
                current_image=info["image"],
                current_digest=info.get("digest"),
                current_version=info.get("version"),
                restorations=s.restorations + (1 if changed else 0),
                endpoints=info.get("endpoints", s.endpoints),
            )
            acc.emit(
                "slot_restored",
                group=g.name,
                slot=slot_id,
                image=info["image"],
                version=info.get("version"),
            )
        else:
            s = s.with_(
                status="done",
                current_image=info["image"],
                current_digest=info.get("digest"),
                current_version=info.get("version"),
                replacements=s.replacements + (1 if changed else 0),
                endpoints=info.get("endpoints", s.endpoints),
            )
            done = sum(1 for x in g.slots if x.status == "done") + 1
            acc.emit(
                "slot_replaced",
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
            _rollback_failed(acc, text)
            return
        for slot_id in failed:
            acc.group(
                acc.run.group(g.name).with_slot(
                    acc.run.group(g.name).slot(slot_id).with_(status="failed")
                )
            )
        acc.emit("slot_failed", group=g.name, errors={k: v["error"] for k, v in failed.items()})
        _start_rollback(acc, f"replacement failed: {text}", by="engine", automatic=True)
        return
    retry = Pending(
        key=p.key, kind=p.kind, attempt=p.attempt + 1, args={**p.args, "slots": sorted(temporary)}
    )
    delay = max(v.get("delay_s", 2.0) for v in temporary.values())
    _backoff(acc, retry, delay, "; ".join(f"{k}: {v['error']}" for k, v in temporary.items()))


def _on_smoke(acc: _Acc, p: Pending, result: dict[str, Any], config: Config) -> None:
    g = acc.run.current_group
    assert g is not None
    acc.group(g.with_(smoke=result))
    if result.get("passed"):
        acc.emit("smoke_passed", group=g.name, requests=result.get("requests"))
        acc.set(phase="settle_start")
    else:
        acc.emit("smoke_failed", group=g.name, failures=result.get("failures", []))
        _start_rollback(
            acc,
            f"smoke requests failed on {g.name}: " + "; ".join(result.get("failures", [])[:3]),
            by="engine",
            automatic=True,
        )


def _on_freeze_check(acc: _Acc, p: Pending, result: dict[str, Any], config: Config) -> None:
    if _config_moved(acc, result):
        return
    if acc.run.step == "group":
        acc.set(phase="gate")


def _config_moved(acc: _Acc, result: dict[str, Any]) -> bool:
    if result.get("skipped") or acc.run.config_revision is None:
        return False
    revision = int(result["revision"])
    if revision == acc.run.config_revision:
        return False
    acc.emit("config_changed", before=acc.run.config_revision, after=revision)
    # Resume accepts the new revision: the person resuming has looked at the change.
    acc.set(
        state=PAUSED,
        paused_from=RUNNING,
        reason=f"configuration changed during the freeze (revision {acc.run.config_revision}"
        f" → {revision}); check the change, then resume",
        cp={**(acc.run.cp or {}), "seen_revision": revision},
    )
    acc.emit("paused", by="engine", reason=acc.run.reason)
    return True


def _on_checkin(acc: _Acc, p: Pending, result: dict[str, Any], config: Config) -> None:
    acc.emit("checkin", groups=result.get("groups", {}), final=p.args.get("final", False))
    if _config_moved(acc, result):
        acc.set(next_checkin_at=acc.now + config.defaults.observation.checkin_interval_s)
        return
    if p.args.get("final"):
        _finish(acc, COMPLETED, "every group upgraded and observed")
        acc.emit("freeze_lifted", revision=acc.run.config_revision)
        return
    acc.set(next_checkin_at=acc.now + config.defaults.observation.checkin_interval_s)


_OUTCOMES = {
    "list_slots": _on_inventory,
    "check_control_plane": _on_cp_check,
    "load_changelog": _on_changelog,
    "read_config_revision": lambda acc, p, r, c: (
        _on_freeze(acc, p, r, c) if p.key == "freeze" else _on_freeze_check(acc, p, r, c)
    ),
    "run_backup": _on_backup,
    "scrape": _on_scrape,
    "ensure_slots": _on_ensure_slots,
    "smoke": _on_smoke,
    "checkin": _on_checkin,
}


def _failure(acc: _Acc, event: Failure, config: Config) -> None:
    p = acc.run.pending
    assert p is not None
    if event.temporary and p.attempt < MAX_ATTEMPTS:
        retry = p.with_(attempt=p.attempt + 1)
        _backoff(acc, retry, event.delay_s, event.error)
        return
    acc.set(pending=None)
    acc.emit("effect_failed", kind=p.kind, error=event.error, attempts=p.attempt)
    if acc.run.state == ROLLING_BACK:
        _rollback_failed(acc, event.error)
    elif p.kind in ("scrape", "checkin"):
        _metrics_unavailable(acc, p, event.error, config)
    elif any(s.touched or s.status == "replacing" for _, s in acc.run.slots()):
        _start_rollback(acc, f"{p.kind} failed: {event.error}", by="engine", automatic=True)
    else:
        _fail(acc, f"{p.kind} failed: {event.error}")


def _metrics_unavailable(acc: _Acc, p: Pending, error: str, config: Config) -> None:
    """Metrics that cannot be read never pass: the verdict is inconclusive, a human decides."""
    g = acc.run.current_group
    if p.kind == "checkin" or g is None:
        acc.emit("warning", text=f"check-in metrics unavailable: {error}")
        if p.args.get("final"):
            _finish(acc, COMPLETED, "every group upgraded; final check-in had no metrics")
            acc.emit("freeze_lifted", revision=acc.run.config_revision)
        else:
            acc.set(next_checkin_at=acc.now + config.defaults.observation.checkin_interval_s)
        return
    verdict = m.Verdict(m.Phase.INCONCLUSIVE, (f"metrics unavailable: {error}",))
    acc.group(g.with_(verdict=verdict.to_dict(), window_until=None))
    acc.emit(
        "metrics_summary", group=g.name, before=g.before, after=None, verdict=verdict.to_dict()
    )
    acc.set(phase="freeze_check" if acc.run.phase in ("settle_start", "settle_end") else "replace")


def _backoff(acc: _Acc, retry: Pending, delay_s: float, error: str) -> None:
    delay = min(BACKOFF_CAP_S, delay_s * (2 ** (retry.attempt - 2)))
    acc.set(
        pending=retry,
        state=HELD,
        paused_from=acc.run.state,
        hold=Hold(reason=f"backoff after: {error}", until=acc.now + delay),
    )
    acc.emit("held", reason=acc.run.hold.reason, until=acc.now + delay, attempt=retry.attempt)  # type: ignore[union-attr]
    acc.wake(acc.now + delay)


# --- gates ------------------------------------------------------------------------------------


def _open_gate(acc: _Acc, config: Config, *, human: bool = False) -> None:
    run = acc.run
    g = run.current_group
    assert g is not None
    verdict = (g.verdict or {}).get("phase", "inconclusive")
    if run.approval_mode == "auto" and not human:
        if verdict == "pass":
            acc.emit("approval_recorded", group=g.name, user="auto", gate=None, count=1, required=1)
            _gate_approved(acc, g, ("auto",), config)
        elif verdict == "fail":
            _start_rollback(acc, f"verdict fail on {g.name}", by="auto", automatic=True)
        else:
            acc.set(
                state=PAUSED,
                paused_from=RUNNING,
                reason=f"verdict inconclusive on {g.name}: a human decides",
            )
            acc.emit("paused", by="auto", reason=acc.run.reason)
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
    acc.group(g.with_(status="awaiting_approval"))
    acc.set(state=WAITING, gate=gate, gate_seq=seq, reason=f"waiting for approval of {g.name}")
    acc.emit(
        "gate_opened",
        group=g.name,
        gate=gate.id,
        verdict=g.verdict,
        required=gate.required,
        expires_at=gate.expires_at,
        production=g.production,
        recommend="rollback" if verdict == "fail" else "approve",
    )
    acc.wake(min(gate.expires_at, gate.next_reminder_at))


def _waiting(acc: _Acc, config: Config) -> None:
    gate = acc.run.gate
    if gate is None or gate.decision is not None:
        return  # waiting on the changelog acknowledgement: no deadline
    if acc.now >= gate.expires_at:
        acc.set(
            gate=gate.with_(decision="expired", decided_at=acc.now),
            state=PAUSED,
            paused_from=RUNNING,
            reason=f"approval of {gate.group} expired; resume to ask again",
        )
        acc.emit("gate_expired", group=gate.group, gate=gate.id)
        acc.emit("paused", by="engine", reason=acc.run.reason)
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
            "gate_reminder",
            group=gate.group,
            gate=gate.id,
            reminders=reminders,
            escalate=escalate,
            escalation_mention=policy.escalation_mention if escalate else None,
        )
    acc.wake(min(gate.expires_at, gate.next_reminder_at))


def _gate_approved(acc: _Acc, g: GroupRun, deciders: tuple[str, ...], config: Config) -> None:
    if acc.run.gate is not None and acc.run.gate.decision is None:
        acc.set(
            gate=acc.run.gate.with_(decision="approved", decided_by=deciders, decided_at=acc.now)
        )
    acc.group(acc.run.group(g.name).with_(status="approved", finished_at=acc.now))
    acc.emit(
        "gate_decided",
        group=g.name,
        gate=acc.run.gate.id if acc.run.gate else None,
        decision="approved",
        by=list(deciders),
    )
    acc.set(state=RUNNING, reason=None, group_index=acc.run.group_index + 1, phase="baseline_start")


# --- rollback ---------------------------------------------------------------------------------


def _start_rollback(acc: _Acc, reason: str, *, by: str, automatic: bool) -> None:
    gate = acc.run.gate
    if gate is not None and gate.decision is None:
        acc.set(gate=gate.with_(decision="rollback", decided_by=(by,), decided_at=acc.now))
        acc.emit("gate_decided", group=gate.group, gate=gate.id, decision="rollback", by=[by])
    acc.set(
        state=ROLLING_BACK,
        reason=reason,
        pending=None,
        hold=None,
        paused_from=None,
        rollback=Rollback(reason=reason, by=by, automatic=automatic, started_at=acc.now),
    )
    acc.emit(
        "rollback_started",
        reason=reason,
        by=by,
        automatic=automatic,
        groups=[g.name for g in reversed(acc.run.groups) if _needs_restore(g)],
    )


def _needs_restore(g: GroupRun) -> bool:
    return any(s.touched for s in g.slots)


def _rollback_step(acc: _Acc) -> None:
    """Newest group first, each touched slot back to its recorded previous image."""
    for g in reversed(acc.run.groups):
        for s in reversed(g.slots):
            if s.touched:
                if g.status != "rolling_back":
                    acc.group(g.with_(status="rolling_back"))
                acc.group(acc.run.group(g.name).with_slot(s.with_(status="restoring")))
                acc.act(
                    "ensure_slots",
                    f"restore:{s.id}:{s.restorations}",
                    group=g.name,
                    slots=[s.id],
                    image=s.previous_image,
                    restore=True,
                    ready_timeout_s=300.0,
                )
                return
        if g.status == "rolling_back":
            acc.group(g.with_(status="rolled_back", finished_at=acc.now))
    reason = acc.run.rollback.reason if acc.run.rollback else acc.run.reason
    _finish(acc, ROLLED_BACK, reason or "rolled back")
    acc.emit("freeze_lifted", revision=acc.run.config_revision)


def _rollback_failed(acc: _Acc, error: str) -> None:
    acc.set(pending=None)
    acc.emit(
        "rollback_failed",
        error=error,
        fleet=acc.run.mixed_fleet(),
        slots=acc.run.slot_table(),
        page=True,
    )
    _finish(acc, FAILED, f"rollback failed: {error}")


def _fail(acc: _Acc, reason: str) -> None:
    _finish(acc, FAILED, reason)


def _finish(acc: _Acc, state: str, reason: str) -> None:
    acc.set(
        state=state, reason=reason, pending=None, hold=None, finished_at=acc.now, paused_from=None
    )
    acc.emit(f"run_{state}", reason=reason, fleet=acc.run.mixed_fleet(), slots=acc.run.slot_table())


# --- commands ---------------------------------------------------------------------------------


def allowed(principals: list[str], user: str, user_groups: tuple[str, ...]) -> bool:
    return "*" in principals or user in principals or any(g in principals for g in user_groups)


def _refuse(acc: _Acc, cmd: Command, why: str) -> Decision:
    acc.emit("refused", action=cmd.action, user=cmd.user, reason=why)
    return Decision(acc.run, (), tuple(acc.events), refusal=why)


def _policy_group(run: Run, cmd: Command) -> str:
    if cmd.action == "approve" and run.gate is not None:
        return run.gate.group
    g = run.current_group
    return g.name if g else run.groups[min(run.group_index, len(run.groups) - 1)].name


def _command(acc: _Acc, cmd: Command, config: Config) -> Decision:
    run = acc.run
    if run.terminal:
        return _refuse(acc, cmd, f"run {run.id} has already ended ({run.state})")
    handler = {
        "approve": _cmd_approve,
        "pause": _cmd_pause,
        "hold": _cmd_pause,
        "resume": _cmd_resume,
        "abort": _cmd_abort,
        "rollback": _cmd_rollback,
        "acknowledge": _cmd_acknowledge,
    }.get(cmd.action)
    if handler is None:
        return _refuse(acc, cmd, f"unknown action '{cmd.action}'")
    group = _policy_group(run, cmd)
    permission = {"acknowledge": "start", "hold": "pause"}.get(cmd.action, cmd.action)
    principals = getattr(config.policy_for(group), permission)
    if not allowed(principals, cmd.user, cmd.user_groups):
        verb = {"rollback": "roll back", "acknowledge": "acknowledge the changelog"}.get(
            cmd.action, cmd.action
        )
        return _refuse(acc, cmd, f"{cmd.user} may not {verb} on {group} (not in its policy)")
    return handler(acc, cmd, config)


def _cmd_approve(acc: _Acc, cmd: Command, config: Config) -> Decision:
    run = acc.run
    gate = run.gate
    if _stale_gate(run, cmd):
        return _refuse(acc, cmd, "this approval request is no longer pending")
    if run.state != WAITING or gate is None or gate.decision is not None:
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
        "approval_recorded",
        group=gate.group,
        gate=gate.id,
        user=cmd.user,
        count=len(gate.approvals),
        required=gate.required,
    )
    if len(gate.approvals) >= gate.required:
        _gate_approved(acc, run.group(gate.group), tuple(a.user for a in gate.approvals), config)
        _tick(acc, config)
    return acc.decision()


def _stale_gate(run: Run, cmd: Command) -> bool:
    """A command sent from a gate (button, reaction) that is no longer the pending one."""
    return cmd.gate_id is not None and (
        run.gate is None or run.gate.id != cmd.gate_id or run.gate.decision is not None
    )


def _cmd_pause(acc: _Acc, cmd: Command, config: Config) -> Decision:
    run = acc.run
    if _stale_gate(run, cmd):
        return _refuse(acc, cmd, "this approval request is no longer pending")
    if run.state == PAUSED:
        return _refuse(acc, cmd, f"run {run.id} is already paused")
    if ROLLING_BACK in (run.state, run.paused_from):
        return _refuse(acc, cmd, "a rollback cannot be paused; abort stops it where it is")
    reason = cmd.reason or f"paused by {cmd.user}"
    if cmd.action == "hold":
        if cmd.until is None or cmd.until <= acc.now:
            return _refuse(acc, cmd, "a hold needs a resume time in the future")
        if run.pending is not None and run.state != HELD:
            return _intent(acc, cmd)
        acc.set(
            state=HELD,
            paused_from=_resume_state(run),
            hold=Hold(reason=reason, until=cmd.until, by=cmd.user),
        )
        _close_gate(acc, "paused", cmd.user)
        acc.emit("held", reason=reason, until=cmd.until, by=cmd.user)
        acc.wake(cmd.until)
        return acc.decision()
    if run.pending is not None and run.state != HELD:
        return _intent(acc, cmd)
    _pause_now(acc, cmd.user, reason)
    return acc.decision()


def _resume_state(run: Run) -> str:
    return RUNNING if run.state in (WAITING, HELD, PAUSED) else run.state


def _pause_now(acc: _Acc, user: str, reason: str) -> None:
    run = acc.run
    acc.set(state=PAUSED, paused_from=_resume_state(run), hold=None, reason=reason)
    _close_gate(acc, "paused", user)
    # A window interrupted by a pause is measured again from its start.
    if run.step == "group" and run.phase in ("baseline_end", "settle_end"):
        acc.set(phase="baseline_start" if run.phase == "baseline_end" else "settle_start")
    acc.emit("paused", by=user, reason=reason)


def _close_gate(acc: _Acc, decision: str, user: str) -> None:
    gate = acc.run.gate
    if gate is not None and gate.decision is None:
        acc.set(gate=gate.with_(decision=decision, decided_by=(user,), decided_at=acc.now))
        acc.emit("gate_decided", group=gate.group, gate=gate.id, decision=decision, by=[user])


INTENT_RANK = {"pause": 1, "hold": 1, "rollback": 2, "abort": 3}


def _intent(acc: _Acc, cmd: Command) -> Decision:
    """Record a course change; it takes effect once the effect under way has settled.

    Of several requests made meanwhile, the strongest wins (abort > rollback > pause): a pause
    asked after an abort must not undo the abort.
    """
    cp = acc.run.cp or {}
    current = cp.get("intent")
    if current and INTENT_RANK[current["action"]] > INTENT_RANK[cmd.action]:
        return _refuse(acc, cmd, f"{current['action']} was already requested by {current['user']}")
    acc.set(
        cp={
            **cp,
            "intent": {
                "action": cmd.action,
                "user": cmd.user,
                "reason": cmd.reason,
                "until": cmd.until,
            },
        }
    )
    acc.emit(
        "intent_recorded",
        action=cmd.action,
        by=cmd.user,
        note="takes effect when the current step finishes",
    )
    return acc.decision()


def _apply_intent(acc: _Acc, config: Config) -> None:
    cp = acc.run.cp or {}
    intent = cp.get("intent")
    if not intent or (acc.run.pending is not None and acc.run.state != HELD):
        return
    acc.set(cp={k: v for k, v in cp.items() if k != "intent"})
    if acc.run.terminal:
        return
    action, user = intent["action"], intent["user"]
    if action == "abort":
        _abort_now(acc, user, intent.get("reason"))
    elif action == "rollback":
        if acc.run.state != ROLLING_BACK:
            _start_rollback(
                acc,
                intent.get("reason") or f"rollback requested by {user}",
                by=user,
                automatic=False,
            )
    elif action == "hold" and intent.get("until") and acc.now < intent["until"]:
        acc.set(
            pending=None,
            state=HELD,
            paused_from=_resume_state(acc.run),
            hold=Hold(
                reason=intent.get("reason") or f"held by {user}", until=intent["until"], by=user
            ),
        )
        acc.emit("held", reason=acc.run.hold.reason, until=intent["until"], by=user)  # type: ignore[union-attr]
    elif action == "pause" and acc.run.state != ROLLING_BACK:
        acc.set(pending=None)
        _pause_now(acc, user, intent.get("reason") or f"paused by {user}")


def _cmd_resume(acc: _Acc, cmd: Command, config: Config) -> Decision:
    run = acc.run
    if run.state not in (PAUSED, HELD):
        return _refuse(acc, cmd, f"run {run.id} is not paused (it is {run.state})")
    seen = (run.cp or {}).get("seen_revision")
    if seen is not None and seen != run.config_revision:
        acc.emit("freeze_revision_accepted", before=run.config_revision, after=seen, by=cmd.user)
        acc.set(config_revision=seen)
    acc.set(state=run.paused_from or RUNNING, paused_from=None, hold=None, reason=None)
    if acc.run.step == "group" and acc.run.phase == "gate":
        acc.set(gate=None)  # a new gate opens: old buttons stay stale
    if acc.run.step == "group" and acc.run.phase == "freeze_check":
        acc.set(phase="gate")
    acc.emit("resumed", by=cmd.user)
    if acc.run.step == "group" and acc.run.phase == "gate" and acc.run.approval_mode == "auto":
        # Auto mode paused on an inconclusive verdict: whoever resumes hands it to a person.
        _open_gate(acc, config, human=True)
        return acc.decision()
    _tick(acc, config)
    return acc.decision()


def _cmd_abort(acc: _Acc, cmd: Command, config: Config) -> Decision:
    if acc.run.pending is not None and acc.run.state != HELD:
        return _intent(acc, cmd)
    _abort_now(acc, cmd.user, cmd.reason)
    return acc.decision()


def _abort_now(acc: _Acc, user: str, reason: str | None) -> None:
    _close_gate(acc, "aborted", user)
    _finish(acc, ABORTED, reason or f"aborted by {user}")


def _cmd_rollback(acc: _Acc, cmd: Command, config: Config) -> Decision:
    run = acc.run
    if run.state == ROLLING_BACK:
        return _refuse(acc, cmd, f"run {run.id} is already rolling back")
    if _stale_gate(run, cmd):
        return _refuse(acc, cmd, "this approval request is no longer pending")
    if run.pending is not None and run.state != HELD:
        return _intent(acc, cmd)
    _start_rollback(
        acc, cmd.reason or f"rollback requested by {cmd.user}", by=cmd.user, automatic=False
    )
    _tick(acc, config)
    return acc.decision()


def _cmd_acknowledge(acc: _Acc, cmd: Command, config: Config) -> Decision:
    run = acc.run
    if run.changelog_ack:
        return _refuse(acc, cmd, f"the changelog was already acknowledged by {run.changelog_ack}")
    if cmd.user != run.requester:
        return _refuse(acc, cmd, "only the requester acknowledges the changelog")
    acc.set(changelog_ack=cmd.user)
    acc.emit("changelog_acknowledged", by=cmd.user)
    if run.state == WAITING and run.step == "changelog":
        acc.set(state=RUNNING, reason=None, step="freeze")
        _tick(acc, config)
    return acc.decision()


def initial_run(
    *,
    run_id: str,
    target_version: str,
    requester: str,
    groups: tuple[GroupRun, ...],
    plan_hash: str,
    now: float,
    approval_mode: str = "human",
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
        approval_mode=approval_mode,
        overrides=overrides,
        waiver=waiver,
        changelog_ack=changelog_ack,
        step="inventory",
    )
    events: list[dict[str, Any]] = [
        {
            "type": "run_started",
            "run_id": run_id,
            "at": now,
            "by": requester,
            "target_version": target_version,
            "groups": [g.name for g in groups],
            "approval_mode": approval_mode,
            "plan_hash": plan_hash,
        }
    ]
    for o in overrides:
        events.append(
            {
                "type": "override_granted",
                "run_id": run_id,
                "at": now,
                "override": o,
                "by": requester,
            }
        )
    if waiver:
        events.append(
            {
                "type": "waiver_granted",
                "run_id": run_id,
                "at": now,
                "waiver": "backup",
                "reason": waiver,
                "by": requester,
            }
        )
    return run, events


__all__ = [
    "Command",
    "Decision",
    "Failure",
    "Outcome",
    "Tick",
    "allowed",
    "decide",
    "initial_run",
]
