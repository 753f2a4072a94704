"""Every sentence the Slack layer shows a person, in one place (like bolt-python's messages.py).

Functions take what the sentence needs and return Slack mrkdwn, so that wording can be reviewed
and changed without touching logic: ``render`` arranges these strings into Block Kit, listeners
answer slash commands and clicks with them.

The reader is often the on-call approver on a phone: key fact first, short lines, no tables.
Free text from outside (reasons, warnings, changelog entries, backend errors) goes through
``esc`` so that a stray ``<`` never becomes a mention or a link; mentions and dates are built
here on purpose.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from upgrade_bot.engine import (
    ABORTED,
    COMPLETED,
    FAILED,
    HELD,
    PAUSED,
    ROLLED_BACK,
    ROLLING_BACK,
    RUNNING,
    WAITING,
    EventKind,
    Run,
    ms,
    pct,
)

from .commands import COMMANDS

DEFAULT_COMMAND = "/upgrade"
TIMES = "\N{MULTIPLICATION SIGN}"  # as in "3.8.0 x2": two instances run 3.8.0

# --- fragments: mentions, dates, numbers ----------------------------------------------------------

_USER_ID = re.compile(r"^[UW][A-Z0-9]{2,}$")
_USERGROUP_ID = re.compile(r"^S[A-Z0-9]{2,}$")


def esc(text: object) -> str:
    """Free text made inert for mrkdwn: Slack asks for exactly these three to be escaped."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


_ID_IN_TEXT = re.compile(r"\b[UW](?=[A-Z0-9]*\d)[A-Z0-9]{8,11}\b")
"""A Slack user ID inside a sentence (``rollback requested by U0BOB00002``): letters and at
least one digit, so that words like URGENT stay words."""


def prose(text: object) -> str:
    """A reason written by the engine or a person: escaped, with user IDs shown as names."""
    return _ID_IN_TEXT.sub(lambda m: f"<@{m.group(0)}>", esc(text))


def user(who: str) -> str:
    """A person as Slack shows them; the engine's own actors get words, not mentions."""
    if who == "engine":
        return "the bot"
    if who == "auto":
        return "auto-approval"
    if _USER_ID.match(who):
        return f"<@{who}>"
    return esc(who)  # a CLI user name: shown as typed


def users(whos: Sequence[str]) -> str:
    """Several people, comma-separated."""
    return ", ".join(user(w) for w in whos) if whos else "nobody"


def principal(p: str) -> str:
    """A policy entry: a user, a user group (mentioned as such) or ``*``."""
    if p == "*":
        return "anyone in the channel"
    if _USERGROUP_ID.match(p):
        return f"<!subteam^{p}>"
    return user(p)


def mentions(principals: Sequence[str], sep: str = " ", limit: int = 12) -> str:
    """Policy entries as mentions, a dozen at most: a long list pings nobody more usefully."""
    shown = sep.join(principal(p) for p in principals[:limit])
    return shown + (f" +{len(principals) - limit}" if len(principals) > limit else "")


def when(ts: float) -> str:
    """A moment in the reader's own time zone (Slack formats it); UTC where it cannot."""
    fallback = datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"<!date^{int(ts)}^{{date_short_pretty}} {{time}}|{fallback}>"


def duration(seconds: float) -> str:
    """A span as a person says it: ``45 s``, ``12 min``, ``2 h 5 min``."""
    s = max(0, round(seconds))
    if s < 90:
        return f"{s} s"
    if s < 90 * 60:
        return f"{round(s / 60)} min"
    hours, minutes = divmod(round(s / 60), 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def rate(per_s: Any) -> str:
    return f"{float(per_s):,.0f}/s" if float(per_s) >= 10 else f"{float(per_s):.1f}/s"


def count(n: Any) -> str:
    return "n/a" if n is None else f"{int(n):,}"


def plural(n: int, word: str, words: str | None = None) -> str:
    return f"{n} {word if n == 1 else (words or word + 's')}"


def code(text: object) -> str:
    """An identifier the reader may copy (run ID, group, command); backticks never nest."""
    safe = esc(text).replace("`", "'")
    return f"`{safe}`"


def bar(done: int, total: int) -> str:
    """A compact progress bar, at most ten cells wide so it fits a phone line."""
    if total <= 0:
        return ""
    cells = min(total, 10)
    filled = min(cells, done * cells // total)
    return "▰" * filled + "▱" * (cells - filled)


def listing(items: Sequence[str], limit: int = 5) -> str:
    """``a, b, c +7``: a few names, then how many more."""
    shown = ", ".join(items[:limit])
    return shown + (f" +{len(items) - limit}" if len(items) > limit else "")


# --- the slash command ----------------------------------------------------------------------------


def usage(subcommand: str, command: str = DEFAULT_COMMAND) -> str:
    """The one-line usage of a subcommand."""
    return f"Usage: `{command} {COMMANDS[subcommand].usage}`"


def help_text(command: str = DEFAULT_COMMAND) -> str:
    """The help: one short line per subcommand."""
    lines = [f"*{command}* upgrades gateway groups one at a time, with approval between them."]
    for sub in COMMANDS.values():
        lines.append(f"`{command} {sub.usage}` — {sub.summary}")
    lines.append("Approve, pause and roll back are also buttons and reactions on the gate message.")
    return "\n".join(lines)


def usage_error(problem: str, usage_line: str | None, command: str = DEFAULT_COMMAND) -> str:
    """A slash command that did not parse: what is wrong, then the right form."""
    if usage_line:
        return f"{problem} Usage: `{command} {usage_line}`"
    return f"{problem} Try `{command} help`."


# --- refusals and errors (ephemeral) --------------------------------------------------------------


def unknown_group(unknown: Sequence[str], valid: Sequence[str]) -> str:
    names = ", ".join(code(u) for u in unknown)
    return (
        f"Unknown group {names}. Groups: {', '.join(code(v) for v in valid) or 'none configured'}."
    )


def malformed_version(text: str, command: str = DEFAULT_COMMAND) -> str:
    return f"{code(text)} is not a version like `3.8.1` or `3.2.14.6`. {usage('start', command)}"


def group_busy(group: str, run_id: str, channel: str | None = None) -> str:
    where = f" in <#{channel}>" if channel else ""
    return (
        f"{code(group)} is busy: run {code(run_id)}{where} is upgrading it. "
        "One run per group at a time: wait for it to end, or stop it first."
    )


def run_finished(run_id: str, state: str) -> str:
    return (
        f"Run {code(run_id)} has already ended ({state_word(state)}); there is nothing to change."
    )


def not_allowed(action: str, group: str | None = None, allowed: Sequence[str] = ()) -> str:
    on = f" on {code(group)}" if group else ""
    who = f" Ask {', '.join(principal(p) for p in allowed)}." if allowed else ""
    return f"You may not {action_word(action)}{on}: the policy leaves you out.{who}"


def stale_gate(decision: str | None = None, by: Sequence[str] = ()) -> str:
    """A click or reaction on an approval request that has been decided or replaced."""
    detail = {
        "approved": f"approved by {users(by)}",
        "rollback": f"rolled back by {users(by)}",
        "paused": f"paused by {users(by)}; resuming asks again",
        "expired": "it expired; resume the run to ask again",
        "aborted": f"the run was aborted by {users(by)}",
    }.get(decision or "", "a newer request replaced it")
    return f"This approval request is no longer pending ({detail})."


def unknown_run(run_id: str, command: str = DEFAULT_COMMAND) -> str:
    return f"There is no run {code(run_id)}. `{command} status` lists the active runs."


def no_active_run(command: str = DEFAULT_COMMAND) -> str:
    return f"No upgrade is running. `{command} history` lists recent runs."


def refused(reason: str, to: str | None = None) -> str:
    """The engine's own refusal, passed on (its text already says why). Where it names ``to``,
    the person refused, by user ID, they read their name instead."""
    text = esc(reason).rstrip(". ")
    if to and _USER_ID.match(to):
        text = re.sub(rf"\b{re.escape(to)}\b", user(to), text)
    return f":no_entry_sign: {text[:1].upper()}{text[1:]}."


def try_again(detail: str) -> str:
    """A passing fault (Redis, the Web API): nothing was decided, the same request may work."""
    return f":hourglass: Could not do that just now ({esc(detail)}). Try again in a moment."


# --- confirmations (ephemeral) --------------------------------------------------------------------


def started(
    run_id: str,
    channel: str | None = None,
    *,
    target: str | None = None,
    groups: Sequence[str] = (),
) -> str:
    where = f" in <#{channel}>" if channel else " in its thread"
    what = ""
    if target:
        what = (
            f": {listing([code(g) for g in groups])} → {esc(target)}"
            if groups
            else f" → {esc(target)}"
        )
    return f":rocket: Run {code(run_id)} started{what}. Follow it{where}."


def unlocked(group: str, former_run_id: str) -> str:
    return f":unlock: {code(group)} is free again (it was held by run {code(former_run_id)})."


def approval_recorded(group: str, count_: int, required: int) -> str:
    if count_ >= required:
        return f":white_check_mark: {code(group)} approved; the run continues."
    left = required - count_
    return (
        f":white_check_mark: Your approval of {code(group)} is recorded ({count_}/{required}); "
        f"{plural(left, 'more approver')} needed."
    )


def done(action: str, run_id: str, state: str) -> str:
    """What a person's accepted command did, judged by the state it left the run in.

    A pause, abort or rollback asked for while an instance is being replaced is recorded and
    applied after it: the run is then still running, and the answer says so.
    """
    run = code(run_id)
    if action == "approve":
        if state == WAITING:
            return f":white_check_mark: Approval recorded on {run}; more approvers are needed."
        return f":white_check_mark: Approved; run {run} continues."
    if action in ("ack", "acknowledge"):
        return f":memo: Changelog acknowledged; run {run} continues."
    if action == "resume":
        return f":arrow_forward: Run {run} resumed."
    reached = {
        "pause": (PAUSED, f":double_vertical_bar: Run {run} paused."),
        "hold": (HELD, f":zzz: Run {run} on hold."),
        "rollback": (ROLLING_BACK, f":rewind: Rolling back run {run}."),
        "abort": (ABORTED, f":no_entry_sign: Run {run} aborted."),
    }
    if action in reached:
        target_state, text = reached[action]
        if state == target_state or state in (ROLLED_BACK, FAILED, COMPLETED):
            return text
        return intent_accepted(action, run_id)
    return f"Done: {action_word(action)} on {run}."


def intent_accepted(action: str, run_id: str) -> str:
    return (
        f":hourglass: {action_word(action).capitalize()} of {code(run_id)} recorded: it takes "
        "effect as soon as the current step finishes (no instance is left half-replaced)."
    )


# --- words for states -----------------------------------------------------------------------------

_ACTIONS = {
    "approve": "approve",
    "pause": "pause",
    "hold": "hold",
    "resume": "resume",
    "rollback": "roll back",
    "abort": "abort",
    "acknowledge": "acknowledge the changelog",
    "ack": "acknowledge the changelog",
    "start": "start upgrades",
    "override": "use overrides",
    "unlock": "break a lock",
}


def action_word(action: str) -> str:
    return _ACTIONS.get(action, action)


_STATE_EMOJI = {
    RUNNING: ":arrows_counterclockwise:",
    WAITING: ":hourglass_flowing_sand:",
    PAUSED: ":double_vertical_bar:",
    HELD: ":zzz:",
    ROLLING_BACK: ":rewind:",
    COMPLETED: ":white_check_mark:",
    ROLLED_BACK: ":leftwards_arrow_with_hook:",
    FAILED: ":x:",
    ABORTED: ":no_entry_sign:",
}


def state_emoji(state: str) -> str:
    return _STATE_EMOJI.get(state, ":grey_question:")


def state_word(state: str) -> str:
    return state.replace("_", " ")


_GROUP = {
    # status → (emoji, short word); approved needs no word next to its tick
    "pending": (":white_circle:", "queued"),
    "upgrading": (":arrows_counterclockwise:", "upgrading"),
    "verifying": (":mag:", "checking metrics"),
    "awaiting_approval": (":hourglass_flowing_sand:", "needs approval"),
    "approved": (":white_check_mark:", ""),
    "rolling_back": (":rewind:", "rolling back"),
    "rolled_back": (":leftwards_arrow_with_hook:", "rolled back"),
    "failed": (":x:", "failed"),
    "stopped": (":octagonal_sign:", "stopped"),
    "paused": (":double_vertical_bar:", "paused"),
}


def group_status(status: str) -> str:
    emoji, word = _GROUP.get(status, (":grey_question:", status))
    return f"{emoji} {word}".rstrip()


def group_line(name: str, status: str, done: int, total: int, restoring: bool = False) -> str:
    """One phone-width line per group: ``*prod-eu* ▰▰▱ 2/3 :arrows_counterclockwise: upgrading``."""
    if total <= 0:
        return f"*{esc(name)}* {group_status(status)}"
    suffix = " restored" if restoring and status != "rolled_back" else ""
    return f"*{esc(name)}* {bar(done, total)} {done}/{total}{suffix} {group_status(status)}"


_SLOT = {
    "pending": ":white_circle:",
    "replacing": ":arrows_counterclockwise:",
    "done": ":white_check_mark:",
    "failed": ":x:",
    "restoring": ":rewind:",
    "restored": ":leftwards_arrow_with_hook:",
}


def slot_line(
    slot: str, status: str, previous: str | None, current: str | None, touched: bool
) -> str:
    """One short line per instance, saying which version it runs."""
    emoji = _SLOT.get(status, ":grey_question:")
    was, now = esc(previous or "?"), esc(current or "?")
    text = {
        "pending": f"{was}",
        "replacing": f"{was} → replacing",
        "done": f"{was} → {now}" if touched else f"already {now}",
        "failed": f"failed, runs {now}",
        "restoring": f"{now} → restoring",
        "restored": f"back on {now}",
    }.get(status, f"{status}, runs {now}")
    return f"{emoji} {esc(slot)} {text}"


def slots_more(hidden: int, by_status: Mapping[str, int], listed: bool) -> str:
    """The instances not given a line of their own, counted by state."""
    parts = " · ".join(f"{n} {esc(status)}" for status, n in by_status.items())
    return f"… and {hidden} more: {parts}" if listed else f"All {hidden}: {parts}"


# --- the run message (channel) and status ---------------------------------------------------------

_PHASES = {
    "list": "starting {g}",
    "baseline_start": "measuring {g} before the change",
    "baseline_end": "measuring {g} before the change",
    "replace": "replacing {g}",
    "smoke": "smoke-testing {g}",
    "settle_start": "measuring {g} after the change",
    "settle_end": "measuring {g} after the change",
    "freeze_check": "checking the config freeze after {g}",
    "gate": "asking for approval of {g}",
}
_STEPS = {
    "inventory": "listing instances",
    "cp_check": "checking the control plane",
    "changelog": "reading the changelog",
    "freeze": "starting the config freeze",
    "backup": "backing up",
}


def now_doing(run: Run) -> str:
    """What a running run is doing right now, in a few words."""
    g = run.current_group
    if g is not None:
        doing = _PHASES.get(run.phase, "upgrading {g}").format(g=esc(g.name))
        if run.phase == "replace":
            done = sum(1 for s in g.slots if s.status == "done")
            doing += f" {done}/{len(g.slots)}"
        return doing
    if run.step == "observe":
        return f"observing until {when(run.observe_until)}" if run.observe_until else "observing"
    return _STEPS.get(run.step, run.step.replace("_", " "))


def run_headline(run: Run) -> str:
    """The key fact of a run, first thing on the line: what happens now, or how it ended."""
    v = esc(run.target_version)
    reason = prose(run.reason or "")
    emoji = state_emoji(run.state)
    if run.state == COMPLETED:
        slots = len(run.slots())
        return (
            f"{emoji} Upgraded to {v} — {plural(len(run.groups), 'group')}, "
            f"{plural(slots, 'instance')}"
        )
    if run.state in (ROLLED_BACK, FAILED, ABORTED):
        return f"{emoji} Upgrade to {v} {state_word(run.state)} — {reason}"
    if run.state == ROLLING_BACK:
        return f"{emoji} Rolling back the upgrade to {v} — {reason}"
    if run.state == PAUSED:
        return f"{emoji} Upgrade to {v} paused — {reason}"
    if run.state == HELD and run.hold is not None:
        return f"{emoji} Upgrade to {v} on hold until {when(run.hold.until)} — {reason}"
    if run.state == WAITING:
        if run.gate is not None and run.gate.decision is None:
            return f"{emoji} Upgrading to {v} — waiting for approval of {esc(run.gate.group)}"
        who = user(run.requester)
        return f":memo: Upgrading to {v} — waiting for {who} to acknowledge the changelog"
    if run.step == "observe":
        return f":eyes: Upgraded to {v} — {now_doing(run)}"
    return f"{emoji} Upgrading to {v} — {now_doing(run)}"


def run_ref(run_id: str) -> str:
    return f"Run {code(run_id)}"


def run_context(run: Run) -> str:
    """Who asked, and the run ID to type in commands."""
    parts = [f"Requested by {user(run.requester)}", f"run {code(run.id)}"]
    if run.approval_mode == "auto":
        parts.append("auto-approval")
    if run.overrides:
        parts.append(f"overrides: {', '.join(esc(o) for o in run.overrides)}")
    if run.waiver:
        parts.append("backup waived")
    return " · ".join(parts)


def status_details(run: Run) -> list[str]:
    """The extra lines ``status`` shows beyond the run message."""
    lines = [f"Started {when(run.created_at)}"]
    if run.finished_at:
        lines[0] += (
            f", ended {when(run.finished_at)} ({duration(run.finished_at - run.created_at)})"
        )
    if run.gate is not None and run.gate.decision is None:
        got = [a.user for a in run.gate.approvals]
        lines.append(
            f"Gate {esc(run.gate.group)}: {len(got)}/{run.gate.required} approvals"
            + (f" ({users(got)})" if got else "")
            + f" · expires {when(run.gate.expires_at)}"
        )
    if run.hold is not None:
        lines.append(f"On hold until {when(run.hold.until)}: {prose(run.hold.reason)}")
    if run.config_revision is not None:
        lines.append(f"Config frozen at revision {run.config_revision}")
    if run.backup:
        lines.append(f"Backup: {code(run.backup.get('artifact', '?'))}")
    elif run.waiver:
        lines.append(f"No backup (waived: {esc(run.waiver)})")
    return lines


def status_commands(run: Run, command: str = DEFAULT_COMMAND) -> str:
    """The commands that make sense for the run as it stands."""
    if run.terminal:
        return f"Ended. `{command} history` lists recent runs."
    rid = esc(run.id)
    if run.state in (PAUSED, HELD):
        actions = ["resume", "rollback", "abort"]
    elif run.state == ROLLING_BACK:
        actions = ["abort"]
    else:
        actions = ["pause", "rollback", "abort"]
    return " · ".join(f"`{command} {a} {rid}`" for a in actions)


def active_title(n: int) -> str:
    return f":arrows_counterclockwise: {plural(n, 'run')} under way"


def history_title(n: int) -> str:
    return f":scroll: {plural(n, 'recent run')}" if n else ":scroll: No runs yet."


def history_line(run: Run) -> str:
    groups = listing([esc(g.name) for g in run.groups], 3)
    return (
        f"{state_emoji(run.state)} {code(run.id)} → {esc(run.target_version)} · {groups} · "
        f"{user(run.requester)} · {when(run.created_at)} · {state_word(run.state)}"
    )


# --- group progress (thread, edited at milestones) ------------------------------------------------


def group_headline(
    name: str, status: str, done: int, total: int, target: str, production: bool
) -> str:
    prod = " :rotating_light: production" if production else ""
    return f"{group_line(name, status, done, total)} → {esc(target)}{prod}"


def group_context(
    image: str,
    batch_size: int,
    smoke: Mapping[str, Any] | None,
    control_plane: Mapping[str, Any] | None = None,
) -> str:
    parts = [f"Image {code(image)}", f"batch {batch_size}"]
    if control_plane:
        parts.append(cp_beside_runtime(control_plane))
    if smoke:
        if smoke.get("passed"):
            parts.append(f"smoke :white_check_mark: {count(smoke.get('requests'))} requests")
        else:
            parts.append(":x: smoke failed")
    return " · ".join(parts)


# --- metrics and verdicts -------------------------------------------------------------------------

_VERDICT = {
    "pass": ":white_check_mark: PASS",
    "inconclusive": ":warning: INCONCLUSIVE",
    "fail": ":x: FAIL",
}


def verdict(phase: str | None) -> str:
    return _VERDICT.get(phase or "", ":grey_question: NO VERDICT")


def metrics_headline(group: str, phase: str | None) -> str:
    return f"{verdict(phase)} — {esc(group)} after the upgrade"


def metric_lines(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> list[str]:
    """Before → after, one number per line: what the approver compares."""
    b, a = before or {}, after or {}
    if not b and not a:
        return ["No metrics: nothing to compare."]
    lines = [
        f"5xx {pct(b.get('ratio_5xx'))} → {pct(a.get('ratio_5xx'))}",
        f"p99 {ms(b.get('p99_ms'))} → {ms(a.get('p99_ms'))}",
        f"Requests {count(b.get('requests'))} → {count(a.get('requests'))}",
    ]
    if b.get("rate_per_s") is not None and a.get("rate_per_s") is not None:
        # The windows differ in length: the rate is what compares.
        lines[-1] += f" ({rate(b['rate_per_s'])} → {rate(a['rate_per_s'])})"
    if not a:
        lines.append("After: no data (metrics unavailable)")
    return lines


def reasons(items: Sequence[str]) -> str:
    return "\n".join(f"• {esc(r)}" for r in items)


# --- the approval gate ----------------------------------------------------------------------------


def gate_headline(group: str, production: bool) -> str:
    prod = " :rotating_light: production" if production else ""
    return f":raised_hand: Approval needed: *{esc(group)}*{prod}"


def gate_title(group: str, production: bool) -> str:
    """The headline of a gate that has been decided: no longer a question."""
    prod = " :rotating_light: production" if production else ""
    return f"Approval of *{esc(group)}*{prod}"


def gate_progress(done: int, total: int, target: str) -> str:
    return f"{done}/{total} instances on {esc(target)}"


def recommendation(recommend: str, next_group: str | None) -> str:
    if recommend == "rollback":
        return ":point_right: Recommended: *roll back* — the metrics got worse."
    after = f"next: {esc(next_group)}" if next_group else "this is the last group"
    return f":point_right: Recommended: approve ({after})"


def gate_needs(required: int, approvers: Sequence[str], approved_by: Sequence[str]) -> str:
    """How many approvals, from whom, and who has approved so far (a line each)."""
    who = f" from {mentions(approvers, ', ')}" if approvers else ""
    text = f"Needs {plural(required, 'approval')}{who}"
    if approved_by:
        text += f"\n{len(approved_by)}/{required} so far: {listing([user(u) for u in approved_by])}"
    return text


def gate_expires(expires_at: float) -> str:
    return f"Expires {when(expires_at)} (the run then pauses)"


def gate_reactions(approve: str, pause: str, rollback: str, production: bool) -> str:
    text = f"Or react :{approve}: approve · :{pause}: pause · :{rollback}: roll back"
    return text + (" (you'll be asked to confirm)" if production else "")


def gate_ids(run_id: str, gate_id: str) -> str:
    return f"Run {code(run_id)} · gate {code(gate_id)}"


def gate_decision(decision: str | None, by: Sequence[str], at: float | None) -> str:
    """The outcome of a gate, first line of the edited gate message."""
    stamp = f" · {when(at)}" if at else ""
    text = {
        "approved": f":white_check_mark: Approved by {users(by)}",
        "rollback": f":rewind: Rolled back by {users(by)}",
        "paused": f":double_vertical_bar: Paused by {users(by)}",
        "aborted": f":no_entry_sign: Aborted by {users(by)}",
        "expired": ":hourglass: Expired — nobody decided in time",
    }.get(decision or "", ":grey_question: No longer pending")
    return text + stamp


BUTTON_APPROVE = "Approve"
BUTTON_PAUSE = "Pause"
BUTTON_ROLLBACK = "Roll back"
BUTTON_CONFIRM = "Confirm"
BUTTON_ACKNOWLEDGE = "Acknowledge"
BUTTON_CANCEL = "Cancel"


def confirm_approve_title(group: str) -> str:
    return f"Approve {group}?"


def confirm_approve_text(group: str, next_group: str | None) -> str:
    then = (
        f"The run goes on to *{esc(next_group)}*." if next_group else "This finishes the upgrade."
    )
    return f"*{esc(group)}* is a production group. {then}"


def confirm_rollback_title() -> str:
    return "Roll back?"


def confirm_rollback_text(groups: Sequence[str]) -> str:
    return (
        f"Every upgraded instance ({listing([esc(g) for g in groups], 4)}) goes back to its "
        "previous image, newest group first. This cannot be paused."
    )


# --- reactions on a production gate: confirm first ------------------------------------------------

_REACTION_ASK = {"approve": "approval", "pause": "pause", "rollback": "roll back"}


def reaction_confirm(reaction: str, action: str, group: str, production: bool) -> str:
    kind = "production group" if production else "group"
    return (
        f"You reacted :{reaction}: on {kind} *{esc(group)}* — "
        f"confirm {_REACTION_ASK.get(action, action)}?"
    )


def reaction_confirm_hint() -> str:
    return "Nothing happens until you confirm; ignore this to do nothing."


# --- thread posts for audit events ----------------------------------------------------------------


def override_granted(override: str, by: str) -> str:
    return f":warning: Override *{esc(override)}* granted to {user(by)} (audited)"


def override_used(override: str, by: str, detail: str = "") -> str:
    return f":warning: Override *{esc(override)}* used by {user(by)}{detail} (audited)"


def waiver_granted(by: str, reason: str) -> str:
    return f":warning: Backup waived by {user(by)}: {esc(reason)} (audited)"


def fleet_before(fleet: Mapping[str, Sequence[str]]) -> str:
    head = ":clipboard: Fleet before"
    if len(fleet) > 1:
        head = f":warning: Mixed fleet before ({len(fleet)} versions)"
    return f"{head}: {fleet_counts(fleet)}"


def fleet_summary(fleet: Mapping[str, Sequence[str]]) -> str:
    """The fleet by version in one line; a mixed fleet says so first."""
    if len(fleet) > 1:
        return f":warning: Mixed fleet: {fleet_counts(fleet)}"
    return f"Fleet: {fleet_counts(fleet)}" if fleet else "Fleet: not listed yet"


def fleet_counts(fleet: Mapping[str, Sequence[str]]) -> str:
    return " · ".join(f"{esc(v)} {TIMES}{len(s)}" for v, s in sorted(fleet.items()))


def warning(text: str) -> str:
    return f":warning: {esc(text)}"


def cp_beside_runtime(view: Mapping[str, Any]) -> str:
    """``runtime 3 instances · CP 3/3 Healthy on 3.8.1``: the two views of a group side by side."""
    on = f" on {esc(view.get('target'))}" if view.get("target") else ""
    mark = ":white_check_mark:" if view.get("healthy", 0) >= view.get("expected", 0) else ":x:"
    return (
        f"runtime {plural(int(view.get('expected', 0)), 'instance')} · "
        f"CP {mark} {view.get('healthy', 0)}/{view.get('expected', 0)} Healthy{on}"
    )


def cp_verified(group: str, status: str, view: Mapping[str, Any] | None, note: str | None) -> str:
    if status == "skipped":
        return f":fast_forward: Control-plane check skipped — {esc(note or 'no reason given')}"
    detail = cp_beside_runtime(view or {})
    if status == "ok":
        return f":white_check_mark: {code(group)} on the control plane: {detail}"
    return f":x: {code(group)} on the control plane: {detail} — {esc(note or '')}"


def precheck(check: str, status: str, note: str | None, cp_version: str | None) -> str:
    name = esc(check.replace("_", " "))
    if status == "skipped":
        return f":fast_forward: Pre-check {name} skipped — {esc(note or 'no reason given')}"
    version = f": {esc(cp_version)}" if cp_version else ""
    detail = f" — {esc(note)}" if note else ""
    return f":white_check_mark: Pre-check {name} ok{version}{detail}"


def changelog_headline(n_versions: int, versions: Sequence[str]) -> str:
    span = f" ({esc(versions[0])} … {esc(versions[-1])})" if len(versions) > 1 else ""
    return f":memo: Changelog: {plural(n_versions, 'version')}{span} — read before upgrading"


def changelog_ask(requester: str | None) -> str:
    who = user(requester) if requester else "The requester"
    return f"{who}, acknowledge to let the run continue."


def changelog_lines_more(hidden: int) -> str:
    return f"… {plural(hidden, 'more line')}"


def changelog_acknowledged(by: str) -> str:
    return f":memo: Changelog acknowledged by {user(by)}"


def changelog_more(hidden: int, source: str | None) -> str:
    where = f" in {code(source)}" if source else ""
    return f"… {plural(hidden, 'more version')}{where}"


def freeze_started(revision: int) -> str:
    return (
        f":ice_cube: Config freeze from revision {revision}: "
        "no gateway config changes until this run ends."
    )


def freeze_lifted() -> str:
    return ":ice_cube: Config freeze lifted."


def freeze_revision_accepted(before: Any, after: Any, by: str) -> str:
    return f":ice_cube: Config revision {after} accepted by {user(by)} on resume (was {before})."


def backup_done(artifact: str, size: Any, sha256: str | None) -> str:
    parts = [f":floppy_disk: Backup done: {code(artifact)}"]
    if size is not None:
        parts.append(_bytes(int(size)))
    if sha256:
        parts.append(f"sha256 `{esc(str(sha256)[:12])}…`")
    return " · ".join(parts)


def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"


def backup_waived(by: str, reason: str) -> str:
    return f":warning: No backup: waived by {user(by)} — {esc(reason)}"


def slot_failed(group: str, errors: Mapping[str, str]) -> str:
    lines = [f":x: Replacement failed on *{esc(group)}*"]
    lines += [f"• {esc(slot)}: {esc(err)}" for slot, err in errors.items()]
    return "\n".join(lines)


def smoke_failed(group: str, failures: Sequence[str]) -> str:
    lines = [f":x: Smoke requests failed on *{esc(group)}*"]
    lines += [f"• {esc(f)}" for f in failures[:3]]
    if len(failures) > 3:
        lines.append(f"… {len(failures) - 3} more")
    return "\n".join(lines)


def observation_alert(group: str, reasons: Sequence[str]) -> str:
    lines = [f":rotating_light: *{esc(group)}* fails since its upgrade: the run is paused"]
    lines += [f"• {esc(r)}" for r in reasons[:4]]
    return "\n".join(lines)


def watch_failed(group: str, done: int, total: int, reasons: Sequence[str]) -> str:
    lines = [
        f":x: *{esc(group)}* fails while it is replaced ({done}/{total} slots on the new "
        "version): no further slot is replaced"
    ]
    lines += [f"• {esc(r)}" for r in reasons[:4]]
    return "\n".join(lines)


def smoke_skipped(group: str, reason: str) -> str:
    return f":fast_forward: Smoke requests skipped on {esc(group)}: {esc(reason)}"


def reminder(group: str, n: int, approvers: Sequence[str], expires_at: float | None) -> str:
    expires = f" · expires {when(expires_at)}" if expires_at else ""
    head = f":alarm_clock: Reminder {n}: *{esc(group)}* is waiting for approval{expires}"
    return f"{head}\n{mentions(approvers)}" if approvers else head


def escalation(mention: str) -> str:
    # The mention is configuration (e.g. <!subteam^S0ONCALL>), so it is not escaped.
    return f":rotating_light: Escalating to {mention}: nobody has decided yet."


def paused(by: str, reason: str, run_id: str, command: str = DEFAULT_COMMAND) -> str:
    who = "" if by == "engine" else f" by {user(by)}"
    return (
        f":double_vertical_bar: Paused{who} — {prose(reason)}\n"
        f"Resume: `{command} resume {esc(run_id)}`"
    )


def resumed(by: str) -> str:
    return f":arrow_forward: Resumed by {user(by)}"


def held(until: float | None, reason: str, by: str | None) -> str:
    who = f" by {user(by)}" if by and by != "engine" else ""
    until_ = f" until {when(until)}" if until else ""
    return f":zzz: On hold{who}{until_} — {prose(reason)}"


def intent_recorded(action: str, by: str) -> str:
    return (
        f":hourglass: {action_word(action).capitalize()} requested by {user(by)} — "
        "takes effect when the current step finishes"
    )


CONFIG_CHANGED_HEADER = ":rotating_light: Config changed during the freeze"


def config_changed(before: Any, after: Any, run_id: str, command: str = DEFAULT_COMMAND) -> str:
    rid = esc(run_id)
    return (
        f"Revision {before} → {after}: someone changed the gateway configuration mid-upgrade.\n"
        "*The run is paused.* Check the change, then:\n"
        f"• `{command} resume {rid}` (accepts revision {after})\n"
        f"• `{command} rollback {rid}`"
    )


ROLLBACK_STARTED_HEADER = ":rewind: Rolling back"


def rollback_started(reason: str, by: str, automatic: bool, groups: Sequence[str]) -> str:
    how = "Automatic" if automatic else f"Requested by {user(by)}"
    order = (
        f"\nRestoring, newest group first: {listing([esc(g) for g in groups], 6)}"
        if groups
        else "\nNothing was changed yet: nothing to restore."
    )
    return f"{how}: {prose(reason)}{order}"


ROLLBACK_FAILED_HEADER = ":rotating_light: ROLLBACK FAILED"


def rollback_failed(error: str, page: str | None) -> str:
    paging = f"\n{page} — needs a person now." if page else ""
    return (
        f"{esc(error)}\n*The run has stopped; nothing more changes automatically.*"
        f" Instances below are not all back on their old version.{paging}"
    )


_SLOT_STATE = {
    "pending": "untouched",
    "replacing": "mid-replacement",
    "done": "upgraded",
    "failed": "failed",
    "restoring": "mid-restore",
    "restored": "restored",
}


def slot_states_line(group: str, states: Mapping[tuple[str, str], int]) -> str:
    """A group's instances counted by version and state, on one line."""
    parts = " · ".join(
        f"{esc(version)} {_SLOT_STATE.get(status, esc(status))} {TIMES}{n}"
        for (version, status), n in states.items()
    )
    return f"*{esc(group)}* {parts}"


def needs_hands(slots: Sequence[str]) -> str:
    return f":wrench: Not restored: {listing([esc(s) for s in slots], 8)}"


def observation_started(until: float | None) -> str:
    return ":eyes: Observing the upgraded fleet" + (f" until {when(until)}" if until else "")


def checkin_ok(final: bool, ready: int, versions: Sequence[str], worst_5xx: float | None) -> str:
    head = "Final check-in" if final else "Check-in"
    errors = f" · 5xx ≤ {pct(worst_5xx)}" if worst_5xx is not None else ""
    return (
        f":stethoscope: {head}: all {ready} instances ready on "
        f"{', '.join(esc(v) for v in versions)}{errors}"
    )


def checkin_problem(final: bool) -> str:
    return f":warning: {'Final check-in' if final else 'Check-in'}: not everything looks right"


def checkin_group(name: str, ready: int, slots: int, versions: Sequence[str], r5xx: Any) -> str:
    errors = f" · 5xx {pct(r5xx)}" if r5xx is not None else ""
    return f"*{esc(name)}* {ready}/{slots} ready · {', '.join(esc(v) for v in versions)}{errors}"


_FINAL = {
    EventKind.RUN_COMPLETED: ":white_check_mark: Upgrade to {v} completed",
    EventKind.RUN_ROLLED_BACK: ":leftwards_arrow_with_hook: Upgrade to {v} rolled back",
    EventKind.RUN_FAILED: ":x: Upgrade to {v} failed",
    EventKind.RUN_ABORTED: ":no_entry_sign: Upgrade to {v} aborted",
}


def final_headline(event_type: EventKind, target: str | None, run_id: str, reason: str) -> str:
    if target is None:  # rendered from the event alone: name the run instead
        head = _FINAL[event_type].replace("Upgrade to {v}", f"Run {code(run_id)}")
    else:
        head = _FINAL[event_type].format(v=esc(target))
    return f"{head} — {prose(reason)}"


def fleet_now(n_versions: int) -> str:
    if n_versions > 1:
        return f":warning: *Mixed fleet: {n_versions} versions*"
    return "*Fleet now*"


def fleet_version_line(version: str, slots: Sequence[str], by_group: Mapping[str, int]) -> str:
    """A version and how many instances run it; names when few, per-group counts when many."""
    if len(slots) <= 6 or not by_group:
        where = listing([esc(s) for s in slots], 6)
    else:
        where = listing([f"{esc(g)} {TIMES}{n}" for g, n in by_group.items()], 4)
    return f"*{esc(version)}* — {plural(len(slots), 'instance')}: {where}"


def run_took(created_at: float, finished_at: float | None) -> str:
    return f"Took {duration(finished_at - created_at)}" if finished_at else ""


def lock_broken(group: str, by: str, reason: str) -> str:
    return f":unlock: Lock of {code(group)} broken by {user(by)}: {esc(reason)} (audited)"


# --- the plan -------------------------------------------------------------------------------------


def plan_headline(target: str, groups: int, to_replace: int, blockers: int) -> str:
    if blockers:
        return (
            f":no_entry: Plan for {esc(target)}: {plural(blockers, 'blocker')} — "
            "a start would be refused"
        )
    return (
        f":clipboard: Plan: {plural(groups, 'group')} to {esc(target)}, "
        f"{plural(to_replace, 'instance')} to replace"
    )


def plan_blockers(items: Sequence[str]) -> str:
    return "*Blockers*\n" + "\n".join(f":no_entry: {esc(b)}" for b in items)


def plan_warnings(items: Sequence[str]) -> str:
    return "*Warnings*\n" + "\n".join(f":warning: {esc(w)}" for w in items)


def plan_group_line(
    n: int,
    name: str,
    production: bool,
    versions: Mapping[str, int],
    to_replace: int,
    total: int,
    batch_size: int,
    unready: int,
    readiness: str = "",
) -> str:
    prod = " :rotating_light:" if production else ""
    now = " · ".join(f"{esc(v)} {TIMES}{c}" for v, c in sorted(versions.items())) or "no instances"
    extra = f" · :warning: {unready} not ready" if unready else ""
    ready = f"\n    ready when: {esc(readiness)}" if readiness else ""
    return (
        f"{n}. *{esc(name)}*{prod} {now} · {to_replace}/{total} to replace · "
        f"batch {batch_size}{extra}{ready}"
    )


def plan_control_plane(cp: Mapping[str, Any]) -> str:
    if cp.get("skipped"):
        return f":fast_forward: Control plane: {esc(cp['skipped'])}"
    return f":white_check_mark: Control plane {esc(cp.get('version', '?'))}"


def plan_changelog(changelog: Mapping[str, Any]) -> str:
    if changelog.get("skipped"):
        return f":fast_forward: Changelog: {esc(changelog['skipped'])}"
    versions = [esc(e.get("version", "?")) for e in changelog.get("entries", [])]
    if not versions:
        return ":memo: Changelog: no entries between these versions"
    return f":memo: Changelog: {listing(versions, 4)} — the requester acknowledges it at start"


def plan_backup(backup: str) -> str:
    return f":floppy_disk: Backup: {esc(backup)}"


def plan_start(target: str, groups: Sequence[str], command: str = DEFAULT_COMMAND) -> str:
    return f"Start: `{command} start {esc(target)} {' '.join(esc(g) for g in groups)}`"


def plan_hash(value: str) -> str:
    return f"plan {code(value)}" if value else ""


# --- limits ---------------------------------------------------------------------------------------


def see_thread() -> str:
    return "see the thread"


def see_status(run_id: str, command: str = DEFAULT_COMMAND) -> str:
    return f"full list: `{command} status {esc(run_id)}`"


def see_cli(run_id: str) -> str:
    return f"full detail: `upgrade-bot status {esc(run_id)}`"


def see_cli_plan(target: str) -> str:
    return f"full plan: `upgrade-bot plan --to {esc(target)}`"


def see_cli_history() -> str:
    return "more: `upgrade-bot history`"


def truncated(hint: str) -> str:
    return f"… ({hint})" if hint else "…"


def more_lines(hidden: int, hint: str) -> str:
    return f"… {hidden} more ({hint})"
