"""Records saved by a real bot are loaded and continued correctly by this code.

The records in ``records/`` were saved by the engine (schema 1) at interesting points of real
runs (see ``records/README.md``). Pure tests: ``load_run`` reads each, migrating it to this
code's schema, and ``decide`` takes it on from there as the bot that saved it would have. A
record from a newer bot, one holding what this code does not know, or one whose plan was
edited, is refused with ``Unresumable`` instead of being guessed at.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from upgrade_bot.engine.config import Config, load_config
from upgrade_bot.engine.decide import Command, Decision, Outcome, Tick, decide
from upgrade_bot.engine.metrics import Summary
from upgrade_bot.engine.model import (
    PAUSED,
    ROLLED_BACK,
    ROLLING_BACK,
    RUNNING,
    SCHEMA_VERSION,
    WAITING,
    Action,
    Intent,
    Pending,
    Run,
    SlotRun,
)
from upgrade_bot.engine.schema import Unresumable, load_run

RECORDS = Path(__file__).parent / "records"
OLD, NEW = "3.8.0", "3.8.1"
OLD_IMAGE, NEW_IMAGE = f"sandbox/apisix:{OLD}", f"sandbox/apisix:{NEW}"
APPROVER = "rec-approver"
NAMES = (
    "gate_after_first_group",
    "paused_config_changed",
    "mid_rollback",
    "intent_during_baseline",
)


def record(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((RECORDS / f"{name}.json").read_text())
    return data


@pytest.fixture(scope="module")
def config() -> Config:
    return load_config(RECORDS / "config.yaml")


def types(decision: Decision) -> list[str]:
    return [e["type"] for e in decision.events]


def later(run: Run, seconds: float = 1.0) -> float:
    """A moment shortly after the record was saved (a bot restarted quickly)."""
    return run.updated_at + seconds


def migrated(data: dict[str, Any]) -> dict[str, Any]:
    """What schemas 2, 3 and 4 must make of a schema-1 record: ``cp``'s three meanings in three
    fields, a pending window-end measurement told where its window started (2), groups that
    were never watched while replaced (3), and no control-plane view for any group (4)."""
    out = copy.deepcopy(data)
    cp = out.pop("cp") or {}
    for group in out["groups"]:
        group["control_plane"] = None  # schema 4: absent before, nothing invented
    out.update(
        schema=4,
        cp_version=cp.get("version"),
        seen_revision=cp.get("seen_revision"),
        intent=cp.get("intent"),
    )
    pending = out["pending"]
    if pending and pending["kind"] == "scrape" and pending["key"].endswith("_end"):
        name, phase = pending["key"].split(":")
        field = "baseline_snapshot" if phase == "baseline_end" else "settle_snapshot"
        pending["args"]["mark"] = next(g for g in out["groups"] if g["name"] == name)[field]
    out["groups"] = [
        {**g, "watch_snapshot": None, "watched": 0, "watch": None, "observed": None, "points": []}
        for g in out["groups"]
    ]
    return out


@pytest.mark.parametrize("name", NAMES)
def test_every_field_of_a_saved_record_is_known_to_this_code(name: str) -> None:
    data = record(name)
    assert data["schema"] == 1 and SCHEMA_VERSION == 4
    run = load_run(copy.deepcopy(data))
    # Every value is kept, each in its new place: nothing was dropped or invented.
    saved = json.loads(json.dumps(run.to_dict()))
    assert saved == migrated(data)
    # And a record saved by this code is read back exactly.
    assert load_run(copy.deepcopy(saved)) == run


def test_approving_the_gate_starts_the_next_group(config: Config) -> None:
    run = load_run(record("gate_after_first_group"))
    assert run.state == WAITING and run.gate is not None and run.gate.decision is None
    assert run.gate.group == "prod-eu" and run.group_index == 0 and run.pending is None
    assert [s.current_version for s in run.group("prod-eu").slots] == [NEW, NEW]
    assert [s.status for s in run.group("prod-us").slots] == ["pending", "pending"]

    d = decide(run, Command("approve", APPROVER, gate_id=run.gate.id), later(run), config)

    assert d.refusal is None
    assert d.run.state == RUNNING and d.run.group_index == 1 and d.run.phase == "baseline_start"
    assert d.run.gate is not None and d.run.gate.decision == "approved"
    assert d.run.group("prod-eu").status == "approved"
    assert d.run.group("prod-us").status == "upgrading"
    assert types(d) == ["approval_recorded", "gate_decided", "group_started"]
    assert d.events[-1]["group"] == "prod-us" and d.events[-1]["image"] == NEW_IMAGE
    # The next group's first effect: its baseline measurement.
    baseline = Pending(key="prod-us:baseline_start", kind="scrape", args={"group": "prod-us"})
    assert d.effects == (baseline,)
    assert d.run.pending == d.effects[0]


def test_a_stale_approval_at_the_saved_gate_is_refused(config: Config) -> None:
    run = load_run(record("gate_after_first_group"))
    d = decide(run, Command("approve", APPROVER, gate_id="an-old-gate"), later(run), config)
    assert d.refusal == "this approval request is no longer pending"
    assert d.run == run and d.effects == ()


def test_resuming_after_a_config_change_accepts_it_and_opens_the_gate(config: Config) -> None:
    run = load_run(record("paused_config_changed"))
    assert run.state == PAUSED and run.phase == "freeze_check" and run.pending is None
    assert "configuration changed" in (run.reason or "")
    seen = run.seen_revision
    assert seen is not None and seen != run.config_revision
    assert run.cp_version == NEW and run.intent is None

    # Nothing happens while paused, whatever the time.
    idle = decide(run, Tick(), later(run, 3600), config)
    assert idle.effects == () and idle.events == () and idle.run.state == PAUSED

    d = decide(run, Command("resume", APPROVER), later(run), config)

    assert d.refusal is None
    assert types(d) == ["freeze_revision_accepted", "resumed", "gate_opened"]
    accepted = d.events[0]
    assert (accepted["before"], accepted["after"], accepted["by"]) == (
        run.config_revision,
        seen,
        APPROVER,
    )
    assert d.run.config_revision == seen
    assert d.run.state == WAITING and d.run.phase == "gate" and d.effects == ()
    assert d.run.gate is not None and d.run.gate.group == "prod-eu"
    assert d.run.gate.decision is None and d.run.gate.verdict == "pass"
    assert d.run.group("prod-eu").status == "awaiting_approval"


def restored(slot: SlotRun) -> dict[str, Any]:
    """What the backend answers once ``slot`` runs its recorded previous image again."""
    return {
        "slots": {
            slot.id: {
                "id": slot.id,
                "image": slot.previous_image,
                "version": slot.previous_version,
                "digest": slot.previous_digest,
                "ready": True,
                "endpoints": slot.endpoints,
            }
        },
        "errors": {},
    }


def test_a_rollback_carries_on_newest_group_first(config: Config) -> None:
    run = load_run(record("mid_rollback"))
    assert run.state == ROLLING_BACK and run.rollback is not None
    us, eu = run.group("prod-us"), run.group("prod-eu")
    assert us.slot("prod-us/1").status == "restored"
    assert us.slot("prod-us/1").current_image == OLD_IMAGE
    assert us.slot("prod-us/0").status == "restoring"
    assert [s.current_image for s in eu.slots] == [NEW_IMAGE, NEW_IMAGE]

    # A restarted driver's first Tick: the restore that was under way, for the same slot.
    d = decide(run, Tick(), later(run), config)
    assert d.effects == (run.pending,)
    effect = d.effects[0]
    assert effect.kind == "ensure_slots" and effect.key == "restore:prod-us/0:0"
    assert effect.args["slots"] == ["prod-us/0"] and effect.args["group"] == "prod-us"
    assert effect.args["image"] == OLD_IMAGE and effect.args["restore"] is True

    # Then the older group, each group's slots in reverse, until the fleet is back.
    order: list[str] = []
    now = later(run)
    while d.effects and len(order) < 10:
        effect = d.effects[0]
        assert effect.args["image"] == OLD_IMAGE and effect.args["restore"] is True
        (slot_id,) = effect.args["slots"]
        order.append(slot_id)
        slot = d.run.group(effect.args["group"]).slot(slot_id)
        now += 5.0
        d = decide(d.run, Outcome(key=effect.key, result=restored(slot)), now, config)
    assert order == ["prod-us/0", "prod-eu/1", "prod-eu/0"]
    assert d.run.state == ROLLED_BACK and d.run.reason == "5xx on prod-us"
    assert types(d)[-2:] == ["run_rolled_back", "freeze_lifted"]
    assert [g.status for g in d.run.groups] == ["rolled_back", "rolled_back"]
    for _, s in d.run.slots():
        assert (s.current_image, s.replacements, s.restorations) == (OLD_IMAGE, 1, 1), s


def test_a_pause_asked_during_a_measurement_applies_once_it_is_recorded(config: Config) -> None:
    run = load_run(record("intent_during_baseline"))
    # cp's three meanings, each intact in its own field.
    assert run.cp_version == NEW and run.seen_revision == 1 and run.config_revision == 1
    assert run.intent == Intent(
        action=Action.PAUSE, user=APPROVER, reason="checking the eu dashboards first"
    )
    us = run.group("prod-us")
    assert run.state == RUNNING and run.phase == "baseline_end" and us.before is None
    assert run.pending is not None and run.pending.key == "prod-us:baseline_end"
    assert run.pending.kind == "scrape" and run.pending.args["group"] == "prod-us"
    # The window's start travels with the effect, so the metrics source can answer the window.
    assert us.baseline_snapshot is not None
    assert run.pending.args["mark"] == us.baseline_snapshot

    # A restarted driver performs the measurement that was under way, and nothing else.
    d = decide(run, Tick(), later(run), config)
    assert d.effects == (run.pending,) and d.events == ()

    before = Summary(40, 0, 0, 0.0, 0.0, 12.0, 19.0, 20.0, 2.0, 20.0)
    d = decide(run, Outcome(run.pending.key, {"summary": before.to_dict()}), later(run), config)

    # The window is recorded, then the pause asked meanwhile takes effect.
    assert d.run.group("prod-us").before == before.to_dict()
    assert types(d) == ["paused"] and d.events[0]["by"] == APPROVER
    assert d.run.state == PAUSED and d.run.reason == "checking the eu dashboards first"
    assert d.run.intent is None and d.run.pending is None and d.effects == ()
    assert d.run.phase == "replace"
    assert (d.run.cp_version, d.run.seen_revision) == (NEW, 1)

    # Resumed, prod-us is replaced one slot at a time, within the group's ready timeout.
    resumed = decide(d.run, Command("resume", APPROVER), later(run, 60), config)
    assert types(resumed) == ["resumed", "slot_replacing"]
    (effect,) = resumed.effects
    assert effect.kind == "ensure_slots" and effect.args["slots"] == ["prod-us/0"]
    assert effect.args["image"] == NEW_IMAGE
    assert effect.args["ready_timeout_s"] == config.rollout_for("prod-us").ready_timeout_s == 30


@pytest.mark.parametrize("name", NAMES)
def test_a_record_from_a_newer_bot_asks_for_an_upgrade(name: str) -> None:
    data = record(name)
    data["schema"] = SCHEMA_VERSION + 1
    with pytest.raises(Unresumable, match="upgrade this bot") as err:
        load_run(data)
    assert data["id"] in str(err.value)
    assert f"schema {SCHEMA_VERSION + 1}" in str(err.value)
    assert "saved by a newer upgrade-bot" in str(err.value)
    assert f"reads up to {SCHEMA_VERSION}" in str(err.value)


def _unknown_field(data: dict[str, Any]) -> None:
    data["canary_weight"] = 10


def _unknown_slot_field(data: dict[str, Any]) -> None:
    data["groups"][0]["slots"][0]["zone"] = "eu-west-1a"


def _unknown_state(data: dict[str, Any]) -> None:
    data["state"] = "canarying"


@pytest.mark.parametrize("edit", [_unknown_field, _unknown_slot_field, _unknown_state])
def test_a_record_holding_what_this_code_does_not_know_is_refused_whole(edit: Any) -> None:
    current = load_run(record("intent_during_baseline")).to_dict()  # saved by this code
    data = json.loads(json.dumps(current))
    edit(data)
    with pytest.raises(Unresumable, match="upgrade this bot") as err:
        load_run(data)
    assert data["id"] in str(err.value) and f"schema {SCHEMA_VERSION}" in str(err.value)


def test_a_schema_1_record_with_an_unknown_cp_key_is_refused() -> None:
    data = record("gate_after_first_group")
    data["cp"]["edition"] = "ee"
    with pytest.raises(Unresumable, match="unknown cp key") as err:
        load_run(data)
    assert data["id"] in str(err.value) and "schema 1" in str(err.value)


def _retarget_image(data: dict[str, Any]) -> None:
    data["groups"][1]["target_image"] = "sandbox/apisix:3.8.2"


def _retarget_version(data: dict[str, Any]) -> None:
    data["target_version"] = "3.8.2"


def _reorder_groups(data: dict[str, Any]) -> None:
    data["groups"].reverse()


def _bigger_batches(data: dict[str, Any]) -> None:
    data["groups"][0]["batch_size"] = 2


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    "edit", [_retarget_image, _retarget_version, _reorder_groups, _bigger_batches]
)
def test_a_record_whose_plan_was_edited_is_refused(name: str, edit: Any) -> None:
    data = record(name)
    edit(data)
    with pytest.raises(Unresumable, match="plan does not match its hash"):
        load_run(data)
