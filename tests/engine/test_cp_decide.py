"""The control plane in the pure core: instances already unhealthy before the start, and each
group checked on the CP after its last replacement (a group the CP does not list Healthy on the
target is a hard failure: automatic rollback)."""

from __future__ import annotations

from typing import Any

from upgrade_bot.engine.model import FAILED, ROLLED_BACK, RUNNING, WAITING

from .runs import NEW, OLD, REQUESTER, Sim, make_config

CP = {"control_plane": {"url": "https://cp.test:7443", "verify_timeout_s": 40}}
GROUPS = {
    "groups": [
        {
            "name": "staging",
            "image": {"repository": "registry.test/gw"},
            "backend": {"type": "local", "sandbox_url": "http://127.0.0.1:1"},
            "gateway_group": "staging",
        },
        {
            "name": "prod-eu",
            "production": True,
            "image": {"repository": "registry.test/gw"},
            "backend": {"type": "local", "sandbox_url": "http://127.0.0.1:1"},
            "gateway_group_id": "86fb9981-d9d2-4555-9df8-91ae92129335",
        },
    ]
}


def cp_sim(**start: Any) -> Sim:
    sim = Sim(config=make_config({**CP, **GROUPS}), start=start)
    sim.fleet.cp_lists_instances = True
    return sim


def until_gate(sim: Sim) -> bool:
    return sim.run.state == WAITING and sim.run.gate is not None


def test_a_release_whose_instances_never_reach_the_cp_is_rolled_back_after_its_first_group() -> (
    None
):
    sim = cp_sim()
    sim.fleet.cp_unreachable_versions = {NEW}

    sim.drive()

    assert sim.run.state == ROLLED_BACK
    assert sim.run.reason is not None
    assert sim.run.reason.startswith(
        f"control-plane check failed on staging: the CP lists 0 of 3 instances Healthy on {NEW}"
    )
    assert "not listed: staging-0, staging-1, staging-2" in sim.run.reason
    (failed,) = sim.of("cp_verified")
    assert failed["status"] == "failed" and failed["view"]["expected"] == 3
    assert sim.run.group("staging").control_plane == failed["view"]
    # only the first group was touched, and it is back on the old version
    assert {i.version for i in sim.fleet.groups["staging"]} == {OLD}
    assert {i.version for i in sim.fleet.groups["prod-eu"]} == {OLD}
    assert not any(e.kind == "ensure_slots" and e.args["group"] == "prod-eu" for e in sim.performed)


def test_a_group_the_cp_lists_healthy_on_the_target_goes_on_to_its_gate() -> None:
    sim = cp_sim()

    sim.drive(until=until_gate)

    assert sim.run.state == WAITING and sim.run.gate is not None
    (ok,) = sim.of("cp_verified")
    assert (ok["group"], ok["status"]) == ("staging", "ok")
    assert (ok["view"]["healthy"], ok["view"]["expected"], ok["view"]["target"]) == (3, 3, NEW)
    # checked after the last replacement and before the smoke requests
    kinds = [e.kind for e in sim.performed]
    assert kinds.index("verify_control_plane") > max(
        i for i, k in enumerate(kinds) if k == "ensure_slots"
    )
    assert kinds.index("verify_control_plane") < kinds.index("smoke")


def test_replaced_instances_still_listed_on_the_cp_are_left_out() -> None:
    sim = cp_sim()
    # the three old instances, gone from the runtime, linger on the CP as LostConnection
    sim.fleet.cp_extra["staging"] = [
        {"id": f"old-{n}", "hostname": f"old-{n}", "version": OLD, "status": "LostConnection"}
        for n in range(3)
    ]

    sim.drive(until=until_gate)

    (ok,) = sim.of("cp_verified")
    assert ok["status"] == "ok" and ok["view"]["excluded"] == 3


def test_one_new_instance_out_of_sync_fails_the_group() -> None:
    sim = cp_sim()

    def out_of_sync_after_replacement(sim: Sim) -> bool:
        if any(e.kind == "ensure_slots" for e in sim.performed):
            sim.fleet.cp_status["staging-1"] = "OutOfSync"
        return False

    sim.drive(until=out_of_sync_after_replacement)

    assert sim.run.state == ROLLED_BACK
    assert "the CP lists 2 of 3 instances Healthy" in str(sim.run.reason)
    assert f"not Healthy: staging-1 (OutOfSync, {NEW})" in str(sim.run.reason)


def test_instances_unhealthy_on_the_cp_before_the_start_refuse_the_run_naming_them() -> None:
    sim = cp_sim()
    sim.fleet.cp_status["prod-eu-4"] = "LostConnection"

    sim.drive()

    assert sim.run.state == FAILED
    assert sim.run.reason == (
        "instances already unhealthy on the control plane before the upgrade: "
        f"prod-eu: prod-eu-4 (LostConnection, {OLD}) "
        "(fix them, or start with the 'unhealthy' override)"
    )
    assert not any(e.kind == "ensure_slots" for e in sim.performed)


def test_the_unhealthy_override_lets_the_run_start_and_is_audited() -> None:
    sim = cp_sim(overrides=("unhealthy",))
    sim.fleet.cp_status["prod-eu-4"] = "OutOfSync"

    sim.drive(until=until_gate)

    (used,) = sim.of("override_used")
    assert used["override"] == "unhealthy" and used["by"] == REQUESTER
    assert used["instances"] == [f"prod-eu: prod-eu-4 (OutOfSync, {OLD})"]
    assert sim.run.state == WAITING


def test_a_cp_count_different_from_the_runtime_warns_but_does_not_block() -> None:
    sim = cp_sim()
    sim.fleet.cp_unreachable_versions = {"never"}
    sim.fleet.cp_extra["prod-eu"] = []
    real = sim.fleet.cp_instances

    def one_missing(group: str) -> list[dict[str, Any]]:
        listed = real(group)
        return listed[1:] if group == "prod-eu" else listed

    sim.fleet.cp_instances = one_missing  # type: ignore[method-assign]

    sim.drive(until=lambda s: s.run.step == "changelog" or s.run.terminal)

    warnings = [e["text"] for e in sim.of("warning")]
    assert (
        "prod-eu: the control plane lists 5 instance(s) of the group, the runtime has 6 "
        "(not listed: prod-eu-0)"
    ) in warnings
    assert sim.run.state == RUNNING


def test_without_a_control_plane_the_group_check_is_skipped_with_one_note() -> None:
    sim = Sim()
    sim.fleet.cp_version = None

    sim.drive(until=until_gate)
    sim.approve("UALICE")
    sim.drive(until=lambda s: until_gate(s) and s.run.gate.group == "prod-eu")

    (skipped,) = sim.of("cp_verified")
    assert skipped["status"] == "skipped"
    assert skipped["note"] == "no control plane configured: instances are not checked on a CP"
    assert not any(e.kind == "verify_control_plane" for e in sim.performed)
