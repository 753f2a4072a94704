"""The run record: frozen values, saved whole to Redis as JSON, changed only by ``decide``.

A run is a plan (ordered groups, a target image per group) plus where it stands: a step pointer,
per-slot facts (previous and current image, how often replaced and restored), the open gate,
the hold, the pending effect. Deadlines (window ends, gate expiry, reminders, holds) are fields
here, never only in a scheduler, so a restarted bot rebuilds everything from the record.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field, replace
from enum import Enum, StrEnum
from typing import Any, TypeVar, Union, get_args, get_origin

SCHEMA_VERSION = 4
"""2: ``cp`` split into ``cp_version``, ``seen_revision`` and ``intent``; 3: groups watch their
metrics while replaced and keep them as points; 4: a group records the control plane's view of
its instances (``GroupRun.control_plane``); see ``schema.py``."""


# --- the vocabulary; values are what records saved in Redis hold, so they never change ---------


class RunState(StrEnum):
    """Where a run stands. "waiting": a human must act (gate, changelog); "paused": stopped by a
    person or a rule until resumed; "held": stopped until a time."""

    RUNNING = "running"
    WAITING = "waiting"
    PAUSED = "paused"
    HELD = "held"
    ROLLING_BACK = "rolling_back"
    COMPLETED = "completed"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"
    ABORTED = "aborted"


class RunStep(StrEnum):
    """The run's steps, in order; ``GROUP`` repeats its phases per group."""

    INVENTORY = "inventory"
    CP_CHECK = "cp_check"
    CHANGELOG = "changelog"
    FREEZE = "freeze"
    BACKUP = "backup"
    GROUP = "group"
    OBSERVE = "observe"


class GroupPhase(StrEnum):
    """Where the current group stands, in order (meaningful only in step ``GROUP``)."""

    BASELINE_START = "baseline_start"
    BASELINE_END = "baseline_end"
    REPLACE = "replace"
    CP_VERIFY = "cp_verify"
    SMOKE = "smoke"
    SETTLE_START = "settle_start"
    SETTLE_END = "settle_end"
    FREEZE_CHECK = "freeze_check"
    GATE = "gate"


class GroupStatus(StrEnum):
    PENDING = "pending"
    UPGRADING = "upgrading"
    VERIFYING = "verifying"
    AWAITING_APPROVAL = "awaiting_approval"
    APPROVED = "approved"
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"


class SlotStatus(StrEnum):
    PENDING = "pending"
    REPLACING = "replacing"
    DONE = "done"
    FAILED = "failed"
    RESTORING = "restoring"
    RESTORED = "restored"


class GateDecision(StrEnum):
    APPROVED = "approved"
    ROLLBACK = "rollback"
    PAUSED = "paused"
    EXPIRED = "expired"
    ABORTED = "aborted"


class ApprovalMode(StrEnum):
    HUMAN = "human"
    AUTO = "auto"  # headless runs: a passing verdict approves itself


class Action(StrEnum):
    """What a person (or the automatic approver) asks of a run."""

    APPROVE = "approve"
    PAUSE = "pause"
    HOLD = "hold"
    RESUME = "resume"
    ABORT = "abort"
    ROLLBACK = "rollback"
    ACKNOWLEDGE = "acknowledge"


class EffectKind(StrEnum):
    """What ``decide`` asks the runner to bring about (the performer has one method per kind)."""

    LIST_SLOTS = "list_slots"
    CHECK_CONTROL_PLANE = "check_control_plane"
    LOAD_CHANGELOG = "load_changelog"
    READ_CONFIG_REVISION = "read_config_revision"
    RUN_BACKUP = "run_backup"
    MEASURE = "scrape"
    """A metrics window: its start (``mark``) or, with a ``mark`` in the args, its summary.
    Saved as "scrape", the name from when raw snapshots were the only source."""
    ENSURE_SLOTS = "ensure_slots"
    SMOKE = "smoke"
    CHECKIN = "checkin"
    VERIFY_CONTROL_PLANE = "verify_control_plane"
    """After a group's last replacement: wait until the CP lists its instances Healthy."""


RUNNING, WAITING, PAUSED, HELD, ROLLING_BACK = (
    RunState.RUNNING,
    RunState.WAITING,
    RunState.PAUSED,
    RunState.HELD,
    RunState.ROLLING_BACK,
)
COMPLETED, ROLLED_BACK, FAILED, ABORTED = (
    RunState.COMPLETED,
    RunState.ROLLED_BACK,
    RunState.FAILED,
    RunState.ABORTED,
)
TERMINAL = frozenset({COMPLETED, ROLLED_BACK, FAILED, ABORTED})

T = TypeVar("T")


class UnknownField(ValueError):
    """A record holds a key or a value this code does not know (never half-read it)."""


class Record:
    """Mixin: frozen dataclass ↔ JSON-ready dict."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload,no-any-return]

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        return _build(cls, data)  # type: ignore[no-any-return]

    def with_(self: T, **changes: Any) -> T:
        return replace(self, **changes)  # type: ignore[type-var]


def _build(tp: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        return _build(args[0], value) if len(args) == 1 else value
    if origin is tuple:
        args = get_args(tp)
        inner = args[0] if args else Any
        return tuple(_build(inner, v) for v in value)
    if origin is dict:
        _, vt = get_args(tp)
        return {k: _build(vt, v) for k, v in value.items()}
    if isinstance(tp, type) and issubclass(tp, Enum):
        try:
            return tp(value)
        except ValueError:
            raise UnknownField(f"unknown {tp.__name__} '{value}'") from None
    if dataclasses.is_dataclass(tp) and isinstance(value, dict):
        hints = typing.get_type_hints(tp)
        names = {f.name for f in dataclasses.fields(tp)}
        unknown = sorted(set(value) - names)
        if unknown:
            raise UnknownField(f"unknown {tp.__name__} field(s) {', '.join(unknown)}")
        return tp(**{k: _build(hints[k], v) for k, v in value.items()})
    return value


@dataclass(frozen=True)
class SlotRun(Record):
    id: str
    previous_image: str | None = None
    previous_digest: str | None = None
    previous_version: str | None = None
    current_image: str | None = None
    current_digest: str | None = None
    current_version: str | None = None
    status: SlotStatus = SlotStatus.PENDING
    replacements: int = 0
    restorations: int = 0
    endpoints: dict[str, str] = field(default_factory=dict)

    @property
    def touched(self) -> bool:
        return self.current_image is not None and self.current_image != self.previous_image


@dataclass(frozen=True)
class Approval(Record):
    user: str
    at: float


@dataclass(frozen=True)
class Gate(Record):
    id: str
    group: str
    opened_at: float
    expires_at: float
    next_reminder_at: float
    required: int
    verdict: str
    reminders: int = 0
    approvals: tuple[Approval, ...] = ()
    decision: GateDecision | None = None
    decided_by: tuple[str, ...] = ()
    decided_at: float | None = None


@dataclass(frozen=True)
class Hold(Record):
    reason: str
    until: float
    by: str = "engine"


@dataclass(frozen=True)
class Rollback(Record):
    reason: str
    by: str
    automatic: bool
    started_at: float


@dataclass(frozen=True)
class GroupRun(Record):
    name: str
    target_image: str
    production: bool = False
    batch_size: int = 1
    status: GroupStatus = GroupStatus.PENDING
    slots: tuple[SlotRun, ...] = ()
    # Where the before / after windows started: the metrics source's mark (JSON, opaque to the
    # engine except its "taken_at"; for scraping, the snapshot of every instance's counters).
    baseline_snapshot: dict[str, Any] | None = None
    settle_snapshot: dict[str, Any] | None = None
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    verdict: dict[str, Any] | None = None
    smoke: dict[str, Any] | None = None
    window_until: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    replaced_at: tuple[float, ...] = ()
    watch_snapshot: dict[str, Any] | None = None
    """Where the next watch window starts: the source's mark taken as the baseline (or the
    previous watch) ended."""
    watched: int = 0
    """How many slots were done when the metrics were last watched (one watch per batch)."""
    watch: dict[str, Any] | None = None
    """The last watch: ``{"after": Summary dict, "verdict": Verdict dict, "done": n}``."""
    observed: dict[str, Any] | None = None
    """The verdict on the group's metrics since its upgrade at the last observation check-in."""
    points: tuple[dict[str, Any], ...] = ()
    """The group's metrics over time, for charts and history: each measured window as
    ``{"kind": "baseline" | "watch" | "settle" | "source", "start", "end", "summary"}``
    ("source": a point of the metrics source's own series, where it keeps one)."""
    control_plane: dict[str, Any] | None = None
    """The CP's view of the group's instances after its last replacement (``cpview``)."""

    def slot(self, slot_id: str) -> SlotRun:
        for s in self.slots:
            if s.id == slot_id:
                return s
        raise KeyError(slot_id)

    def with_slot(self, slot: SlotRun) -> GroupRun:
        return self.with_(slots=tuple(slot if s.id == slot.id else s for s in self.slots))

    @property
    def touched(self) -> bool:
        return any(s.touched for s in self.slots)


@dataclass(frozen=True)
class Pending(Record):
    """The effect the driver is performing; saved before it acts (save, act, save outcome)."""

    key: str
    kind: EffectKind
    attempt: int = 1
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Intent(Record):
    """A course change asked for while an effect was under way; applied once it has settled."""

    action: Action  # pause | hold | rollback | abort
    user: str
    reason: str | None = None
    until: float | None = None


@dataclass(frozen=True)
class Run(Record):
    id: str
    target_version: str
    requester: str
    created_at: float
    groups: tuple[GroupRun, ...]
    plan_hash: str
    approval_mode: ApprovalMode = ApprovalMode.HUMAN
    schema: int = SCHEMA_VERSION
    state: RunState = RunState.RUNNING
    step: RunStep = RunStep.INVENTORY
    group_index: int = 0
    phase: GroupPhase = GroupPhase.BASELINE_START
    reason: str | None = None
    pending: Pending | None = None
    gate: Gate | None = None
    gate_seq: int = 0
    hold: Hold | None = None
    paused_from: RunState | None = None
    rollback: Rollback | None = None
    overrides: tuple[str, ...] = ()
    waiver: str | None = None
    changelog_ack: str | None = None
    changelog: tuple[dict[str, str], ...] = ()
    current_version: str | None = None
    cp_version: str | None = None
    """The control plane's version, read by the pre-check (None: not read, or no CP)."""
    seen_revision: int | None = None
    """A configuration revision seen during the freeze and not yet accepted by a resume."""
    intent: Intent | None = None
    backup: dict[str, Any] | None = None
    config_revision: int | None = None
    observe_until: float | None = None
    next_checkin_at: float | None = None
    channel: str | None = None
    thread_ts: str | None = None
    updated_at: float = 0.0
    finished_at: float | None = None

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    @property
    def current_group(self) -> GroupRun | None:
        if self.step == RunStep.GROUP and self.group_index < len(self.groups):
            return self.groups[self.group_index]
        return None

    def group(self, name: str) -> GroupRun:
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(name)

    def with_group(self, group: GroupRun) -> Run:
        return self.with_(groups=tuple(group if g.name == group.name else g for g in self.groups))

    def slots(self) -> list[tuple[str, SlotRun]]:
        return [(g.name, s) for g in self.groups for s in g.slots]

    def slot_table(self) -> list[dict[str, Any]]:
        """Every slot's state as a table (group, slot, status, version, image, previous)."""
        return [
            {
                "group": gname,
                "slot": s.id,
                "status": s.status,
                "version": s.current_version,
                "image": s.current_image,
                "previous_image": s.previous_image,
            }
            for gname, s in self.slots()
        ]

    def mixed_fleet(self) -> dict[str, list[str]]:
        """Version → slots, as the record knows them."""
        out: dict[str, list[str]] = {}
        for _, s in self.slots():
            version = s.current_version or s.previous_version or "unknown"
            out.setdefault(version, []).append(s.id)
        return out
