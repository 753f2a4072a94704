"""The sandbox daemon: one background process that owns a whole local gateway fleet.

It runs the control-plane stand-in, the gateway processes, a front door per group, the traffic
generator and a small control API (JSON over loopback HTTP) that the local backend and
``sandbox status`` use. Started by ``upgrade-bot sandbox up``; it outlives the bot, so that a bot
killed mid-run finds its fleet as it left it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from .controlplane import ControlPlaneState, serve_control_plane
from .fleet import Fleet, FleetError
from .frontdoor import FrontDoor
from .spec import SandboxSpec, parse_fault
from .traffic import TrafficGenerator

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
SPEC_FILE = "sandbox.json"
CP_KEY_FILE = "cp_api_key"
TRAFFIC_PATH = "/api/orders"
"""What the traffic generator requests: a proxied route, so upstream faults show in it."""


class Sandbox:
    def __init__(self, directory: Path, spec: SandboxSpec) -> None:
        self.dir = directory
        self.spec = spec
        self.stopping = asyncio.Event()
        self.front_doors: dict[str, FrontDoor] = {}
        self.traffic: TrafficGenerator | None = None
        self.fleet: Fleet | None = None
        self.cp_state: ControlPlaneState | None = None
        self._runners: list[web.AppRunner] = []
        self.fences: dict[str, int] = {}
        self.fenced = 0

    async def start(self, control_port: int) -> dict[str, Any]:
        api_key = (self.dir / CP_KEY_FILE).read_text().strip()
        self.cp_state = ControlPlaneState(
            version=self.spec.cp_version or self.spec.version,
            api_key=api_key,
            clock=time.time,
            gateway_groups=self.spec.groups,
            lost_after_s=3 * self.spec.heartbeat_interval_s,  # 30 s at the real 10 s interval
        )
        cp_runner, cp_port = await serve_control_plane(self.cp_state, host="127.0.0.1", port=0)
        self._runners.append(cp_runner)
        cp_url = f"http://127.0.0.1:{cp_port}"

        self.fleet = Fleet(self.spec, cp_url=cp_url, tag=str(self.dir))
        await self.fleet.start_initial()
        for group in self.spec.groups:
            door = FrontDoor(
                group,
                members=lambda g=group: self.fleet.members(g),  # type: ignore[union-attr]
                health_interval_s=self.spec.health_interval_s,
                health_timeout_s=self.spec.health_timeout_s,
                health_check=self.spec.readiness,
            )
            await door.start()
            self.front_doors[group] = door
        await self._wait_front_doors_healthy()
        self.traffic = TrafficGenerator(
            {g: d.url for g, d in self.front_doors.items()},
            rate_per_s=self.spec.rate_per_s,
            path=TRAFFIC_PATH,
        )
        if self.spec.rate_per_s > 0:
            await self.traffic.start()

        runner = web.AppRunner(self.control_app(), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", control_port).start()
        self._runners.append(runner)
        control_port = int(runner.addresses[0][1])  # 0 asked for any free port
        return {
            "pid": os.getpid(),
            "control_url": f"http://127.0.0.1:{control_port}",
            "cp_url": cp_url,
            "front_doors": {g: d.url for g, d in self.front_doors.items()},
            "instance_pids": [i.pid for i in self.fleet.instances.values()],
            "started_at": time.time(),
        }

    async def _wait_front_doors_healthy(self, timeout_s: float = 30) -> None:
        """Traffic starts only once every front door has seen its members ready."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(
                len(d.healthy_members()) >= self.spec.instances for d in self.front_doors.values()
            ):
                return
            await asyncio.sleep(0.05)
        raise RuntimeError("front doors did not see the fleet ready in time")

    async def stop(self) -> None:
        if self.traffic is not None:
            await self.traffic.stop()
        for door in self.front_doors.values():
            await door.stop()
        if self.fleet is not None:
            await self.fleet.shutdown()
        for runner in reversed(self._runners):
            await runner.cleanup()

    # --- control API ------------------------------------------------------------------------

    def control_app(self) -> web.Application:
        app = web.Application(middlewares=[_errors_as_json, self._fencing])
        app.add_routes(
            [
                web.get("/health", self.health),
                web.get("/status", self.status),
                web.get("/traffic", self.traffic_series),
                web.get("/groups/{group}/slots", self.group_slots),
                web.get("/slots/{group}/{index}", self.slot),
                web.post("/slots/{group}/{index}/instances", self.start_instance),
                web.post("/slots/{group}/{index}/activate", self.activate),
                web.get("/instances/{id}", self.instance),
                web.post("/instances/{id}/stop", self.stop_instance),
                web.put("/faults", self.set_fault),
                web.post("/shutdown", self.shutdown),
            ]
        )
        return app

    @web.middleware
    async def _fencing(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Refuse changes from a driver whose fencing token is older than one already seen.

        The token travels with every change the local backend makes; a driver that was frozen
        while another took over its run finds its late actions refused here.
        """
        fence = request.headers.get("X-Upgrade-Fence")
        if fence and request.method != "GET":
            run_id, _, raw = fence.rpartition(":")
            try:
                token = int(raw)
            except ValueError:
                raise FleetError(f"malformed fencing token '{fence}'") from None
            newest = self.fences.get(run_id, 0)
            if token < newest:
                self.fenced += 1
                log.warning(
                    "refused %s %s from a stale driver of %s (token %d < %d)",
                    request.method,
                    request.path,
                    run_id,
                    token,
                    newest,
                )
                raise FleetError(
                    f"fenced: run {run_id} token {token} is older than {newest}", status=409
                )
            self.fences[run_id] = token
        return await handler(request)

    @property
    def _fleet(self) -> Fleet:
        assert self.fleet is not None
        return self.fleet

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def status(self, request: web.Request) -> web.Response:
        assert self.traffic is not None
        counts = self.traffic.counts()
        return web.json_response(
            {
                "slots": await self._fleet.truth(),
                "traffic": counts,
                "front_doors": {g: d.stats() for g, d in self.front_doors.items()},
                "fenced_requests": self.fenced,
                "faults": {v: f.__dict__ for v, f in self.spec.faults.items()},
            }
        )

    async def traffic_series(self, request: web.Request) -> web.Response:
        assert self.traffic is not None
        group = request.query.get("group")
        return web.json_response({"series": self.traffic.series(group)})

    async def group_slots(self, request: web.Request) -> web.Response:
        group = request.match_info["group"]
        if group not in self.spec.groups:
            raise FleetError(f"no group '{group}'; groups: {', '.join(self.spec.groups)}", 404)
        slots = [await self._fleet.describe_slot(s) for s in self.spec.slot_ids(group)]
        return web.json_response({"slots": slots})

    @staticmethod
    def _slot_id(request: web.Request) -> str:
        return f"{request.match_info['group']}/{request.match_info['index']}"

    async def slot(self, request: web.Request) -> web.Response:
        return web.json_response(await self._fleet.describe_slot(self._slot_id(request)))

    async def start_instance(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        image = body.get("image")
        if not isinstance(image, str):
            raise FleetError('expected JSON {"image": "repository:tag"}')
        inst = await self._fleet.start_instance(self._slot_id(request), image)
        return web.json_response(inst.public(), status=201)

    async def activate(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        result = await self._fleet.activate(self._slot_id(request), str(body.get("instance")))
        return web.json_response(result)

    async def instance(self, request: web.Request) -> web.Response:
        inst = self._fleet._instance(request.match_info["id"])
        data = inst.public()
        data["ready"] = await self._fleet.is_ready(inst.id)
        return web.json_response(data)

    async def stop_instance(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        inst = await self._fleet.stop_instance(
            request.match_info["id"],
            str(body.get("signal", "SIGQUIT")),
            timeout_s=float(body.get("timeout_s", 30)),
        )
        return web.json_response(inst.public())

    async def set_fault(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        try:
            version, fault = parse_fault(str(body.get("fault", "")))
        except ValueError as exc:
            raise FleetError(str(exc)) from None
        self.spec.faults[version] = self.spec.fault_for(version).merged(fault)
        return web.json_response({"version": version, "fault": fault.__dict__})

    async def shutdown(self, request: web.Request) -> web.Response:
        self.stopping.set()
        return web.json_response({"status": "stopping"})


@web.middleware
async def _errors_as_json(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except FleetError as exc:
        return web.json_response({"error": str(exc)}, status=exc.status)


async def _json_body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except ValueError:
        raise FleetError("the request body is not JSON") from None
    if not isinstance(body, dict):
        raise FleetError("expected a JSON object")
    return body


async def run(directory: Path, control_port: int) -> None:
    spec = SandboxSpec.load(directory / SPEC_FILE)
    sandbox = Sandbox(directory, spec)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, sandbox.stopping.set)
    state_path = directory / STATE_FILE
    try:
        state = await sandbox.start(control_port)
        tmp = state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(state_path)
        log.info("sandbox up: %s", state["control_url"])
        await sandbox.stopping.wait()
    except Exception as exc:
        log.exception("sandbox failed")
        (directory / "error.txt").write_text(f"{type(exc).__name__}: {exc}\n")
    finally:
        await sandbox.stop()
        with contextlib.suppress(FileNotFoundError):
            state_path.unlink()
        log.info("sandbox down")


def main() -> None:
    parser = argparse.ArgumentParser(description="upgrade-bot sandbox daemon (internal)")
    parser.add_argument("--dir", required=True, type=Path)
    parser.add_argument("--control-port", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(run(args.dir, args.control_port))


if __name__ == "__main__":
    main()
