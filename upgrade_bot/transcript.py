"""A readable transcript of a run, rendered from its durable event stream (CLI wording)."""

from __future__ import annotations

import time
from typing import Any


def _pct(value: Any) -> str:
    return "n/a" if value is None else f"{float(value) * 100:.2f}%"


def _ms(value: Any) -> str:
    return "n/a" if value is None else f"{float(value):.0f} ms"


def _summary(s: dict[str, Any] | None) -> str:
    if not s:
        return "no data"
    return (
        f"{s.get('requests', 0)} req, 5xx {_pct(s.get('ratio_5xx'))}, "
        f"p50 {_ms(s.get('p50_ms'))}, p99 {_ms(s.get('p99_ms'))}"
    )


def _fleet(fleet: dict[str, list[str]] | None) -> str:
    if not fleet:
        return ""
    return "; ".join(f"{v}: {len(slots)} slot(s)" for v, slots in sorted(fleet.items()))


def render_event(e: dict[str, Any]) -> str | None:
    """One line per event worth a human's attention; None for the rest."""
    t = e.get("type")
    g = e.get("group", "")
    match t:
        case "run_started":
            return (
                f"run {e['run_id']} started by {e['by']}: upgrade {', '.join(e['groups'])} "
                f"to {e['target_version']} (approval: {e['approval_mode']})"
            )
        case "override_granted":
            return f"override '{e['override']}' granted to {e['by']} (audited)"
        case "waiver_granted":
            return f"backup waived by {e['by']}: {e['reason']} (audited)"
        case "inventory":
            return f"fleet before: {_fleet(e.get('fleet'))}"
        case "warning":
            return f"warning: {e['text']}"
        case "precheck":
            if e.get("status") == "skipped":
                return f"pre-check {e['check']}: skipped ({e.get('note')})"
            return f"pre-check {e['check']}: ok" + (
                f" (control plane {e['cp_version']})" if e.get("cp_version") else ""
            )
        case "override_used":
            return f"override '{e['override']}' used by {e['by']}"
        case "changelog":
            versions = ", ".join(x["version"] for x in e.get("entries", []))
            return f"changelog between versions: {versions or 'no entries'}"
        case "changelog_acknowledged":
            return f"changelog acknowledged by {e['by']}"
        case "freeze_started":
            return f"config freeze announced at revision {e['revision']}"
        case "backup_done":
            return f"backup: {e['artifact']} ({e['size']} bytes, sha256 {str(e['sha256'])[:12]}…)"
        case "backup_waived":
            return f"backup waived: {e['reason']}"
        case "group_started":
            return f"[{g}] upgrading {len(e['slots'])} slot(s) to {e['image']}"
        case "slot_replaced":
            return f"[{g}] {e['slot']} runs {e.get('version')} ({e['done']}/{e['total']})"
        case "slot_failed":
            return f"[{g}] replacement failed: " + "; ".join(
                f"{k}: {v}" for k, v in e["errors"].items()
            )
        case "smoke_passed":
            return f"[{g}] smoke requests passed ({e.get('requests')})"
        case "smoke_failed":
            return f"[{g}] smoke requests FAILED: {'; '.join(e.get('failures', [])[:3])}"
        case "metrics_summary":
            v = e.get("verdict") or {}
            return (
                f"[{g}] before: {_summary(e.get('before'))}\n"
                f"[{g}] after:  {_summary(e.get('after'))}\n"
                f"[{g}] verdict: {str(v.get('phase', '?')).upper()}"
                + (f" — {'; '.join(v.get('reasons', []))}" if v.get("reasons") else "")
            )
        case "gate_opened":
            return (
                f"[{g}] waiting for approval ({e['required']} needed; recommended: "
                f"{e['recommend']})"
            )
        case "gate_reminder":
            return f"[{g}] reminder {e['reminders']}" + (" — escalated" if e["escalate"] else "")
        case "approval_recorded":
            return f"[{g}] approved by {e['user']} ({e['count']}/{e['required']})"
        case "gate_decided":
            return f"[{g}] gate closed: {e['decision']} by {', '.join(e['by'])}"
        case "gate_expired":
            return f"[{g}] approval expired"
        case "refused":
            return f"refused: {e['user']} {e['action']}: {e['reason']}"
        case "paused":
            return f"paused by {e['by']}: {e['reason']}"
        case "resumed":
            return f"resumed by {e['by']}"
        case "held":
            return (
                f"held until {time.strftime('%H:%M:%S', time.localtime(e['until']))}: {e['reason']}"
            )
        case "config_changed":
            return f"CONFIG CHANGED during the freeze: revision {e['before']} → {e['after']}"
        case "rollback_started":
            how = "automatic" if e.get("automatic") else f"requested by {e['by']}"
            return f"ROLLBACK ({how}): {e['reason']}"
        case "slot_restored":
            return f"[{g}] {e['slot']} restored to {e.get('version')}"
        case "rollback_failed":
            return f"ROLLBACK FAILED: {e['error']} — fleet: {_fleet(e.get('fleet'))} (paging)"
        case "observation_started":
            return "observing the upgraded fleet"
        case "checkin":
            parts = []
            for name, info in (e.get("groups") or {}).items():
                since = info.get("since_upgrade")
                parts.append(
                    f"{name} {info['ready']}/{info['slots']} ready"
                    + (f", 5xx {_pct(since.get('ratio_5xx'))}" if since else "")
                )
            return "check-in: " + "; ".join(parts)
        case "freeze_lifted":
            return "config freeze lifted"
        case "run_completed" | "run_rolled_back" | "run_failed" | "run_aborted":
            state = t.removeprefix("run_").replace("_", " ")
            return f"run {state}: {e['reason']} — fleet: {_fleet(e.get('fleet'))}"
        case "lock_broken":
            return f"lock of {e['group']} broken by {e['user']}: {e['reason']}"
    return None
