"""Performs the effects ``decide`` asks for, through the backends and the IO adapters.

Every effect states an end result, and every error becomes the engine's own vocabulary:
``Outcome`` on success, ``Failure(temporary=…)`` otherwise. Nothing here decides anything.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from .. import metrics as m
from ..backends.base import Backend, SlotInfo
from ..changelog import entries_between, parse_changelog
from ..config import Config
from ..decide import Failure, Outcome
from ..errors import PermanentError, TemporaryError
from ..model import Pending, Run, _build
from ..runner import SystemClock, resolve_outcome
from .changelog_source import read_source
from .controlplane import ControlPlaneClient
from .hooks import run_backup
from .scrape import scrape
from .smoke import run_smoke


def slot_dict(info: SlotInfo) -> dict[str, Any]:
    return dataclasses.asdict(info)


class EffectPerformer:
    def __init__(
        self,
        config: Config,
        backends: Mapping[str, Backend],
        *,
        http: httpx.AsyncClient | None = None,
        cp: ControlPlaneClient | None = None,
        base_dir: Path = Path("."),
        clock: Any = None,
    ) -> None:
        self.config = config
        self.backends = backends
        self.http = http or httpx.AsyncClient(timeout=10.0)
        self.cp = cp
        self.base_dir = base_dir
        self.clock = clock or SystemClock()

    def _now(self) -> float:
        return float(self.clock.now())

    def backend(self, group: str) -> Backend:
        try:
            return self.backends[group]
        except KeyError:
            raise PermanentError(f"no backend for group '{group}'") from None

    async def perform(self, run: Run, effect: Pending, fence: Any) -> Outcome | Failure:
        handler = getattr(self, f"_do_{effect.kind}")
        return await resolve_outcome(handler(run, effect.args, fence), effect.key)

    # --- planning (no run yet) ----------------------------------------------------------------

    async def inventory(self, groups: list[str]) -> dict[str, Any]:
        return await self._do_list_slots(None, {"groups": groups}, None)  # type: ignore[arg-type]

    async def cp_version(self) -> str | None:
        return await self.cp.version() if self.cp is not None else None

    async def changelog_entries(self, current: str | None, target: str) -> dict[str, Any]:
        return await self._do_load_changelog(
            None,
            {"current": current, "target": target},
            None,  # type: ignore[arg-type]
        )

    # --- effects ----------------------------------------------------------------------------

    async def _do_list_slots(self, run: Run, args: dict[str, Any], fence: Any) -> dict[str, Any]:
        groups: dict[str, list[dict[str, Any]]] = {}
        warnings: list[str] = []
        for name in args["groups"]:
            backend = self.backend(name)
            groups[name] = [slot_dict(s) for s in await backend.list_slots()]
            warnings += [f"{name}: {w}" for w in await backend.preflight()]
        return {"groups": groups, "warnings": warnings}

    async def _do_check_control_plane(
        self, run: Run, args: dict[str, Any], fence: Any
    ) -> dict[str, Any]:
        if self.cp is None:
            return {"skipped": True}
        return {"version": await self.cp.version()}

    async def _do_load_changelog(
        self, run: Run, args: dict[str, Any], fence: Any
    ) -> dict[str, Any]:
        source = self.config.changelog
        if not source:
            return {"skipped": "no changelog configured"}
        text = await read_source(source, base_dir=self.base_dir, client=self.http)
        entries = parse_changelog(text)
        current = args.get("current")
        if current is None:
            return {"skipped": "current version unknown: changelog not filtered"}
        chosen = entries_between(entries, current, args["target"])
        return {
            "entries": [{"version": e.version, "text": e.text} for e in chosen],
            "source": source,
        }

    async def revision(self, run: Run) -> dict[str, Any]:
        if self.cp is None:
            return {"skipped": "no control plane configured: config freeze not checked"}
        ids = [self.config.group(g.name).gateway_group_id for g in run.groups]
        ids = [i for i in ids if i]
        if not ids:
            return {"skipped": "no gateway_group_id configured: config freeze not checked"}
        revisions = await asyncio.gather(*(self.cp.config_revision(i) for i in ids))
        # Revisions only grow, so their sum moves whenever any group's configuration moves.
        return {"revision": sum(revisions), "by_group": dict(zip(ids, revisions, strict=True))}

    async def _do_read_config_revision(
        self, run: Run, args: dict[str, Any], fence: Any
    ) -> dict[str, Any]:
        return await self.revision(run)

    async def _do_run_backup(self, run: Run, args: dict[str, Any], fence: Any) -> dict[str, Any]:
        if self.config.backup is None:
            raise PermanentError("no backup hook configured")
        return await run_backup(self.config.backup, run_id=run.id, client=self.http)

    async def snapshot(self, group: str) -> m.Snapshot:
        slots = await self.backend(group).list_slots()
        # An instance is known by its metrics address: a replaced slot is a new instance, so its
        # counters start from zero instead of being mistaken for a reset.
        targets = {
            f"{s.id}@{s.endpoints['metrics']}": s.endpoints["metrics"]
            for s in slots
            if s.endpoints.get("metrics")
        }
        if not targets:
            raise TemporaryError(f"{group}: no instance exposes metrics")
        return await scrape(targets, self.http, now=self._now())

    async def _do_scrape(self, run: Run, args: dict[str, Any], fence: Any) -> dict[str, Any]:
        return {"snapshot": dataclasses.asdict(await self.snapshot(args["group"]))}

    async def _do_ensure_slots(self, run: Run, args: dict[str, Any], fence: Any) -> dict[str, Any]:
        backend = self.backend(args["group"])

        async def one(slot_id: str) -> tuple[str, SlotInfo | BaseException]:
            try:
                info = await backend.ensure_image(
                    slot_id,
                    args["image"],
                    ready_timeout_s=float(args["ready_timeout_s"]),
                    fence=f"{run.id}:{fence.token}" if fence is not None else None,
                )
                return slot_id, info
            except (TemporaryError, PermanentError) as exc:
                return slot_id, exc

        results = await asyncio.gather(*(one(s) for s in args["slots"]))
        out: dict[str, Any] = {"slots": {}, "errors": {}}
        for slot_id, res in results:
            if isinstance(res, SlotInfo):
                out["slots"][slot_id] = slot_dict(res)
            else:
                out["errors"][slot_id] = {
                    "error": str(res),
                    "temporary": isinstance(res, TemporaryError),
                    "delay_s": getattr(res, "delay_s", 2.0),
                }
        return out

    async def _do_smoke(self, run: Run, args: dict[str, Any], fence: Any) -> dict[str, Any]:
        return await run_smoke(args["endpoints"], self.config.smoke_for(args["group"]), self.http)

    async def _do_checkin(self, run: Run, args: dict[str, Any], fence: Any) -> dict[str, Any]:
        groups: dict[str, Any] = {}
        for g in run.groups:
            slots = await self.backend(g.name).list_slots()
            entry: dict[str, Any] = {
                "ready": sum(1 for s in slots if s.ready),
                "slots": len(slots),
                "versions": sorted({s.version or "unknown" for s in slots}),
            }
            if g.settle_snapshot:
                # Errors and latency since the group's after-window began.
                now = await self.snapshot(g.name)
                summary = m.summarize(m.window(_build(m.Snapshot, g.settle_snapshot), now))
                entry["since_upgrade"] = summary.to_dict()
            groups[g.name] = entry
        return {"groups": groups, **await self.revision(run)}

    async def close(self) -> None:
        await self.http.aclose()
        if self.cp is not None:
            await self.cp.close()
        for backend in self.backends.values():
            await backend.close()
