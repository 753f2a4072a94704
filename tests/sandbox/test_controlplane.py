"""The API7 EE control-plane stand-in, over real HTTP on a loopback port, with a fake clock.

Its answers are checked against the vendor's own description of them: the schemas of the Admin
API reference (tests/fixtures/api7/admin-api-3.2.14.6-excerpt.json) and the shape API7's CLI
reads for the version (tests/fixtures/api7/client-samples.json).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from upgrade_bot.sandbox.controlplane import (
    HEALTHY,
    LOST_CONNECTION,
    OFFLINE,
    OUT_OF_SYNC,
    ControlPlaneState,
    group_id_for,
    serve_control_plane,
)

API_KEY = "a7ee-test-key"
T0 = 1_700_000_000.0
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "api7"
REFERENCE = json.loads((FIXTURES / "admin-api-3.2.14.6-excerpt.json").read_text())
SAMPLES = json.loads((FIXTURES / "client-samples.json").read_text())
AUTH = {"X-API-KEY": API_KEY}


def schema_errors(value: Any, schema: dict[str, Any], at: str = "$") -> list[str]:
    """What in ``value`` the OpenAPI schema does not allow (the keywords the reference uses:
    allOf, type, required, properties, items, enum, minimum, minItems)."""
    errors: list[str] = []
    for part in schema.get("allOf", []):
        errors += schema_errors(value, part, at)
    kind = schema.get("type")
    python = {
        "object": dict,
        "array": list,
        "string": str,
        "integer": int,
        "boolean": bool,
        "number": (int, float),
    }
    if kind and not isinstance(value, python[kind]):
        return [*errors, f"{at}: expected {kind}, got {type(value).__name__}"]
    if kind == "integer" and isinstance(value, bool):
        return [*errors, f"{at}: expected integer, got bool"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{at}: {value!r} not in {schema['enum']}")
    if isinstance(value, int | float) and "minimum" in schema and value < schema["minimum"]:
        errors.append(f"{at}: {value} < {schema['minimum']}")
    if isinstance(value, dict):
        errors += [f"{at}: '{k}' is required" for k in schema.get("required", []) if k not in value]
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                errors += schema_errors(value[key], sub, f"{at}.{key}")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            errors.append(f"{at}: fewer than {schema['minItems']} items")
        for n, item in enumerate(value):
            errors += schema_errors(item, schema.get("items", {}), f"{at}[{n}]")
    return errors


def undocumented(item: dict[str, Any], schema: dict[str, Any]) -> set[str]:
    """Fields of a list item the reference does not describe (the stand-in must invent none)."""
    items = next(p["properties"]["list"]["items"] for p in schema["allOf"] if "items" in str(p))
    documented = set(items.get("properties", {}))
    for part in schema["allOf"]:
        documented |= set(part["properties"]["list"]["items"].get("properties", {}))
    return set(item) - documented


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

    async def heartbeat(
        self, instance_id: str, group: str = "default", **extra: Any
    ) -> dict[str, Any]:
        body = {
            "instance_id": instance_id,
            "hostname": f"host-{instance_id}",
            "ip": "127.0.0.1",
            "version": "3.2.14.6",
            "ports": [9080, 9443],
            "conf_server_revision": "0",
            "cores": 2,
            **extra,
        }
        assert schema_errors(body, REFERENCE["POST /api/dataplane/heartbeat"]["request"]) == []
        resp = await self.http.post(
            "/api/dataplane/heartbeat", params={"gateway_group": group}, json=body
        )
        assert resp.status_code == 200, resp.text
        return dict(resp.json())

    async def get(self, path: str, **params: Any) -> dict[str, Any]:
        resp = await self.http.get(path, params=params, headers=AUTH)
        assert resp.status_code == 200, resp.text
        return dict(resp.json())

    async def instances(self, **params: Any) -> dict[str, Any]:
        return await self.get("/api/instances", **params)

    async def status(self, instance_id: str) -> str:
        for item in (await self.instances(page_size=1000))["list"]:
            if item["id"] == instance_id:
                return str(item["status"])
        raise AssertionError(f"{instance_id} not listed")


@pytest.fixture
async def cp() -> AsyncIterator[CP]:
    clock = FakeClock()
    state = ControlPlaneState(version="3.2.14.6", api_key=API_KEY, clock=clock)
    runner, port = await serve_control_plane(state, host="127.0.0.1", port=0)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            yield CP(state, clock, http)
    finally:
        await runner.cleanup()


# --- shapes, against the vendor's -----------------------------------------------------------


async def test_version_is_a_plain_string_as_adc_reads_it_and_dev_on_dev_builds(cp: CP) -> None:
    body = await cp.get("/api/version")
    assert body == {"value": "3.2.14.6"}
    assert body.keys() == SAMPLES["adc_version_release"]["body"].keys()
    cp.state.set_version("dev")
    assert await cp.get("/api/version") == SAMPLES["adc_version_dev"]["body"]


async def test_instance_list_matches_the_reference_schema_and_adds_no_field(cp: CP) -> None:
    await cp.heartbeat("dp-1", group="prod-eu")
    body = await cp.instances(gateway_group_id=group_id_for("prod-eu"))
    schema = REFERENCE["GET /api/instances"]["response"]

    assert schema_errors(body, schema) == []
    assert body["total"] == 1
    (item,) = body["list"]
    assert undocumented(item, schema) == set()
    assert item["ports"] == [9080, 9443] and item["cores"] == 2
    assert "conf_server_revision" not in item  # sent in heartbeats, never listed


async def test_gateway_groups_match_the_reference_schema(cp: CP) -> None:
    cp.state.add_group("prod-eu")
    listed = await cp.get("/api/gateway_groups")
    one = await cp.get(f"/api/gateway_groups/{group_id_for('prod-eu')}")

    assert schema_errors(listed, REFERENCE["GET /api/gateway_groups"]["response"]) == []
    assert (
        undocumented(listed["list"][0], REFERENCE["GET /api/gateway_groups"]["response"]) == set()
    )
    assert (
        schema_errors(one, REFERENCE["GET /api/gateway_groups/{gateway_group_id}"]["response"])
        == []
    )
    assert one["value"]["name"] == "prod-eu"


async def test_schema_check_catches_a_wrong_shape() -> None:
    """Negative control: the checker used above does reject what the reference forbids."""
    schema = REFERENCE["GET /api/instances"]["response"]
    bad = {"total": 1, "list": [{"id": "x", "hostname": "h", "status": "Running"}]}
    errors = schema_errors(bad, schema)
    assert any("'ports' is required" in e for e in errors)
    assert any("'Running' not in" in e for e in errors)
    assert schema_errors(
        {"value": {"version": "3.8.1"}},
        {"type": "object", "properties": {"value": {"type": "string"}}},
    ) == ["$.value: expected string, got dict"]


async def test_the_sandbox_heartbeat_needs_the_real_fields(cp: CP) -> None:
    resp = await cp.http.post(
        "/api/dataplane/heartbeat",
        params={"gateway_group": "g"},
        json={"id": "dp-1", "hostname": "h", "ip": "i", "version": "3.8.1"},
    )
    assert resp.status_code == 400
    assert "'instance_id' (string) is required" in resp.text


# --- behaviour --------------------------------------------------------------------------------


async def test_every_api_call_needs_the_key(cp: CP) -> None:
    for path in ("/api/version", "/api/instances", "/api/gateway_groups"):
        resp = await cp.http.get(path)
        assert resp.status_code == 401
        assert resp.json() == {"message": "unauthorized: a valid X-API-KEY header is required"}
        wrong = await cp.http.get(path, headers={"X-API-KEY": "a7ee-wrong"})
        assert wrong.status_code == 401


async def test_search_finds_groups_by_name_keyword(cp: CP) -> None:
    for name in ("prod-eu", "prod-eu-canary", "staging"):
        cp.state.add_group(name)
    body = await cp.get("/api/gateway_groups", search="prod-eu")
    assert sorted(g["name"] for g in body["list"]) == ["prod-eu", "prod-eu-canary"]
    assert body["total"] == 2


async def test_status_follows_heartbeat_age(cp: CP) -> None:
    await cp.heartbeat("dp-1")
    assert await cp.status("dp-1") == HEALTHY
    cp.clock.advance(31)  # the key-concepts page: lost after 30 s without a heartbeat
    assert await cp.status("dp-1") == LOST_CONNECTION
    cp.clock.advance(2 * 3600)
    assert await cp.status("dp-1") == OFFLINE
    cp.clock.advance(7 * 86400)
    assert (await cp.instances())["total"] == 0  # removed after 7 days offline


async def test_out_of_sync_until_the_instance_reports_the_new_revision(cp: CP) -> None:
    answer = await cp.heartbeat("dp-1", group="prod-eu")
    assert answer == {"value": {"conf_server_revision": "0"}}
    assert cp.state.bump_config("prod-eu") == 1
    assert await cp.status("dp-1") == OUT_OF_SYNC
    await cp.heartbeat("dp-1", group="prod-eu", conf_server_revision="1")
    assert await cp.status("dp-1") == HEALTHY


async def test_filter_by_group_and_status(cp: CP) -> None:
    await cp.heartbeat("dp-1", group="prod-eu")
    await cp.heartbeat("dp-2", group="staging")
    cp.clock.advance(40)
    await cp.heartbeat("dp-3", group="prod-eu")
    eu = await cp.instances(gateway_group_id=group_id_for("prod-eu"))
    assert sorted(i["id"] for i in eu["list"]) == ["dp-1", "dp-3"]
    lost = await cp.instances(status=LOST_CONNECTION)
    assert sorted(i["id"] for i in lost["list"]) == ["dp-1", "dp-2"]


async def test_the_default_order_moves_with_every_heartbeat_an_explicit_one_does_not(
    cp: CP,
) -> None:
    for n in range(5):
        await cp.heartbeat(f"dp-{n}")
        cp.clock.advance(1)
    default_before = [i["id"] for i in (await cp.instances(page_size=2))["list"]]
    stable = {"order_by": "created_at", "direction": "asc", "page_size": 2}
    stable_before = [i["id"] for i in (await cp.instances(**stable))["list"]]
    await cp.heartbeat("dp-0")  # the oldest heartbeats again
    default_after = [i["id"] for i in (await cp.instances(page_size=2))["list"]]

    assert default_before == ["dp-4", "dp-3"]  # last_heartbeat_time, newest first
    assert default_after == ["dp-0", "dp-4"]
    assert [i["id"] for i in (await cp.instances(**stable))["list"]] == stable_before


async def test_paging(cp: CP) -> None:
    for n in range(45):
        await cp.heartbeat(f"dp-{n:03d}")
    pages = [
        await cp.instances(page=p, page_size=20, order_by="created_at", direction="asc")
        for p in (1, 2, 3)
    ]
    assert [len(p["list"]) for p in pages] == [20, 20, 5]
    assert {p["total"] for p in pages} == {45}
    bad = await cp.http.get("/api/instances", params={"page": 0}, headers=AUTH)
    assert bad.status_code == 400
