"""The API7 EE control-plane stand-in, over real HTTP on a loopback port, with a fake clock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from upgrade_bot.sandbox.controlplane import (
    HEALTHY,
    LOST_CONNECTION,
    OFFLINE,
    OUT_OF_SYNC,
    ControlPlaneState,
    serve_control_plane,
)

API_KEY = "a7ee-test-key"
T0 = 1_700_000_000.0


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class CP:
    state: ControlPlaneState
    clock: FakeClock
    http: httpx.AsyncClient

    async def heartbeat(self, instance_id: str, group: str = "default", **extra: Any) -> int:
        body = {
            "id": instance_id,
            "hostname": f"host-{instance_id}",
            "ip": "127.0.0.1",
            "version": "3.8.0",
            "gateway_group_id": group,
            "config_revision": 0,
            **extra,
        }
        resp = await self.http.post("/api/dataplane/heartbeat", json=body)
        assert resp.status_code == 200, resp.text
        return int(resp.json()["config_revision"])

    async def instances(self, **params: Any) -> dict[str, Any]:
        resp = await self.http.get("/api/instances", params=params, headers=AUTH)
        assert resp.status_code == 200, resp.text
        return resp.json()

    async def status(self, instance_id: str) -> str:
        for item in (await self.instances(page_size=1000))["list"]:
            if item["id"] == instance_id:
                return str(item["status"])
        raise AssertionError(f"{instance_id} not listed")


AUTH = {"X-API-KEY": API_KEY}


@pytest.fixture
async def cp() -> AsyncIterator[CP]:
    clock = FakeClock()
    state = ControlPlaneState(version="3.8.0", api_key=API_KEY, clock=clock)
    runner, port = await serve_control_plane(state, host="127.0.0.1", port=0)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            yield CP(state, clock, http)
    finally:
        await runner.cleanup()


async def test_api_requires_the_key(cp: CP) -> None:
    for path in (
        "/api/version",
        "/api/instances",
        "/api/gateway_groups/default/instances",
        "/api/gateway_groups/default/config_revision",
    ):
        missing = await cp.http.get(path)
        assert missing.status_code == 401, path
        assert "X-API-KEY" in missing.json()["message"]
        wrong = await cp.http.get(path, headers={"X-API-KEY": "a7ee-wrong"})
        assert wrong.status_code == 401, path
    ok = await cp.http.get("/api/version", headers=AUTH)
    assert ok.status_code == 200


async def test_version_and_sandbox_version_change(cp: CP) -> None:
    resp = await cp.http.get("/api/version", headers=AUTH)
    assert resp.json() == {"value": {"version": "3.8.0"}}
    put = await cp.http.put("/sandbox/version", json={"version": "3.9.1"})
    assert put.status_code == 200
    resp = await cp.http.get("/api/version", headers=AUTH)
    assert resp.json()["value"]["version"] == "3.9.1"
    bad = await cp.http.put("/sandbox/version", json={"nope": 1})
    assert bad.status_code == 400


async def test_heartbeats_register_instances(cp: CP) -> None:
    assert (await cp.instances()) == {"total": 0, "list": []}
    assert await cp.heartbeat("dp-1", ip="127.0.0.7", version="3.8.0") == 0
    cp.clock.advance(5)
    await cp.heartbeat("dp-2", version="3.8.1")
    body = await cp.instances(gateway_group_id="default")
    assert body["total"] == 2
    first, second = body["list"]
    assert first == {
        "id": "dp-1",
        "hostname": "host-dp-1",
        "ip": "127.0.0.7",
        "version": "3.8.0",
        "status": HEALTHY,
        "gateway_group_id": "default",
        "config_revision": 0,
        "last_heartbeat_time": int(T0),
    }
    assert second["version"] == "3.8.1"
    assert second["last_heartbeat_time"] == int(T0) + 5

    # a later heartbeat from the same id updates it in place (e.g. after an upgrade)
    await cp.heartbeat("dp-1", version="3.9.0")
    body = await cp.instances()
    assert body["total"] == 2
    assert body["list"][0]["version"] == "3.9.0"


async def test_heartbeat_rejects_bad_bodies(cp: CP) -> None:
    bad_bodies: list[Any] = [
        {"gateway_group_id": "g"},
        {"id": "x"},
        {"id": "x", "gateway_group_id": "g", "config_revision": "1"},
        ["not", "an", "object"],
    ]
    for body in bad_bodies:
        resp = await cp.http.post("/api/dataplane/heartbeat", json=body)
        assert resp.status_code == 400, body
        assert resp.json()["message"]
    resp = await cp.http.post(
        "/api/dataplane/heartbeat", content=b"{nope", headers={"Content-Type": "application/json"}
    )
    assert resp.status_code == 400


async def test_pagination(cp: CP) -> None:
    for i in range(45):
        await cp.heartbeat(f"dp-{i:03d}")
    seen: list[str] = []
    sizes = []
    for page in (1, 2, 3):
        body = await cp.instances(gateway_group_id="default", page=page, page_size=20)
        assert body["total"] == 45
        sizes.append(len(body["list"]))
        seen.extend(item["id"] for item in body["list"])
    assert sizes == [20, 20, 5]
    assert seen == [f"dp-{i:03d}" for i in range(45)]
    past_the_end = await cp.instances(page=4, page_size=20)
    assert past_the_end == {"total": 45, "list": []}
    default_page = await cp.instances()
    assert len(default_page["list"]) == 20 and default_page["total"] == 45
    for params in ({"page": 0}, {"page_size": "x"}, {"page_size": -1}):
        resp = await cp.http.get("/api/instances", params=params, headers=AUTH)
        assert resp.status_code == 400, params
        assert resp.json()["message"]


async def test_status_follows_heartbeat_age(cp: CP) -> None:
    await cp.heartbeat("dp-1")
    assert await cp.status("dp-1") == HEALTHY
    cp.clock.advance(30)  # exactly 30 s is not "more than 30 seconds"
    assert await cp.status("dp-1") == HEALTHY
    cp.clock.advance(1)
    assert await cp.status("dp-1") == LOST_CONNECTION
    cp.clock.advance(2 * 3600 - 31)
    assert await cp.status("dp-1") == LOST_CONNECTION
    cp.clock.advance(1)
    assert await cp.status("dp-1") == OFFLINE
    # coming back makes it healthy again
    await cp.heartbeat("dp-1")
    assert await cp.status("dp-1") == HEALTHY
    # an instance gone for more than 7 days is removed
    cp.clock.advance(7 * 86400 + 1)
    assert (await cp.instances())["total"] == 0


async def test_status_of_direct_and_thresholds_configurable() -> None:
    clock = FakeClock()
    state = ControlPlaneState(clock=clock, lost_after_s=2, offline_after_s=5, remove_after_s=None)
    state.heartbeat("a", "a", "127.0.0.1", "3.8.0", "g")
    record = state.instance("a")
    assert record is not None
    assert state.status_of(record, now=T0 + 2) == HEALTHY
    assert state.status_of(record, now=T0 + 2.5) == LOST_CONNECTION
    assert state.status_of(record, now=T0 + 5.5) == OFFLINE
    clock.advance(10**9)  # never removed when remove_after_s is None
    assert [i.id for i in state.instances()] == ["a"]
    with pytest.raises(ValueError):
        ControlPlaneState(lost_after_s=10, offline_after_s=5)


async def test_out_of_sync_after_config_bump(cp: CP) -> None:
    assert await cp.heartbeat("dp-1") == 0
    await cp.heartbeat("dp-2")
    rev = await cp.http.get("/api/gateway_groups/default/config_revision", headers=AUTH)
    assert rev.json() == {"value": {"gateway_group_id": "default", "config_revision": 0}}

    bump = await cp.http.post("/sandbox/config/bump", json={"gateway_group_id": "default"})
    assert bump.status_code == 200
    assert bump.json()["value"]["config_revision"] == 1
    rev = await cp.http.get("/api/gateway_groups/default/config_revision", headers=AUTH)
    assert rev.json()["value"]["config_revision"] == 1

    assert await cp.status("dp-1") == OUT_OF_SYNC
    assert await cp.status("dp-2") == OUT_OF_SYNC
    # the heartbeat answer tells the instance the revision to fetch; it reports it next time
    assert await cp.heartbeat("dp-1", config_revision=0) == 1
    assert await cp.status("dp-1") == OUT_OF_SYNC
    assert await cp.heartbeat("dp-1", config_revision=1) == 1
    assert await cp.status("dp-1") == HEALTHY
    assert await cp.status("dp-2") == OUT_OF_SYNC
    # a stale heartbeat wins over being out of sync
    cp.clock.advance(31)
    await cp.heartbeat("dp-1", config_revision=1)
    assert await cp.status("dp-2") == LOST_CONNECTION


async def test_unknown_group_revision_is_404(cp: CP) -> None:
    resp = await cp.http.get("/api/gateway_groups/nope/config_revision", headers=AUTH)
    assert resp.status_code == 404
    assert "nope" in resp.json()["message"]
    bad = await cp.http.post("/sandbox/config/bump", json={})
    assert bad.status_code == 400


async def test_filter_by_group(cp: CP) -> None:
    for i in range(3):
        await cp.heartbeat(f"eu-{i}", group="prod-eu")
    for i in range(2):
        await cp.heartbeat(f"us-{i}", group="prod-us")
    eu = await cp.instances(gateway_group_id="prod-eu")
    assert eu["total"] == 3
    assert {i["gateway_group_id"] for i in eu["list"]} == {"prod-eu"}
    resp = await cp.http.get("/api/gateway_groups/prod-us/instances", headers=AUTH)
    assert resp.json()["total"] == 2
    assert [i["id"] for i in resp.json()["list"]] == ["us-0", "us-1"]
    assert (await cp.instances(gateway_group_id="prod-none"))["total"] == 0
    assert (await cp.instances())["total"] == 5
    # a bump in one group leaves the other in sync
    await cp.http.post("/sandbox/config/bump", json={"gateway_group_id": "prod-eu"})
    assert await cp.status("eu-0") == OUT_OF_SYNC
    assert await cp.status("us-0") == HEALTHY
