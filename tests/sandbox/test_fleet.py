"""The sandbox fleet end to end: real daemon, simulator processes, front doors and sockets.

Each test brings a sandbox up in its own folder with ``manage.up`` (an embedded Redis in the
folder: tests never use an ambient REDIS_URL), drives it through ``LocalBackend`` and the
daemon's control API, and judges it only by what is observable from outside: the traffic
generator's counts, the fleet's registry of observed truth, the instances' own stats, the front
doors and the control-plane stand-in. The fixture always takes the sandbox down and checks that
no process it started is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import statistics
import time
from typing import Any

import httpx
import pytest

from upgrade_bot.engine.backends.local import LocalBackend
from upgrade_bot.engine.config import Readiness, StatusReadiness, TcpReadiness
from upgrade_bot.engine.errors import NotReadyError
from upgrade_bot.sandbox import manage
from upgrade_bot.sandbox.spec import SandboxSpec, group_names, parse_fault

from ..support import Sandboxes, eventually, identify, still_running

pytestmark = [pytest.mark.traffic, pytest.mark.timeout(180)]

OLD, NEW = "3.8.0", "3.8.1"
REPOSITORY = "sandbox/apisix"
# A proxied route: answered after the simulated upstream, so the upstream fault knobs apply.
PROXIED_PATH = "/api/orders"
READY_TIMEOUT_S = 60.0  # generous: a loaded 2-core machine starts Python processes slowly
OUTCOMES = ("total", "ok", "requests_5xx", "failed")
FRONT_DOOR_ANSWERS = ("answered_502", "answered_503", "answered_504")


def image(version: str) -> str:
    return f"{REPOSITORY}:{version}"


# --- helpers --------------------------------------------------------------------------------


async def get_json(url: str, **kwargs: Any) -> Any:
    async with httpx.AsyncClient(timeout=30) as client:
        resp = await client.get(url, **kwargs)
        resp.raise_for_status()
        return resp.json()


async def full_status(handle: manage.SandboxHandle) -> dict[str, Any]:
    """The daemon's ``/status`` (a superset of ``manage.status``: front-door counters too)."""
    return await get_json(handle.control_url + "/status")


def traffic_delta(after: dict[str, Any], before: dict[str, Any], group: str | None = None):
    a, b = after["traffic"], before["traffic"]
    if group is not None:
        a, b = a["by_group"][group], b["by_group"][group]
    return {k: a[k] - b[k] for k in OUTCOMES}


def front_door_delta(after: dict[str, Any], before: dict[str, Any]) -> dict[str, int]:
    return {
        f"{g}.{k}": after["front_doors"][g][k] - before["front_doors"][g][k]
        for g in after["front_doors"]
        for k in (*FRONT_DOOR_ANSWERS, "retried_refused")
    }


def slots_by_id(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["id"]: s for s in status["slots"]}


async def settle(handle: manage.SandboxHandle, spec: SandboxSpec) -> dict[str, Any]:
    """Status once about one more second of traffic has completed.

    Requests launched before this call (e.g. during the last stop) then have had time to be
    answered and counted, so a delta taken from the returned status covers them.
    """
    start = (await full_status(handle))["traffic"]["total"]
    target = start + spec.rate_per_s

    async def counted() -> dict[str, Any] | None:
        status = await full_status(handle)
        return status if status["traffic"]["total"] >= target else None

    return await eventually(
        counted, what="one more second of completed traffic", within=30, interval=0.5
    )


async def replace_group(
    handle: manage.SandboxHandle,
    group: str,
    version: str,
    *,
    stop_signal: str = "SIGQUIT",
    readiness: Readiness = StatusReadiness(mode="status"),
) -> list[dict[str, Any]]:
    """Every slot of ``group`` to ``version``, one at a time, through the local backend.

    Returns, per slot, the seconds ``ensure_image`` took and how many requests the old instance
    had in flight just before (read from its own ``/sandbox/stats``).
    """
    backend = LocalBackend(group, handle.control_url, stop_signal=stop_signal, readiness=readiness)
    done = []
    try:
        for slot in await backend.list_slots():
            old = await get_json(slot.endpoints["status"] + "/sandbox/stats")
            started = time.monotonic()
            info = await backend.ensure_image(
                slot.id, image(version), ready_timeout_s=READY_TIMEOUT_S
            )
            seconds = time.monotonic() - started
            assert (info.id, info.version) == (slot.id, version)
            # the sandbox's own ready flag is its status endpoint's: a TCP check can pass without
            assert info.ready or readiness.mode != "status"
            done.append({"slot": slot.id, "seconds": seconds, "in_flight": old["in_flight"]})
    finally:
        await backend.close()
    return done


async def current_instance_stats(handle: manage.SandboxHandle, group: str) -> list[dict]:
    """``/sandbox/stats`` of the instance serving each slot of ``group``, read directly."""
    slots = (await get_json(f"{handle.control_url}/groups/{group}/slots"))["slots"]
    return [
        await get_json(slot["current"]["endpoints"]["status"] + "/sandbox/stats") for slot in slots
    ]


async def latencies_ms(front_door: str, count: int = 48, concurrency: int = 4):
    """Wall times of ``count`` GETs through a front door, and the Server headers seen."""
    latencies: list[float] = []
    servers: set[str] = set()
    queue = list(range(count))

    async def worker(client: httpx.AsyncClient) -> None:
        while queue:
            queue.pop()
            started = time.perf_counter()
            resp = await client.get(front_door + PROXIED_PATH)
            latencies.append((time.perf_counter() - started) * 1000)
            assert resp.status_code == 200, resp.text
            servers.add(resp.headers["Server"])

    async with httpx.AsyncClient(timeout=30) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return latencies, servers


def describe_failures(status: dict[str, Any], before: dict[str, Any]) -> str:
    traffic, doors = traffic_delta(status, before), front_door_delta(status, before)
    return f"traffic {traffic}, front doors {doors}"


# --- 1. graceful replacement ----------------------------------------------------------------


def drain_spec() -> SandboxSpec:
    """The fleet and traffic of the graceful test and of its negative control.

    2 groups x 3 instances at 120 requests/s: each group's front door gets 60/s, so each of its
    3 healthy members (4 while a replacement overlaps) gets 15-20 requests/s, and every request
    is held 100-300 ms (latency 200 ms x the simulator's jitter 0.5-1.5, mean 200 ms). By
    Little's law an instance has 3-4 requests in flight on average when it is stopped, and with
    arrivals every 50-67 ms and no request shorter than 100 ms, never none at steady state.
    """
    return SandboxSpec(
        groups=group_names(2), instances=3, version=OLD, rate_per_s=120, latency_ms=200
    )


async def test_graceful_replacement_of_every_slot_loses_no_request(sandboxes: Sandboxes) -> None:
    spec = drain_spec()
    handle = await sandboxes.up(spec)
    # The clock starts before the first count is read: reading the counts takes time on a loaded
    # machine, and the window they span must lie inside the one measured here.
    t0 = time.monotonic()
    before = await full_status(handle)

    per_group = await asyncio.gather(*(replace_group(handle, g, NEW) for g in spec.groups))

    after = await settle(handle, spec)
    elapsed = time.monotonic() - t0
    done = [r for rs in per_group for r in rs]
    # SIGQUIT had in-flight requests to drain (the premise of the test), and lost none of them.
    assert statistics.mean(r["in_flight"] for r in done) >= 1, done
    delta = traffic_delta(after, before)
    assert delta["failed"] == 0, describe_failures(after, before)
    assert delta["requests_5xx"] == 0, describe_failures(after, before)
    doors = front_door_delta(after, before)
    assert all(doors[f"{g}.{k}"] == 0 for g in spec.groups for k in FRONT_DOOR_ANSWERS), doors
    # Traffic really flowed into both groups throughout: every stop found requests in flight
    # (above), and each group answered at least 10 requests per replaced slot (60/s offered:
    # hundreds, as counts, whatever the machine's load). An open loop never offers more than
    # its schedule, so the total has an upper bound that load cannot break.
    assert delta["total"] <= 1.25 * spec.rate_per_s * elapsed, (delta, elapsed, done)
    for group in spec.groups:
        answered = traffic_delta(after, before, group)["total"]
        assert answered >= 10 * len(spec.slot_ids(group)), (group, answered, done)
    # The registry's observed truth: every slot moved once, and nothing answered before ready.
    slots = slots_by_id(after)
    assert sorted(slots) == sorted(s for g in spec.groups for s in spec.slot_ids(g))
    for slot in slots.values():
        assert slot["version"] == NEW, slot
        assert slot["history"] == [OLD, NEW], slot
        assert (slot["replacements"], slot["restorations"]) == (1, 0), slot
        assert slot["served_before_ready"] == 0, slot
    # And the new instances themselves took traffic (read from their own status listeners).
    for group in spec.groups:
        for stats in await current_instance_stats(handle, group):
            assert stats["version"] == NEW and stats["ready"], stats
            assert stats["requests_total"] > 0, stats
            assert stats["served_before_ready"] == 0, stats


# --- 2. negative control: SIGTERM cuts in-flight requests -----------------------------------


async def test_sigterm_replacement_cuts_in_flight_requests(sandboxes: Sandboxes) -> None:
    """The same fleet, traffic and replacement as above; only the stop signal differs."""
    spec = drain_spec()
    handle = await sandboxes.up(spec)
    before = await full_status(handle)

    async def there_and_back(group: str) -> list[dict[str, Any]]:
        forth = await replace_group(handle, group, NEW, stop_signal="SIGTERM")
        # and back to the version the slot had before: the registry counts a restoration
        return forth + await replace_group(handle, group, OLD, stop_signal="SIGTERM")

    per_group = await asyncio.gather(*(there_and_back(g) for g in spec.groups))

    after = await settle(handle, spec)
    done = [r for rs in per_group for r in rs]
    assert statistics.mean(r["in_flight"] for r in done) >= 1, done
    delta = traffic_delta(after, before)
    # 12 stops, each expected to cut the 3-4 requests in flight (see drain_spec): asking for
    # one per stop leaves a wide margin, yet shows that more than a stray request was lost.
    assert delta["failed"] >= len(done), describe_failures(after, before)
    # They are cut connections the front door had to answer itself, not gateway 5xx.
    assert delta["requests_5xx"] == 0, describe_failures(after, before)
    doors = front_door_delta(after, before)
    assert sum(doors[f"{g}.answered_502"] for g in spec.groups) == delta["failed"], doors
    for slot in slots_by_id(after).values():
        assert slot["version"] == OLD, slot
        assert slot["history"] == [OLD, NEW], slot
        assert (slot["replacements"], slot["restorations"]) == (1, 1), slot
        assert slot["served_before_ready"] == 0, slot


# --- 3. a never-ready version never receives traffic ----------------------------------------


async def test_never_ready_version_never_receives_traffic(sandboxes: Sandboxes) -> None:
    spec = SandboxSpec(groups=group_names(1), instances=2, version=OLD, rate_per_s=60)
    group = spec.groups[0]
    slot_id = spec.slot_ids(group)[0]
    handle = await sandboxes.up(spec)
    async with httpx.AsyncClient(base_url=handle.control_url, timeout=30) as control:
        resp = await control.put("/faults", json={"fault": f"{NEW}=never-ready"})
        assert resp.status_code == 200, resp.text
        assert resp.json()["fault"]["never_ready"] is True
        old_slot = (await control.get(f"/slots/{slot_id}")).json()
    before = await full_status(handle)

    backend = LocalBackend(group, handle.control_url)
    ready_timeout_s = 5.0
    try:
        attempt = asyncio.create_task(
            backend.ensure_image(slot_id, image(NEW), ready_timeout_s=ready_timeout_s)
        )

        async def new_instance() -> dict[str, Any] | None:
            slot = await get_json(f"{handle.control_url}/slots/{slot_id}")
            found = [i for i in slot["instances"] if i["image"] == image(NEW)]
            return found[0] if found else None

        inst = await eventually(
            new_instance, "the never-ready instance to start", within=60, interval=0.25
        )
        never_ready_proc = identify({inst["pid"]})
        sandboxes.track({inst["pid"]})
        stats_url = inst["endpoints"]["status"] + "/sandbox/stats"
        seen: list[dict[str, Any]] = []
        totals_while_up: list[int] = []
        async with httpx.AsyncClient(timeout=5) as probe:
            while not attempt.done():
                with contextlib.suppress(httpx.TransportError):
                    seen.append((await probe.get(stats_url)).json())
                    totals_while_up.append((await full_status(handle))["traffic"]["total"])
                await asyncio.sleep(0.4)
        with pytest.raises(NotReadyError, match="not ready within"):
            await attempt
    finally:
        await backend.close()

    # Its own proxy listener counted nothing, while traffic flowed to the group meanwhile.
    assert len(seen) >= 3, seen
    assert all(s["ready"] is False for s in seen), seen
    assert all(s["requests_total"] == 0 for s in seen), seen
    assert all(s["served_before_ready"] == 0 for s in seen), seen
    assert totals_while_up[-1] - totals_while_up[0] > 0, totals_while_up

    # It was stopped; the slot still serves the old version from the same instance.
    stopped = await get_json(f"{handle.control_url}/instances/{inst['id']}")
    assert stopped["state"] == "exited", stopped
    assert never_ready_proc, "the never-ready instance was not seen running"
    await eventually(
        lambda: not still_running(never_ready_proc),
        "the instance to exit",
        within=30,
        interval=0.25,
    )
    slot = await get_json(f"{handle.control_url}/slots/{slot_id}")
    assert (slot["version"], slot["image"], slot["ready"]) == (OLD, image(OLD), True), slot
    assert slot["current"]["id"] == old_slot["current"]["id"]
    assert [i["id"] for i in slot["instances"]] == [old_slot["current"]["id"]]

    after = await settle(handle, spec)
    delta = traffic_delta(after, before)
    assert delta["failed"] == 0 and delta["requests_5xx"] == 0, describe_failures(after, before)
    truth = slots_by_id(after)[slot_id]
    assert (truth["version"], truth["replacements"], truth["restorations"]) == (OLD, 0, 0), truth
    assert truth["history"] == [OLD], truth
    assert truth["served_before_ready"] == 0, truth


# --- 4. every fault kind, observed from outside ---------------------------------------------


async def test_fault_errors_shows_as_gateway_5xx_ratio(sandboxes: Sandboxes) -> None:
    version, fault = parse_fault(f"{NEW}=errors:0.2")
    spec = SandboxSpec(
        groups=group_names(1),
        instances=2,
        version=OLD,
        faults={version: fault},
        rate_per_s=160,
        latency_ms=20,
    )
    group = spec.groups[0]
    handle = await sandboxes.up(spec)
    start = await full_status(handle)
    assert start["traffic"]["requests_5xx"] == 0  # the old version answers no 5xx

    await replace_group(handle, group, NEW)
    replaced = await full_status(handle)

    # 800 requests: the ratio's standard deviation is sqrt(0.2 * 0.8 / 800) = 0.014, so the
    # +-0.05 band is 3.5 standard deviations wide on each side.
    async def enough() -> dict[str, Any] | None:
        status = await full_status(handle)
        return status if traffic_delta(status, replaced, group)["total"] >= 800 else None

    after = await eventually(enough, "800 more requests", within=60, interval=0.5)
    delta = traffic_delta(after, replaced, group)
    ratio = delta["requests_5xx"] / delta["total"]
    assert abs(ratio - 0.2) <= 0.05, (ratio, delta)
    whole = traffic_delta(after, start)
    assert whole["failed"] == 0, describe_failures(after, start)
    for slot in slots_by_id(after).values():
        assert (slot["version"], slot["replacements"], slot["served_before_ready"]) == (NEW, 1, 0)


async def test_fault_latency_raises_median_latency_through_front_door(
    sandboxes: Sandboxes,
) -> None:
    spec = SandboxSpec(
        groups=group_names(1),
        instances=2,
        version=OLD,
        faults=dict([parse_fault(f"{NEW}=latency:200")]),
        rate_per_s=30,
        latency_ms=20,
    )
    group = spec.groups[0]
    handle = await sandboxes.up(spec)
    front_door = handle.front_doors[group]
    start = await full_status(handle)

    before_ms, before_servers = await latencies_ms(front_door)
    await replace_group(handle, group, NEW)
    after_ms, after_servers = await latencies_ms(front_door)

    assert before_servers == {f"APISIX/{OLD}"}
    assert after_servers == {f"APISIX/{NEW}"}
    # Counted against the injected 200 ms, not timed to a tolerance a loaded machine can miss:
    # the fault is a floor under every answer (a machine's load only adds to it), the old
    # version's answers (20 ms x jitter 0.5-1.5) mostly come in under it, and most new answers
    # come in under twice it (the fault adds 200 ms, not more).
    assert all(ms >= 200 for ms in after_ms), sorted(after_ms)
    assert sum(ms < 200 for ms in before_ms) > len(before_ms) / 2, sorted(before_ms)
    assert sum(ms < 400 for ms in after_ms) > len(after_ms) / 2, sorted(after_ms)
    after = await settle(handle, spec)
    assert traffic_delta(after, start)["failed"] == 0, describe_failures(after, start)


async def test_fault_slow_start_delays_replacement_without_losing_requests(
    sandboxes: Sandboxes,
) -> None:
    spec = SandboxSpec(
        groups=group_names(1),
        instances=2,
        version=OLD,
        faults=dict([parse_fault(f"{NEW}=slow-start:3")]),
        rate_per_s=60,
    )
    group = spec.groups[0]
    handle = await sandboxes.up(spec)
    before = await full_status(handle)

    durations = [r["seconds"] for r in await replace_group(handle, group, NEW)]

    assert all(d >= 3.0 for d in durations), durations
    after = await settle(handle, spec)
    delta = traffic_delta(after, before)
    assert delta["failed"] == 0 and delta["requests_5xx"] == 0, describe_failures(after, before)
    # Traffic went on through the slow starts: counted against the injected 3 s per slot at the
    # offered rate (60/s: 360 requests), with half of them as the margin.
    assert delta["total"] >= 0.5 * spec.rate_per_s * 3.0 * len(durations), delta
    for slot in slots_by_id(after).values():
        assert (slot["version"], slot["replacements"]) == (NEW, 1), slot
        assert slot["served_before_ready"] == 0, slot


async def test_fault_no_cp_instances_stop_heartbeating(sandboxes: Sandboxes) -> None:
    spec = SandboxSpec(
        groups=group_names(1),
        instances=2,
        version=OLD,
        faults=dict([parse_fault(f"{NEW}=no-cp")]),
        rate_per_s=30,
        heartbeat_interval_s=0.5,  # the CP calls an instance lost after 3 missed heartbeats
        readiness="tcp",  # a no-cp instance's /status/ready answers 503: a TCP check lets it in
    )
    group = spec.groups[0]
    handle = await sandboxes.up(spec)
    key = (handle.dir / "cp_api_key").read_text().strip()

    async def cp_instances() -> dict[str, dict[str, Any]]:
        data = await get_json(
            handle.cp_url + "/api/instances",
            params={"gateway_group_id": group, "page_size": 100},
            headers={"X-API-KEY": key},
        )
        return {i["id"]: i for i in data["list"]}

    async def slot_instances() -> list[str]:
        slots = (await get_json(f"{handle.control_url}/groups/{group}/slots"))["slots"]
        return [s["current"]["id"] for s in slots]

    old_ids = await slot_instances()

    async def old_healthy() -> bool:
        listed = await cp_instances()
        return all(listed.get(i, {}).get("status") == "Healthy" for i in old_ids)

    await eventually(
        old_healthy, "the control plane to see the fleet Healthy", within=30, interval=0.25
    )
    before = await full_status(handle)

    await replace_group(handle, group, NEW, readiness=TcpReadiness(mode="tcp"))
    new_ids = await slot_instances()
    assert set(new_ids).isdisjoint(old_ids)

    # The new instances never heartbeat: the control plane has no record of them, and the
    # group's instances it knows (the stopped old ones) turn LostConnection (1.5 s here).
    async def lost() -> dict[str, dict[str, Any]] | None:
        listed = await cp_instances()
        statuses = {i: listed[i]["status"] for i in old_ids if i in listed}
        if set(listed) & set(new_ids):
            raise AssertionError(f"a no-cp instance heartbeated: {listed}")
        return listed if statuses == dict.fromkeys(old_ids, "LostConnection") else None

    listed = await eventually(
        lost, "the old instances to turn LostConnection", within=45, interval=0.25
    )
    assert not [i for i in listed.values() if i["status"] == "Healthy"], listed
    # The gateway itself says so too, from its metrics listener.
    slots = (await get_json(f"{handle.control_url}/groups/{group}/slots"))["slots"]
    async with httpx.AsyncClient(timeout=30) as client:
        for slot in slots:
            metrics = await client.get(
                slot["current"]["endpoints"]["metrics"] + "/apisix/prometheus/metrics"
            )
            assert "apisix_etcd_reachable 0" in metrics.text
            ready = await client.get(slot["current"]["endpoints"]["status"] + "/status/ready")
            assert ready.status_code == 503  # as an API7 gateway without its CP
    after = await settle(handle, spec)
    assert traffic_delta(after, before)["failed"] == 0, describe_failures(after, before)


# --- teardown after a crash -----------------------------------------------------------------


async def test_down_after_the_daemon_died_stops_its_instances(sandboxes: Sandboxes) -> None:
    spec = SandboxSpec(groups=group_names(1), instances=2, version=OLD, rate_per_s=10)
    group = spec.groups[0]
    handle = await sandboxes.up(spec)
    backend = LocalBackend(group, handle.control_url)
    try:  # one replacement, so that an instance exists that state.json does not list
        await backend.ensure_image(
            spec.slot_ids(group)[0], image(NEW), ready_timeout_s=READY_TIMEOUT_S
        )
    finally:
        await backend.close()
    slots = (await get_json(f"{handle.control_url}/groups/{group}/slots"))["slots"]
    instances = identify({s["current"]["pid"] for s in slots})
    assert len(instances) == 2
    sandboxes.track(set(instances))
    daemon = identify({json.loads((handle.dir / "state.json").read_text())["pid"]})

    for pid in daemon:
        os.kill(pid, signal.SIGKILL)  # a crash: it stops nothing on its way out
    await eventually(
        lambda: not still_running(daemon), "the daemon to die", within=30, interval=0.25
    )
    assert sorted(still_running(instances)) == sorted(instances)  # orphans now
    with pytest.raises(manage.SandboxError, match="no sandbox is up"):
        manage.status(handle.dir)

    assert await asyncio.to_thread(manage.down, handle.dir) is True
    assert still_running(instances) == []
    assert not (handle.dir / "state.json").exists()


def test_a_fault_at_one_slot_hits_that_slot_of_each_group_only() -> None:
    version, fault = parse_fault(f"{NEW}=errors@1:0.3")
    assert (fault.error_ratio, fault.only_slot) == (0.3, 1)
    spec = SandboxSpec(groups=group_names(2), instances=3, faults={version: fault})
    hit = [i for i in range(3) if spec.fault_for(NEW, i).error_ratio]
    assert hit == [1]
    assert spec.fault_for(NEW).error_ratio == 0.3  # the version's fault, wherever it applies
    assert "only_slot" not in spec.fault_for(NEW, 1).knobs()  # the simulator never sees it
    _, no_config = parse_fault(f"{NEW}=no-config")
    assert no_config.knobs()["no_config"] is True
