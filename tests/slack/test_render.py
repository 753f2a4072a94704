"""Rendering: every message a run produces is valid Block Kit, within Slack's limits, and says
what the person on the other end (often the approver, on a phone) needs first.

Runs are real records: driven through ``decide`` by the scripted fleet of ``tests/engine/runs.py``
for the everyday states, built with the model's constructors for the 30-group stress case.
Each message goes through ``Block.parse(b.to_dict())`` and ``validate_json`` as slack_sdk would
see it, so a malformed block fails here and not in the channel.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import pytest
from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    ContextBlock,
    HeaderBlock,
    SectionBlock,
)

from upgrade_bot import transcript
from upgrade_bot.bot import messages, render
from upgrade_bot.bot.render import Message
from upgrade_bot.engine import (
    ABORTED,
    COMPLETED,
    FAILED,
    PAUSED,
    ROLLED_BACK,
    ROLLING_BACK,
    RUNNING,
    WAITING,
    EventKind,
    Gate,
    GroupRun,
    Plan,
    Run,
    SlotRun,
)
from upgrade_bot.engine.decide import Failure, decide
from upgrade_bot.engine.events import undeclared_fields
from upgrade_bot.engine.model import Approval, Pending, Rollback

from ..engine.runs import NEW, OLD, REQUESTER, T0, Fleet, Sim, Traffic, image, make_config
from ..engine.test_cp_decide import cp_sim

APPROVERS = ["UALICE", "UBOB", "S0ONCALL"]
ESCALATION = "<!subteam^S0ONCALL>"
X = messages.TIMES  # "3.8.0 x7" in the rendered text


# --- what every message must satisfy --------------------------------------------------------------


def _texts(block: dict[str, Any]) -> Iterable[str]:
    if block["type"] in ("section", "header"):
        yield block["text"]["text"]
    elif block["type"] == "context":
        yield from (e["text"] for e in block["elements"])


def check(message: Message | None) -> Message:
    """Valid as Slack would parse it, and within every limit Slack enforces."""
    assert message is not None
    assert message.text.strip()
    assert len(message.text) <= render.FALLBACK_TEXT_MAX
    assert 1 <= len(message.blocks) <= 50
    for block in message.blocks:
        data = block.to_dict()
        parsed = Block.parse(data)
        assert parsed is not None
        parsed.validate_json()
        assert parsed.to_dict() == data  # round-trips (nested objects validate on to_dict)
        if isinstance(block, SectionBlock):
            assert block.text is not None and 0 < len(block.text.text) <= 3000
        if isinstance(block, ContextBlock):
            assert 1 <= len(block.elements) <= 10
            assert all(0 < len(e.text) <= 3000 for e in block.elements)  # type: ignore[attr-defined]
        if isinstance(block, ActionsBlock):
            assert 1 <= len(block.elements) <= 25
            for button in block.elements:
                assert isinstance(button, ButtonElement)
                assert len(button.text.text) <= 75
                assert button.value is not None and len(button.value) <= 2000
        if isinstance(block, HeaderBlock):
            assert len(block.text.text) <= 150
    ids = [b.block_id for b in message.blocks if b.block_id]
    assert len(ids) == len(set(ids))
    json.dumps(message.to_dict())  # what chat.postMessage is given is plain JSON
    return message


def all_text(message: Message) -> str:
    return "\n".join(t for b in message.blocks for t in _texts(b.to_dict()))


def actions(message: Message) -> list[ButtonElement]:
    return [e for b in message.blocks if isinstance(b, ActionsBlock) for e in b.elements]  # type: ignore[misc]


def button(message: Message, action_id: str) -> ButtonElement:
    (found,) = [b for b in actions(message) if b.action_id == action_id]
    return found


def render_all(sim: Sim) -> list[Message]:
    """Every message a notifier would post or edit for the run as it stands."""
    run = sim.run
    out = [check(render.run_message(run)), check(render.status_message(run))]
    out += [check(render.group_progress(run, g.name)) for g in run.groups]
    for i, event in enumerate(sim.events):
        message = render.event_message(
            event,
            run=run,
            event_id=f"{i}-0",
            approvers=APPROVERS,
            escalation_mention=ESCALATION,
        )
        if message is not None:
            out.append(check(message))
        if event["type"] == "gate_opened":
            out.append(check(render.gate_message(run, event, approvers=APPROVERS)))
        if event["type"] == "gate_decided":
            out.append(check(render.gate_decided(run, event)))
    return out


# --- runs in the states a person sees -------------------------------------------------------------


def kind(k: str) -> Any:
    return lambda e: e.kind == k


def at_gate(group: str = "staging", **sim: Any) -> Sim:
    s = Sim(**sim)
    s.drive_to_gate("staging")
    if group == "prod-eu":
        s.approve("UALICE")
        s.drive_to_gate("prod-eu")
    return s


def mid_replacement() -> Sim:
    s = Sim()
    effect = s.drive(before=kind("ensure_slots"))
    assert effect is not None
    watch = s.perform(effect).effects[0]  # the first batch is in; its metrics are watched
    s.perform(watch)  # and the next batch is marked replacing
    assert s.run.state == RUNNING and s.run.phase == "replace"
    return s


def rolled_back_mixed() -> Sim:
    """prod-eu-5 already ran the target before the run: a rollback leaves it there."""
    fleet = Fleet()
    fleet.instance("prod-eu-5").image = image(NEW)
    s = at_gate(fleet=fleet)
    s.cmd("rollback", "UBOB", gate_id=s.run.gate.id, reason="p99 up")  # type: ignore[union-attr]
    s.drive()
    assert s.run.state == ROLLED_BACK
    assert s.run.mixed_fleet() == {
        OLD: ["staging-0", "staging-1", "staging-2", *[f"prod-eu-{i}" for i in range(5)]],
        NEW: ["prod-eu-5"],
    }
    return s


def failed_rollback() -> Sim:
    s = at_gate()
    s.fleet.faults["staging-1"] = [
        {"error": "image pull failed: registry unreachable", "temporary": False}
    ]
    s.cmd("rollback", "UALICE", reason="p99 regression")
    s.drive()
    assert s.run.state == FAILED
    return s


def completed() -> Sim:
    s = at_gate("prod-eu")
    s.approve("UALICE", "UBOB")
    s.drive()
    assert s.run.state == COMPLETED
    return s


def scenarios() -> dict[str, Sim]:
    paused = at_gate()
    paused.cmd("pause", "UBOB", reason="lunch")
    config_changed = Sim()
    config_changed.drive(before=lambda e: e.key == "staging:freeze_check")
    config_changed.fleet.revision = 8
    config_changed.drive()
    failing = Sim()
    failing.fleet.traffic[NEW] = Traffic(ratio_5xx=0.2)
    failing.drive_to_gate("staging")
    reminded = at_gate()
    assert reminded.run.gate is not None
    reminded.now = reminded.run.gate.opened_at + 1800
    reminded.tick()
    reminded.tick()
    expired = at_gate()
    assert expired.run.gate is not None
    expired.now = expired.run.gate.expires_at
    expired.tick()
    aborted = Sim()
    effect = aborted.drive(before=kind("ensure_slots"))
    assert effect is not None
    aborted.cmd("abort", "UALICE", reason="wrong window")
    aborted.perform(effect)
    refused = at_gate()
    refused.cmd("approve", REQUESTER)  # the requester may not approve their own run
    changelog = Sim(start={"changelog_ack": None})
    changelog.drive()
    smoke = Sim()
    smoke.fleet.smoke_failures = ["staging-0: GET / → 502 <html>", "staging-1: timeout"]
    smoke.drive()
    return {
        "running": mid_replacement(),
        "gate-staging": at_gate(),
        "gate-production": at_gate("prod-eu"),
        "paused": paused,
        "config-changed": config_changed,
        "verdict-fail": failing,
        "reminded": reminded,
        "expired": expired,
        "aborted-mid-replacement": aborted,
        "refused": refused,
        "changelog-waiting": changelog,
        "smoke-failed": smoke,
        "rolled-back-mixed": rolled_back_mixed(),
        "rollback-failed": failed_rollback(),
        "completed": completed(),
    }


SCENARIOS = scenarios()


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_every_message_of_every_run_state_is_valid_block_kit(name: str) -> None:
    messages_ = render_all(SCENARIOS[name])
    assert messages_


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_every_event_of_every_scenario_has_the_fields_its_kind_declares(name: str) -> None:
    for event in SCENARIOS[name].events:
        assert undeclared_fields(event) == set(), event


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_every_event_of_every_scenario_renders_in_the_cli_transcript(name: str) -> None:
    lines = [transcript.render_event(e) for e in SCENARIOS[name].events]
    assert any(lines)
    assert all(line is None or line.strip() for line in lines)


def test_the_field_check_catches_an_undeclared_or_missing_field() -> None:
    paused = SCENARIOS["paused"].of("paused")[-1]
    assert undeclared_fields({**paused, "colour": "red"}) == {"colour"}
    assert undeclared_fields({k: v for k, v in paused.items() if k != "by"}) == {"missing:by"}


def test_the_run_message_leads_with_the_key_fact_then_a_line_per_group() -> None:
    sim = SCENARIOS["gate-production"]

    message = check(render.run_message(sim.run))

    first = message.blocks[0].to_dict()["text"]["text"]
    assert first == messages.run_headline(sim.run)
    assert "Upgrading to 3.8.1 — waiting for approval of prod-eu" in first
    assert message.text == first
    groups = message.blocks[1].to_dict()["text"]["text"].splitlines()
    assert groups[0].startswith("*staging* ▰▰▰ 3/3 :white_check_mark:")
    assert groups[1].startswith("*prod-eu* ▰▰▰▰▰▰ 6/6 :hourglass_flowing_sand:")
    context = all_text(message)
    assert f"<@{REQUESTER}>" in context and "`run-1`" in context
    assert message.metadata is not None
    assert (message.metadata.event_type, message.metadata.event_payload) == (
        "upgrade_run",
        {"run_id": "run-1", "state": "waiting"},  # machine-readable, for scripts and searches
    )


def test_a_run_in_the_middle_of_a_group_shows_its_progress_bar() -> None:
    run = SCENARIOS["running"].run

    lines = all_text(render.run_message(run))
    progress = check(render.group_progress(run, "staging"))

    assert "*staging* ▰▰▱ 2/3 :arrows_counterclockwise: upgrading" in lines
    assert "replacing staging 2/3" in lines
    slot_lines = progress.blocks[1].to_dict()["text"]["text"].splitlines()
    assert slot_lines == [
        ":white_check_mark: staging-0 3.8.0 → 3.8.1",
        ":white_check_mark: staging-1 3.8.0 → 3.8.1",
        ":arrows_counterclockwise: staging-2 3.8.0 → replacing",
    ]
    assert progress.metadata is not None
    assert progress.metadata.event_payload == {"run_id": "run-1", "group": "staging"}


def test_a_paused_run_says_so_first_with_the_reason() -> None:
    run = SCENARIOS["paused"].run
    assert run.state == PAUSED

    message = check(render.run_message(run))

    assert message.text.startswith(":double_vertical_bar: Upgrade to 3.8.1 paused — lunch")
    # Not "needs approval": the gate closed with the pause, its buttons mean nothing now.
    assert "*staging* ▰▰▰ 3/3 :double_vertical_bar: paused" in all_text(message)


def test_the_metrics_summary_puts_the_verdict_first_then_before_and_after() -> None:
    event = SCENARIOS["gate-staging"].of("metrics_summary")[0]

    message = check(render.metrics_summary(event, event_id="17-0"))

    lines = message.blocks[0].to_dict()["text"]["text"].splitlines()
    assert lines[0] == ":white_check_mark: PASS — staging after the upgrade"
    assert lines[1:] == messages.metric_lines(event["before"], event["after"])
    assert lines[1] == "5xx 0.0% → 0.0%"
    assert lines[2] == "p99 24.9 ms → 24.9 ms"
    assert lines[3].startswith("Requests 900 → 1,800")
    reasons = message.blocks[1].to_dict()["elements"][0]["text"]
    assert "5xx ratio 0.0% after vs 0.0% before" in reasons
    assert message.metadata is not None
    assert message.metadata.event_payload == {
        "run_id": "run-1",
        "type": "metrics_summary",
        "event_id": "17-0",
    }


def test_a_failing_verdict_recommends_rolling_back() -> None:
    sim = SCENARIOS["verdict-fail"]
    summary = check(render.event_message(sim.of("metrics_summary")[0]))
    gate = check(render.gate_message(sim.run, sim.of("gate_opened")[0], approvers=APPROVERS))

    assert summary.text.startswith(":x: FAIL")
    assert "5xx 0.0% → 20.0%" in all_text(summary)
    assert "Recommended: *roll back*" in all_text(gate)
    # Green means go: Approve is not the highlighted button when the advice is to roll back.
    assert button(gate, "gate_approve").style is None
    assert button(gate, "gate_rollback").style == "danger"


# --- the gate -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "production"), [("gate-staging", False), ("gate-production", True)]
)
def test_gate_buttons_carry_ids_values_and_confirmations(name: str, production: bool) -> None:
    sim = SCENARIOS[name]
    opened = sim.of("gate_opened")[-1]

    message = check(render.gate_message(sim.run, opened, approvers=APPROVERS))

    assert [b.action_id for b in actions(message)] == [
        "gate_approve",
        "gate_pause",
        "gate_rollback",
    ]
    for b in actions(message):
        assert json.loads(b.value or "") == {"run": "run-1", "gate": opened["gate"]}
        assert render.read_value(b.value or "") == {"run": "run-1", "gate": opened["gate"]}
    approve, pause, rollback = actions(message)
    assert (approve.text.text, pause.text.text, rollback.text.text) == (
        messages.BUTTON_APPROVE,
        messages.BUTTON_PAUSE,
        messages.BUTTON_ROLLBACK,
    )
    assert approve.style == "primary" and pause.style is None and rollback.style == "danger"
    assert rollback.confirm is not None  # always: a rollback cannot be paused
    assert rollback.confirm.to_dict()["style"] == "danger"
    assert "newest group first" in rollback.confirm.to_dict()["text"]["text"]
    if production:
        assert approve.confirm is not None
        assert approve.confirm.to_dict()["title"]["text"] == "Approve prod-eu?"
    else:
        assert approve.confirm is None
    assert message.metadata is not None
    assert message.metadata.event_type == "upgrade_gate"
    assert message.metadata.event_payload == {
        "run_id": "run-1",
        "gate_id": opened["gate"],
        "verdict": opened["verdict"]["phase"],
        "recommend": opened["recommend"],
        "decision": "",
    }


def test_the_gate_says_who_may_approve_how_many_when_it_expires_and_how_to_react() -> None:
    sim = SCENARIOS["gate-production"]
    opened = sim.of("gate_opened")[-1]
    reactions = render.Reactions(approve="thumbsup", pause="pause_button", rollback="back")

    message = check(render.gate_message(sim.run, opened, approvers=APPROVERS, reactions=reactions))

    text = all_text(message)
    assert (
        message.blocks[0]
        .to_dict()["text"]["text"]
        .startswith(":raised_hand: Approval needed: *prod-eu* :rotating_light: production")
    )
    assert "Needs 2 approvals from <@UALICE>, <@UBOB>, <!subteam^S0ONCALL>" in text
    assert f"Expires <!date^{int(opened['expires_at'])}^" in text
    assert "Recommended: approve (this is the last group)" in text
    assert "react :thumbsup: approve · :pause_button: pause · :back: roll back" in text
    assert "you'll be asked to confirm" in text


def test_an_approval_so_far_shows_on_the_re_rendered_gate() -> None:
    sim = at_gate("prod-eu")
    sim.approve("UALICE")

    message = check(render.gate_message(sim.run, sim.of("gate_opened")[-1], approvers=APPROVERS))

    assert "1/2 so far: <@UALICE>" in all_text(message)
    assert len(actions(message)) == 3  # still pending: the buttons stay


@pytest.mark.parametrize("form", ["record", "decided-event", "opened-event"])
def test_a_decided_gate_loses_its_buttons_and_names_the_deciders(form: str) -> None:
    sim = at_gate("prod-eu")
    sim.approve("UALICE", "UBOB")
    gate = sim.run.gate
    assert gate is not None and gate.decision == "approved"
    given: Any = {
        "record": gate,
        "decided-event": sim.of("gate_decided")[-1],
        "opened-event": sim.of("gate_opened")[-1],
    }[form]

    message = check(render.gate_decided(sim.run, given))

    assert not any(isinstance(b, ActionsBlock) for b in message.blocks)
    first = message.blocks[0].to_dict()["text"]["text"]
    assert first == messages.gate_decision("approved", ("UALICE", "UBOB"), gate.decided_at)
    assert first.startswith(":white_check_mark: Approved by <@UALICE>, <@UBOB>")
    assert "Approval of *prod-eu*" in all_text(message)
    assert "react" not in all_text(message)
    assert message.metadata is not None
    assert message.metadata.event_payload == {
        "run_id": "run-1",
        "gate_id": gate.id,
        "verdict": "pass",
        "recommend": "approve",
        "decision": "approved",
    }


@pytest.mark.parametrize(
    ("decision", "by", "expected"),
    [
        ("rollback", ("UBOB",), ":rewind: Rolled back by <@UBOB>"),
        ("paused", ("UALICE",), ":double_vertical_bar: Paused by <@UALICE>"),
        ("expired", (), ":hourglass: Expired — nobody decided in time"),
        ("aborted", ("UALICE",), ":no_entry_sign: Aborted by <@UALICE>"),
    ],
)
def test_every_gate_decision_is_shown_with_who_decided(
    decision: str, by: tuple[str, ...], expected: str
) -> None:
    sim = SCENARIOS["gate-staging"]
    gate = sim.run.gate
    assert gate is not None
    decided = gate.with_(decision=decision, decided_by=by, decided_at=T0 + 500)

    message = check(render.gate_decided(sim.run, decided))

    assert message.text.startswith(expected)
    assert not actions(message)


def test_an_expired_gate_event_renders_as_expired_after_the_record_moved_on() -> None:
    sim = SCENARIOS["expired"]
    (expired,) = sim.of("gate_expired")

    message = check(render.gate_decided(sim.run, expired))

    assert message.text.startswith(":hourglass: Expired")


def test_a_reaction_on_a_production_gate_asks_for_confirmation_first() -> None:
    message = check(render.reaction_confirm("run-1", "run-1:prod-eu:2", "approve", "prod-eu"))

    assert message.text == (
        "You reacted :white_check_mark: on production group *prod-eu* — confirm approval?"
    )
    (confirm,) = actions(message)
    assert confirm.action_id == "reaction_confirm"
    assert confirm.style == "primary"
    assert json.loads(confirm.value or "") == {
        "run": "run-1",
        "gate": "run-1:prod-eu:2",
        "action": "approve",
    }
    rollback = check(
        render.reaction_confirm(
            "run-1",
            "run-1:prod-eu:2",
            "rollback",
            "prod-eu",
            reactions=render.Reactions(rollback="back"),
        )
    )
    assert rollback.text.startswith("You reacted :back: on production group *prod-eu*")
    assert actions(rollback)[0].style == "danger"


# --- thread posts ---------------------------------------------------------------------------------


def posts(sim: Sim) -> dict[str, Message]:
    out = {}
    for event in sim.events:
        message = render.event_message(
            event, run=sim.run, approvers=APPROVERS, escalation_mention=ESCALATION
        )
        if message is not None:
            out[event["type"]] = check(message)
    return out


def test_events_that_only_move_progress_or_gates_get_no_post_and_refusals_stay_private() -> None:
    sim = SCENARIOS["refused"]
    assert sim.of("refused")

    silent = {
        "run_started",
        "group_started",
        "slot_replacing",
        "slot_replaced",
        "smoke_passed",
        "gate_opened",
        "approval_recorded",
        "gate_decided",
        "refused",
    }
    assert silent - {"approval_recorded", "gate_decided"} <= {e["type"] for e in sim.events}
    for event in [*sim.events, *SCENARIOS["completed"].events]:
        if event["type"] in silent:
            assert render.event_message(event, run=sim.run) is None, event["type"]


def test_the_changelog_is_shown_compactly_with_an_acknowledge_button_for_the_requester() -> None:
    sim = SCENARIOS["changelog-waiting"]
    assert sim.run.state == WAITING and sim.run.changelog_ack is None
    (event,) = sim.of("changelog")

    message = check(render.event_message(event, run=sim.run))

    text = all_text(message)
    assert "*3.8.1*\n• fix: upstream keepalive pool leak" in text
    assert f"<@{REQUESTER}>, acknowledge" in text
    ack = button(message, "changelog_ack")
    assert json.loads(ack.value or "") == {"run": "run-1"}

    sim.cmd("acknowledge", REQUESTER)
    after = check(render.changelog_message(event, run=sim.run))

    assert not actions(after)  # no stale button once acknowledged
    assert messages.changelog_acknowledged(REQUESTER) in all_text(after)


def test_warnings_prechecks_backups_and_overrides_are_posted() -> None:
    sim = Sim(start={"overrides": ("unhealthy",)})
    sim.fleet.warnings = ["prod-eu: no PodDisruptionBudget <covers> the gateway & more"]
    sim.drive_to_gate("staging")

    by_type = posts(sim)

    assert by_type["warning"].text == (
        ":warning: prod-eu: no PodDisruptionBudget &lt;covers&gt; the gateway &amp; more"
    )
    assert by_type["override_granted"].text.startswith(":warning: Override *unhealthy* granted")
    assert by_type["precheck"].text == ":white_check_mark: Pre-check control plane ok: 3.8.1"
    assert by_type["backup_waived"].text.startswith(":warning: No backup: waived by <@UREQ>")
    assert by_type["freeze_started"].text.startswith(":ice_cube: Config freeze from revision 7")
    backup = check(
        render.event_message(
            {
                "type": "backup_done",
                "run_id": "run-1",
                "artifact": "/backups/api7ee-run-1.dump",
                "size": 123_456_789,
                "sha256": "ab" * 32,
            }
        )
    )
    assert backup.text == (
        ":floppy_disk: Backup done: `/backups/api7ee-run-1.dump` · 123.5 MB"
        " · sha256 `abababababab…`"
    )


def test_a_config_change_during_the_freeze_is_loud_and_says_how_to_go_on() -> None:
    by_type = posts(SCENARIOS["config-changed"])

    message = by_type["config_changed"]
    assert isinstance(message.blocks[0], HeaderBlock)
    assert message.blocks[0].text.text == messages.CONFIG_CHANGED_HEADER
    text = all_text(message)
    assert "Revision 7 → 8" in text
    assert "`/upgrade resume run-1` (accepts revision 8)" in text
    assert "`/upgrade rollback run-1`" in text


def test_reminders_mention_the_approvers_and_escalate() -> None:
    sim = SCENARIOS["reminded"]
    first, second = sim.of("gate_reminder")

    plain = check(render.event_message(first, run=sim.run, approvers=APPROVERS))
    escalated = check(render.event_message(second, run=sim.run, approvers=APPROVERS))

    assert plain.text.splitlines()[1] == "<@UALICE> <@UBOB> <!subteam^S0ONCALL>"
    assert "Escalating" not in plain.text
    assert plain.text.startswith(":alarm_clock: Reminder 1: *staging* is waiting for approval")
    assert messages.escalation("<!subteam^SONCALL>") in escalated.text  # from the event


def test_a_rollback_start_is_loud_and_shows_the_state_of_the_touched_groups() -> None:
    sim = at_gate()
    sim.cmd("rollback", "UBOB", gate_id=sim.run.gate.id, reason="p99 up")  # type: ignore[union-attr]
    (started,) = sim.of("rollback_started")

    message = check(render.event_message(started, run=sim.run))

    assert isinstance(message.blocks[0], HeaderBlock)
    text = all_text(message)
    assert "Requested by <@UBOB>: p99 up" in text
    assert "Restoring, newest group first: staging" in text
    assert f"*staging* 3.8.1 upgraded {X}2 · 3.8.1 mid-restore {X}1" in text


def test_a_failed_rollback_pages_and_lists_every_slot_by_version_and_state() -> None:
    sim = SCENARIOS["rollback-failed"]
    (failed,) = sim.of("rollback_failed")

    message = check(
        render.event_message(
            failed, run=sim.run, approvers=APPROVERS, escalation_mention=ESCALATION
        )
    )

    assert message.blocks[0].to_dict()["text"]["text"] == messages.ROLLBACK_FAILED_HEADER
    text = all_text(message)
    assert "staging-1: image pull failed: registry unreachable" in text
    assert ESCALATION in text and ESCALATION in message.text  # the notification pages
    assert ":warning: *Mixed fleet: 2 versions*" in text
    assert "*3.8.1* — 2 instances: staging-0, staging-1" in text
    assert f"*3.8.0* — 7 instances: staging {X}1, prod-eu {X}6" in text
    assert f"*staging* 3.8.1 upgraded {X}1 · 3.8.1 mid-restore {X}1 · 3.8.0 restored {X}1" in text
    assert f"*prod-eu* 3.8.0 untouched {X}6" in text
    assert ":wrench: Not restored: staging-0, staging-1" in text
    assert render.event_message(sim.of("run_failed")[0], run=sim.run) is not None


def test_a_rolled_back_run_with_a_mixed_fleet_lists_both_versions_with_counts() -> None:
    sim = SCENARIOS["rolled-back-mixed"]
    (final,) = sim.of("run_rolled_back")

    message = check(render.event_message(final, run=sim.run))

    text = all_text(message)
    assert message.text == ":leftwards_arrow_with_hook: Upgrade to 3.8.1 rolled back — p99 up"
    assert ":warning: *Mixed fleet: 2 versions*" in text
    assert "*3.8.1* — 1 instance: prod-eu-5" in text
    assert f"*3.8.0* — 8 instances: staging {X}3, prod-eu {X}5" in text
    # From the event alone (no record at hand) the mix is still shown.
    alone = check(render.event_message(final))
    assert "Mixed fleet" in all_text(alone) and alone.text.startswith(
        ":leftwards_arrow_with_hook: Run `run-1` rolled back"
    )


def test_an_aborted_run_reports_the_fleet_it_left_behind() -> None:
    sim = SCENARIOS["aborted-mid-replacement"]
    assert sim.run.state == ABORTED

    message = check(render.event_message(sim.of("run_aborted")[0], run=sim.run))

    assert "*3.8.1* — 2 instances: staging-0, staging-1" in all_text(message)
    assert "*3.8.0* — 7 instances" in all_text(message)
    assert "*staging* ▰▰▱ 2/3 :octagonal_sign: stopped" in all_text(render.run_message(sim.run))


def test_a_completed_run_summarizes_one_version_and_lifts_the_freeze() -> None:
    by_type = posts(SCENARIOS["completed"])

    final = by_type["run_completed"]
    assert final.text.startswith(":white_check_mark: Upgrade to 3.8.1 completed")
    assert f"*Fleet now*\n*3.8.1* — 9 instances: staging {X}3, prod-eu {X}6" in all_text(final)
    assert "Mixed" not in all_text(final)
    assert by_type["checkin"].text.startswith(":stethoscope: Final check-in: all 9 instances ready")
    assert by_type["freeze_lifted"].text == messages.freeze_lifted()


EVENT_TYPES = [
    "run_started", "override_granted", "waiver_granted", "inventory", "warning", "precheck",
    "override_used", "changelog", "changelog_acknowledged", "freeze_started", "backup_done",
    "backup_waived", "group_started", "slot_replacing", "slot_replaced", "slot_failed",
    "smoke_passed", "smoke_failed", "smoke_skipped", "metrics_summary", "gate_opened",
    "gate_reminder", "approval_recorded", "gate_decided", "gate_expired", "refused", "paused",
    "resumed", "held", "hold_ended", "intent_recorded", "config_changed",
    "freeze_revision_accepted", "rollback_started", "slot_restored", "rollback_failed",
    "observation_started", "checkin", "run_completed", "run_rolled_back", "run_failed",
    "run_aborted", "freeze_lifted", "effect_failed", "lock_broken",
]  # fmt: skip


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_an_event_missing_its_fields_still_renders_rather_than_stopping_notifications(
    event_type: str,
) -> None:
    message = render.event_message({"type": event_type, "run_id": "run-1"})

    if message is not None:
        check(message)


def test_free_text_cannot_mention_the_channel_or_forge_links() -> None:
    sim = at_gate()
    sim.cmd("pause", "UBOB", reason="<!channel> see <https://evil|here> & now")

    message = check(render.event_message(sim.of("paused")[-1], run=sim.run))

    assert "<!channel>" not in message.text and "<https" not in message.text
    assert "&lt;!channel&gt; see &lt;https://evil|here&gt; &amp; now" in message.text


# --- limits: 30 groups of 50 instances ------------------------------------------------------------

LONG = "production-europe-west-with-a-long-name"


def big_run(n_groups: int = 30, n_slots: int = 50) -> Run:
    """Ten groups done, one half-way, the rest queued: every line type at scale."""
    groups = []
    for i in range(n_groups):
        slots = []
        for j in range(n_slots):
            done = i < 10 or (i == 10 and j < 23)
            replacing = i == 10 and j in (23, 24)
            slots.append(
                SlotRun(
                    id=f"{LONG}-{i:02d}-{j:02d}",
                    previous_image=image(OLD),
                    previous_version=OLD,
                    current_image=image(NEW if done else OLD),
                    current_version=NEW if done else OLD,
                    status="done" if done else "replacing" if replacing else "pending",
                    replacements=1 if done else 0,
                )
            )
        status = "approved" if i < 10 else "upgrading" if i == 10 else "pending"
        groups.append(
            GroupRun(
                name=f"{LONG}-{i:02d}",
                target_image=image(NEW),
                production=i % 3 == 0,
                batch_size=2,
                status=status,
                slots=tuple(slots),
            )
        )
    return Run(
        id="up-3.8.1-20260101-120000-abcd",
        target_version=NEW,
        requester=REQUESTER,
        created_at=T0,
        updated_at=T0 + 3600,
        groups=tuple(groups),
        plan_hash="0123456789abcdef",
        step="group",
        group_index=10,
        phase="replace",
        config_revision=7,
    )


def test_thirty_groups_of_fifty_instances_stay_within_slack_limits() -> None:
    run = big_run()
    gate = Gate(
        id=f"{run.id}:{run.groups[10].name}:11",
        group=run.groups[10].name,
        opened_at=T0,
        expires_at=T0 + 3600,
        next_reminder_at=T0 + 900,
        required=3,
        verdict="inconclusive",
        approvals=tuple(Approval(user=f"U{i:08d}", at=T0) for i in range(2)),
    )
    waiting = run.with_(state=WAITING, gate=gate, phase="gate", reason="waiting")
    opened = {
        "type": "gate_opened",
        "run_id": run.id,
        "group": gate.group,
        "gate": gate.id,
        "verdict": {"phase": "inconclusive", "reasons": [f"reason {i} " * 40 for i in range(30)]},
        "required": 3,
        "expires_at": gate.expires_at,
        "production": True,
        "recommend": "approve",
    }
    many_approvers = [f"U{i:08d}" for i in range(400)]

    rendered = [
        check(render.run_message(run)),
        check(render.status_message(waiting)),
        check(render.gate_message(waiting, opened, approvers=many_approvers)),
        check(render.gate_decided(waiting, gate.with_(decision="approved", decided_at=T0))),
        check(render.history_message([run] * 60)),
        *(check(render.group_progress(run, g.name)) for g in run.groups),
    ]

    run_lines = all_text(rendered[0])
    assert f"*{LONG}-10* ▰▰▰▰▱▱▱▱▱▱ 23/50 :arrows_counterclockwise: upgrading" in run_lines
    assert f"*{LONG}-29* ▱▱▱▱▱▱▱▱▱▱ 0/50 :white_circle: queued" in run_lines
    failed = check(render.run_message(run.with_(state=FAILED, reason="x" * 5000)))
    assert messages.see_thread() in all_text(failed)  # an absurd reason is cut, with a hint
    progress = all_text(rendered[-20])  # group 10: two instances replacing among fifty
    assert f":arrows_counterclockwise: {LONG}-10-23 3.8.0 → replacing" in progress
    assert "… and 48 more: 23 done · 25 pending" in progress
    assert "All 50: 50 done" in all_text(rendered[-30])
    gate_buttons = actions(rendered[2])
    assert len(gate_buttons) == 3 and gate_buttons[0].confirm is not None
    assert "2/3 so far" in all_text(rendered[2])


def test_a_failed_rollback_of_fifteen_hundred_instances_fits_one_message() -> None:
    run = big_run().with_(
        state=ROLLING_BACK,
        reason="verdict fail",
        rollback=Rollback(reason="verdict fail", by="UALICE", automatic=False, started_at=T0),
        pending=Pending(key="restore:x", kind="ensure_slots", args={"restore": True}),
    )

    decision = decide(
        run, Failure("restore:x", "registry unreachable " * 20), T0 + 10, make_config()
    )

    types = [e["type"] for e in decision.events]
    assert types[-2:] == ["rollback_failed", "run_failed"]
    for event in decision.events:
        message = render.event_message(
            event, run=decision.run, approvers=APPROVERS, escalation_mention=ESCALATION
        )
        if message is not None:
            text = all_text(check(message))
            assert "Mixed fleet: 2 versions" in text
            assert "*3.8.1* — 523 instances" in text
            assert "*3.8.0* — 977 instances" in text


def test_long_changelogs_plans_and_check_ins_are_cut_with_a_hint() -> None:
    changelog = {
        "type": "changelog",
        "run_id": "run-1",
        "source": "https://example.invalid/CHANGELOG.md",
        "entries": [
            {
                "version": f"3.{i}.0",
                "text": "\n".join(
                    f"- **fix** [issue {k}](https://github.com/apache/apisix/pull/{k}) " + "w " * 50
                    for k in range(30)
                ),
            }
            for i in range(40)
        ],
    }
    message = check(render.event_message(changelog))
    text = all_text(message)
    assert "• *fix* <https://github.com/apache/apisix/pull/0|issue 0>" in text
    assert "… 32 more versions in `https://example.invalid/CHANGELOG.md`" in text
    assert button(message, "changelog_ack").style == "primary"

    rows = [
        {
            "name": f"{LONG}-{i:02d}",
            "production": i % 3 == 0,
            "image": image(NEW),
            "batch_size": 2,
            "slots": [
                {"id": f"{LONG}-{i:02d}-{j:02d}", "version": OLD, "image": image(OLD), "ready": j}
                for j in range(50)
            ],
            "to_replace": 50,
        }
        for i in range(30)
    ]
    plan = Plan(
        target_version=NEW,
        groups=rows,
        current_version=OLD,
        warnings=[f"warning {i}: " + "w" * 200 for i in range(30)],
        blockers=[f"{LONG}-{i:02d}: not ready: {LONG}-{i:02d}-00" for i in range(30)],
        control_plane={"version": "3.8.0"},
        changelog={"entries": changelog["entries"], "source": "CHANGELOG.md"},
        backup="command hook",
        plan_hash="0123456789abcdef",
    )
    planned = check(render.plan_message(plan))
    assert planned.text == ":no_entry: Plan for 3.8.1: 30 blockers — a start would be refused"
    assert f"1. *{LONG}-00* :rotating_light: 3.8.0 {X}50 · 50/50 to replace · batch 2" in all_text(
        planned
    )
    assert ":warning: 1 not ready" in all_text(planned)

    checkin = {
        "type": "checkin",
        "run_id": "run-1",
        "final": False,
        "groups": {
            f"{LONG}-{i:02d}": {
                "ready": 49,
                "slots": 50,
                "versions": [OLD, NEW],
                "since_upgrade": {"ratio_5xx": 0.012},
            }
            for i in range(30)
        },
    }
    troubled = check(render.event_message(checkin))
    assert troubled.text.startswith(":warning: Check-in: not everything looks right")
    assert f"*{LONG}-00* 49/50 ready · 3.8.0, 3.8.1 · 5xx 1.2%" in all_text(troubled)


def test_a_small_plan_reads_top_down_and_says_how_to_start() -> None:
    fleet = Fleet()
    rows = [
        {
            "name": name,
            "production": name == "prod-eu",
            "image": image(NEW),
            "batch_size": 2,
            "slots": [
                {k: s.get(k) for k in ("id", "version", "image", "ready")}
                for s in (i.as_slot() for i in fleet.groups[name])
            ],
            "to_replace": len(fleet.groups[name]),
        }
        for name in ("staging", "prod-eu")
    ]
    plan = Plan(
        target_version=NEW,
        groups=rows,
        current_version=OLD,
        control_plane={
            "skipped": "no control plane configured: the CP version pre-check is skipped"
        },
        changelog={"entries": [{"version": NEW, "text": "- fix"}], "source": "CHANGELOG.md"},
        backup="none configured: a start needs a waiver with a reason",
        plan_hash="17be1aa939676bf9",
    )

    message = check(render.plan_message(plan, command="/gw"))

    assert message.text == ":clipboard: Plan: 2 groups to 3.8.1, 9 instances to replace"
    text = all_text(message)
    assert f"1. *staging* 3.8.0 {X}3 · 3/3 to replace · batch 2" in text
    assert f"2. *prod-eu* :rotating_light: 3.8.0 {X}6 · 6/6 to replace · batch 2" in text
    assert ":fast_forward: Control plane: no control plane configured" in text
    assert "Start: `/gw start 3.8.1 staging prod-eu`" in text


# --- the wording module ---------------------------------------------------------------------------


def test_refusals_name_what_is_valid_and_where_to_look() -> None:
    assert messages.unknown_group(["prod-xx"], ["staging", "prod-eu"]) == (
        "Unknown group `prod-xx`. Groups: `staging`, `prod-eu`."
    )
    assert messages.malformed_version("3.8").startswith(
        "`3.8` is not a version like `3.8.1` or `3.2.14.6`. Usage: `/upgrade start VERSION"
    )
    busy = messages.group_busy("prod-eu", "up-3.8.1-x", "C0123ABC")
    assert "`prod-eu` is busy: run `up-3.8.1-x` in <#C0123ABC>" in busy
    assert messages.run_finished("run-1", ROLLED_BACK) == (
        "Run `run-1` has already ended (rolled back); there is nothing to change."
    )
    assert messages.not_allowed("rollback", "prod-eu", ["S0ONCALL"]) == (
        "You may not roll back on `prod-eu`: the policy leaves you out. Ask <!subteam^S0ONCALL>."
    )
    assert messages.stale_gate("approved", ["UALICE"]) == (
        "This approval request is no longer pending (approved by <@UALICE>)."
    )
    assert messages.stale_gate().startswith("This approval request is no longer pending (")
    assert messages.unknown_run("nope") == (
        "There is no run `nope`. `/upgrade status` lists the active runs."
    )


def test_help_and_usage_cover_every_subcommand() -> None:
    text = messages.help_text("/gw")
    for sub in ("plan", "start", "status", "pause", "resume", "approve", "rollback", "abort"):
        assert f"`/gw {sub}" in text
        assert messages.usage(sub, "/gw").startswith(f"Usage: `/gw {sub}")
    for sub in ("history", "help", "ack"):
        assert f"`/gw {sub}" in text
    assert messages.usage_error("Which run?", "pause RUN [REASON]", "/gw") == (
        "Which run? Usage: `/gw pause RUN [REASON]`"
    )


@pytest.mark.parametrize(
    ("action", "state", "expected"),
    [
        ("pause", PAUSED, ":double_vertical_bar: Run `run-1` paused."),
        ("pause", RUNNING, ":hourglass: Pause of `run-1` recorded"),
        ("abort", ABORTED, ":no_entry_sign: Run `run-1` aborted."),
        ("rollback", ROLLING_BACK, ":rewind: Rolling back run `run-1`."),
        ("approve", WAITING, ":white_check_mark: Approval recorded on `run-1`; more approvers"),
        ("approve", RUNNING, ":white_check_mark: Approved; run `run-1` continues."),
        ("ack", RUNNING, ":memo: Changelog acknowledged"),
    ],
)
def test_a_confirmation_says_whether_the_command_took_effect_or_waits(
    action: str, state: str, expected: str
) -> None:
    assert messages.done(action, "run-1", state).startswith(expected)


def test_reasons_show_people_by_name_not_by_id() -> None:
    """The engine writes 'rollback requested by U0BOB00002'; Slack should show @bob."""
    assert messages.prose("rollback requested by U0BOB00002") == (
        "rollback requested by <@U0BOB00002>"
    )
    assert messages.prose("URGENT: <b> & W0CAROL0003") == "URGENT: &lt;b&gt; &amp; <@W0CAROL0003>"
    headline = messages.final_headline(
        "run_rolled_back", "3.8.1", "run-1", "rollback requested by U0BOB00002"
    )
    assert headline.endswith("rollback requested by <@U0BOB00002>")


def test_the_control_plane_view_is_shown_beside_the_runtime_view() -> None:

    sim = cp_sim()
    sim.fleet.cp_unreachable_versions = {NEW}
    sim.drive()

    by_type = posts(sim)
    failed = by_type["cp_verified"].text
    assert failed.startswith(
        ":x: `staging` on the control plane: runtime 3 instances · CP :x: 0/3 Healthy on "
        f"{NEW} — control-plane check failed on staging: the CP lists 0 of 3"
    ), failed
    progress = all_text(check(render.group_progress(sim.run, "staging")))
    assert f"runtime 3 instances · CP :x: 0/3 Healthy on {NEW}" in progress
    line = transcript.LINES[EventKind.CP_VERIFIED](sim.of("cp_verified")[0])
    assert line is not None and line.startswith(
        f"[staging] control plane: 0/3 instances Healthy on {NEW} (runtime: 3) — FAILED: "
    )

    ok = cp_sim()
    ok.drive_to_gate("staging")
    assert posts(ok)["cp_verified"].text == (
        f":white_check_mark: `staging` on the control plane: runtime 3 instances · CP "
        f":white_check_mark: 3/3 Healthy on {NEW}"
    )
    assert f"CP :white_check_mark: 3/3 Healthy on {NEW}" in all_text(
        check(render.group_progress(ok.run, "staging"))
    )


def test_an_observation_alert_says_why_and_offers_a_rollback_confirmed_on_production() -> None:
    sim = at_gate("prod-eu")
    sim.approve("UALICE", "UBOB")
    sim.drive(until=lambda s: len(s.of("checkin")) == 1)
    sim.fleet.traffic[NEW] = Traffic(ratio_5xx=0.2)
    sim.drive()
    staging, prod = sim.of("observation_alert")

    for event, production in ((staging, False), (prod, True)):
        message = check(render.event_message(event, run=sim.run))
        text = all_text(message)
        assert f"*{event['group']}* fails since its upgrade" in text
        assert "5xx ratio" in text  # the rule and its numbers
        rollback = button(message, "observe_rollback")
        assert rollback.style == "danger"
        assert json.loads(rollback.value or "") == {"run": "run-1", "group": event["group"]}
        assert (rollback.confirm is not None) is production
