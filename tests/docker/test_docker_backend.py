"""The Docker backend on a real Docker-API engine (podman's service), under traffic.

Each test brings up a sandbox whose gateways are containers (a compose-like project behind the
group's front door, traffic flowing) and upgrades it through ``DockerBackend`` alone. Judged
only from outside: the traffic generator's counts, the sandbox's observed truth (what each
container shows on its Server header and ``apisix_node_info``), and the engine's own
inspect documents.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import docker
import pytest

from upgrade_bot.engine.backends.docker import NEXT, PREV
from upgrade_bot.engine.backends.docker_inspect import differences
from upgrade_bot.engine.errors import NotReadyError, PermanentError
from upgrade_bot.sandbox.spec import Fault

from ..support import Sandboxes, eventually
from .fleets import NEW, OLD, container_fleet, traffic_delta

pytestmark = [pytest.mark.traffic, pytest.mark.timeout(240)]

# Enough requests in flight at any moment (100/s at 150 ms: ~15) that a stop which cuts them
# shows: the negative control must be able to fail.
TRAFFIC = {"rate_per_s": 100.0, "latency_ms": 150.0}


def names(client: docker.DockerClient, project_label: dict[str, str]) -> dict[str, str]:
    """Container name -> status, for the group's containers."""
    found = client.containers.list(
        all=True, filters={"label": [f"{k}={v}" for k, v in project_label.items()]}
    )
    return {c.name: c.status for c in found}


@pytest.mark.parametrize("fixed_ports", [False, True], ids=["beside", "stop-first"])
async def test_an_upgrade_under_traffic_fails_no_request_and_serves_none_before_ready(
    sandboxes: Sandboxes, docker_host: str, docker_client: docker.DockerClient, fixed_ports: bool
) -> None:
    async with container_fleet(sandboxes, docker_host, fixed_ports=fixed_ports, **TRAFFIC) as fleet:
        backend = fleet.backend()
        before_ids = {s.id: s for s in await backend.list_slots()}
        warnings = await backend.preflight()
        assert any("briefly out" in w for w in warnings) == fixed_ports
        before = await fleet.status()
        rollout = await backend.ensure_group(fleet.image(NEW), ready_timeout_s=30)
        assert rollout.complete, rollout.failed
        # The front door has seen the last stop before the counts are read.
        await asyncio.sleep(0.5)
        after = await fleet.status()
        delta = traffic_delta(after, before)
        assert delta["total"] >= 100 and delta["failed"] == 0, json.dumps(
            [delta, after["front_doors"]]
        )
        truth = await fleet.truth()
        assert set(truth) == set(before_ids)
        for slot_id, slot in truth.items():
            assert (slot["version"], slot["replacements"]) == (NEW, 1), slot
            assert slot["served_before_ready"] == 0
            info = rollout.ready[slot_id]
            assert info.version == NEW and info.digest and info.digest.startswith("sha256:")
        # Kept, stopped, until the run ends; then removed.
        kept = names(docker_client, fleet.settings.labels)
        assert sorted(n for n in kept if n.endswith(PREV)) == sorted(
            s.split("/", 1)[1] + PREV for s in before_ids
        )
        assert all(kept[n] == "exited" for n in kept if n.endswith(PREV))
        removed = await backend.finish()
        assert len(removed) == len(before_ids)
        assert not any(n.endswith(PREV) for n in names(docker_client, fleet.settings.labels))
        await backend.close()


async def test_sigterm_without_drain_fails_requests_on_the_same_traffic(
    sandboxes: Sandboxes, docker_host: str
) -> None:
    """The negative control: the measurement above is trusted because this one fails."""
    async with container_fleet(sandboxes, docker_host, **TRAFFIC) as fleet:
        backend = fleet.backend(stop_signal="SIGTERM", drain_s=0)
        assert any("SIGTERM" in w for w in await backend.preflight())
        before = await fleet.status()
        rollout = await backend.ensure_group(fleet.image(NEW), ready_timeout_s=30)
        assert rollout.complete, rollout.failed
        await asyncio.sleep(0.5)
        delta = traffic_delta(await fleet.status(), before)
        assert delta["failed"] > 0, delta
        await backend.close()


async def test_a_missing_tag_is_refused_before_any_change_and_a_vanished_container_is_clear(
    sandboxes: Sandboxes, docker_host: str, docker_client: docker.DockerClient
) -> None:
    async with container_fleet(sandboxes, docker_host, rate_per_s=20.0) as fleet:
        backend = fleet.backend()
        before = {c.id: c.status for c in docker_client.containers.list(all=True)}
        rollout = await backend.ensure_group(fleet.image("9.9.9"), ready_timeout_s=10)
        assert not rollout.ready and len(rollout.pending) == 1
        [error] = rollout.failed.values()
        assert isinstance(error, PermanentError)
        assert fleet.image("9.9.9") in str(error) and "could not be pulled" in str(error)
        assert {c.id: c.status for c in docker_client.containers.list(all=True)} == before
        # A container removed behind the bot's back is a clear failure, not a crash.
        [first, *_] = await backend.list_slots()
        docker_client.containers.get(first.id.split("/", 1)[1]).remove(force=True)
        rollout = await backend.ensure_group(fleet.image(NEW), slots=[first.id], ready_timeout_s=10)
        [error] = rollout.failed.values()
        assert isinstance(error, PermanentError) and "is gone" in str(error), error
        await backend.close()


@pytest.mark.parametrize("fixed_ports", [False, True], ids=["beside", "stop-first"])
async def test_a_never_ready_release_leaves_the_slot_on_its_old_container(
    sandboxes: Sandboxes, docker_host: str, docker_client: docker.DockerClient, fixed_ports: bool
) -> None:
    """Beside: the replacement is removed unseen. Stop first: the kept container is restarted
    (the same container, no pull). Either way no request fails."""
    async with container_fleet(
        sandboxes,
        docker_host,
        fixed_ports=fixed_ports,
        faults={NEW: Fault(never_ready=True)},
        rate_per_s=60.0,
    ) as fleet:
        backend = fleet.backend()
        slots = await backend.list_slots()
        ids_before = {c.name: c.id for c in docker_client.containers.list(all=True)}
        before = await fleet.status()
        rollout = await backend.ensure_group(fleet.image(NEW), ready_timeout_s=3)
        [(slot_id, error)] = rollout.failed.items()
        assert slot_id == slots[0].id and isinstance(error, NotReadyError)
        assert "not ready" in str(error)
        ids_after = {c.name: c.id for c in docker_client.containers.list(all=True)}
        assert ids_after == ids_before  # same containers, same names: nothing new left over
        assert all(c.status == "running" for c in docker_client.containers.list(all=True))

        async def serving() -> bool:
            truth = await fleet.truth()
            return all(s["version"] == OLD for s in truth.values())

        await eventually(serving, "every slot serving the old version", within=30)
        await asyncio.sleep(0.5)
        delta = traffic_delta(await fleet.status(), before)
        assert delta["failed"] == 0, delta
        await backend.close()


async def test_a_rollback_restarts_the_kept_containers_and_fails_no_request(
    sandboxes: Sandboxes, docker_host: str, docker_client: docker.DockerClient
) -> None:
    async with container_fleet(sandboxes, docker_host, **TRAFFIC) as fleet:
        backend = fleet.backend()
        original = {c.name: c.id for c in docker_client.containers.list(all=True)}
        before = await fleet.status()
        assert (await backend.ensure_group(fleet.image(NEW), ready_timeout_s=30)).complete
        rollout = await backend.ensure_group(fleet.image(OLD), ready_timeout_s=30)
        assert rollout.complete, rollout.failed
        await asyncio.sleep(0.5)
        # The very containers that served before the upgrade serve again under their names.
        running = {c.name: c.id for c in docker_client.containers.list()}
        assert running == original
        truth = await fleet.truth()
        assert {(s["version"], s["replacements"], s["restorations"]) for s in truth.values()} == {
            (OLD, 1, 1)
        }
        delta = traffic_delta(await fleet.status(), before)
        assert delta["failed"] == 0, delta
        # The replaced ones are gone, not kept: nothing for `finish` but nothing orphaned either.
        assert not [n for n in names(docker_client, fleet.settings.labels) if n.endswith(NEXT)]
        await backend.close()


async def test_each_readiness_mode_upgrades_and_a_tcp_only_group_is_warned(
    sandboxes: Sandboxes, docker_host: str
) -> None:
    # No traffic is judged here: one container, no drain wait.
    async with container_fleet(sandboxes, docker_host, instances=1, rate_per_s=10.0) as fleet:
        steps = [("status", NEW), ("proxy", "3.8.2"), ("healthcheck", "3.8.3"), ("tcp", "3.9.0")]
        for mode, version in steps:
            backend = fleet.backend(readiness={"mode": mode}, drain_s=0)
            warnings = await backend.preflight()
            assert any("only a TCP connect" in w for w in warnings) == (mode == "tcp"), warnings
            rollout = await backend.ensure_group(fleet.image(version), ready_timeout_s=30)
            assert rollout.complete, (mode, rollout.failed)
            assert {s.version for s in await backend.list_slots()} == {version}
            await backend.close()


async def test_a_replacement_keeps_the_containers_configuration_except_its_image(
    sandboxes: Sandboxes, docker_host: str, docker_client: docker.DockerClient
) -> None:
    """The inspect documents before and after, compared field by field: only the image (and
    what comes with it: its ENV and labels) and what the engine assigns may differ."""
    async with container_fleet(sandboxes, docker_host, rate_per_s=10.0, fixed_ports=True) as fleet:
        backend = fleet.backend(drain_s=0)
        [first, *_] = await backend.list_slots()
        name = first.id.split("/", 1)[1]
        before = docker_client.api.inspect_container(name)
        assert (
            await backend.ensure_group(fleet.image(NEW), slots=[first.id], ready_timeout_s=30)
        ).complete
        after = docker_client.api.inspect_container(name)
        assert after["Id"] != before["Id"]
        engine_assigned = (
            "Id",
            "Created",
            "State",
            "Image",
            "ResolvConfPath",
            "HostnamePath",
            "HostsPath",
            "LogPath",
            "GraphDriver",
            "NetworkSettings",
            "Mounts",
            "Config.Hostname",
            "RestartCount",
            "Path",
            "Args",
        )
        changed = [
            path for path in differences(before, after) if not path.startswith(engine_assigned)
        ]
        assert sorted(changed) == [
            "Config.Env",
            "Config.Image",
            "Config.Labels.org.opencontainers.image.version",
        ], changed
        # The environment differs only by the image's own entries.
        old_env, new_env = set(before["Config"]["Env"]), set(after["Config"]["Env"])
        assert {e.partition("=")[0] for e in old_env ^ new_env} <= {"GATEWAY_VERSION", "HOSTNAME"}
        assert after["Config"]["Image"] == fleet.image(NEW)
        # What an operator set is there, field by field.
        for key in ("Binds", "PortBindings", "RestartPolicy", "Ulimits", "Init", "NetworkMode"):
            assert after["HostConfig"][key] == before["HostConfig"][key], key
        for key in ("Cmd", "Healthcheck", "StopSignal", "User", "WorkingDir", "Entrypoint"):
            assert after["Config"][key] == before["Config"][key], key
        await backend.close()


async def test_the_compose_file_follows_the_group_and_is_restored_on_rollback(
    sandboxes: Sandboxes, docker_host: str, tmp_path: Path
) -> None:
    async with container_fleet(sandboxes, docker_host, rate_per_s=10.0) as fleet:
        service = fleet.settings.labels["com.docker.compose.service"]
        compose_file = tmp_path / "compose.yaml"
        original = (
            "# the gateways of prod-eu\n"
            "services:\n"
            f"  {service}:\n"
            f'    image: "{fleet.image(OLD)}"  # pinned by the bot\n'
            "    stop_signal: SIGQUIT\n"
        )
        compose_file.write_text(original)
        backend = fleet.backend(compose_file=str(compose_file), drain_s=0)
        assert (await backend.ensure_group(fleet.image(NEW), ready_timeout_s=30)).complete
        assert compose_file.read_text() == original.replace(fleet.image(OLD), fleet.image(NEW))
        [change] = backend.compose_changes
        assert change.describe() == (
            f"{compose_file}: services.{service}.image: {fleet.image(OLD)} → {fleet.image(NEW)}"
        )
        assert (await backend.ensure_group(fleet.image(OLD), ready_timeout_s=30)).complete
        assert compose_file.read_text() == original
        await backend.close()
