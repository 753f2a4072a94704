"""The control-plane effects performed for real, over HTTP against the CP stand-in, and what the
engine decides from them: instances already unhealthy refuse a start, a group is verified on the
CP after its replacements, a refused key is a clear failure -- and the key appears nowhere."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from upgrade_bot.engine.adapters.controlplane import ControlPlaneClient
from upgrade_bot.engine.adapters.performer import EffectPerformer
from upgrade_bot.engine.backends.base import SlotInfo
from upgrade_bot.engine.config import Config
from upgrade_bot.engine.model import FAILED, RUNNING, Pending
from upgrade_bot.sandbox.controlplane import ControlPlaneState, group_id_for, serve_control_plane

from .runs import NEW, OLD, Sim, image, make_config
from .test_cp_decide import CP, GROUPS

pytestmark = pytest.mark.timeout(60)

API_KEY = "a7ee-Very-Secret-4c1d"
T0 = 1_700_000_000.0
SIZES = {"staging": 3, "prod-eu": 6}


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class Slots:
    """A backend that only lists: the runtime's instances, each with its host name."""

    def __init__(self, group: str, n: int) -> None:
        self.version = OLD
        self.group, self.n = group, n

    def hostname(self, i: int) -> str:
        return f"{self.group}-{i}-{self.version}"

    async def list_slots(self) -> list[SlotInfo]:
        return [
            SlotInfo(f"{self.group}-{i}", image(self.version), self.version, True, hostname=h)
            for i in range(self.n)
            if (h := self.hostname(i))
        ]

    async def preflight(self) -> list[str]:
        return []

    async def close(self) -> None:
        return None


@dataclass
class World:
    state: ControlPlaneState
    clock: Clock
    url: str
    slots: dict[str, Slots]
    config: Config

    def performer(self, key: str = API_KEY) -> EffectPerformer:
        """The wiring's performer: the key from the configured variable (CP_API_KEY)."""
        assert self.config.control_plane is not None
        cp = ControlPlaneClient.from_config(self.config.control_plane, {"CP_API_KEY": key})
        return EffectPerformer(self.config, self.slots, cp=cp)  # type: ignore[arg-type]

    def heartbeat_all(self, skip: frozenset[str] = frozenset()) -> None:
        for group, slots in self.slots.items():
            for i in range(slots.n):
                if slots.hostname(i) in skip:
                    continue
                self.state.heartbeat(
                    instance_id=f"uid-{slots.hostname(i)}",
                    hostname=slots.hostname(i),
                    ip="10.0.0.1",
                    version=slots.version,
                    gateway_group=group,
                )


@pytest.fixture
async def world() -> AsyncIterator[World]:
    clock = Clock()
    state = ControlPlaneState(version=NEW, api_key=API_KEY, clock=clock, gateway_groups=list(SIZES))
    runner, port = await serve_control_plane(state, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{port}"
    groups = {
        "groups": [
            {**g, "gateway_group_id": group_id_for("prod-eu")} if g["name"] == "prod-eu" else g
            for g in GROUPS["groups"]
        ]
    }
    config = make_config({**CP, "control_plane": {"url": url}, **groups})
    try:
        yield World(state, clock, url, {g: Slots(g, n) for g, n in SIZES.items()}, config)
    finally:
        await runner.cleanup()


async def perform_next(sim: Sim, performer: EffectPerformer, kind: str) -> Pending:
    """Drive the Sim to the effect ``kind`` and perform that one for real."""
    # the Sim drives on its own event loop: off this one, where the CP stand-in serves
    effect = await asyncio.to_thread(sim.drive, None, lambda e: e.kind == kind)
    assert effect is not None, f"the run never asked for {kind}"
    sim.performed.append(effect)
    sim.apply(await performer.perform(sim.run, effect, None))
    return effect


async def test_an_instance_lost_on_the_cp_before_the_start_refuses_the_run(world: World) -> None:
    world.heartbeat_all()
    world.clock.now += 31
    world.heartbeat_all(skip=frozenset({"prod-eu-4-" + OLD}))
    sim = Sim(config=world.config)
    performer = world.performer()
    try:
        await perform_next(sim, performer, "check_control_plane")
    finally:
        await performer.close()

    assert sim.run.state == FAILED
    assert sim.run.reason == (
        "instances already unhealthy on the control plane before the upgrade: "
        f"prod-eu: prod-eu-4-{OLD} (LostConnection, {OLD}) "
        "(fix them, or start with the 'unhealthy' override)"
    )


async def test_a_healthy_fleet_passes_and_a_missing_instance_only_warns(world: World) -> None:
    world.heartbeat_all(skip=frozenset({"staging-2-" + OLD}))
    sim = Sim(config=world.config)
    performer = world.performer()
    try:
        await perform_next(sim, performer, "check_control_plane")
    finally:
        await performer.close()

    assert sim.run.state == RUNNING and sim.run.cp_version == NEW
    warnings = [e["text"] for e in sim.of("warning")]
    assert (
        "staging: the control plane lists 2 instance(s) of the group, the runtime has 3 "
        f"(not listed: staging-2-{OLD})"
    ) in warnings
    (ok,) = [e for e in sim.of("precheck") if e["check"] == "control_plane_instances"]
    assert ok["note"] == "staging 2/2 Healthy; prod-eu 6/6 Healthy"


async def test_the_group_is_verified_once_the_cp_lists_its_new_instances(world: World) -> None:
    world.heartbeat_all()
    performer = world.performer()
    args = {"group": "staging", "target": NEW, "timeout_s": 0.3, "interval_s": 0.05}
    effect = Pending(key="staging:cp_verify", kind="verify_control_plane", args=args)  # type: ignore[arg-type]
    sim = Sim(config=world.config)
    try:
        world.slots["staging"].version = NEW  # replaced: new host names, not on the CP yet
        before = await performer.perform(sim.run, effect, None)
        world.heartbeat_all()
        after = await performer.perform(sim.run, effect, None)
    finally:
        await performer.close()

    view = before.result["view"]  # type: ignore[union-attr]
    assert (view["healthy"], view["expected"], view["excluded"]) == (0, 3, 3)
    assert before.result["waited_s"] >= 0.3  # type: ignore[union-attr]
    assert view["missing"] == [f"staging-{i}-{NEW}" for i in range(3)]
    view = after.result["view"]  # type: ignore[union-attr]
    assert (view["healthy"], view["expected"], view["target"]) == (3, 3, NEW)
    assert view["statuses"] == {"Healthy": 3}


async def test_a_refused_key_fails_the_run_naming_the_variable_never_the_key(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "a7ee-Wrong-Key-77aa"
    sim = Sim(config=world.config)
    performer = world.performer(key=wrong)
    try:
        await perform_next(sim, performer, "check_control_plane")
    finally:
        await performer.close()

    assert sim.run.state == FAILED
    assert sim.run.reason == (
        "check_control_plane failed: control plane refused the API key (401) — check CP_API_KEY"
    )
    printed = json.dumps([sim.run.to_dict(), sim.events]) + caplog.text
    assert wrong not in printed and API_KEY not in printed


async def test_the_key_appears_in_no_log_event_or_record_of_a_checked_run(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    world.heartbeat_all()
    sim = Sim(config=world.config)
    performer = world.performer()
    try:
        await perform_next(sim, performer, "check_control_plane")
        world.slots["staging"].version = NEW
        world.heartbeat_all()
        sim.fleet.cp_lists_instances = True
        await perform_next(sim, performer, "verify_control_plane")
    finally:
        await performer.close()

    assert [e["status"] for e in sim.of("cp_verified")] == ["ok"]
    printed: list[Any] = [sim.run.to_dict(), sim.events, [p.to_dict() for p in sim.performed]]
    assert API_KEY not in json.dumps(printed) + caplog.text
    assert "GET /api/instances" in caplog.text or "/api/instances" in caplog.text  # logged calls
