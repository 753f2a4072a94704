"""The engine's public API, used by the headless CLI and the Slack layer alike.

Adapters (store, performer) and the clock are injected by the composition root; this module
imports none of them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .config import Config, Group
from .cpview import group_view
from .decide import OVERRIDES, Command, Decision, allowed, initial_run, plan_groups
from .errors import Duplicate, Refused, UnknownRun
from .feed import EventFeed
from .model import Run
from .readiness import describe as describe_readiness
from .runner import Clock, DriveResult, LeaseBusy, Performer, Runner, SystemClock, no_checkpoint
from .schema import Unresumable, load_run, plan_hash
from .store import Record, Store
from .versions import EXAMPLE, Version, is_version, normalize, path_warning

log = logging.getLogger(__name__)


class PlanningPerformer(Performer, Protocol):
    async def inventory(self, groups: Sequence[str]) -> dict[str, Any]: ...

    async def cp_version(self) -> str | None: ...

    async def changelog_entries(self, current: str | None, target: str) -> dict[str, Any]: ...

    async def cp_groups(self) -> list[dict[str, Any]] | None: ...

    async def cp_group_instances(self, groups: list[str]) -> dict[str, Any] | None: ...


@dataclass(frozen=True)
class Plan:
    target_version: str
    groups: list[dict[str, Any]]
    current_version: str | None
    warnings: list[str] = field(default_factory=list)
    blockers: list[str] = field(default_factory=list)
    control_plane: dict[str, Any] = field(default_factory=dict)
    changelog: dict[str, Any] = field(default_factory=dict)
    backup: str = ""
    plan_hash: str = ""


class Engine:
    def __init__(
        self,
        *,
        config: Config,
        store: Store,
        performer: PlanningPerformer,
        identity: str,
        new_id: Callable[[str], str],
        clock: Clock | None = None,
        poll_interval_s: float = 0.5,
        checkpoint: Callable[[str, str], None] = no_checkpoint,
    ) -> None:
        self.config = config
        self.store = store
        self.performer = performer
        self.identity = identity
        self.new_id = new_id
        self.clock = clock or SystemClock()
        self.feed = EventFeed(
            store, identity=identity, clock=self.clock, lease_ttl_s=config.store.lease_ttl_s
        )
        """Events, delivery cursors and the Slack layer's delivery bookkeeping."""
        self.runner = Runner(
            store=store,
            performer=performer,
            config=config,
            identity=identity,
            clock=self.clock,
            poll_interval_s=poll_interval_s,
            checkpoint=checkpoint,
        )

    # --- planning and starting ------------------------------------------------------------

    def resolve_groups(self, names: Sequence[str] | None) -> list[str]:
        valid = [g.name for g in self.config.groups]
        if not names:
            return valid
        unknown = [n for n in names if n not in valid]
        if unknown:
            raise Refused(f"unknown group {', '.join(unknown)}; groups: {', '.join(valid)}")
        if len(set(names)) != len(names):
            raise Refused("a group is named twice")
        return list(names)

    async def plan(self, target: str, groups: Sequence[str] | None = None) -> Plan:
        """What a run to ``target`` would do, and what would stop it, without doing anything."""
        target = _check_version(target)
        names = self.resolve_groups(groups)
        group_runs = plan_groups(self.config, target, list(names))
        inventory = await self.performer.inventory(names)
        warnings = list(inventory.get("warnings", []))
        blockers: list[str] = list(inventory.get("metrics_problems", []))
        versions: list[str] = []
        rows = []
        for g in group_runs:
            slots = inventory["groups"][g.name]
            versions += [s["version"] for s in slots if s.get("version")]
            unready = [s["id"] for s in slots if not s.get("ready")]
            if unready:
                blockers.append(f"{g.name}: not ready: {', '.join(unready)} (override: unhealthy)")
            holder = await self.store.lock_holder(g.name)
            if holder:
                blockers.append(f"{g.name} is busy: run {holder} holds it")
            rows.append(
                {
                    "name": g.name,
                    "production": g.production,
                    "image": g.target_image,
                    "batch_size": g.batch_size,
                    "slots": [
                        {k: s.get(k) for k in ("id", "version", "image", "ready")} for s in slots
                    ],
                    "to_replace": sum(1 for s in slots if s["image"] != g.target_image),
                    "readiness": readiness_of(self.config.group(g.name)),
                }
            )
        current = min(versions, key=Version) if versions else None
        if current and (w := path_warning(current, target)):
            warnings.append(w)
        cp_version = await self.performer.cp_version()
        if cp_version is None:
            cp = {"skipped": "no control plane configured: the CP version pre-check is skipped"}
        else:
            cp = {"version": cp_version}
            if Version(cp_version) < Version(target):
                blockers.append(
                    f"control plane runs {cp_version}, older than {target} (override: cp-version)"
                )
            blockers += _cp_instance_findings(
                await self.performer.cp_group_instances(list(names)) or {}, warnings
            )
        changelog = await self.performer.changelog_entries(current, target)
        backup = (
            f"{self.config.backup.type} hook"
            if self.config.backup
            else "none configured: a start needs a waiver with a reason"
        )
        return Plan(
            target_version=target,
            groups=rows,
            current_version=current,
            warnings=warnings,
            blockers=blockers,
            control_plane=cp,
            changelog=changelog,
            backup=backup,
            plan_hash=plan_hash(target, group_runs),
        )

    async def control_plane_groups(self) -> list[dict[str, Any]] | None:
        """The CP's gateway groups: id, name, instance count, versions and statuses
        (None when no control plane is configured)."""
        return await self.performer.cp_groups()

    async def start(
        self,
        target: str,
        groups: Sequence[str] | None = None,
        *,
        requester: str,
        user_groups: tuple[str, ...] = (),
        approval_mode: str = "human",
        overrides: Sequence[str] = (),
        waiver: str | None = None,
        acknowledge_changelog: bool = False,
        request_id: str | None = None,
        channel: str | None = None,
    ) -> Run:
        """Create a run (taking its groups' locks). The driver then carries it out."""
        target = _check_version(target)
        names = self.resolve_groups(groups)
        if approval_mode not in ("human", "auto"):
            raise Refused(f"approval mode '{approval_mode}': expected human or auto")
        for name in names:
            if not allowed(self.config.policy_for(name).start, requester, user_groups):
                await self._audit_refusal("start", requester, f"not allowed to start on {name}")
                raise Refused(f"{requester} may not start upgrades on {name} (not in its policy)")
        for override in overrides:
            if override not in OVERRIDES:
                raise Refused(f"unknown override '{override}'; overrides: {', '.join(OVERRIDES)}")
        if overrides or waiver is not None:
            if waiver is not None and not waiver.strip():
                raise Refused("a backup waiver needs a reason")
            for name in names:
                if not allowed(self.config.policy_for(name).override, requester, user_groups):
                    what = ", ".join([*overrides, *(["backup waiver"] if waiver else [])])
                    await self._audit_refusal("override", requester, f"{what} on {name}")
                    raise Refused(
                        f"{requester} may not use overrides ({what}) on {name} (not in its policy)"
                    )
        if request_id is not None and not await self.store.first_time(f"start:{request_id}"):
            raise Duplicate(f"start request {request_id} was already handled")
        now = self.clock.now()
        group_runs = plan_groups(self.config, target, list(names))
        run, events = initial_run(
            run_id=self.new_id(target),
            target_version=target,
            requester=requester,
            groups=group_runs,
            plan_hash=plan_hash(target, group_runs),
            now=now,
            approval_mode=approval_mode,
            overrides=tuple(overrides),
            waiver=waiver,
            changelog_ack=requester if acknowledge_changelog else None,
        )
        run = run.with_(channel=channel)
        await self.store.create_run(run.id, run.to_dict(), events, names, created_at=now)
        return run

    async def _audit_refusal(self, action: str, user: str, reason: str) -> None:
        await self.store.audit_global(
            {
                "type": "refused",
                "action": action,
                "user": user,
                "reason": reason,
                "at": self.clock.now(),
            }
        )

    # --- people's requests ----------------------------------------------------------------

    async def command(
        self, run_id: str, command: Command, *, request_id: str | None = None
    ) -> Decision:
        """Apply a person's request; ``Decision.refusal`` says why one was refused."""
        if request_id is not None and not await self.store.first_time(f"cmd:{request_id}"):
            raise Duplicate(f"request {request_id} was already handled")
        await self.status(run_id)
        return await self.runner.command(run_id, command)

    async def break_lock(
        self, group: str, *, user: str, user_groups: tuple[str, ...] = (), reason: str
    ) -> str:
        """Audited break-glass: free a group whose run is gone or finished."""
        self.resolve_groups([group])
        if not allowed(self.config.policy_for(group).override, user, user_groups):
            await self._audit_refusal("unlock", user, f"not allowed to unlock {group}")
            raise Refused(f"{user} may not break the lock of {group} (not in its policy)")
        if not reason.strip():
            raise Refused("breaking a lock needs a reason")
        holder = await self.store.lock_holder(group)
        if holder is None:
            raise Refused(f"{group} is not locked")
        loaded = await self.store.load(holder)
        if loaded is not None and not Run.from_dict(loaded[0]).terminal:
            raise Refused(f"run {holder} still holds {group} and has not ended; abort it instead")
        await self.store.break_lock(group, user=user, reason=reason, now=self.clock.now())
        return holder

    # --- reading ------------------------------------------------------------------------------

    async def _load(self, run_id: str) -> tuple[Record, int]:
        loaded = await self.store.load(run_id)
        if loaded is None:
            raise UnknownRun(run_id)
        return loaded

    async def status(self, run_id: str) -> Run:
        data, _ = await self._load(run_id)
        return load_run(data)

    async def history(self, limit: int = 20) -> list[Run]:
        runs = []
        for run_id in await self.store.history(limit, now=self.clock.now()):
            loaded = await self.store.load(run_id)
            if loaded is not None:
                try:
                    runs.append(load_run(loaded[0]))
                except Unresumable:
                    continue
        return runs

    async def active(self) -> list[str]:
        return list(await self.store.active_runs())

    # --- driving ------------------------------------------------------------------------------

    async def drive(
        self,
        run_id: str,
        *,
        until_human: bool = True,
        lease_wait_s: float = 0.0,
        on_acquired: Callable[[str], None] | None = None,
    ) -> DriveResult:
        """Drive a run until it ends or waits for a person (see ``Runner.drive``)."""
        return await self.runner.drive(
            run_id, until_human=until_human, lease_wait_s=lease_wait_s, on_acquired=on_acquired
        )

    def stop_driving(self) -> None:
        """Drivers return at their next step and release their leases (``Runner.stop``)."""
        self.runner.stop()

    def abandon_effects(self) -> None:
        """Effects still under way are cancelled, to be redone by the next driver."""
        self.runner.abandon()

    async def resume_all(
        self, *, until_human: bool = True, lease_wait_s: float = 0.0
    ) -> dict[str, DriveResult | str]:
        """Drive every unfinished run until each ends or waits for a person."""
        run_ids = await self.active()

        async def one(run_id: str) -> DriveResult | str:
            try:
                return await self.drive(run_id, until_human=until_human, lease_wait_s=lease_wait_s)
            except LeaseBusy as exc:
                return str(exc)
            except Unresumable as exc:
                return str(exc)

        results = await asyncio.gather(*(one(r) for r in run_ids))
        return dict(zip(run_ids, results, strict=True))


def _cp_instance_findings(groups: dict[str, Any], warnings: list[str]) -> list[str]:
    """The run's instance pre-check, for a plan: blockers returned, warnings appended."""
    blockers = []
    for name, info in groups.items():
        if info.get("skipped"):
            warnings.append(f"{name}: {info['skipped']}")
            continue
        view = group_view(info["instances"], info["hostnames"])
        if view["unhealthy"]:
            blockers.append(
                f"{name}: unhealthy on the control plane: {', '.join(view['unhealthy'])} "
                "(override: unhealthy)"
            )
        if view["listed"] != view["expected"]:
            warnings.append(
                f"{name}: the control plane lists {view['listed']} instance(s), "
                f"the runtime has {view['expected']}"
            )
    return blockers


def _check_version(target: str) -> str:
    """``target`` normalized (``v3.2.14.6`` → ``3.2.14.6``), or a refusal saying why not."""
    if not is_version(target):
        raise Refused(f"'{target}' is not a version like {EXAMPLE}")
    return normalize(target)


def readiness_of(group: Group) -> str:
    """How the group's instances are judged ready, in words (preflight shows it per group)."""
    settings = getattr(group.backend, "readiness", None)
    return describe_readiness(settings) if settings is not None else "the runtime's own readiness"
