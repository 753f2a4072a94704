"""``decide``: every transition of a run, played as the runner plays it against a scripted fleet.

Each test reads as a scenario: a run is driven (tick, perform the effect, feed the outcome back)
until something a person would notice happens, then the test checks what they would see: the
run's state and reason, the audit events, the slots' versions and counters.
"""

from __future__ import annotations

from typing import Any

import pytest

from upgrade_bot.engine.decide import MAX_ATTEMPTS, Failure, Outcome, decide
from upgrade_bot.engine.model import (
    ABORTED,
    COMPLETED,
    FAILED,
    HELD,
    PAUSED,
    ROLLED_BACK,
    ROLLING_BACK,
    RUNNING,
    WAITING,
    Pending,
)

from .runs import (
    BACKUP_HOOK,
    ESCALATION,
    NEW,
    OLD,
    REQUESTER,
    T0,
    WAIVER,
    Fleet,
    Sim,
    Traffic,
    image,
    make_config,
)

STAGING = ["staging-0", "staging-1", "staging-2"]
PROD = [f"prod-eu-{i}" for i in range(6)]


def kind(k: str, key: str | None = None) -> Any:
    """``before=`` predicate: the effect of this kind (and key) is about to be performed."""
    return lambda e: e.kind == k and (key is None or e.key == key)


def phase(p: str) -> Any:
    return lambda sim: sim.run.phase == p


def in_order(seen: list[str], expected: list[str]) -> bool:
    """``expected`` appears in ``seen`` in this order (other items may come in between)."""
    it = iter(seen)
    return all(x in it for x in expected)


def at_gate(group: str = "staging", **sim: Any) -> Sim:
    s = Sim(**sim)
    s.drive_to_gate("staging")
    if group == "prod-eu":
        s.approve("UALICE")
        s.drive_to_gate("prod-eu")
    return s


def fault(error: str, *, temporary: bool = False, delay_s: float = 2.0) -> dict[str, Any]:
    return {"error": error, "temporary": temporary, "delay_s": delay_s}


# --- the whole way ------------------------------------------------------------------------------


def test_a_run_goes_through_every_step_and_completes_with_the_freeze_lifted() -> None:
    sim = Sim(start={"changelog_ack": None})

    sim.drive()
    assert sim.run.state == WAITING and sim.run.step == "changelog"
    sim.cmd("acknowledge", REQUESTER)
    sim.drive_to_gate("staging")
    sim.approve("UALICE")
    sim.drive_to_gate("prod-eu")
    sim.approve("UALICE", "UBOB")
    sim.drive()

    assert sim.run.state == COMPLETED
    assert sim.run.reason == "every group upgraded and observed"
    # baseline, then batches with the metrics watched between them, smoke, settle
    group = [
        "scrape",
        "scrape",
        "ensure_slots",
        "scrape",
        "ensure_slots",
        "smoke",
        "scrape",
        "scrape",
    ]
    assert (
        sim.kinds()
        == [
            "list_slots",
            "check_control_plane",
            "load_changelog",
            "read_config_revision",  # the freeze starts
            *group,
            "read_config_revision",  # staging: freeze check before its gate
            *group[:4],
            "ensure_slots",  # prod-eu: 6 slots in batches of 2
            "scrape",
            *group[4:],
            "read_config_revision",
            "checkin",
            "checkin",
            "checkin",
            "checkin",
        ]
    )
    assert in_order(
        sim.types(),
        [
            "run_started",
            "inventory",
            "precheck",
            "changelog",
            "changelog_acknowledged",
            "freeze_started",
            "backup_waived",
            "group_started",
            "slot_replaced",
            "smoke_passed",
            "metrics_summary",
            "gate_opened",
            "gate_decided",
            "group_started",
            "gate_opened",
            "gate_decided",
            "observation_started",
            "checkin",
            "run_completed",
            "freeze_lifted",
        ],
    )
    assert sim.fleet.versions() == {NEW: 9}
    assert sim.run.mixed_fleet() == {NEW: STAGING + PROD}
    assert [g.status for g in sim.run.groups] == ["approved", "approved"]
    assert all(s.replacements == 1 and s.status == "done" for _, s in sim.run.slots())
    assert sim.of("freeze_lifted")[0]["revision"] == 7
    assert sim.run.finished_at == sim.now
    assert sim.tick().effects == ()  # a finished run does nothing more


def test_a_new_run_records_who_started_it_its_overrides_and_its_waiver() -> None:
    sim = Sim(start={"overrides": ("cp-version", "unhealthy")})

    assert sim.run.state == RUNNING and sim.run.step == "inventory"
    started = sim.of("run_started")[0]
    assert started["by"] == REQUESTER and started["target_version"] == NEW
    assert started["groups"] == ["staging", "prod-eu"]
    assert started["plan_hash"] == sim.run.plan_hash
    assert [e["override"] for e in sim.of("override_granted")] == ["cp-version", "unhealthy"]
    assert sim.of("waiver_granted")[0]["reason"] == WAIVER

    d = sim.tick()
    assert [(e.kind, e.key) for e in d.effects] == [("list_slots", "inventory")]
    assert d.effects[0].args == {"groups": ["staging", "prod-eu"]}
    assert sim.run.pending == d.effects[0]  # saved before it is performed


# --- inventory -------------------------------------------------------------------------------


def test_inventory_records_every_slot_and_takes_the_oldest_version_as_current() -> None:
    fleet = Fleet()
    fleet.instance("prod-eu-4").image = image("3.7.2")
    sim = Sim(fleet=fleet)

    effect = sim.drive(before=kind("load_changelog"))

    assert effect is not None and effect.args == {"current": "3.7.2", "target": NEW}
    assert sim.run.current_version == "3.7.2"
    inventory = sim.of("inventory")[0]
    assert inventory["current_version"] == "3.7.2"
    assert inventory["fleet"] == {OLD: STAGING + PROD[:4] + PROD[5:], "3.7.2": ["prod-eu-4"]}
    s = sim.slot("staging-1")
    assert (s.previous_image, s.current_image, s.status) == (image(OLD), image(OLD), "pending")
    assert s.endpoints["proxy"] == "http://staging-1:9080"


def test_skipping_minor_versions_and_backend_warnings_are_reported() -> None:
    fleet = Fleet(version="3.6.0")
    fleet.warnings = ["staging: no readiness probe configured"]
    sim = Sim(fleet=fleet)

    sim.drive(before=kind("check_control_plane"))

    assert [e["text"] for e in sim.of("warning")] == [
        "staging: no readiness probe configured",
        "3.6.0 → 3.8.1 skips minor versions (tested paths are patch→patch and adjacent minors)",
    ]
    assert sim.run.state == RUNNING  # a warning, not a blocker


def test_unready_instances_fail_the_run_before_anything_is_touched() -> None:
    fleet = Fleet()
    fleet.instance("staging-1").ready = False
    sim = Sim(fleet=fleet)

    sim.drive()

    assert sim.run.state == FAILED
    assert sim.run.reason == (
        "instances not ready before the upgrade: staging-1 "
        "(fix them, or start with the 'unhealthy' override)"
    )
    assert sim.kinds() == ["list_slots"]
    assert sim.of("run_failed")[0]["reason"] == sim.run.reason


def test_unready_instances_are_accepted_with_the_unhealthy_override() -> None:
    fleet = Fleet()
    fleet.instance("staging-1").ready = False
    sim = Sim(fleet=fleet, start={"overrides": ("unhealthy",)})

    sim.drive(before=kind("check_control_plane"))

    used = sim.of("override_used")
    assert [(u["override"], u["by"], u["slots"]) for u in used] == [
        ("unhealthy", REQUESTER, ["staging-1"])
    ]
    assert sim.run.state == RUNNING and sim.run.step == "cp_check"


def test_a_group_without_instances_fails_the_run() -> None:
    sim = Sim(fleet=Fleet({"staging": 3, "prod-eu": 0}))

    sim.drive()

    assert sim.run.state == FAILED
    assert sim.run.reason == "group prod-eu has no instances"


def test_a_slot_already_on_the_target_is_left_alone_and_not_smoke_tested() -> None:
    fleet = Fleet()
    fleet.instance("staging-2").image = image(NEW)
    sim = Sim(fleet=fleet)

    smoke = sim.drive(before=kind("smoke"))

    assert smoke is not None
    assert smoke.args["endpoints"] == {
        "staging-0": "http://staging-0:9080",
        "staging-1": "http://staging-1:9080",
    }
    replaced = [p.args["slots"] for p in sim.performed if p.kind == "ensure_slots"]
    assert replaced == [["staging-0", "staging-1"]]
    assert sim.slot("staging-2").replacements == 0 and sim.slot("staging-2").status == "done"


def test_a_group_already_on_the_target_skips_its_smoke_test() -> None:
    fleet = Fleet()
    for i in fleet.groups["staging"]:
        i.image = image(NEW)
    sim = Sim(fleet=fleet)

    sim.drive_to_gate("staging")

    assert "ensure_slots" not in sim.kinds() and "smoke" not in sim.kinds()
    assert sim.of("smoke_skipped")[0]["reason"] == "no slot was replaced"


# --- control plane pre-check ------------------------------------------------------------------


def test_a_control_plane_older_than_the_target_fails_the_run() -> None:
    sim = Sim()
    sim.fleet.cp_version = OLD

    sim.drive()

    assert sim.run.state == FAILED
    assert sim.run.reason == (
        "control plane runs 3.8.0, older than the target 3.8.1: upgrade the CP first "
        "(runbook: preparation) or start with the 'cp-version' override"
    )
    assert sim.kinds() == ["list_slots", "check_control_plane"]


def test_the_cp_version_override_lets_an_older_control_plane_through() -> None:
    sim = Sim(start={"overrides": ("cp-version",)})
    sim.fleet.cp_version = OLD

    sim.drive(before=kind("load_changelog"))

    used = sim.of("override_used")
    assert [(u["override"], u["by"], u["cp_version"]) for u in used] == [
        ("cp-version", REQUESTER, OLD)
    ]
    assert sim.run.cp_version == OLD
    assert sim.run.state == RUNNING


def test_a_current_control_plane_passes_the_precheck() -> None:
    sim = Sim()
    sim.fleet.cp_version = "3.9.0"

    sim.drive(before=kind("load_changelog"))

    assert [(e["check"], e["status"]) for e in sim.of("precheck")] == [("control_plane", "ok")]
    assert sim.of("precheck")[0]["cp_version"] == "3.9.0"


def test_without_a_control_plane_the_precheck_is_skipped_with_a_note() -> None:
    sim = Sim()
    sim.fleet.cp_version = None

    sim.drive(before=kind("load_changelog"))

    (precheck,) = sim.of("precheck")
    assert precheck["status"] == "skipped"
    assert precheck["note"] == "no control plane configured: the CP pre-checks are skipped"
    assert sim.run.cp_version is None


# --- changelog ---------------------------------------------------------------------------------


def test_changelog_entries_wait_for_the_requester_to_acknowledge_them() -> None:
    sim = Sim(start={"changelog_ack": None})

    sim.drive()

    assert sim.run.state == WAITING
    assert sim.run.reason == "waiting for the requester to acknowledge the changelog"
    assert sim.of("changelog")[0]["entries"] == [
        {"version": NEW, "text": "- fix: upstream keepalive pool leak"}
    ]
    sim.now += 86_400
    d = sim.tick()
    assert (d.effects, d.events, d.wake_at) == ((), (), None)  # no deadline on this wait
    assert sim.run.state == WAITING


def test_only_the_requester_acknowledges_the_changelog() -> None:
    sim = Sim(start={"changelog_ack": None})
    sim.drive()

    refused = sim.cmd("acknowledge", "UALICE")
    assert refused.refusal == "only the requester acknowledges the changelog"
    assert sim.run.state == WAITING
    assert sim.of("refused")[-1]["user"] == "UALICE"

    d = sim.cmd("acknowledge", REQUESTER)
    assert d.refusal is None
    assert sim.run.state == RUNNING and sim.run.reason is None
    assert [(e.kind, e.key) for e in d.effects] == [("read_config_revision", "freeze")]
    assert sim.of("changelog_acknowledged")[0]["by"] == REQUESTER

    again = sim.cmd("acknowledge", REQUESTER)
    assert again.refusal == "the changelog was already acknowledged by UREQ"


def test_acknowledging_the_changelog_at_start_skips_the_wait() -> None:
    sim = Sim(start={"changelog_ack": REQUESTER})

    sim.drive(before=kind("read_config_revision"))

    assert sim.run.state == RUNNING
    assert sim.types()[-2:] == ["changelog", "changelog_acknowledged"]


def test_an_empty_changelog_or_none_at_all_does_not_wait() -> None:
    empty = Sim(start={"changelog_ack": None})
    empty.fleet.changelog = []
    empty.drive(before=kind("read_config_revision"))
    assert empty.run.state == RUNNING and empty.of("changelog")[0]["entries"] == []

    absent = Sim(start={"changelog_ack": None})
    absent.fleet.changelog = None
    absent.drive(before=kind("read_config_revision"))
    assert absent.run.state == RUNNING
    (precheck,) = [e for e in absent.of("precheck") if e["check"] == "changelog"]
    assert (precheck["status"], precheck["note"]) == ("skipped", "no changelog configured")


# --- freeze and backup -------------------------------------------------------------------------


def test_the_freeze_starts_at_the_current_config_revision() -> None:
    sim = Sim()
    sim.fleet.revision = 42

    sim.drive(before=kind("scrape"))

    assert sim.run.config_revision == 42
    assert sim.of("freeze_started")[0]["revision"] == 42


def test_without_a_backup_hook_or_waiver_the_run_fails_with_a_clear_reason() -> None:
    sim = Sim(start={"waiver": None})

    sim.drive()

    assert sim.run.state == FAILED
    assert sim.run.reason == (
        "no backup hook is configured; start again with a waiver and a reason"
    )
    assert "ensure_slots" not in sim.kinds() and "run_backup" not in sim.kinds()


def test_a_backup_waiver_is_recorded_and_the_run_goes_on() -> None:
    sim = Sim()

    sim.drive(before=kind("scrape"))

    (waived,) = sim.of("backup_waived")
    assert (waived["reason"], waived["by"]) == (WAIVER, REQUESTER)
    assert sim.run.step == "group" and "run_backup" not in sim.kinds()


def test_a_configured_backup_hook_runs_before_any_group() -> None:
    sim = Sim(config=make_config(BACKUP_HOOK), start={"waiver": None})

    sim.drive(before=kind("scrape"))

    assert sim.kinds()[-1] == "run_backup"
    assert sim.run.backup == {"artifact": "/b/run-1", "bytes": 4096}
    assert sim.of("backup_done")[0]["artifact"] == "/b/run-1"
    assert not sim.of("backup_waived")


# --- a group: baseline, replace, smoke, settle, verdict ------------------------------------------


def test_nothing_is_replaced_before_the_baseline_window_ends() -> None:
    sim = Sim()
    sim.drive(until=phase("baseline_end"))
    g = sim.run.group("staging")
    assert g.status == "upgrading" and g.window_until == sim.now + 30
    assert sim.of("group_started")[0]["slots"] == STAGING

    sim.now = g.window_until - 0.1
    early = sim.tick()
    assert early.effects == () and early.wake_at == g.window_until
    assert sim.run.phase == "baseline_end" and sim.run.pending is None

    sim.now = g.window_until
    on_time = sim.tick()
    assert [(e.kind, e.key) for e in on_time.effects] == [("scrape", "staging:baseline_end")]


def test_slots_are_replaced_in_batches_each_marked_replacing_before_its_effect() -> None:
    sim = Sim()

    first = sim.drive(before=kind("ensure_slots"))
    assert first is not None
    assert first.args["slots"] == ["staging-0", "staging-1"]
    assert first.args["image"] == image(NEW) and first.args["ready_timeout_s"] == 120
    # the record saved before acting already says which slots are being replaced
    assert [s.status for s in sim.run.group("staging").slots] == [
        "replacing",
        "replacing",
        "pending",
    ]
    assert sim.run.pending == first

    sim.perform(first)
    second = sim.drive(before=kind("ensure_slots"))
    assert second is not None and second.args["slots"] == ["staging-2"]
    sim.perform(second)

    assert [(e["slot"], e["done"], e["total"]) for e in sim.of("slot_replaced")] == [
        ("staging-0", 1, 3),
        ("staging-1", 2, 3),
        ("staging-2", 3, 3),
    ]
    assert [e["slot"] for e in sim.of("slot_replacing")] == STAGING
    assert all(sim.slot(s).current_version == NEW for s in STAGING)
    assert len(sim.run.group("staging").replaced_at) == 3


def test_an_outcome_delivered_twice_is_counted_once() -> None:
    sim = Sim()
    effect = sim.drive(before=kind("ensure_slots"))
    assert effect is not None
    outcome = sim.result_of(effect)

    sim.apply(outcome)
    counted = sim.run
    again = sim.apply(outcome)

    assert again.run == counted and again.events == () and again.effects == ()
    assert [sim.slot(s).replacements for s in STAGING] == [1, 1, 0]
    assert len(sim.of("slot_replaced")) == 2


def test_an_effect_under_way_when_the_driver_restarts_is_performed_again() -> None:
    sim = Sim()
    effect = sim.drive(before=kind("ensure_slots"))

    restarted = sim.tick()  # the driver died after saving; a new one ticks

    assert restarted.effects == (effect,)
    assert restarted.events == ()


def test_a_failed_smoke_test_rolls_the_group_back() -> None:
    sim = Sim()
    sim.fleet.smoke_failures = ["staging-0: GET / → 502", "staging-1: timeout"]

    sim.drive()

    assert sim.run.state == ROLLED_BACK
    assert sim.run.reason == (
        "smoke requests failed on staging: staging-0: GET / → 502; staging-1: timeout"
    )
    assert sim.of("smoke_failed")[0]["failures"] == sim.fleet.smoke_failures
    started = sim.of("rollback_started")[0]
    assert (started["by"], started["automatic"], started["groups"]) == ("engine", True, ["staging"])
    assert sim.fleet.versions() == {OLD: 9}


def test_the_settle_window_is_waited_out_before_the_verdict() -> None:
    sim = Sim()
    sim.drive(until=phase("settle_end"))
    g = sim.run.group("staging")
    assert g.status == "verifying" and g.window_until == sim.now + 60

    early = sim.tick()
    assert early.effects == () and early.wake_at == g.window_until

    sim.drive(before=kind("read_config_revision"))
    assert sim.now == g.window_until
    assert sim.run.phase == "freeze_check"
    summary = sim.of("metrics_summary")[0]
    assert summary["before"]["requests"] == 900  # 3 instances x 10/s x 30 s
    assert summary["after"]["requests"] == 1800  # 3 instances x 10/s x 60 s
    assert summary["verdict"]["phase"] == "pass"


@pytest.mark.parametrize(
    ("new_traffic", "verdict", "recommend", "reason"),
    [
        (Traffic(), "pass", "approve", "5xx ratio 0.0% after vs 0.0% before (limit 1.0%)"),
        (
            Traffic(ratio_5xx=0.2),
            "fail",
            "rollback",
            "5xx ratio 20.0% after vs 0.0% before (limit 1.0%)",
        ),
        (
            Traffic(rps=0.5),
            "inconclusive",
            "approve",
            "only 90 requests after (need 200)",
        ),
    ],
)
def test_the_gate_shows_the_verdict_from_the_metrics(
    new_traffic: Traffic, verdict: str, recommend: str, reason: str
) -> None:
    sim = Sim()
    sim.fleet.traffic[NEW] = new_traffic

    sim.drive_to_gate("staging")

    (opened,) = sim.of("gate_opened")
    assert opened["verdict"]["phase"] == verdict
    assert opened["verdict"]["reasons"][0] == reason
    assert opened["recommend"] == recommend
    assert sim.run.gate is not None and sim.run.gate.verdict == verdict
    assert sim.run.group("staging").status == "awaiting_approval"


def test_a_gate_opens_after_each_group_and_waits_for_approval() -> None:
    sim = at_gate()

    gate = sim.run.gate
    assert gate is not None
    assert gate.id == "run-1:staging:1"
    assert sim.run.reason == "waiting for approval of staging"
    (opened,) = sim.of("gate_opened")
    assert opened["required"] == 1 and opened["production"] is False
    assert opened["expires_at"] == sim.now + 3600
    assert sim.decisions[-1][3].wake_at == sim.now + 900  # the first reminder
    assert "group_started" not in sim.types()[sim.types().index("gate_opened") :]


def test_an_approved_group_hands_over_to_the_next_group() -> None:
    sim = at_gate()

    d = sim.approve("UALICE")

    decided = sim.of("gate_decided")[0]
    assert (decided["decision"], decided["by"], decided["gate"]) == (
        "approved",
        ["UALICE"],
        "run-1:staging:1",
    )
    assert sim.run.group("staging").status == "approved"
    assert sim.run.state == RUNNING and sim.run.group_index == 1
    assert sim.run.current_group is not None and sim.run.current_group.name == "prod-eu"
    assert [(e.kind, e.key) for e in d.effects] == [("scrape", "prod-eu:baseline_start")]
    assert sim.of("group_started")[-1]["group"] == "prod-eu"


def test_after_the_last_group_the_fleet_is_observed_with_check_ins() -> None:
    sim = at_gate("prod-eu")
    sim.approve("UALICE", "UBOB")
    t = sim.now

    sim.drive()

    assert sim.of("observation_started")[0]["until"] == t + 300
    checkins = [p for p in sim.performed if p.kind == "checkin"]
    assert [(p.args["final"]) for p in checkins] == [False, False, False, True]
    assert [p.key for p in checkins[:3]] == [
        f"observe:{t}:False",
        f"observe:{t + 120}:False",
        f"observe:{t + 240}:False",
    ]
    assert sim.now == t + 300  # the final check-in comes when the window ends
    assert [e["final"] for e in sim.of("checkin")] == [False, False, False, True]
    assert sim.run.state == COMPLETED
    assert sim.types()[-2:] == ["run_completed", "freeze_lifted"]


def test_between_check_ins_the_run_sleeps_until_the_next_one() -> None:
    sim = at_gate("prod-eu")
    sim.approve("UALICE", "UBOB")
    t = sim.now
    sim.drive(until=lambda s: len(s.of("checkin")) == 1)

    d = sim.tick()

    assert d.effects == () and d.wake_at == t + 120


# --- gates ---------------------------------------------------------------------------------------


def test_a_member_of_an_allowed_user_group_may_approve() -> None:
    sim = at_gate()

    d = sim.cmd("approve", "UDAVE", user_groups=("SONCALL",))

    assert d.refusal is None
    assert sim.run.group("staging").status == "approved"


@pytest.mark.parametrize(
    ("user", "gate_id", "refusal"),
    [
        ("UMALLORY", None, "UMALLORY may not approve on staging (not in its policy)"),
        (REQUESTER, None, "UREQ started this run and may not approve it"),
        ("UALICE", "run-1:staging:0", "this approval request is no longer pending"),
    ],
)
def test_an_approval_is_refused_for_a_reason_the_user_is_told(
    user: str, gate_id: str | None, refusal: str
) -> None:
    sim = at_gate()
    waiting = sim.run

    d = sim.cmd("approve", user, gate_id=gate_id)

    assert d.refusal == refusal
    assert d.effects == ()
    assert d.run == waiting  # nothing changed but the audit
    assert [(e["type"], e["user"], e["reason"]) for e in d.events] == [("refused", user, refusal)]


def test_the_requester_may_approve_when_self_approval_is_allowed() -> None:
    config = make_config({"defaults": {"approval": {"allow_self_approval": True}}})
    sim = at_gate(config=config)

    assert sim.approve(REQUESTER).refusal is None
    assert sim.run.group("staging").status == "approved"


def test_two_required_approvals_need_two_different_people() -> None:
    sim = at_gate("prod-eu")
    gate_id = sim.run.gate.id if sim.run.gate else None

    first = sim.cmd("approve", "UALICE", gate_id=gate_id)
    assert first.refusal is None
    assert sim.run.state == WAITING
    assert sim.of("approval_recorded")[-1]["count"] == 1
    assert sim.of("approval_recorded")[-1]["required"] == 2

    twice = sim.cmd("approve", "UALICE", gate_id=gate_id)
    assert twice.refusal == "UALICE has already approved; 2 distinct approvers are needed"
    assert sim.run.state == WAITING

    second = sim.cmd("approve", "UBOB", gate_id=gate_id)
    assert second.refusal is None
    assert sim.of("gate_decided")[-1]["by"] == ["UALICE", "UBOB"]
    assert sim.run.group("prod-eu").status == "approved"
    assert sim.run.step == "observe"


def test_an_approval_with_no_gate_pending_is_refused() -> None:
    sim = Sim()
    sim.drive(until=phase("baseline_end"))

    d = sim.cmd("approve", "UALICE")

    assert d.refusal == "there is no approval pending on this run"
    assert sim.run.state == RUNNING


@pytest.mark.parametrize(
    "action", ["approve", "pause", "resume", "abort", "rollback", "acknowledge", "hold"]
)
def test_every_command_on_a_finished_run_is_refused(action: str) -> None:
    sim = at_gate()
    sim.cmd("abort", "UALICE")
    ended = sim.run

    d = sim.cmd(action, REQUESTER, until=sim.now + 60)

    assert d.refusal == "run run-1 has already ended (aborted)"
    assert d.run == ended


def test_an_unanswered_gate_sends_reminders_then_escalates() -> None:
    sim = at_gate()
    opened = sim.now

    sim.now = opened + 899
    assert sim.tick().events == ()

    sim.now = opened + 900
    d = sim.tick()
    (first,) = d.events
    assert (first["type"], first["reminders"], first["escalate"]) == ("gate_reminder", 1, False)
    assert first["escalation_mention"] is None
    assert d.wake_at == opened + 1800

    sim.now = opened + 1800
    (second,) = sim.tick().events
    assert (second["reminders"], second["escalate"]) == (2, True)
    assert second["escalation_mention"] == ESCALATION
    assert sim.tick().events == ()  # no repeat at the same moment
    assert sim.run.state == WAITING


def test_an_expired_gate_pauses_the_run_and_refuses_late_approvals() -> None:
    sim = at_gate()
    gate = sim.run.gate
    assert gate is not None

    sim.now = gate.expires_at
    d = sim.tick()

    assert sim.run.state == PAUSED
    assert sim.run.reason == "approval of staging expired; resume to ask again"
    assert sim.run.gate is not None and sim.run.gate.decision == "expired"
    assert [e["type"] for e in d.events] == ["gate_expired", "paused"]
    late = sim.cmd("approve", "UALICE", gate_id=gate.id)
    assert late.refusal == "this approval request is no longer pending"
    assert sim.cmd("approve", "UALICE").refusal == "there is no approval pending on this run"
    assert sim.run.group("staging").status == "awaiting_approval"


def test_resuming_after_expiry_opens_a_new_gate_and_the_old_one_stays_dead() -> None:
    sim = at_gate()
    old = sim.run.gate
    assert old is not None
    sim.now = old.expires_at
    sim.tick()

    sim.now += 60
    d = sim.cmd("resume", "UALICE")

    new = sim.run.gate
    assert new is not None and new.id == "run-1:staging:2" and new.id != old.id
    assert new.expires_at == sim.now + 3600 and new.decision is None
    assert sim.run.state == WAITING and "gate_opened" in [e["type"] for e in d.events]
    assert sim.cmd("approve", "UALICE", gate_id=old.id).refusal == (
        "this approval request is no longer pending"
    )
    assert sim.cmd("approve", "UALICE", gate_id=new.id).refusal is None
    assert sim.run.group("staging").status == "approved"


def test_pausing_at_a_gate_closes_it_and_resume_asks_again() -> None:
    sim = at_gate()
    old = sim.run.gate
    assert old is not None

    sim.cmd("pause", "UBOB", reason="waiting for the vendor's answer")

    assert sim.run.state == PAUSED and sim.run.reason == "waiting for the vendor's answer"
    assert sim.run.gate is not None and sim.run.gate.decision == "paused"
    assert sim.of("gate_decided")[-1]["decision"] == "paused"
    assert sim.cmd("approve", "UALICE", gate_id=old.id).refusal == (
        "this approval request is no longer pending"
    )
    assert sim.cmd("approve", "UALICE").refusal == "there is no approval pending on this run"
    sim.cmd("resume", "UBOB")
    assert sim.run.gate is not None and sim.run.gate.id == "run-1:staging:2"
    assert sim.run.state == WAITING


@pytest.mark.parametrize("action", ["approve", "pause", "rollback"])
def test_a_button_of_a_decided_gate_changes_nothing(action: str) -> None:
    """Pause or Roll back clicked on an old gate is refused like Approve: the run moves on."""
    sim = at_gate()
    old = sim.run.gate
    assert old is not None
    sim.approve("UALICE")
    state = sim.run.state

    d = sim.cmd(action, "UBOB", gate_id=old.id)

    assert d.refusal is not None and "no longer pending" in d.refusal
    assert sim.run.state == state and sim.run.intent is None


# --- automatic approval ------------------------------------------------------------------------


def test_auto_mode_approves_a_passing_group_as_auto() -> None:
    sim = Sim(start={"approval_mode": "auto"})

    sim.drive()

    assert sim.run.state == COMPLETED
    assert [(e["group"], e["user"]) for e in sim.of("approval_recorded")] == [
        ("staging", "auto"),
        ("prod-eu", "auto"),
    ]
    assert [e["by"] for e in sim.of("gate_decided")] == [["auto"], ["auto"]]
    assert not sim.of("gate_opened")


def test_auto_mode_rolls_back_a_failing_group() -> None:
    sim = Sim(start={"approval_mode": "auto"})
    sim.fleet.traffic[NEW] = Traffic(ratio_5xx=0.2)

    sim.drive()

    assert sim.run.state == ROLLED_BACK
    assert sim.run.reason == "verdict fail on staging"
    started = sim.of("rollback_started")[0]
    assert (started["by"], started["automatic"]) == ("auto", True)
    assert sim.fleet.versions() == {OLD: 9}


def test_auto_mode_pauses_on_an_inconclusive_verdict_for_a_human() -> None:
    sim = Sim(start={"approval_mode": "auto"})
    sim.fleet.traffic[NEW] = Traffic(rps=0.5)

    sim.drive()

    assert sim.run.state == PAUSED
    assert sim.run.reason == "verdict inconclusive on staging: a human decides"
    assert sim.run.group("prod-eu").slots[0].status == "pending"


# --- pause, resume, hold -----------------------------------------------------------------------


def test_pause_and_resume_are_refused_when_they_make_no_sense() -> None:
    sim = Sim()
    sim.drive(until=phase("baseline_end"))

    assert sim.cmd("resume", "UALICE").refusal == "run run-1 is not paused (it is running)"
    assert sim.cmd("pause", "UALICE").refusal is None
    assert sim.cmd("pause", "UBOB").refusal == "run run-1 is already paused"


def test_pause_is_refused_to_someone_the_policy_leaves_out() -> None:
    sim = Sim(config=make_config({"defaults": {"policy": {"pause": ["SONCALL"]}}}))
    sim.drive(until=phase("baseline_end"))

    refused = sim.cmd("pause", "UMALLORY")
    allowed = sim.cmd("pause", "UDAVE", user_groups=("SONCALL",))

    assert refused.refusal == "UMALLORY may not pause on staging (not in its policy)"
    assert allowed.refusal is None and sim.run.state == PAUSED


@pytest.mark.parametrize("action", ["deploy", "override", "start"])
def test_an_unknown_action_is_refused_by_name(action: str) -> None:
    sim = Sim()
    sim.drive(until=phase("baseline_end"))

    d = sim.cmd(action, "UALICE")

    assert d.refusal == f"unknown action '{action}'"
    assert sim.run.state == RUNNING


def test_a_paused_run_does_nothing_until_resumed() -> None:
    sim = Sim()
    sim.drive(until=phase("baseline_end"))
    sim.cmd("pause", "UALICE")

    sim.now += 3600
    d = sim.tick()

    assert (d.effects, d.events, d.wake_at) == ((), (), None)
    assert sim.run.state == PAUSED and sim.run.reason == "paused by UALICE"


def test_a_baseline_window_interrupted_by_a_pause_is_measured_again_after_resume() -> None:
    sim = Sim()
    sim.drive(until=phase("baseline_end"))
    first = sim.run.group("staging").baseline_snapshot
    sim.now += 10
    sim.cmd("pause", "UALICE")
    assert sim.run.phase == "baseline_start"

    sim.now += 500
    d = sim.cmd("resume", "UALICE")

    assert [(e.kind, e.key) for e in d.effects] == [("scrape", "staging:baseline_start")]
    sim.perform(d.effects[0])
    g = sim.run.group("staging")
    assert g.window_until == sim.now + 30
    assert g.baseline_snapshot is not None and first is not None
    assert g.baseline_snapshot["taken_at"] == sim.now != first["taken_at"]
    assert len(sim.of("group_started")) == 1  # the group goes on, it does not start over


def test_a_settle_window_interrupted_by_a_pause_is_measured_again_after_resume() -> None:
    sim = Sim()
    sim.drive(until=phase("settle_end"))
    sim.cmd("pause", "UALICE")
    assert sim.run.phase == "settle_start"

    sim.now += 500
    d = sim.cmd("resume", "UALICE")

    assert [(e.kind, e.key) for e in d.effects] == [("scrape", "staging:settle_start")]
    sim.perform(d.effects[0])
    assert sim.run.group("staging").window_until == sim.now + 60


def test_a_pause_during_an_effect_takes_hold_once_its_outcome_is_counted() -> None:
    sim = Sim()
    effect = sim.drive(before=kind("ensure_slots"))
    assert effect is not None

    d = sim.cmd("pause", "UALICE", reason="traffic spike")
    assert d.refusal is None and sim.run.state == RUNNING
    assert d.events[0]["type"] == "intent_recorded"
    assert d.events[0]["note"] == "takes effect when the current step finishes"

    after = sim.perform(effect)

    assert [sim.slot(s).replacements for s in STAGING] == [1, 1, 0]
    assert sim.run.state == PAUSED and sim.run.reason == "traffic spike"
    assert sim.run.pending is None and after.effects == ()
    assert [e["type"] for e in after.events][-1] == "paused"

    resumed = sim.cmd("resume", "UALICE")
    # The metrics since the first replacement are watched, then the last slot follows.
    (watch,) = resumed.effects
    assert (watch.kind, watch.args["watch"]) == ("scrape", 2)
    assert [e.args["slots"] for e in sim.perform(watch).effects] == [["staging-2"]]


def test_a_pause_during_the_control_plane_check_is_not_lost() -> None:
    sim = Sim()
    effect = sim.drive(before=kind("check_control_plane"))
    assert effect is not None
    sim.cmd("pause", "UALICE")

    sim.perform(effect)

    assert sim.run.state == PAUSED and sim.run.step == "changelog"
    assert sim.run.cp_version == NEW
    assert sim.kinds()[-1] == "check_control_plane"


def test_a_hold_stops_the_run_until_its_time_then_goes_on() -> None:
    sim = Sim()
    sim.drive(until=phase("baseline_end"))
    until = sim.now + 600

    d = sim.cmd("hold", "UALICE", until=until, reason="deploy freeze until 10:00")

    assert d.refusal is None and d.wake_at == until
    assert sim.run.state == HELD and sim.run.hold is not None
    assert (sim.run.hold.reason, sim.run.hold.until, sim.run.hold.by) == (
        "deploy freeze until 10:00",
        until,
        "UALICE",
    )
    sim.now = until - 1
    early = sim.tick()
    assert early.effects == () and early.wake_at == until and sim.run.state == HELD

    sim.now = until
    on_time = sim.tick()
    assert on_time.events[0]["type"] == "hold_ended"
    assert sim.run.state == RUNNING and sim.run.hold is None
    assert [(e.kind, e.key) for e in on_time.effects] == [("scrape", "staging:baseline_end")]


@pytest.mark.parametrize("until", [None, T0, T0 - 60])
def test_a_hold_without_a_resume_time_in_the_future_is_refused(until: float | None) -> None:
    sim = Sim()
    sim.now = T0

    d = sim.cmd("hold", "UALICE", until=until)

    assert d.refusal == "a hold needs a resume time in the future"
    assert sim.run.state == RUNNING


def test_a_hold_during_an_effect_starts_once_its_outcome_is_counted() -> None:
    sim = Sim()
    effect = sim.drive(before=kind("ensure_slots"))
    assert effect is not None
    until = sim.now + 300
    sim.cmd("hold", "UALICE", until=until)

    sim.perform(effect)

    assert sim.run.state == HELD and sim.run.hold is not None and sim.run.hold.until == until
    assert [sim.slot(s).replacements for s in STAGING] == [1, 1, 0]
    sim.now = until
    (watch,) = sim.tick().effects
    assert (watch.kind, watch.args["watch"]) == ("scrape", 2)
    assert [e.args["slots"] for e in sim.perform(watch).effects] == [["staging-2"]]


def test_a_hold_at_a_gate_closes_it_and_asks_again_when_it_ends() -> None:
    sim = at_gate()
    old = sim.run.gate
    assert old is not None

    sim.cmd("hold", "UALICE", until=sim.now + 600)
    assert sim.run.state == HELD and sim.run.gate is not None
    assert sim.run.gate.decision == "paused"

    sim.now += 600
    sim.tick()
    assert sim.run.state == WAITING
    assert sim.run.gate is not None and sim.run.gate.id == "run-1:staging:2"


def test_resume_ends_a_hold_early() -> None:
    sim = Sim()
    sim.drive(until=phase("baseline_end"))
    sim.cmd("hold", "UALICE", until=sim.now + 600)

    d = sim.cmd("resume", "UBOB")

    assert d.refusal is None and sim.run.state == RUNNING and sim.run.hold is None


# --- temporary and permanent failures ----------------------------------------------------------


def test_temporary_failures_back_off_longer_each_time_then_fail_the_run() -> None:
    sim = Sim()
    sim.script["check_control_plane"] = lambda e, now: Failure(
        e.key, "control plane: 503", temporary=True, delay_s=2.0
    )
    effect = sim.drive(before=kind("check_control_plane"))
    assert effect is not None and effect.attempt == 1

    delays = []
    for attempt in range(2, MAX_ATTEMPTS + 1):
        d = sim.perform(effect)
        hold = sim.run.hold
        assert sim.run.state == HELD and hold is not None
        assert hold.reason == "backoff after: control plane: 503"
        assert d.wake_at == hold.until
        delays.append(hold.until - sim.now)
        sim.now = hold.until - 0.1
        assert sim.tick().effects == ()
        sim.now = hold.until
        d = sim.tick()
        assert sim.run.state == RUNNING
        (effect,) = d.effects
        assert (effect.key, effect.attempt) == ("cp_check", attempt)

    assert delays == [2.0, 4.0, 8.0, 16.0]
    sim.perform(effect)
    assert sim.run.state == FAILED
    assert sim.run.reason == "check_control_plane failed: control plane: 503"
    failed = sim.of("effect_failed")[0]
    assert (failed["kind"], failed["attempts"]) == ("check_control_plane", MAX_ATTEMPTS)


def test_a_permanent_failure_before_anything_is_touched_fails_the_run() -> None:
    sim = Sim()
    sim.script["read_config_revision"] = lambda e, now: Failure(e.key, "403 from the CP")

    sim.drive()

    assert sim.run.state == FAILED
    assert sim.run.reason == "read_config_revision failed: 403 from the CP"
    assert not sim.of("rollback_started")


def test_a_slot_with_a_temporary_error_is_retried_alone() -> None:
    sim = Sim()
    sim.fleet.faults["staging-1"] = [fault("docker API 502", temporary=True, delay_s=3.0)]
    effect = sim.drive(before=kind("ensure_slots"))
    assert effect is not None

    sim.perform(effect)

    assert sim.slot("staging-0").status == "done"
    assert sim.slot("staging-1").status == "replacing"
    retry = sim.run.pending
    assert retry is not None and retry.key == effect.key and retry.attempt == 2
    assert retry.args["slots"] == ["staging-1"]
    assert sim.run.state == HELD and sim.run.hold is not None
    assert sim.run.hold.until == sim.now + 3.0

    sim.drive(until=lambda s: s.slot("staging-1").status == "done")
    assert [sim.slot(s).replacements for s in STAGING] == [1, 1, 0]
    assert sim.run.state == RUNNING


def test_a_replacement_that_never_gets_ready_rolls_back_only_what_was_touched() -> None:
    sim = Sim()
    sim.drive_to_gate("staging")
    sim.approve("UALICE")
    sim.fleet.faults["prod-eu-3"] = [fault("prod-eu-3 not ready after 120s")]

    sim.drive()

    assert sim.run.state == ROLLED_BACK
    assert sim.run.reason == "replacement failed: prod-eu-3: prod-eu-3 not ready after 120s"
    assert sim.of("slot_failed")[0]["errors"] == {"prod-eu-3": "prod-eu-3 not ready after 120s"}
    started = sim.of("rollback_started")[0]
    assert (started["by"], started["automatic"]) == ("engine", True)
    assert started["groups"] == ["prod-eu", "staging"]
    restores = [p for p in sim.performed if p.args.get("restore")]
    assert [p.args["slots"] for p in restores] == [
        ["prod-eu-2"],
        ["prod-eu-1"],
        ["prod-eu-0"],
        ["staging-2"],
        ["staging-1"],
        ["staging-0"],
    ]
    assert all(p.args["image"] == image(OLD) for p in restores)
    assert [e["slot"] for e in sim.of("slot_restored")] == [
        "prod-eu-2",
        "prod-eu-1",
        "prod-eu-0",
        "staging-2",
        "staging-1",
        "staging-0",
    ]
    restored = ["prod-eu-0", "prod-eu-1", "prod-eu-2", *STAGING]
    assert {s.id: s.restorations for _, s in sim.run.slots()} == {
        s: (1 if s in restored else 0) for s in STAGING + PROD
    }
    assert sim.slot("prod-eu-3").status == "failed"
    assert [g.status for g in sim.run.groups] == ["rolled_back", "rolled_back"]
    assert sim.fleet.versions() == {OLD: 9}
    assert sim.run.mixed_fleet() == {OLD: STAGING + PROD}
    assert sim.types()[-2:] == ["run_rolled_back", "freeze_lifted"]


def test_a_restore_that_fails_pages_with_the_state_of_every_slot() -> None:
    sim = at_gate()
    sim.fleet.faults["staging-1"] = [fault("image pull failed: registry unreachable")]

    sim.cmd("rollback", "UALICE", reason="p99 regression")
    sim.drive()

    assert sim.run.state == FAILED
    assert sim.run.reason == "rollback failed: staging-1: image pull failed: registry unreachable"
    (failed,) = sim.of("rollback_failed")
    assert failed["page"] is True
    assert failed["fleet"] == {NEW: ["staging-0", "staging-1"], OLD: ["staging-2", *PROD]}
    table = {row["slot"]: (row["status"], row["version"]) for row in failed["slots"]}
    assert table == {
        "staging-0": ("done", NEW),
        "staging-1": ("restoring", NEW),
        "staging-2": ("restored", OLD),
        **{s: ("pending", OLD) for s in PROD},
    }
    assert sim.types()[-1] == "run_failed"
    assert not sim.of("freeze_lifted")


def test_a_restore_effect_that_errors_out_also_fails_the_rollback() -> None:
    sim = at_gate()
    sim.cmd("rollback", "UALICE")
    sim.script["ensure_slots"] = lambda e, now: Failure(e.key, "backend gone")

    sim.drive()

    assert sim.run.state == FAILED
    assert sim.run.reason == "rollback failed: backend gone"
    assert sim.of("rollback_failed")[0]["page"] is True


def test_a_rollback_that_waited_out_a_retry_still_ends_with_its_reason() -> None:
    sim = at_gate()
    sim.fleet.faults["staging-2"] = [fault("docker API 502", temporary=True)]

    sim.cmd("rollback", "UALICE", reason="p99 regression")
    sim.drive()

    assert sim.of("held")[0]["attempt"] == 2
    assert sim.run.state == ROLLED_BACK
    assert sim.run.reason == "p99 regression"
    assert sim.of("run_rolled_back")[0]["reason"] == "p99 regression"


def test_a_rollback_waiting_out_a_retry_cannot_be_paused_or_held() -> None:
    sim = at_gate()
    sim.fleet.faults["staging-2"] = [fault("docker API 502", temporary=True)]
    sim.cmd("rollback", "UALICE")
    sim.perform(sim.tick().effects[0])
    assert sim.run.state == HELD and sim.run.paused_from == ROLLING_BACK

    paused = sim.cmd("pause", "UBOB")
    held = sim.cmd("hold", "UBOB", until=sim.now + 600)

    assert paused.refusal == "a rollback cannot be paused; abort stops it where it is"
    assert held.refusal == paused.refusal
    sim.drive()
    assert sim.run.state == ROLLED_BACK and sim.fleet.versions() == {OLD: 9}


def test_metrics_that_cannot_be_read_after_the_change_make_the_verdict_inconclusive() -> None:
    sim = Sim()
    sim.script["scrape"] = lambda e, now: (
        Failure(e.key, "no instance exposes metrics")
        if e.key == "staging:settle_end"
        else sim.fleet.scrape(e, now)
    )

    sim.drive_to_gate("staging")

    verdict = sim.run.group("staging").verdict
    assert verdict == {
        "phase": "inconclusive",
        "reasons": ["metrics unavailable: no instance exposes metrics"],
        "limits": {"ratio_5xx": None, "p99_ms": None, "ratio_404": None},
    }
    assert sim.of("gate_opened")[0]["recommend"] == "approve"


def test_metrics_that_cannot_be_read_before_the_change_make_the_verdict_inconclusive() -> None:
    sim = Sim()
    sim.script["scrape"] = lambda e, now: (
        Failure(e.key, "no instance exposes metrics")
        if e.key == "staging:baseline_start"
        else sim.fleet.scrape(e, now)
    )

    sim.drive_to_gate("staging")

    assert sim.of("metrics_summary")[0]["verdict"] == {
        "phase": "inconclusive",
        "reasons": ["metrics unavailable: no instance exposes metrics"],
        "limits": {"ratio_5xx": None, "p99_ms": None, "ratio_404": None},
    }
    assert sim.run.group("staging").verdict == {
        "phase": "inconclusive",
        "reasons": ["no baseline metrics to compare with"],
        "limits": {"ratio_5xx": None, "p99_ms": None, "ratio_404": None},
    }
    assert sim.run.gate is not None and sim.run.gate.verdict == "inconclusive"
    assert [sim.slot(s).replacements for s in STAGING] == [1, 1, 1]


def test_a_group_whose_settle_metrics_fail_still_checks_the_config_freeze() -> None:
    sim = Sim()
    sim.script["scrape"] = lambda e, now: (
        Failure(e.key, "no instance exposes metrics")
        if e.key == "staging:settle_start"
        else sim.fleet.scrape(e, now)
    )
    sim.drive(before=kind("scrape", "staging:settle_start"))
    sim.fleet.revision = 8

    sim.drive()

    assert sim.run.state == PAUSED
    assert sim.of("config_changed")[0]["after"] == 8
    assert not sim.of("gate_opened")


# --- abort -------------------------------------------------------------------------------------


def test_an_abort_during_a_replacement_stops_after_it_and_lists_the_mixed_fleet() -> None:
    sim = Sim()
    effect = sim.drive(before=kind("ensure_slots"))
    assert effect is not None

    d = sim.cmd("abort", "UALICE", reason="wrong maintenance window")
    assert d.refusal is None and sim.run.state == RUNNING
    assert d.events[0]["type"] == "intent_recorded"
    sim.perform(effect)

    assert sim.run.state == ABORTED
    assert sim.run.reason == "wrong maintenance window"
    (aborted,) = sim.of("run_aborted")
    assert aborted["fleet"] == {NEW: ["staging-0", "staging-1"], OLD: ["staging-2", *PROD]}
    assert len(aborted["fleet"][NEW]) == 2 and len(aborted["fleet"][OLD]) == 7
    assert len(aborted["slots"]) == 9
    assert sim.run.pending is None
    sim.now += 60
    assert sim.tick().effects == ()
    assert sim.kinds().count("ensure_slots") == 1


def test_an_abort_at_a_gate_closes_the_gate_at_once() -> None:
    sim = at_gate()

    sim.cmd("abort", "UBOB")

    assert sim.run.state == ABORTED and sim.run.reason == "aborted by UBOB"
    assert sim.run.gate is not None and sim.run.gate.decision == "aborted"
    decided = sim.of("gate_decided")[-1]
    assert (decided["decision"], decided["by"]) == ("aborted", ["UBOB"])
    assert sim.of("run_aborted")[0]["fleet"] == {NEW: STAGING, OLD: PROD}


def test_an_abort_during_a_rollback_stops_it_where_it_is() -> None:
    sim = at_gate()
    sim.cmd("rollback", "UALICE")
    restore = sim.tick().effects[0]

    sim.cmd("abort", "UBOB")
    sim.perform(restore)

    assert sim.run.state == ABORTED
    assert sim.run.mixed_fleet() == {NEW: ["staging-0", "staging-1"], OLD: ["staging-2", *PROD]}


# --- manual rollback ---------------------------------------------------------------------------


def test_a_rollback_requested_at_a_gate_restores_the_group() -> None:
    sim = at_gate()
    gate = sim.run.gate
    assert gate is not None

    d = sim.cmd("rollback", "UALICE", gate_id=gate.id, reason="p99 regression")

    assert sim.run.state == ROLLING_BACK
    assert sim.run.gate is not None and sim.run.gate.decision == "rollback"
    assert sim.of("gate_decided")[-1]["by"] == ["UALICE"]
    assert [e.args["slots"] for e in d.effects] == [["staging-2"]]
    started = sim.of("rollback_started")[0]
    assert (started["by"], started["automatic"], started["reason"]) == (
        "UALICE",
        False,
        "p99 regression",
    )
    sim.drive()
    assert sim.run.state == ROLLED_BACK and sim.run.reason == "p99 regression"
    assert sim.fleet.versions() == {OLD: 9}
    assert [sim.slot(s).restorations for s in STAGING] == [1, 1, 1]


def test_a_second_rollback_is_refused_while_one_is_under_way() -> None:
    sim = at_gate()
    sim.cmd("rollback", "UALICE")

    d = sim.cmd("rollback", "UBOB")

    assert d.refusal == "run run-1 is already rolling back"


def test_a_rollback_from_a_stale_gate_button_is_refused() -> None:
    sim = at_gate()

    d = sim.cmd("rollback", "UALICE", gate_id="run-1:staging:0")

    assert d.refusal == "this approval request is no longer pending"
    assert sim.run.state == WAITING


def test_a_rollback_requested_during_a_replacement_starts_after_it() -> None:
    sim = Sim()
    effect = sim.drive(before=kind("ensure_slots"))
    assert effect is not None
    sim.cmd("rollback", "UALICE")
    assert sim.run.state == RUNNING

    d = sim.perform(effect)

    assert sim.run.state == ROLLING_BACK
    assert [e.args["slots"] for e in d.effects] == [["staging-1"]]
    sim.drive()
    assert sim.run.state == ROLLED_BACK and sim.run.reason == "rollback requested by UALICE"
    assert sim.fleet.versions() == {OLD: 9}


# --- config freeze -----------------------------------------------------------------------------


def test_a_config_change_during_a_group_pauses_the_run_before_its_gate() -> None:
    sim = Sim()
    sim.drive(before=kind("read_config_revision", "staging:freeze_check"))
    sim.fleet.revision = 8

    sim.drive()

    assert sim.run.state == PAUSED
    assert sim.run.reason == (
        "configuration changed during the freeze (revision 7 → 8); check the change, then resume"
    )
    changed = sim.of("config_changed")[0]
    assert (changed["before"], changed["after"]) == (7, 8)
    assert sim.of("paused")[-1]["by"] == "engine"
    assert not sim.of("gate_opened")

    sim.cmd("resume", "UALICE")

    accepted = sim.of("freeze_revision_accepted")[0]
    assert (accepted["before"], accepted["after"], accepted["by"]) == (7, 8, "UALICE")
    assert sim.run.config_revision == 8
    assert sim.run.state == WAITING and sim.run.gate is not None
    assert sim.run.gate.group == "staging"
    sim.approve("UALICE")
    sim.drive_to_gate("prod-eu")  # revision 8 is the freeze now: no second pause
    assert len(sim.of("config_changed")) == 1


def test_a_config_change_during_observation_pauses_the_run() -> None:
    sim = at_gate("prod-eu")
    sim.approve("UALICE", "UBOB")
    sim.drive(until=lambda s: len(s.of("checkin")) == 1)
    sim.fleet.revision = 9

    sim.drive()

    assert sim.run.state == PAUSED and sim.run.step == "observe"
    assert sim.of("config_changed")[0]["after"] == 9
    sim.cmd("resume", "UALICE")
    sim.drive()
    assert sim.run.state == COMPLETED
    assert sim.of("freeze_lifted")[0]["revision"] == 9


# --- purity ------------------------------------------------------------------------------------


def _eventful_sim() -> Sim:
    sim = Sim(start={"changelog_ack": None})
    sim.fleet.faults["prod-eu-1"] = [fault("docker API 502", temporary=True)]
    sim.drive()
    sim.cmd("acknowledge", "UALICE")  # refused
    sim.cmd("acknowledge", REQUESTER)
    sim.drive_to_gate("staging")
    sim.now += 900
    sim.tick()  # a reminder
    sim.approve("UALICE")
    sim.drive(until=phase("baseline_end"))
    sim.cmd("pause", "UBOB")
    sim.cmd("resume", "UBOB")
    sim.drive_to_gate("prod-eu")
    sim.cmd("rollback", "UALICE")
    sim.drive()
    return sim


def test_the_same_run_event_and_time_always_give_the_same_decision() -> None:
    sim = _eventful_sim()
    assert sim.run.state == ROLLED_BACK
    assert len(sim.decisions) > 50

    for run, event, now, decision in sim.decisions:
        assert decide(run, event, now, sim.config) == decision


def test_an_outcome_for_another_effect_changes_nothing() -> None:
    sim = Sim()
    effect = sim.drive(before=kind("ensure_slots"))
    assert effect is not None
    waiting = sim.run

    stale = [
        Outcome("staging:replace:staging-9", {"slots": {}}),
        Failure("cp_check", "late failure of a superseded effect"),
    ]
    for event in stale:
        d = sim.apply(event)
        assert d.run == waiting and d.effects == () and d.events == ()

    finished = at_gate()
    finished.cmd("abort", "UALICE")
    assert finished.apply(Outcome("staging:gate", {})).events == ()


def test_pending_effects_survive_the_record_round_trip() -> None:
    sim = Sim()
    effect = sim.drive(before=kind("ensure_slots"))

    assert isinstance(sim.run.pending, Pending) and sim.run.pending == effect


# --- watching the metrics while a group is replaced ---------------------------------------------


def watching(effect: Pending) -> bool:
    return effect.kind == "scrape" and "watch" in effect.args


def test_a_group_failing_while_it_is_replaced_pauses_before_its_next_batch() -> None:
    sim = Sim()
    sim.fleet.traffic[NEW] = Traffic(ratio_5xx=0.2)
    watch = sim.drive(before=watching)
    assert watch is not None and watch.args["watch"] == 2  # after the first batch of two
    sim.now += 30  # the new instances serve for a while

    sim.perform(watch)

    assert sim.run.state == PAUSED
    assert sim.run.reason.startswith(
        "metrics watched during the replacement of staging failed after 2 of 3 slots: "
        "5xx ratio 13.3% after vs 0.0% before (limit 1.0%)"  # 2 of 3 instances at 20%
    )
    assert sim.run.reason.endswith("resume to go on with the next slot, or roll back")
    assert [sim.slot(s).replacements for s in STAGING] == [1, 1, 0]  # the last one untouched
    (failed,) = sim.of("watch_failed")
    assert (failed["group"], failed["done"], failed["total"]) == ("staging", 2, 3)
    assert failed["verdict"]["phase"] == "fail"
    assert sim.run.group("staging").watch["verdict"]["phase"] == "fail"  # kept in the record

    sim.cmd("rollback", "UALICE")
    sim.drive()
    assert sim.run.state == ROLLED_BACK and sim.fleet.versions() == {OLD: 9}
    assert sim.run.reason.startswith(
        "rollback requested by UALICE while paused: metrics watched during the replacement"
    )


def test_resuming_after_a_failed_watch_goes_on_with_the_next_slot() -> None:
    sim = Sim()
    sim.fleet.traffic[NEW] = Traffic(ratio_5xx=0.2)
    watch = sim.drive(before=watching)
    sim.now += 30
    sim.perform(watch)
    assert sim.run.state == PAUSED

    resumed = sim.cmd("resume", "UALICE")

    assert [e.args["slots"] for e in resumed.effects] == [["staging-2"]]


def test_a_group_can_roll_back_at_once_when_its_watch_fails() -> None:
    sim = Sim(config=make_config({"defaults": {"rollout": {"on_watch_fail": "rollback"}}}))
    sim.fleet.traffic[NEW] = Traffic(ratio_5xx=0.2)
    watch = sim.drive(before=watching)
    sim.now += 30
    sim.perform(watch)
    sim.drive()

    assert sim.run.state == ROLLED_BACK and sim.fleet.versions() == {OLD: 9}
    assert sim.run.reason.startswith("metrics watched during the replacement of staging failed")
    started = sim.of("rollback_started")[0]
    assert (started["by"], started["automatic"]) == ("engine", True)
    assert [sim.slot(s).replacements for s in STAGING] == [1, 1, 0]


def test_a_watch_on_too_few_requests_or_a_healthy_release_lets_the_group_go_on() -> None:
    for traffic in (Traffic(ratio_5xx=0.2, rps=0.5), Traffic()):
        sim = Sim()
        sim.fleet.traffic[OLD] = Traffic(rps=traffic.rps)
        sim.fleet.traffic[NEW] = traffic
        watch = sim.drive(before=watching)
        sim.now += 30
        after = sim.perform(watch)
        assert sim.run.state == RUNNING
        assert [e.args["slots"] for e in after.effects] == [["staging-2"]]
        assert sim.run.group("staging").watch["verdict"]["phase"] in ("pass", "inconclusive")


def test_a_group_that_turns_watching_off_is_not_watched() -> None:
    sim = Sim(config=make_config({"defaults": {"rollout": {"watch": False}}}))
    sim.fleet.traffic[NEW] = Traffic(ratio_5xx=0.2)
    sim.drive_to_gate("staging")
    assert not any(watching(e) for e in sim.performed)
    assert sim.run.group("staging").watch is None


# --- the observation window judged (runbook step 9) --------------------------------------------


def observing() -> Sim:
    sim = at_gate("prod-eu")
    sim.approve("UALICE", "UBOB")
    sim.drive(until=lambda s: len(s.of("checkin")) == 1)
    assert not sim.of("observation_alert")  # a healthy fleet raises nothing
    return sim


def test_a_group_failing_during_observation_is_alerted_and_the_run_paused_not_completed() -> None:
    sim = observing()
    sim.fleet.traffic[NEW] = Traffic(ratio_5xx=0.2)

    sim.drive()

    assert sim.run.state == PAUSED and sim.run.step == "observe"
    assert sim.run.reason.startswith("observation: staging fails since its upgrade: 5xx ratio")
    alerts = sim.of("observation_alert")
    assert [a["group"] for a in alerts] == ["staging", "prod-eu"]
    assert all(a["verdict"]["phase"] == "fail" for a in alerts)
    sim.cmd("rollback", "UBOB")
    sim.drive()
    assert sim.run.state == ROLLED_BACK and sim.fleet.versions() == {OLD: 9}
    assert sim.run.reason.startswith("rollback requested by UBOB while paused: observation:")


def test_resuming_after_an_alert_keeps_observing_without_alerting_twice() -> None:
    sim = observing()
    sim.fleet.traffic[NEW] = Traffic(ratio_5xx=0.2)
    sim.drive()
    assert sim.run.state == PAUSED

    sim.cmd("resume", "UALICE")
    sim.drive()

    assert sim.run.state == COMPLETED  # the person resuming accepted the anomaly
    assert len(sim.of("observation_alert")) == 2


def test_in_auto_mode_a_failing_observation_rolls_back_by_itself() -> None:
    sim = Sim(start={"approval_mode": "auto"})
    sim.drive(until=lambda s: len(s.of("checkin")) == 1)
    sim.fleet.traffic[NEW] = Traffic(ratio_5xx=0.2)

    sim.drive()

    assert sim.run.state == ROLLED_BACK and sim.fleet.versions() == {OLD: 9}
    started = sim.of("rollback_started")[0]
    assert (started["by"], started["automatic"]) == ("auto", True)
    assert started["reason"].startswith("observation: staging fails since its upgrade")
