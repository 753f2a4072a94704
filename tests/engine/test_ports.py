"""The engine's ports: the store protocol, the backend registry and the group rollout."""

from __future__ import annotations

import asyncio
import inspect
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from upgrade_bot.engine import config
from upgrade_bot.engine.adapters.store import RedisStore
from upgrade_bot.engine.backends import BACKENDS, build_backend
from upgrade_bot.engine.backends.base import (
    PerSlotRollout,
    SlotInfo,
    SlotProgress,
    SlotStep,
)
from upgrade_bot.engine.backends.local import LocalBackend
from upgrade_bot.engine.errors import ConfigError, NotReadyError
from upgrade_bot.engine.store import Store

from ..support import Sandboxes, fleet_spec

NEW = "3.8.1"

# --- the store port ---------------------------------------------------------------------------


def port_operations(protocol: type) -> dict[str, Any]:
    return {
        name: value
        for name, value in vars(protocol).items()
        if not name.startswith("_") and inspect.iscoroutinefunction(value)
    }


def test_redis_store_implements_every_operation_of_the_store_port() -> None:
    operations = port_operations(Store)
    assert {"load", "save", "acquire_lease", "first_time", "set_cursor"} <= set(operations)
    for name, declared in operations.items():
        implemented = getattr(RedisStore, name, None)
        assert implemented is not None, f"RedisStore has no {name}"
        assert inspect.iscoroutinefunction(implemented), name
        want = [
            (p.name, p.kind, p.default) for p in inspect.signature(declared).parameters.values()
        ]
        got = [
            (p.name, p.kind, p.default) for p in inspect.signature(implemented).parameters.values()
        ]
        assert got == want, name


# --- the backend registry ---------------------------------------------------------------------


def group_with(backend: Any) -> Any:
    return SimpleNamespace(name="prod-eu", backend=backend)


def test_the_registry_builds_a_backend_by_its_configured_type() -> None:
    settings = config.LocalBackend(type="local", sandbox_url="http://127.0.0.1:1")
    backend = build_backend(group_with(settings))
    assert isinstance(backend, LocalBackend) and backend.group == "prod-eu"


def test_a_type_without_a_registry_entry_is_a_clear_config_error() -> None:
    with pytest.raises(ConfigError) as caught:
        build_backend(group_with(SimpleNamespace(type="nomad")))
    assert caught.value.problems == [
        "groups (prod-eu).backend.type: 'nomad' is not available in this version of "
        f"upgrade-bot (available: {', '.join(sorted(BACKENDS))})"
    ]
    assert "local" in BACKENDS


def test_a_docker_group_gets_the_docker_backend_without_connecting_yet() -> None:
    settings = config.DockerBackend(
        type="docker", base_url="unix:///nonexistent.sock", labels={"a": "b"}
    )
    backend = build_backend(group_with(settings))
    assert type(backend).__name__ == "DockerBackend" and backend.group == "prod-eu"


# --- the group rollout ------------------------------------------------------------------------


class Recorder:
    def __init__(self, pause_after_ready: asyncio.Event | None = None) -> None:
        self.news: list[tuple[str, SlotStep]] = []
        self.pause = pause_after_ready

    def __call__(self, news: SlotProgress) -> None:
        self.news.append((news.slot_id, news.step))
        if self.pause is not None and news.step == SlotStep.READY:
            self.pause.set()


async def replacements(control_url: str) -> dict[str, tuple[str, int]]:
    async with httpx.AsyncClient(timeout=30) as client:
        status = (await client.get(control_url + "/status")).json()
    return {s["id"]: (s["version"], s["replacements"]) for s in status["slots"]}


async def test_a_group_rollout_reports_each_slot_pauses_between_slots_and_resumes(
    sandboxes: Sandboxes,
) -> None:
    spec = fleet_spec(groups=1, instances=3, rate_per_s=5.0)
    handle = await sandboxes.up(spec)
    group = spec.groups[0]
    first_slot, *others = spec.slot_ids(group)
    image = spec.image_for(NEW)
    backend = LocalBackend(group, handle.control_url)
    try:
        # A pause asked while the first slot is replaced: it finishes, no other slot starts.
        pause = asyncio.Event()
        paused = Recorder(pause_after_ready=pause)
        first = await backend.ensure_group(image, ready_timeout_s=30, progress=paused, pause=pause)
        assert paused.news == [(first_slot, SlotStep.STARTED), (first_slot, SlotStep.READY)]
        assert first.paused and not first.complete
        assert list(first.ready) == [first_slot] and first.pending == tuple(others)
        assert first.ready[first_slot].image == image and first.ready[first_slot].ready
        after_pause = await replacements(handle.control_url)
        assert after_pause[first_slot] == (NEW, 1)
        assert all(after_pause[s] == ("3.8.0", 0) for s in others)

        # Calling again continues: the first slot is already there, the others follow.
        resumed = Recorder()
        second = await backend.ensure_group(image, ready_timeout_s=30, progress=resumed)
        assert second.complete and not second.paused
        assert list(second.ready) == [first_slot, *others]
        assert [s for s, step in resumed.news if step == SlotStep.READY] == [first_slot, *others]
        assert await replacements(handle.control_url) == {
            s: (NEW, 1) for s in [first_slot, *others]
        }

        # And once more, for a subset: nothing is replaced twice.
        again = await backend.ensure_group(image, slots=others, ready_timeout_s=30)
        assert again.complete and list(again.ready) == others
        assert await replacements(handle.control_url) == {
            s: (NEW, 1) for s in [first_slot, *others]
        }
    finally:
        await backend.close()


class FakeSlots(PerSlotRollout):
    """Slots in memory; ``broken`` slots never get ready."""

    def __init__(self, slot_ids: list[str], broken: set[str]) -> None:
        self.group = "g"
        self.images = dict.fromkeys(slot_ids, "old")
        self.broken = broken
        self.calls: list[str] = []

    async def list_slots(self) -> list[SlotInfo]:
        return [SlotInfo(s, image, None, True) for s, image in self.images.items()]

    async def ensure_image(
        self, slot_id: str, image: str, *, ready_timeout_s: float, fence: str | None = None
    ) -> SlotInfo:
        self.calls.append(slot_id)
        await asyncio.sleep(0)
        if slot_id in self.broken:
            raise NotReadyError(f"{slot_id}: not ready")
        self.images[slot_id] = image
        return SlotInfo(slot_id, image, None, True)


async def test_a_failed_slot_stops_the_rollout_and_leaves_the_rest_pending() -> None:
    backend = FakeSlots(["g/0", "g/1", "g/2"], broken={"g/1"})
    news = Recorder()
    rollout = await backend.ensure_group("new", ready_timeout_s=1, progress=news)
    assert backend.calls == ["g/0", "g/1"]
    assert list(rollout.ready) == ["g/0"] and list(rollout.failed) == ["g/1"]
    assert rollout.pending == ("g/2",) and not rollout.paused
    assert news.news[-1] == ("g/1", SlotStep.FAILED)


async def test_a_parallel_rollout_starts_the_whole_batch_and_reports_in_the_order_asked() -> None:
    backend = FakeSlots(["g/0", "g/1", "g/2"], broken={"g/0"})
    rollout = await backend.ensure_group(
        "new", slots=["g/2", "g/0", "g/1"], ready_timeout_s=1, parallel=3
    )
    assert sorted(backend.calls) == ["g/0", "g/1", "g/2"]
    assert list(rollout.ready) == ["g/2", "g/1"] and list(rollout.failed) == ["g/0"]
    assert rollout.pending == ()
