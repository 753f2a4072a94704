"""Block Kit for upgrade runs: pure functions from run records and audit events to messages.

Each run has one message in the channel (``run_message``, edited in place) and everything else in
its thread: per-group progress (``group_progress``, edited at milestones), the metric verdict,
the approval gate (``gate_message``, then ``gate_decided`` once decided), and one post per audit
event worth a person's attention (``event_message``). Nothing here does IO or reads the clock;
the notifier decides when to post or edit, these functions only decide what it says.

Blocks are built with ``slack_sdk.models`` so that a malformed block fails in a test, not in the
channel, and every builder keeps within Slack's limits (50 blocks, 3000 characters per section,
10 context elements, 75 characters per button) by cutting long lists with a hint of where the
rest is. The wording itself lives in ``messages``.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    ConfirmObject,
    ContextBlock,
    HeaderBlock,
    MarkdownTextObject,
    PlainTextObject,
    SectionBlock,
)
from slack_sdk.models.metadata import Metadata

from upgrade_bot.engine import HELD, PAUSED, EventKind, Gate, GroupRun, Plan, Run, kind_of

from . import messages as msg
from .settings import Reactions  # reaction names, as configured under slack.reactions

# Slack's limits (https://docs.slack.dev/reference/block-kit/blocks).
MAX_BLOCKS = 50
SECTION_TEXT_MAX = 3000
CONTEXT_TEXT_MAX = 2000
CONTEXT_ELEMENTS_MAX = 10
HEADER_TEXT_MAX = 150
BUTTON_TEXT_MAX = 75
CONFIRM_TITLE_MAX = 100
CONFIRM_TEXT_MAX = 300
FALLBACK_TEXT_MAX = 3000

# A phone shows about this many lines per screen; longer slot lists are summarized.
MAX_SLOT_LINES = 20
MAX_CHANGELOG_ENTRIES = 8
MAX_CHANGELOG_LINES = 8

# Interaction identifiers the listeners route on.
ACTION_APPROVE = "gate_approve"
ACTION_PAUSE = "gate_pause"
ACTION_ROLLBACK = "gate_rollback"
ACTION_REACTION_CONFIRM = "reaction_confirm"
ACTION_CHANGELOG_ACK = "changelog_ack"
ACTION_OBSERVE_ROLLBACK = "observe_rollback"
GATE_ACTIONS_BLOCK = "gate_actions"

# Message metadata event types: what a message in the channel is for, so that a restarted bot
# can find the message to edit from the conversation itself.
META_RUN = "upgrade_run"
META_GROUP = "upgrade_group"
META_GATE = "upgrade_gate"
META_EVENT = "upgrade_event"


@dataclass(frozen=True)
class Message:
    """One Slack message: notification text, blocks, and what it is for."""

    text: str
    blocks: list[Block]
    metadata: Metadata | None = None

    def block_dicts(self) -> list[dict[str, Any]]:
        """The blocks as the Web API takes them (JSON-ready)."""
        return [b.to_dict() for b in self.blocks]

    def to_dict(self) -> dict[str, Any]:
        """Keyword arguments for ``chat.postMessage`` / ``chat.update`` (JSON-ready)."""
        out: dict[str, Any] = {"text": self.text, "blocks": self.block_dicts()}
        if self.metadata is not None:
            out["metadata"] = self.metadata.to_dict()
        return out


def button_value(**fields: str) -> str:
    """A button's value: compact JSON, well under Slack's 2000 characters."""
    return json.dumps(fields, separators=(",", ":"))


def read_value(value: str) -> dict[str, str]:
    """The inverse of ``button_value``, for the listeners."""
    data = json.loads(value)
    if not isinstance(data, dict):
        raise ValueError("a button value is a JSON object")
    return {str(k): str(v) for k, v in data.items()}


# --- blocks within limits -------------------------------------------------------------------------


def _fit(text: str, limit: int, hint: str) -> str:
    """Text cut to ``limit`` at a line or word boundary, ending with where to read the rest."""
    if len(text) <= limit:
        return text
    tail = "\n" + msg.truncated(hint)
    room = max(0, limit - len(tail))
    cut = text[:room]
    for sep in ("\n", " "):
        at = cut.rfind(sep)
        if at > room // 2:
            cut = cut[:at]
            break
    # Never leave half a <…> token or &entity; behind: Slack would show it raw.
    if cut.rfind("<") > cut.rfind(">"):
        cut = cut[: cut.rfind("<")]
    if cut.rfind("&") > cut.rfind(";"):
        cut = cut[: cut.rfind("&")]
    return cut.rstrip() + tail


def _fit_plain(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _section(text: str, hint: str) -> SectionBlock:
    return SectionBlock(text=MarkdownTextObject(text=_fit(text or "-", SECTION_TEXT_MAX, hint)))


def _context(*texts: str, hint: str) -> ContextBlock:
    elements = [MarkdownTextObject(text=_fit(t, CONTEXT_TEXT_MAX, hint)) for t in texts if t]
    return ContextBlock(elements=elements[:CONTEXT_ELEMENTS_MAX] or [MarkdownTextObject(text="-")])


def _header(text: str) -> HeaderBlock:
    return HeaderBlock(text=PlainTextObject(text=_fit_plain(text, HEADER_TEXT_MAX), emoji=True))


def _button(
    text: str,
    action_id: str,
    value: str,
    style: str | None = None,
    confirm: ConfirmObject | None = None,
) -> ButtonElement:
    return ButtonElement(
        text=PlainTextObject(text=_fit_plain(text, BUTTON_TEXT_MAX), emoji=True),
        action_id=action_id,
        value=value,
        style=style,
        confirm=confirm,
    )


def _confirm(title: str, text: str, yes: str, style: str) -> ConfirmObject:
    return ConfirmObject(
        title=PlainTextObject(text=_fit_plain(title, CONFIRM_TITLE_MAX), emoji=True),
        text=MarkdownTextObject(text=_fit(text, CONFIRM_TEXT_MAX, "…")),
        confirm=PlainTextObject(text=yes, emoji=True),
        deny=PlainTextObject(text=msg.BUTTON_CANCEL, emoji=True),
        style=style,
    )


def _sections(lines: Sequence[str], hint: str, max_blocks: int) -> list[Block]:
    """Lines packed into as few sections as fit; past ``max_blocks``, a count of the rest."""
    room = SECTION_TEXT_MAX - 200  # keeps space for the "… N more" line
    packs: list[list[str]] = [[]]
    size = 0
    for i, raw in enumerate(lines):
        line = _fit(raw, room, hint)
        if packs[-1] and size + len(line) + 1 > room:
            if len(packs) >= max_blocks:
                packs[-1].append(msg.more_lines(len(lines) - i, hint))
                break
            packs.append([])
            size = 0
        packs[-1].append(line)
        size += len(line) + 1
    return [_section("\n".join(p), hint) for p in packs if p]


def _message(
    text: str, blocks: list[Block], metadata: Metadata | None = None, hint: str = ""
) -> Message:
    """The message, kept under 50 blocks even if a builder overshoots (the last block stays)."""
    if len(blocks) > MAX_BLOCKS:
        blocks = [*blocks[: MAX_BLOCKS - 2], _context(msg.truncated(hint), hint=hint), blocks[-1]]
    return Message(_fit(text, FALLBACK_TEXT_MAX, hint), blocks, metadata)


def _event_meta(event: Mapping[str, Any], event_id: str | None) -> Metadata:
    payload: dict[str, Any] = {"run_id": event.get("run_id", ""), "type": event.get("type", "")}
    if event_id is not None:
        payload["event_id"] = event_id
    return Metadata(event_type=META_EVENT, event_payload=payload)


# --- the run message (channel) --------------------------------------------------------------------

_LIVE_GROUP = ("upgrading", "verifying", "awaiting_approval", "rolling_back")


def _group_line(run: Run, g: GroupRun) -> str:
    status = g.status
    if run.terminal and status in _LIVE_GROUP:
        status = "stopped"  # the run ended mid-group: "upgrading" would be a lie
    elif run.state in (PAUSED, HELD) and status in _LIVE_GROUP:
        status = "paused"  # e.g. an expired gate: "needs approval" would invite a dead click
    if g.status in ("rolling_back", "rolled_back"):
        restored = sum(1 for s in g.slots if s.status == "restored")
        todo = restored + sum(1 for s in g.slots if s.touched)
        return msg.group_line(g.name, status, restored, todo, restoring=True)
    done = sum(1 for s in g.slots if s.status == "done")
    return msg.group_line(g.name, status, done, len(g.slots))


def _run_blocks(run: Run, hint: str, reserve: int) -> list[Block]:
    """Headline and one line per group: the part the run and status messages share."""
    blocks: list[Block] = [_section(msg.run_headline(run), hint)]
    lines = [_group_line(run, g) for g in run.groups]
    blocks += _sections(lines, hint, MAX_BLOCKS - 1 - reserve)
    return blocks


def run_message(run: Run) -> Message:
    """The run's one message in the channel: key fact, a line per group, who asked."""
    hint = msg.see_thread()
    blocks = _run_blocks(run, hint, reserve=1)
    blocks.append(_context(msg.run_context(run), hint=hint))
    meta = Metadata(event_type=META_RUN, event_payload={"run_id": run.id, "state": run.state})
    return _message(msg.run_headline(run), blocks, meta, hint)


def status_message(run: Run, *, command: str = msg.DEFAULT_COMMAND) -> Message:
    """The answer to ``/upgrade status RUN``: the run message plus where it stands in detail."""
    hint = msg.see_cli(run.id)
    blocks = _run_blocks(run, hint, reserve=3)
    details = msg.status_details(run)
    if any(s.current_version or s.previous_version for _, s in run.slots()):
        details.append(msg.fleet_summary(run.mixed_fleet()))
    blocks.append(_section("\n".join(details), hint))
    blocks.append(_context(msg.run_context(run), hint=hint))
    blocks.append(_context(msg.status_commands(run, command), hint=hint))
    return _message(msg.run_headline(run), blocks, None, hint)


def history_message(runs: Sequence[Run], *, active: bool = False) -> Message:
    """Recent runs (or, ``active``, the runs under way), one line each, in the order given."""
    hint = msg.see_cli_history()
    title = msg.active_title(len(runs)) if active else msg.history_title(len(runs))
    blocks: list[Block] = [_section(title, hint)]
    blocks += _sections([msg.history_line(r) for r in runs], hint, MAX_BLOCKS - 1)
    return _message(title, blocks, None, hint)


# --- group progress (thread, edited at milestones) ------------------------------------------------


def _slot_lines(g: GroupRun) -> list[str]:
    def line(s: Any) -> str:
        return msg.slot_line(s.id, s.status, s.previous_version, s.current_version, s.touched)

    if len(g.slots) <= MAX_SLOT_LINES:
        return [line(s) for s in g.slots]
    # Too many for a phone: name the instances that need eyes, count the rest by state.
    notable = [s for s in g.slots if s.status in ("replacing", "failed", "restoring")]
    shown = notable[:MAX_SLOT_LINES]
    rest = Counter(s.status for s in g.slots if s not in shown)
    lines = [line(s) for s in shown]
    lines.append(msg.slots_more(sum(rest.values()), dict(rest), listed=bool(shown)))
    return lines


def group_progress(run: Run, group_name: str) -> Message:
    """A group's thread message: instances done out of all, then one short line per instance."""
    g = run.group(group_name)
    hint = msg.see_status(run.id)
    done = sum(1 for s in g.slots if s.status == "done")
    headline = msg.group_headline(
        g.name, g.status, done, len(g.slots), run.target_version, g.production
    )
    blocks: list[Block] = [_section(headline, hint)]
    blocks += _sections(_slot_lines(g), hint, MAX_BLOCKS - 2)
    context = [msg.group_context(g.target_image, g.batch_size, g.smoke, g.control_plane)]
    if g.verdict:
        context.append(msg.verdict(g.verdict.get("phase")))
    blocks.append(_context(*context, hint=hint))
    meta = Metadata(event_type=META_GROUP, event_payload={"run_id": run.id, "group": g.name})
    return _message(headline, blocks, meta, hint)


# --- metrics --------------------------------------------------------------------------------------


def metrics_summary(event: Mapping[str, Any], *, event_id: str | None = None) -> Message:
    """A group's verdict first, then before → after for 5xx, p99 and requests; reasons below."""
    hint = msg.see_status(event.get("run_id", ""))
    verdict = event.get("verdict") or {}
    headline = msg.metrics_headline(event.get("group", "?"), verdict.get("phase"))
    lines = msg.metric_lines(event.get("before"), event.get("after"))
    blocks: list[Block] = [_section("\n".join([headline, *lines]), hint)]
    if verdict.get("reasons"):
        blocks.append(_context(msg.reasons(verdict["reasons"]), hint=hint))
    return _message(headline, blocks, _event_meta(event, event_id), hint)


# --- the approval gate ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _GateView:
    """What a gate message shows, whether built from the gate_opened event or the Gate record."""

    run: Run
    gate_id: str
    group: str
    production: bool
    verdict: Mapping[str, Any]
    required: int
    expires_at: float
    recommend: str
    approved_by: tuple[str, ...] = ()

    @property
    def next_group(self) -> str | None:
        names = [g.name for g in self.run.groups]
        i = names.index(self.group) if self.group in names else len(names)
        return names[i + 1] if i + 1 < len(names) else None

    @property
    def value(self) -> str:
        return button_value(run=self.run.id, gate=self.gate_id)


def _gate_evidence(view: _GateView) -> list[str]:
    try:
        g = view.run.group(view.group)
    except KeyError:
        return [msg.verdict(view.verdict.get("phase"))]
    done = sum(1 for s in g.slots if s.status == "done")
    progress = msg.gate_progress(done, len(g.slots), view.run.target_version)
    return [
        f"{msg.verdict(view.verdict.get('phase'))} · {progress}",
        *msg.metric_lines(g.before, g.after),
    ]


def _restore_order(run: Run) -> list[str]:
    touched = [g.name for g in reversed(run.groups) if g.touched]
    return touched or [g.name for g in reversed(run.groups[: run.group_index + 1])]


def _gate_buttons(view: _GateView) -> ActionsBlock:
    approve_confirm = None
    if view.production:
        approve_confirm = _confirm(
            msg.confirm_approve_title(view.group),
            msg.confirm_approve_text(view.group, view.next_group),
            msg.BUTTON_APPROVE,
            "primary",
        )
    rollback_confirm = _confirm(
        msg.confirm_rollback_title(),
        msg.confirm_rollback_text(_restore_order(view.run)),
        msg.BUTTON_ROLLBACK,
        "danger",
    )
    # Green means "go": when the verdict says roll back, Approve loses its colour.
    approve_style = None if view.recommend == "rollback" else "primary"
    return ActionsBlock(
        block_id=GATE_ACTIONS_BLOCK,
        elements=[
            _button(msg.BUTTON_APPROVE, ACTION_APPROVE, view.value, approve_style, approve_confirm),
            _button(msg.BUTTON_PAUSE, ACTION_PAUSE, view.value),
            _button(msg.BUTTON_ROLLBACK, ACTION_ROLLBACK, view.value, "danger", rollback_confirm),
        ],
    )


def _gate_message(
    view: _GateView,
    decided: Gate | None,
    approvers: Sequence[str],
    reactions: Reactions,
) -> Message:
    hint = msg.see_status(view.run.id)
    evidence = _gate_evidence(view)
    reasons = msg.reasons(view.verdict.get("reasons") or [])
    ids = msg.gate_ids(view.run.id, view.gate_id)
    meta = Metadata(
        event_type=META_GATE,
        event_payload={
            "run_id": view.run.id,
            "gate_id": view.gate_id,
            "verdict": str(view.verdict.get("phase") or ""),
            "recommend": view.recommend,
            "decision": decided.decision if decided is not None else "",
        },
    )
    if decided is not None:
        outcome = msg.gate_decision(decided.decision, decided.decided_by, decided.decided_at)
        blocks: list[Block] = [
            _section(outcome, hint),
            _section("\n".join([msg.gate_title(view.group, view.production), *evidence]), hint),
            _context(reasons, ids, hint=hint),
        ]
        return _message(outcome, blocks, meta, hint)
    headline = msg.gate_headline(view.group, view.production)
    ask = [
        msg.gate_needs(view.required, approvers, view.approved_by),
        msg.gate_expires(view.expires_at),
    ]
    blocks = [
        _section(
            "\n".join([headline, *evidence, msg.recommendation(view.recommend, view.next_group)]),
            hint,
        ),
        _section("\n".join(ask), hint),
        _gate_buttons(view),
        _context(
            msg.gate_reactions(
                reactions.approve, reactions.pause, reactions.rollback, view.production
            ),
            hint=hint,
        ),
        _context(reasons, ids, hint=hint),
    ]
    return _message(f"{headline} — {evidence[0]}", blocks, meta, hint)


def gate_message(
    run: Run,
    gate_event: Mapping[str, Any],
    *,
    approvers: Sequence[str] = (),
    reactions: Reactions = Reactions(),
) -> Message:
    """The approval request: evidence, recommendation, who may approve, and the buttons.

    ``approvers`` are the group's policy entries (user IDs, user-group IDs or ``*``); approvals
    recorded so far are read from ``run.gate`` when it is this gate, so re-rendering after
    ``approval_recorded`` shows "1/2 so far".
    """
    gate_id = str(gate_event["gate"])
    approved = ()
    if run.gate is not None and run.gate.id == gate_id:
        approved = tuple(a.user for a in run.gate.approvals)
    view = _GateView(
        run=run,
        gate_id=gate_id,
        group=str(gate_event["group"]),
        production=bool(gate_event.get("production")),
        verdict=gate_event.get("verdict") or {},
        required=int(gate_event["required"]),
        expires_at=float(gate_event["expires_at"]),
        recommend=str(gate_event.get("recommend", "approve")),
        approved_by=approved,
    )
    return _gate_message(view, None, approvers, reactions)


def gate_decided(run: Run, gate: Gate | Mapping[str, Any]) -> Message:
    """The gate message once decided: no buttons; the decision and who made it come first.

    ``gate`` is the Gate record, or the ``gate_decided`` event (which keeps the decision after
    the record has moved on to the next group's gate, or cleared it on resume), or the
    ``gate_opened`` event (the decision is then read from ``run.gate`` when it is still there).
    """
    decided = _decided_gate(run, gate)
    try:
        g: GroupRun | None = run.group(decided.group)
    except KeyError:
        g = None
    verdict = (g.verdict if g is not None else None) or {"phase": decided.verdict, "reasons": []}
    view = _GateView(
        run=run,
        gate_id=decided.id,
        group=decided.group,
        production=bool(g is not None and g.production),
        verdict=verdict,
        required=decided.required,
        expires_at=decided.expires_at,
        recommend="rollback" if verdict.get("phase") == "fail" else "approve",
    )
    return _gate_message(view, decided, (), Reactions())


def _decided_gate(run: Run, gate: Gate | Mapping[str, Any]) -> Gate:
    """A Gate record for any of the three forms ``gate_decided`` accepts."""
    if isinstance(gate, Gate):
        return gate
    gate_id = str(gate.get("gate"))
    decision = gate.get("decision") or (
        "expired" if gate.get("type") == EventKind.GATE_EXPIRED else None
    )
    if decision is None and run.gate is not None and run.gate.id == gate_id:
        return run.gate
    phase = gate.get("verdict")
    return Gate(
        id=gate_id,
        group=str(gate.get("group", "")),
        opened_at=0.0,
        expires_at=float(gate.get("expires_at") or 0.0),
        next_reminder_at=0.0,
        required=int(gate.get("required") or 0),
        verdict=str(phase.get("phase") if isinstance(phase, Mapping) else phase or ""),
        decision=decision,
        decided_by=tuple(gate.get("by") or ()),
        decided_at=gate.get("at") if decision else None,
    )


def reaction_confirm(
    run_id: str,
    gate_id: str,
    action: str,
    group: str,
    *,
    reactions: Reactions = Reactions(),
    production: bool = True,
) -> Message:
    """The ephemeral "You reacted … — confirm?" so that a mis-tap on a phone does nothing."""
    reaction = {"approve": reactions.approve, "pause": reactions.pause}.get(
        action, reactions.rollback
    )
    text = msg.reaction_confirm(reaction, action, group, production)
    style = {"approve": "primary", "rollback": "danger"}.get(action)
    value = button_value(run=run_id, gate=gate_id, action=action)
    blocks: list[Block] = [
        _section(text, ""),
        ActionsBlock(elements=[_button(msg.BUTTON_CONFIRM, ACTION_REACTION_CONFIRM, value, style)]),
        _context(msg.reaction_confirm_hint(), hint=""),
    ]
    return _message(text, blocks)


# --- thread posts for audit events ----------------------------------------------------------------


class _Fields(dict[str, Any]):
    """An event whose missing fields read as "?"."""

    def __missing__(self, key: str) -> str:
        return "?"


@dataclass(frozen=True)
class _Ctx:
    event: Mapping[str, Any]
    run: Run | None
    event_id: str | None
    approvers: Sequence[str]
    escalation: str | None
    command: str
    hint: str = field(init=False)

    def __post_init__(self) -> None:
        # A field missing from an event (a record written by an older version) shows as "?"
        # instead of raising: one odd event must not stop a run's notifications.
        object.__setattr__(self, "event", _Fields(self.event))
        object.__setattr__(self, "hint", msg.see_status(self.run_id, self.command))

    @property
    def run_id(self) -> str:
        return str(self.event.get("run_id") or (self.run.id if self.run else ""))

    def post(self, *blocks: Block, text: str) -> Message:
        return _message(text, list(blocks), _event_meta(self.event, self.event_id), self.hint)

    def say(self, text: str) -> Message:
        """One line, in normal size: something a person should notice."""
        return self.post(_section(text, self.hint), text=text)

    def note(self, text: str) -> Message:
        """One line, small: a fact for the record."""
        return self.post(_context(text, hint=self.hint), text=text)


def _changelog_text(text: str) -> str:
    """A vendor's Markdown entry as short mrkdwn: bullets, bold and links kept, the rest plain."""
    out: list[str] = []
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    for raw in lines[:MAX_CHANGELOG_LINES]:
        stripped = raw.strip()
        nested = raw[:1].isspace()
        line = msg.esc(stripped)
        if stripped.startswith(("- ", "* ", "+ ")):
            line = ("    " if nested else "") + "• " + line[2:]
        elif stripped.startswith("#"):
            line = "*" + line.lstrip("#").strip() + "*"
        line = re.sub(r"\*\*(.+?)\*\*", r"*\1*", line)
        line = re.sub(r"\[([^\]]+)\]\((https?://[^)\s]+)\)", r"<\2|\1>", line)
        out.append(line)
    if len(lines) > MAX_CHANGELOG_LINES:
        out.append(msg.changelog_lines_more(len(lines) - MAX_CHANGELOG_LINES))
    return "\n".join(out)


def changelog_message(
    event: Mapping[str, Any], *, run: Run | None = None, event_id: str | None = None
) -> Message:
    """The changelog between versions, and an Acknowledge button while the run waits for it.

    Pass ``run`` to name the requester and to drop the button once acknowledged (re-render
    after ``changelog_acknowledged`` so that no stale button stays).
    """
    ctx = _Ctx(event, run, event_id, (), None, msg.DEFAULT_COMMAND)
    entries = list(event.get("entries") or [])
    versions = [str(e.get("version", "?")) for e in entries]
    headline = msg.changelog_headline(len(entries), versions)
    if not entries:
        return ctx.note(msg.plan_changelog({"entries": []}))
    blocks: list[Block] = [_section(headline, ctx.hint)]
    for e in entries[:MAX_CHANGELOG_ENTRIES]:
        body = _changelog_text(str(e.get("text", "")))
        blocks.append(_section(f"*{msg.esc(e.get('version', '?'))}*\n{body}", ctx.hint))
    if len(entries) > MAX_CHANGELOG_ENTRIES:
        more = msg.changelog_more(len(entries) - MAX_CHANGELOG_ENTRIES, event.get("source"))
        blocks.append(_context(more, hint=ctx.hint))
    if run is not None and run.changelog_ack:
        blocks.append(_context(msg.changelog_acknowledged(run.changelog_ack), hint=ctx.hint))
    elif run is None or not run.terminal:
        requester = run.requester if run is not None else None
        blocks.append(_section(msg.changelog_ask(requester), ctx.hint))
        button = _button(
            msg.BUTTON_ACKNOWLEDGE,
            ACTION_CHANGELOG_ACK,
            button_value(run=ctx.run_id),
            "primary",
        )
        blocks.append(ActionsBlock(elements=[button]))
    return ctx.post(*blocks, text=headline)


def _natural(version: str) -> tuple[Any, ...]:
    """Sort key for versions: 3.10.0 after 3.9.2, unknown names last."""
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"[.\-+]", version))


def _fleet_lines(
    fleet: Mapping[str, Sequence[str]], table: Sequence[Mapping[str, Any]]
) -> list[str]:
    group_of = {row.get("slot"): row.get("group") for row in table}
    lines = [msg.fleet_now(len(fleet))]
    for version in sorted(fleet, key=_natural, reverse=True):
        slots = list(fleet[version])
        by_group = Counter(str(group_of.get(s, "?")) for s in slots) if group_of else Counter()
        lines.append(msg.fleet_version_line(version, slots, dict(by_group)))
    return lines


def _slot_state_lines(table: Iterable[Mapping[str, Any]], only: Sequence[str] = ()) -> list[str]:
    per_group: dict[str, Counter[tuple[str, str]]] = {}
    for row in table:
        group = str(row.get("group", "?"))
        if only and group not in only:
            continue
        key = (str(row.get("version") or "?"), str(row.get("status", "?")))
        per_group.setdefault(group, Counter())[key] += 1
    return [msg.slot_states_line(g, dict(states)) for g, states in per_group.items()]


def _observation_alert(c: _Ctx) -> Message:
    """The runbook's step 9 found an anomaly: why, and Roll back offered (confirmed first on a
    production group, as at a gate)."""
    e = c.event
    group = str(e.get("group", ""))
    reasons = list((e.get("verdict") or {}).get("reasons") or [])
    text = msg.observation_alert(group, reasons)
    production = bool(c.run and any(g.production for g in c.run.groups if g.name == group))
    confirm = (
        _confirm(
            msg.confirm_rollback_title(),
            msg.confirm_rollback_text(_restore_order(c.run)),
            msg.BUTTON_ROLLBACK,
            "danger",
        )
        if production and c.run is not None
        else None
    )
    button = _button(
        msg.BUTTON_ROLLBACK,
        ACTION_OBSERVE_ROLLBACK,
        button_value(run=c.run_id, group=group),
        "danger",
        confirm,
    )
    return c.post(_section(text, c.hint), ActionsBlock(elements=[button]), text=text)


def _rollback_started(c: _Ctx) -> Message:
    e = c.event
    groups = list(e.get("groups") or [])
    body = msg.rollback_started(
        str(e.get("reason", "")), str(e.get("by", "")), bool(e.get("automatic")), groups
    )
    blocks: list[Block] = [_header(msg.ROLLBACK_STARTED_HEADER), _section(body, c.hint)]
    if c.run is not None:
        blocks += _sections(_slot_state_lines(c.run.slot_table(), groups), c.hint, MAX_BLOCKS - 3)
    blocks.append(_context(msg.run_context(c.run) if c.run else msg.run_ref(c.run_id), hint=c.hint))
    return c.post(*blocks, text=f"{msg.ROLLBACK_STARTED_HEADER}: {msg.esc(e.get('reason', ''))}")


def _rollback_failed(c: _Ctx) -> Message:
    e = c.event
    table = list(e.get("slots") or [])
    page = " ".join(p for p in [c.escalation, msg.mentions(c.approvers)] if p) or None
    body = msg.rollback_failed(str(e.get("error", "")), page)
    stuck = [
        str(r.get("slot"))
        for r in table
        if r.get("image") and r.get("previous_image") and r["image"] != r["previous_image"]
    ]
    lines = [*_fleet_lines(e.get("fleet") or {}, table), *_slot_state_lines(table)]
    if stuck:
        lines.append(msg.needs_hands(stuck))
    blocks: list[Block] = [_header(msg.ROLLBACK_FAILED_HEADER), _section(body, c.hint)]
    blocks += _sections(lines, c.hint, MAX_BLOCKS - 3)
    blocks.append(_context(msg.run_context(c.run) if c.run else msg.run_ref(c.run_id), hint=c.hint))
    text = f"{msg.ROLLBACK_FAILED_HEADER}: {msg.esc(e.get('error', ''))}"
    return c.post(*blocks, text=f"{text} {page}" if page else text)


def _final(c: _Ctx) -> Message:
    e = c.event
    target = c.run.target_version if c.run is not None else None
    headline = msg.final_headline(EventKind(e["type"]), target, c.run_id, str(e.get("reason", "")))
    lines = _fleet_lines(e.get("fleet") or {}, list(e.get("slots") or []))
    blocks: list[Block] = [_section(headline, c.hint)]
    blocks += _sections(lines, c.hint, MAX_BLOCKS - 2)
    if c.run is not None:
        context = [msg.run_context(c.run), msg.run_took(c.run.created_at, e.get("at"))]
    else:
        context = [msg.run_ref(c.run_id)]
    blocks.append(_context(*context, hint=c.hint))
    return c.post(*blocks, text=headline)


def _config_changed(c: _Ctx) -> Message:
    e = c.event
    body = msg.config_changed(e.get("before"), e.get("after"), c.run_id, c.command)
    blocks = [_header(msg.CONFIG_CHANGED_HEADER), _section(body, c.hint)]
    return c.post(
        *blocks, text=f"{msg.CONFIG_CHANGED_HEADER}: {e.get('before')} → {e.get('after')}"
    )


def _reminder(c: _Ctx) -> Message:
    e = c.event
    expires = None
    if c.run is not None and c.run.gate is not None and c.run.gate.id == e.get("gate"):
        expires = c.run.gate.expires_at
    lines = [
        msg.reminder(str(e.get("group", "")), int(e.get("reminders", 0)), c.approvers, expires)
    ]
    mention = e.get("escalation_mention") or c.escalation
    if e.get("escalate") and mention:
        lines.append(msg.escalation(str(mention)))
    text = "\n".join(lines)
    return c.post(_section(text, c.hint), text=text)


def _checkin(c: _Ctx) -> Message:
    e = c.event
    groups: Mapping[str, Mapping[str, Any]] = e.get("groups") or {}
    final = bool(e.get("final"))
    versions = sorted({v for info in groups.values() for v in info.get("versions", [])})
    ratios = [
        (info.get("since_upgrade") or {}).get("ratio_5xx")
        for info in groups.values()
        if info.get("since_upgrade")
    ]
    healthy = all(info.get("ready") == info.get("slots") for info in groups.values())
    if healthy and len(versions) <= 1:
        ready = sum(int(info.get("ready", 0)) for info in groups.values())
        worst = max((float(r) for r in ratios if r is not None), default=None)
        return c.note(msg.checkin_ok(final, ready, versions, worst))
    lines = [
        msg.checkin_group(
            name,
            int(info.get("ready", 0)),
            int(info.get("slots", 0)),
            info.get("versions", []),
            (info.get("since_upgrade") or {}).get("ratio_5xx"),
        )
        for name, info in groups.items()
        if info.get("ready") != info.get("slots") or len(info.get("versions", [])) > 1
    ] or [msg.fleet_counts({v: [v] for v in versions})]
    head = msg.checkin_problem(final)
    blocks = [_section(head, c.hint), *_sections(lines, c.hint, MAX_BLOCKS - 1)]
    return c.post(*blocks, text=head)


def _simple(build: Callable[[Mapping[str, Any]], str], loud: bool) -> Callable[[_Ctx], Message]:
    def render(c: _Ctx) -> Message:
        text = build(c.event)
        return c.say(text) if loud else c.note(text)

    return render


def _held(c: _Ctx) -> Message | None:
    if c.event.get("attempt") is not None:
        return None  # an engine backoff: the run message shows it; a post per retry is noise
    e = c.event
    return c.say(msg.held(_time(e.get("until")), str(e.get("reason", "")), e.get("by")))


def _time(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _inventory(c: _Ctx) -> Message:
    fleet = c.event.get("fleet") or {}
    text = msg.fleet_before(fleet)
    return c.say(text) if len(fleet) > 1 else c.note(text)


def _backup_done(e: Mapping[str, Any]) -> str:
    return msg.backup_done(
        str(e.get("artifact", "?")), e.get("size", e.get("bytes")), e.get("sha256")
    )


def _override_used(e: Mapping[str, Any]) -> str:
    detail = ""
    if e.get("slots"):
        detail = f" ({msg.listing([msg.esc(s) for s in e['slots']])})"
    elif e.get("cp_version"):
        detail = f" (control plane {msg.esc(e['cp_version'])})"
    return msg.override_used(str(e["override"]), str(e["by"]), detail)


def _elsewhere(c: _Ctx) -> None:
    """No post of its own: the run message, a group's progress message or the gate message
    shows it (the notifier edits those), or it is an answer for one person (``refused``)."""
    return None


EVENT_POSTS: dict[EventKind, Callable[[_Ctx], Message | None]] = {
    EventKind.RUN_STARTED: _elsewhere,  # the run message itself
    EventKind.OVERRIDE_GRANTED: _simple(
        lambda e: msg.override_granted(e["override"], e["by"]), True
    ),
    EventKind.WAIVER_GRANTED: _simple(
        lambda e: msg.waiver_granted(e["by"], e.get("reason", "")), True
    ),
    EventKind.REFUSED: _elsewhere,  # ephemeral, for the person refused
    EventKind.LOCK_BROKEN: _simple(
        lambda e: msg.lock_broken(e["group"], e["user"], e.get("reason", "")), True
    ),
    EventKind.INVENTORY: _inventory,
    EventKind.WARNING: _simple(lambda e: msg.warning(e.get("text", "")), True),
    EventKind.PRECHECK: _simple(
        lambda e: msg.precheck(e["check"], e["status"], e.get("note"), e.get("cp_version")),
        False,
    ),
    EventKind.OVERRIDE_USED: _simple(_override_used, True),
    EventKind.CHANGELOG: lambda c: changelog_message(c.event, run=c.run, event_id=c.event_id),
    EventKind.CHANGELOG_ACKNOWLEDGED: _simple(lambda e: msg.changelog_acknowledged(e["by"]), False),
    EventKind.FREEZE_STARTED: _simple(lambda e: msg.freeze_started(e["revision"]), True),
    EventKind.FREEZE_REVISION_ACCEPTED: _simple(
        lambda e: msg.freeze_revision_accepted(e.get("before"), e.get("after"), e["by"]), True
    ),
    EventKind.FREEZE_LIFTED: _simple(lambda e: msg.freeze_lifted(), False),
    EventKind.CONFIG_CHANGED: _config_changed,
    EventKind.BACKUP_WAIVED: _simple(
        lambda e: msg.backup_waived(e["by"], e.get("reason", "")), True
    ),
    EventKind.BACKUP_DONE: _simple(_backup_done, False),
    EventKind.GROUP_STARTED: _elsewhere,  # the group's progress message
    EventKind.SLOT_REPLACING: _elsewhere,
    EventKind.SLOT_REPLACED: _elsewhere,
    EventKind.SLOT_FAILED: _simple(
        lambda e: msg.slot_failed(e["group"], e.get("errors") or {}), True
    ),
    EventKind.SLOT_RESTORED: _elsewhere,
    EventKind.SMOKE_PASSED: _elsewhere,  # the group's progress message
    EventKind.SMOKE_FAILED: _simple(
        lambda e: msg.smoke_failed(e["group"], e.get("failures") or []), True
    ),
    EventKind.SMOKE_SKIPPED: _simple(
        lambda e: msg.smoke_skipped(e["group"], e.get("reason", "")), False
    ),
    EventKind.METRICS_SUMMARY: lambda c: metrics_summary(c.event, event_id=c.event_id),
    EventKind.CP_VERIFIED: _simple(
        lambda e: msg.cp_verified(e["group"], e["status"], e.get("view"), e.get("note")),
        False,
    ),
    EventKind.WATCH_FAILED: _simple(
        lambda e: msg.watch_failed(
            e["group"], e["done"], e["total"], (e.get("verdict") or {}).get("reasons") or []
        ),
        True,
    ),
    EventKind.GATE_OPENED: _elsewhere,  # gate_message, then gate_decided
    EventKind.GATE_REMINDER: _reminder,
    EventKind.GATE_EXPIRED: _elsewhere,
    EventKind.GATE_DECIDED: _elsewhere,
    EventKind.APPROVAL_RECORDED: _elsewhere,
    EventKind.INTENT_RECORDED: _simple(lambda e: msg.intent_recorded(e["action"], e["by"]), False),
    EventKind.PAUSED: lambda c: c.say(
        msg.paused(str(c.event["by"]), str(c.event.get("reason", "")), c.run_id, c.command)
    ),
    EventKind.RESUMED: _simple(lambda e: msg.resumed(e["by"]), True),
    EventKind.HELD: _held,
    EventKind.HOLD_ENDED: _elsewhere,  # the run message
    EventKind.EFFECT_FAILED: _elsewhere,  # a hold or a pause follows and says why
    EventKind.ROLLBACK_STARTED: _rollback_started,
    EventKind.ROLLBACK_FAILED: _rollback_failed,
    EventKind.OBSERVATION_STARTED: _simple(
        lambda e: msg.observation_started(_time(e.get("until"))), False
    ),
    EventKind.CHECKIN: _checkin,
    EventKind.OBSERVATION_ALERT: _observation_alert,
    EventKind.RUN_COMPLETED: _final,
    EventKind.RUN_ROLLED_BACK: _final,
    EventKind.RUN_FAILED: _final,
    EventKind.RUN_ABORTED: _final,
}
"""Every event kind's thread post, declared here (a test fails when a kind is missing)."""


def event_message(
    event: Mapping[str, Any],
    *,
    run: Run | None = None,
    event_id: str | None = None,
    approvers: Sequence[str] = (),
    escalation_mention: str | None = None,
    command: str = msg.DEFAULT_COMMAND,
) -> Message | None:
    """The thread post for one audit event, or None when the event gets no post of its own.

    None for: events that only change the run message or a group's progress message
    (group and slot progress, run_started, hold_ended, effect_failed, backoff holds), gate
    events (re-render the gate with ``gate_message`` / ``gate_decided``), ``refused``
    (refusals are ephemeral, for the person refused) and types this version does not know.

    ``run`` (the record as it is now) adds what the event lacks: the requester for the
    changelog button, every slot's state when a rollback starts, the target version in the final
    summary. ``approvers`` and ``escalation_mention`` are mentioned by reminders and by a failed
    rollback, which pages.
    """
    kind = kind_of(event)
    if kind is None:
        return None
    handler = EVENT_POSTS[kind]
    ctx = _Ctx(event, run, event_id, approvers, escalation_mention, command)
    return handler(ctx)


# --- the plan -------------------------------------------------------------------------------------


def plan_message(plan: Plan, *, command: str = msg.DEFAULT_COMMAND) -> Message:
    """What a run would do: blockers first, then each group in order, pre-checks, how to start."""
    hint = msg.see_cli_plan(plan.target_version)
    to_replace = sum(int(g.get("to_replace", 0)) for g in plan.groups)
    headline = msg.plan_headline(
        plan.target_version, len(plan.groups), to_replace, len(plan.blockers)
    )
    blocks: list[Block] = [_section(headline, hint)]
    if plan.blockers:
        blocks.append(_section(msg.plan_blockers(plan.blockers), hint))
    if plan.warnings:
        blocks.append(_section(msg.plan_warnings(plan.warnings), hint))
    lines = []
    for n, g in enumerate(plan.groups, 1):
        slots = list(g.get("slots") or [])
        versions = Counter(str(s.get("version") or "?") for s in slots)
        lines.append(
            msg.plan_group_line(
                n,
                str(g.get("name")),
                bool(g.get("production")),
                dict(versions),
                int(g.get("to_replace", 0)),
                len(slots),
                int(g.get("batch_size", 1)),
                sum(1 for s in slots if not s.get("ready")),
                str(g.get("readiness") or ""),
            )
        )
    blocks += _sections(lines, hint, MAX_BLOCKS - len(blocks) - 2)
    checks = [
        msg.plan_control_plane(plan.control_plane),
        msg.plan_changelog(plan.changelog),
        msg.plan_backup(plan.backup),
    ]
    blocks.append(_section("\n".join(checks), hint))
    start = msg.plan_start(plan.target_version, [str(g.get("name")) for g in plan.groups], command)
    blocks.append(_context(start, msg.plan_hash(plan.plan_hash), hint=hint))
    return _message(headline, blocks, None, hint)
