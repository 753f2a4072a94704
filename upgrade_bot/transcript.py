"""A readable transcript of a run, rendered from its durable event stream (CLI wording).

``LINES`` has one entry per event kind (a test fails when a kind is missing): a function from
the event to its line(s), or ``_silent`` for kinds the transcript leaves out on purpose.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .engine import EventKind, kind_of, ms, pct

Event = dict[str, Any]


def _summary(s: dict[str, Any] | None) -> str:
    if not s:
        return "no data"
    return (
        f"{s.get('requests', 0)} req, 5xx {pct(s.get('ratio_5xx'))}, "
        f"p50 {ms(s.get('p50_ms'))}, p99 {ms(s.get('p99_ms'))}"
    )


def _fleet(fleet: dict[str, list[str]] | None) -> str:
    if not fleet:
        return ""
    return "; ".join(f"{v}: {len(slots)} slot(s)" for v, slots in sorted(fleet.items()))


def _silent(e: Event) -> None:
    """Left out: the lines around it already say what happened."""
    return None


def _run_started(e: Event) -> str:
    return (
        f"run {e['run_id']} started by {e['by']}: upgrade {', '.join(e['groups'])} "
        f"to {e['target_version']} (approval: {e['approval_mode']})"
    )


def _precheck(e: Event) -> str:
    if e.get("status") == "skipped":
        return f"pre-check {e['check']}: skipped ({e.get('note')})"
    return (
        f"pre-check {e['check']}: ok"
        + (f" (control plane {e['cp_version']})" if e.get("cp_version") else "")
        + (f": {e['note']}" if e.get("note") else "")
    )


def _cp_verified(e: Event) -> str:
    if e.get("status") == "skipped":
        return f"control-plane check: skipped ({e.get('note')})"
    view = e.get("view") or {}
    line = (
        f"[{e['group']}] control plane: {view.get('healthy')}/{view.get('expected')} instances "
        f"Healthy on {view.get('target')} (runtime: {view.get('expected')})"
    )
    return line + (f" — FAILED: {e['note']}" if e.get("status") == "failed" else "")


def _changelog(e: Event) -> str:
    versions = ", ".join(x["version"] for x in e.get("entries", []))
    return f"changelog between versions: {versions or 'no entries'}"


def _metrics_summary(e: Event) -> str:
    g = e.get("group", "")
    v = e.get("verdict") or {}
    return (
        f"[{g}] before: {_summary(e.get('before'))}\n"
        f"[{g}] after:  {_summary(e.get('after'))}\n"
        f"[{g}] verdict: {str(v.get('phase', '?')).upper()}"
        + (f" — {'; '.join(v.get('reasons', []))}" if v.get("reasons") else "")
    )


def _checkin(e: Event) -> str:
    parts = []
    for name, info in (e.get("groups") or {}).items():
        since = info.get("since_upgrade")
        parts.append(
            f"{name} {info['ready']}/{info['slots']} ready"
            + (f", 5xx {pct(since.get('ratio_5xx'))}" if since else "")
        )
    return "check-in: " + "; ".join(parts)


def _final(e: Event) -> str:
    state = str(e["type"]).removeprefix("run_").replace("_", " ")
    return f"run {state}: {e['reason']} — fleet: {_fleet(e.get('fleet'))}"


LINES: dict[EventKind, Callable[[Event], str | None]] = {
    EventKind.RUN_STARTED: _run_started,
    EventKind.OVERRIDE_GRANTED: lambda e: (
        f"override '{e['override']}' granted to {e['by']} (audited)"
    ),
    EventKind.WAIVER_GRANTED: lambda e: f"backup waived by {e['by']}: {e['reason']} (audited)",
    EventKind.REFUSED: lambda e: f"refused: {e['user']} {e['action']}: {e['reason']}",
    EventKind.LOCK_BROKEN: lambda e: f"lock of {e['group']} broken by {e['user']}: {e['reason']}",
    EventKind.INVENTORY: lambda e: f"fleet before: {_fleet(e.get('fleet'))}",
    EventKind.WARNING: lambda e: f"warning: {e['text']}",
    EventKind.PRECHECK: _precheck,
    EventKind.OVERRIDE_USED: lambda e: f"override '{e['override']}' used by {e['by']}",
    EventKind.CHANGELOG: _changelog,
    EventKind.CHANGELOG_ACKNOWLEDGED: lambda e: f"changelog acknowledged by {e['by']}",
    EventKind.FREEZE_STARTED: lambda e: f"config freeze announced at revision {e['revision']}",
    EventKind.FREEZE_REVISION_ACCEPTED: _silent,  # "resumed by" follows
    EventKind.FREEZE_LIFTED: lambda e: "config freeze lifted",
    EventKind.CONFIG_CHANGED: lambda e: (
        f"CONFIG CHANGED during the freeze: revision {e['before']} → {e['after']}"
    ),
    EventKind.BACKUP_WAIVED: lambda e: f"backup waived: {e['reason']}",
    EventKind.BACKUP_DONE: lambda e: (
        f"backup: {e['artifact']} ({e['size']} bytes, sha256 {str(e['sha256'])[:12]}…)"
    ),
    EventKind.GROUP_STARTED: lambda e: (
        f"[{e['group']}] upgrading {len(e['slots'])} slot(s) to {e['image']}"
    ),
    EventKind.SLOT_REPLACING: _silent,  # "runs …" follows
    EventKind.SLOT_REPLACED: lambda e: (
        f"[{e['group']}] {e['slot']} runs {e.get('version')} ({e['done']}/{e['total']})"
    ),
    EventKind.SLOT_FAILED: lambda e: (
        f"[{e['group']}] replacement failed: "
        + "; ".join(f"{k}: {v}" for k, v in e["errors"].items())
    ),
    EventKind.SLOT_RESTORED: lambda e: f"[{e['group']}] {e['slot']} restored to {e.get('version')}",
    EventKind.SMOKE_PASSED: lambda e: f"[{e['group']}] smoke requests passed ({e.get('requests')})",
    EventKind.SMOKE_FAILED: lambda e: (
        f"[{e['group']}] smoke requests FAILED: {'; '.join(e.get('failures', [])[:3])}"
    ),
    EventKind.SMOKE_SKIPPED: _silent,  # no slot was replaced: the verdict says the rest
    EventKind.METRICS_SUMMARY: _metrics_summary,
    EventKind.CP_VERIFIED: _cp_verified,
    EventKind.WATCH_FAILED: lambda e: (
        f"[{e['group']}] FAIL while replacing ({e['done']}/{e['total']} slots): "
        + "; ".join((e.get("verdict") or {}).get("reasons") or [])
    ),
    EventKind.GATE_OPENED: lambda e: (
        f"[{e['group']}] waiting for approval ({e['required']} needed; recommended: "
        f"{e['recommend']})"
    ),
    EventKind.GATE_REMINDER: lambda e: (
        f"[{e['group']}] reminder {e['reminders']}" + (" — escalated" if e["escalate"] else "")
    ),
    EventKind.GATE_EXPIRED: lambda e: f"[{e['group']}] approval expired",
    EventKind.GATE_DECIDED: lambda e: (
        f"[{e['group']}] gate closed: {e['decision']} by {', '.join(e['by'])}"
    ),
    EventKind.APPROVAL_RECORDED: lambda e: (
        f"[{e['group']}] approved by {e['user']} ({e['count']}/{e['required']})"
    ),
    EventKind.INTENT_RECORDED: _silent,  # the pause or rollback it leads to is shown
    EventKind.PAUSED: lambda e: f"paused by {e['by']}: {e['reason']}",
    EventKind.RESUMED: lambda e: f"resumed by {e['by']}",
    EventKind.HELD: lambda e: (
        f"held until {time.strftime('%H:%M:%S', time.localtime(e['until']))}: {e['reason']}"
    ),
    EventKind.HOLD_ENDED: _silent,  # the run's next step shows it
    EventKind.EFFECT_FAILED: _silent,  # the hold or pause that follows says why
    EventKind.ROLLBACK_STARTED: lambda e: (
        f"ROLLBACK ({'automatic' if e.get('automatic') else 'requested by ' + str(e['by'])}): "
        f"{e['reason']}"
    ),
    EventKind.ROLLBACK_FAILED: lambda e: (
        f"ROLLBACK FAILED: {e['error']} — fleet: {_fleet(e.get('fleet'))} (paging)"
    ),
    EventKind.OBSERVATION_STARTED: lambda e: "observing the upgraded fleet",
    EventKind.CHECKIN: _checkin,
    EventKind.OBSERVATION_ALERT: lambda e: (
        f"[{e['group']}] ALERT since the upgrade: "
        + "; ".join((e.get("verdict") or {}).get("reasons") or [])
    ),
    EventKind.RUN_COMPLETED: _final,
    EventKind.RUN_ROLLED_BACK: _final,
    EventKind.RUN_FAILED: _final,
    EventKind.RUN_ABORTED: _final,
}


def render_event(e: Event) -> str | None:
    """One line per event worth a human's attention; None for the rest."""
    kind = kind_of(e)
    return None if kind is None else LINES[kind](e)
