"""The vocabulary of domain events: every kind of entry in a run's audit stream, declared once.

Values are the ``type`` strings saved in Redis streams; they never change (saved streams must
keep rendering). The Slack rendering, the CLI transcript, the notifier and the listeners all
key on these members; a test fails when a kind has no renderer in either place.
"""

from __future__ import annotations

from enum import StrEnum


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
