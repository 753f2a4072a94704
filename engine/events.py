"""The vocabulary of domain events: every kind of entry in a run's audit stream, declared once.

Values are the ``type`` strings saved in Redis streams; they never change (saved streams must
keep rendering). Each kind's fields are declared below as a ``TypedDict`` and registered in
``EVENT_FIELDS``. The Slack rendering, the CLI transcript, the notifier and the listeners all
key on these members; a test fails when a kind has no renderer in either place.

Events travel as plain dicts (they are JSON in the audit stream), so the declarations describe
them rather than wrap them: ``Event`` is what every kind carries, the per-kind classes add the
rest. A field marked ``NotRequired`` is set by some of the places that emit the kind only.
"""

# No ``from __future__ import annotations`` here: TypedDict sees NotRequired only in
# evaluated annotations.
from enum import StrEnum
from typing import Any, NotRequired, TypedDict


class EventKind(StrEnum):
    RUN_STARTED = "run_started"
    OVERRIDE_GRANTED = "override_granted"
    WAIVER_GRANTED = "waiver_granted"
    REFUSED = "refused"
    LOCK_BROKEN = "lock_broken"
    INVENTORY = "inventory"
    WARNING = "warning"
    PRECHECK = "precheck"
    OVERRIDE_USED = "override_used"
    CHANGELOG = "changelog"
    CHANGELOG_ACKNOWLEDGED = "changelog_acknowledged"
    FREEZE_STARTED = "freeze_started"
    FREEZE_REVISION_ACCEPTED = "freeze_revision_accepted"
    FREEZE_LIFTED = "freeze_lifted"
    CONFIG_CHANGED = "config_changed"
    BACKUP_WAIVED = "backup_waived"
    BACKUP_DONE = "backup_done"
    GROUP_STARTED = "group_started"
    SLOT_REPLACING = "slot_replacing"
    SLOT_REPLACED = "slot_replaced"
    SLOT_FAILED = "slot_failed"
    SLOT_RESTORED = "slot_restored"
    SMOKE_PASSED = "smoke_passed"
    SMOKE_FAILED = "smoke_failed"
    SMOKE_SKIPPED = "smoke_skipped"
    METRICS_SUMMARY = "metrics_summary"
    CP_VERIFIED = "cp_verified"
    WATCH_FAILED = "watch_failed"
    OBSERVATION_ALERT = "observation_alert"
    GATE_OPENED = "gate_opened"
    GATE_REMINDER = "gate_reminder"
    GATE_EXPIRED = "gate_expired"
    GATE_DECIDED = "gate_decided"
    APPROVAL_RECORDED = "approval_recorded"
    INTENT_RECORDED = "intent_recorded"
    PAUSED = "paused"
    RESUMED = "resumed"
    HELD = "held"
    HOLD_ENDED = "hold_ended"
    EFFECT_FAILED = "effect_failed"
    ROLLBACK_STARTED = "rollback_started"
    ROLLBACK_FAILED = "rollback_failed"
    OBSERVATION_STARTED = "observation_started"
    CHECKIN = "checkin"
    RUN_COMPLETED = "run_completed"
    RUN_ROLLED_BACK = "run_rolled_back"
    RUN_FAILED = "run_failed"
    RUN_ABORTED = "run_aborted"


FINAL_KINDS = frozenset(
    {
        EventKind.RUN_COMPLETED,
        EventKind.RUN_ROLLED_BACK,
        EventKind.RUN_FAILED,
        EventKind.RUN_ABORTED,
    }
)
"""The last event of every run: ``run_<terminal state>``."""

Fleet = dict[str, list[str]]
"""Version → the slots that run it."""
SlotTable = list[dict[str, Any]]
"""One row per slot: group, slot, status, version, image, previous_image."""


class Event(TypedDict):
    """What every event carries."""

    type: str
    run_id: str
    at: float


# --- the start and the checks before any change -----------------------------------------------


class RunStarted(Event):
    by: str
    target_version: str
    groups: list[str]
    approval_mode: str
    plan_hash: str


class OverrideGranted(Event):
    override: str
    by: str


class WaiverGranted(Event):
    waiver: str
    reason: str
    by: str


class Refused(Event):
    action: str
    user: str
    reason: str


class LockBroken(Event):
    group: str
    user: str
    reason: str


class Inventory(Event):
    fleet: Fleet
    current_version: str | None


class Warning_(Event):
    text: str


class Precheck(Event):
    check: str
    status: str  # "ok" | "skipped"
    note: NotRequired[str | None]
    cp_version: NotRequired[str | None]


class OverrideUsed(Event):
    override: str
    by: str
    slots: NotRequired[list[str]]
    cp_version: NotRequired[str]
    instances: NotRequired[list[str]]  # "unhealthy" by the control plane's own status


class Changelog(Event):
    entries: list[dict[str, Any]]  # {"version", "text"}
    source: str | None


class ChangelogAcknowledged(Event):
    by: str


class FreezeStarted(Event):
    revision: int


class FreezeRevisionAccepted(Event):
    before: int | None
    after: int
    by: str


class FreezeLifted(Event):
    revision: int | None


class ConfigChanged(Event):
    before: int | None
    after: int


class BackupWaived(Event):
    reason: str
    by: str


class BackupDone(Event):
    artifact: str
    size: int | None
    sha256: str | None
    duration_s: NotRequired[float]
    kind: NotRequired[str]  # "command" | "http"


# --- a group's upgrade --------------------------------------------------------------------------


class CpVerified(Event):
    """The control plane's view of a group after its last replacement (``engine.cpview``)."""

    group: str
    status: str  # "ok" | "failed" | "skipped"
    view: NotRequired[dict[str, Any]]
    note: NotRequired[str]


class GroupStarted(Event):
    group: str
    image: str
    slots: list[str]


class SlotReplacing(Event):
    group: str
    slot: str
    image: str


class SlotReplaced(Event):
    group: str
    slot: str
    image: str
    version: str | None
    digest: str | None
    done: int
    total: int


class SlotFailed(Event):
    group: str
    errors: dict[str, str]  # slot → error


class SlotRestored(Event):
    group: str
    slot: str
    image: str
    version: str | None


class SmokePassed(Event):
    group: str
    requests: int | None


class SmokeFailed(Event):
    group: str
    failures: list[str]


class SmokeSkipped(Event):
    group: str
    reason: str


class MetricsSummary(Event):
    group: str
    before: dict[str, Any] | None  # Summary.to_dict()
    after: dict[str, Any] | None
    verdict: dict[str, Any]  # Verdict.to_dict()


class WatchFailed(Event):
    """The metrics since the group's first replacement failed before its next batch."""

    group: str
    done: int
    total: int
    before: dict[str, Any]  # Summary.to_dict()
    after: dict[str, Any]
    verdict: dict[str, Any]  # Verdict.to_dict()


# --- the approval gate --------------------------------------------------------------------------


class GateOpened(Event):
    group: str
    gate: str
    verdict: dict[str, Any]
    required: int
    expires_at: float
    production: bool
    recommend: str  # "approve" | "rollback"


class GateReminder(Event):
    group: str
    gate: str
    reminders: int
    escalate: bool
    escalation_mention: str | None


class GateExpired(Event):
    group: str
    gate: str


class GateDecided(Event):
    group: str
    gate: str
    decision: str  # "approved" | "rollback" | "paused" | "aborted"
    by: list[str]


class ApprovalRecorded(Event):
    group: str
    gate: str | None  # None: auto-approval
    user: str
    count: int
    required: int


# --- people and faults changing the course ------------------------------------------------------


class IntentRecorded(Event):
    action: str
    by: str
    note: str


class Paused(Event):
    by: str
    reason: str


class Resumed(Event):
    by: str


class Held(Event):
    reason: str
    until: float | None
    by: NotRequired[str]  # a person's hold
    attempt: NotRequired[int]  # the engine's backoff after a passing fault


class HoldEnded(Event):
    reason: str


class EffectFailed(Event):
    kind: str
    error: str
    attempts: int


class RollbackStarted(Event):
    reason: str
    by: str
    automatic: bool
    groups: list[str]


class RollbackFailed(Event):
    error: str
    fleet: Fleet
    slots: SlotTable
    page: bool


# --- the end ------------------------------------------------------------------------------------


class ObservationStarted(Event):
    until: float


class ObservationAlert(Event):
    """A group's metrics since its upgrade newly fail the verdict's rules at a check-in."""

    group: str
    before: dict[str, Any]  # Summary.to_dict()
    after: dict[str, Any]
    verdict: dict[str, Any]  # Verdict.to_dict()


class Checkin(Event):
    groups: dict[str, dict[str, Any]]  # group → {"ready", "slots", "versions", "since_upgrade"}
    final: bool


class RunFinished(Event):
    """``run_completed``, ``run_rolled_back``, ``run_failed``, ``run_aborted``."""

    reason: str
    fleet: Fleet
    slots: SlotTable


EVENT_FIELDS: dict[EventKind, type[Event]] = {
    EventKind.RUN_STARTED: RunStarted,
    EventKind.OVERRIDE_GRANTED: OverrideGranted,
    EventKind.WAIVER_GRANTED: WaiverGranted,
    EventKind.REFUSED: Refused,
    EventKind.LOCK_BROKEN: LockBroken,
    EventKind.INVENTORY: Inventory,
    EventKind.WARNING: Warning_,
    EventKind.PRECHECK: Precheck,
    EventKind.OVERRIDE_USED: OverrideUsed,
    EventKind.CHANGELOG: Changelog,
    EventKind.CHANGELOG_ACKNOWLEDGED: ChangelogAcknowledged,
    EventKind.FREEZE_STARTED: FreezeStarted,
    EventKind.FREEZE_REVISION_ACCEPTED: FreezeRevisionAccepted,
    EventKind.FREEZE_LIFTED: FreezeLifted,
    EventKind.CONFIG_CHANGED: ConfigChanged,
    EventKind.BACKUP_WAIVED: BackupWaived,
    EventKind.BACKUP_DONE: BackupDone,
    EventKind.GROUP_STARTED: GroupStarted,
    EventKind.SLOT_REPLACING: SlotReplacing,
    EventKind.SLOT_REPLACED: SlotReplaced,
    EventKind.SLOT_FAILED: SlotFailed,
    EventKind.SLOT_RESTORED: SlotRestored,
    EventKind.SMOKE_PASSED: SmokePassed,
    EventKind.SMOKE_FAILED: SmokeFailed,
    EventKind.SMOKE_SKIPPED: SmokeSkipped,
    EventKind.METRICS_SUMMARY: MetricsSummary,
    EventKind.CP_VERIFIED: CpVerified,
    EventKind.WATCH_FAILED: WatchFailed,
    EventKind.GATE_OPENED: GateOpened,
    EventKind.GATE_REMINDER: GateReminder,
    EventKind.GATE_EXPIRED: GateExpired,
    EventKind.GATE_DECIDED: GateDecided,
    EventKind.APPROVAL_RECORDED: ApprovalRecorded,
    EventKind.INTENT_RECORDED: IntentRecorded,
    EventKind.PAUSED: Paused,
    EventKind.RESUMED: Resumed,
    EventKind.HELD: Held,
    EventKind.HOLD_ENDED: HoldEnded,
    EventKind.EFFECT_FAILED: EffectFailed,
    EventKind.ROLLBACK_STARTED: RollbackStarted,
    EventKind.ROLLBACK_FAILED: RollbackFailed,
    EventKind.OBSERVATION_STARTED: ObservationStarted,
    EventKind.CHECKIN: Checkin,
    EventKind.OBSERVATION_ALERT: ObservationAlert,
    EventKind.RUN_COMPLETED: RunFinished,
    EventKind.RUN_ROLLED_BACK: RunFinished,
    EventKind.RUN_FAILED: RunFinished,
    EventKind.RUN_ABORTED: RunFinished,
}
"""Each kind's declared fields (``__required_keys__`` / ``__optional_keys__``)."""


def kind_of(event: Any) -> EventKind | None:
    """The kind of an event read from the stream; None for a type this version does not know
    (a stream written by a newer version: shown as nothing rather than misread)."""
    try:
        return EventKind(event.get("type"))
    except ValueError:
        return None


def undeclared_fields(event: Any) -> set[str]:
    """Keys of ``event`` its kind does not declare, plus declared required keys it lacks
    (prefixed ``missing:``). Empty for a well-formed event; for tests and for review."""
    kind = kind_of(event)
    if kind is None:
        return {f"unknown type: {event.get('type')}"}
    spec = EVENT_FIELDS[kind]
    keys = set(event)
    extra = keys - spec.__required_keys__ - spec.__optional_keys__
    missing = {f"missing:{k}" for k in spec.__required_keys__ - keys}
    return extra | missing
