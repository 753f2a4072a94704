"""Performs the effects ``decide`` asks for, through the backends and the IO adapters.

Every effect states an end result, and every error becomes the engine's own vocabulary:
``Outcome`` on success, ``Failure(temporary=…)`` otherwise. Nothing here decides anything.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from ..backends.base import Backend, SlotInfo
from ..changelog import entries_between, parse_changelog
from ..config import Config
from ..cpview import group_view, verified
from ..decide import Failure, Outcome
from ..errors import PermanentError, TemporaryError
from ..model import Pending, Run
from ..runner import SystemClock, resolve_outcome
from ..sources import MetricsSource
from ..store import Fence
from .changelog_source import read_source
from .controlplane import ControlPlaneClient
from .freeze import NOT_VERIFIABLE_API7, config_index
from .hooks import run_backup
from .smoke import run_smoke
from .sources import build_metrics_source

log = logging.getLogger(__name__)


def slot_dict(info: SlotInfo) -> dict[str, Any]:
    return dataclasses.asdict(info)


def _compact(instance: dict[str, Any]) -> dict[str, Any]:
    """What the engine reads of a CP instance (``listInstances`` fields)."""
    return {k: instance.get(k) for k in ("id", "hostname", "version", "status")}


MAX_POINTS = 120
"""The most points of a source's series kept in a run record (a chart's worth)."""


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
        metrics: MetricsSource | None = None,
    ) -> None:
        self.config = config
        self.backends = backends
        self.http = http or httpx.AsyncClient(timeout=10.0)
        self.cp = cp
        self.base_dir = base_dir
        self.clock = clock or SystemClock()
        # The evidence for verdicts and check-ins: by default the config's source (scraping).
        self.metrics = metrics or build_metrics_source(
            config, backends=backends, http=self.http, now=self._now
        )

    def _now(self) -> float:
        return float(self.clock.now())

    def backend(self, group: str) -> Backend:
        try:
            return self.backends[group]
        except KeyError:
            raise PermanentError(f"no backend for group '{group}'") from None

    async def perform(self, run: Run, effect: Pending, fence: Fence | None) -> Outcome | Failure:
        handler = getattr(self, f"_do_{effect.kind}")
        return await resolve_outcome(handler(run, effect.args, fence), effect.key)

    # --- planning (no run yet) ----------------------------------------------------------------

    async def inventory(self, groups: list[str]) -> dict[str, Any]:
        return await self._do_list_slots(None, {"groups": groups}, None)  # type: ignore[arg-type]

    async def cp_version(self) -> str | None:
        return await self.cp.version() if self.cp is not None else None

    async def cp_group_instances(self, groups: list[str]) -> dict[str, Any] | None:
        """``cp_instances`` for planning (None: no CP configured)."""
        return await self.cp_instances(groups) if self.cp is not None else None

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
        metrics_problems: list[str] = []
        for name in args["groups"]:
            backend = self.backend(name)
            groups[name] = [slot_dict(s) for s in await backend.list_slots()]
            warnings += [f"{name}: {w}" for w in await backend.preflight()]
            metrics_problems += await self.metrics_preflight(name)
        result: dict[str, Any] = {"groups": groups, "warnings": warnings}
        if metrics_problems:
            result["metrics_problems"] = metrics_problems
        return result

    async def metrics_preflight(self, group: str) -> list[str]:
        """Why the group's evidence would be missing, before anything changes (empty: it is
        there). A source without a ``preflight`` is not checked; one that cannot be read now is
        a problem too (nothing has changed yet: refusing is safe)."""
        check = getattr(self.metrics, "preflight", None)
        if check is None:
            return []
        try:
            return list(await check(group))
        except (TemporaryError, PermanentError) as exc:
            return [f"{group}: metrics unavailable: {exc}"]

    async def _do_check_control_plane(
        self, run: Run, args: dict[str, Any], fence: Any
    ) -> dict[str, Any]:
        if self.cp is None:
            return {"skipped": True}
        groups = await self.cp_instances([g.name for g in run.groups])
        return {"version": await self.cp.version(), "groups": groups}

    async def cp_instances(self, names: list[str]) -> dict[str, Any]:
        """Per group: the CP's instances and the runtime's host names (``cpview`` judges them),
        or why the group has none on the CP."""
        assert self.cp is not None
        groups: dict[str, Any] = {}
        for name in names:
            group_id, note = await self._cp_group(name)
            if group_id is None:
                groups[name] = {"skipped": note}
                continue
            groups[name] = {
                "gateway_group_id": group_id,
                "instances": [_compact(i) for i in await self.cp.instances(group_id)],
                "hostnames": await self._hostnames(name),
            }
        return groups

    async def _do_verify_control_plane(
        self, run: Run, args: dict[str, Any], fence: Any
    ) -> dict[str, Any]:
        """Poll the CP until it lists the group's instances Healthy on the target, or the
        deadline passes; the last view either way (the decision is the engine's)."""
        if self.cp is None:
            return {"skipped": "no control plane configured"}
        name = args["group"]
        group_id, note = await self._cp_group(name)
        if group_id is None:
            return {"skipped": note}
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            instances = await self.cp.instances(group_id)
            view = group_view(instances, await self._hostnames(name), args["target"])
            waited = loop.time() - started
            if verified(view) or waited >= float(args["timeout_s"]):
                return {"view": view, "waited_s": round(waited, 1)}
            await asyncio.sleep(float(args["interval_s"]))

    async def _cp_group(self, name: str) -> tuple[str | None, str | None]:
        """The CP's id of the group (by id, or looked up by name), or why there is none."""
        assert self.cp is not None
        group = self.config.group(name)
        if not (group.gateway_group_id or group.gateway_group):
            return None, f"no gateway_group or gateway_group_id configured for {name}"
        found = await self.cp.resolve_gateway_group(
            gateway_group_id=group.gateway_group_id, name=group.gateway_group
        )
        return str(found["id"]), None

    async def _hostnames(self, name: str) -> list[str | None]:
        """The host names of the instances the runtime has now (None where it cannot tell)."""
        return [s.hostname for s in await self.backend(name).list_slots()]

    async def cp_groups(self) -> list[dict[str, Any]] | None:
        """The CP's gateway groups with their instances by version and status (None: no CP)."""
        if self.cp is None:
            return None
        rows = []
        for group in await self.cp.gateway_groups():
            instances = await self.cp.instances(str(group["id"]))
            rows.append(
                {
                    "id": group["id"],
                    "name": group.get("name"),
                    "instances": len(instances),
                    "versions": dict(Counter(str(i.get("version")) for i in instances)),
                    "statuses": dict(Counter(str(i.get("status")) for i in instances)),
                }
            )
        return rows

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
        """The config-freeze signal (see ``freeze``): none on API7 EE, the instances' etcd
        modify index on plain APISIX."""
        if self.cp is not None:
            return {"skipped": NOT_VERIFIABLE_API7}
        urls: dict[str, str] = {}
        for g in run.groups:
            for s in await self.backend(g.name).list_slots():
                if s.endpoints.get("metrics"):
                    urls[s.id] = s.endpoints["metrics"]
        return await config_index(urls, self.http)

    async def _do_read_config_revision(
        self, run: Run, args: dict[str, Any], fence: Any
    ) -> dict[str, Any]:
        return await self.revision(run)

    async def _do_run_backup(self, run: Run, args: dict[str, Any], fence: Any) -> dict[str, Any]:
        if self.config.backup is None:
            raise PermanentError("no backup hook configured")
        return await run_backup(self.config.backup, run_id=run.id, client=self.http)

    async def _do_scrape(self, run: Run, args: dict[str, Any], fence: Any) -> dict[str, Any]:
        # A window's start (a mark), or, given its start, its summary from there to now.
        if "mark" in args:
            summary = await self.metrics.summarize(args["group"], args["mark"])
            out: dict[str, Any] = {"summary": summary.to_dict()}
            if args.get("restart"):  # and the next window starts here
                out["mark"] = await self.metrics.mark(args["group"])
            if args.get("series_from") is not None:  # the source's own points, if it keeps any
                points = await self.metrics.series(
                    args["group"], float(args["series_from"]), self._now()
                )
                out["series"] = [
                    {"start": p.start, "end": p.end, "summary": p.summary.to_dict()}
                    for p in points[-MAX_POINTS:]
                ]
            return out
        return {"mark": await self.metrics.mark(args["group"])}

    async def _do_ensure_slots(
        self, run: Run, args: dict[str, Any], fence: Fence | None
    ) -> dict[str, Any]:
        slots = list(args["slots"])
        rollout = await self.backend(args["group"]).ensure_group(
            args["image"],
            slots=slots,
            ready_timeout_s=float(args["ready_timeout_s"]),
            fence=f"{run.id}:{fence.token}" if fence is not None else None,
            parallel=max(1, len(slots)),  # the batch decide chose goes at once
            progress=lambda news: log.info("run %s: %s %s", run.id, news.slot_id, news.step),
        )
        errors: dict[str, TemporaryError | PermanentError] = dict(rollout.failed)
        for slot_id in rollout.pending:
            errors[slot_id] = TemporaryError(f"{slot_id}: not started (the rollout stopped)")
        return {
            "slots": {slot_id: slot_dict(info) for slot_id, info in rollout.ready.items()},
            "errors": {
                slot_id: {
                    "error": str(exc),
                    "temporary": isinstance(exc, TemporaryError),
                    "delay_s": getattr(exc, "delay_s", 2.0),
                }
                for slot_id, exc in errors.items()
            },
        }

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
                summary = await self.metrics.summarize(g.name, g.settle_snapshot)
                entry["since_upgrade"] = summary.to_dict()
            groups[g.name] = entry
        return {"groups": groups, **await self.revision(run)}

    async def close(self) -> None:
        await self.metrics.close()
        await self.http.aclose()
        if self.cp is not None:
            await self.cp.close()
        for backend in self.backends.values():
            await backend.close()
