"""What the control-plane effects reported: the pre-check before any change, and the check of
each group after its last replacement. Pure, like ``outcomes`` (which registers these)."""

from __future__ import annotations

from typing import Any

from .config import Config
from .cpview import group_view, shortfall, verified
from .events import EventKind
from .model import GroupPhase, Pending, RunStep
from .rollback import start_rollback
from .transition import Acc, fail
from .versions import Version


def on_cp_check(acc: Acc, p: Pending, result: dict[str, Any], config: Config) -> None:
    """The CP's version against the target, then each group's instances by the CP's status."""
    run = acc.run
    if result.get("skipped"):
        acc.emit(
            EventKind.PRECHECK,
            check="control_plane",
            status="skipped",
            note="no control plane configured: the CP pre-checks are skipped",
        )
        acc.set(step=RunStep.CHANGELOG)
        return
    cp_version = result["version"]
    acc.set(cp_version=cp_version)
    if Version(cp_version) < Version(run.target_version):
        if "cp-version" not in run.overrides:
            fail(
                acc,
                f"control plane runs {cp_version}, older than the target "
                f"{run.target_version}: upgrade the CP first (runbook: preparation) "
                "or start with the 'cp-version' override",
            )
            return
        acc.emit(
            EventKind.OVERRIDE_USED, override="cp-version", by=run.requester, cp_version=cp_version
        )
    else:
        acc.emit(EventKind.PRECHECK, check="control_plane", status="ok", cp_version=cp_version)
    if _instances_precheck(acc, result.get("groups") or {}):
        acc.set(step=RunStep.CHANGELOG)


def _instances_precheck(acc: Acc, groups: dict[str, Any]) -> bool:
    """False when the run was stopped: instances already unhealthy by the CP's own status."""
    run = acc.run
    unhealthy: list[str] = []
    seen: list[str] = []
    for name, info in groups.items():
        if info.get("skipped"):
            acc.emit(
                EventKind.PRECHECK,
                check="control_plane_instances",
                status="skipped",
                note=f"{name}: {info['skipped']}",
            )
            continue
        view = group_view(info["instances"], info["hostnames"])
        seen.append(f"{name} {view['listed'] - len(view['unhealthy'])}/{view['listed']} Healthy")
        unhealthy += [f"{name}: {u}" for u in view["unhealthy"]]
        if view["listed"] != view["expected"] or view["missing"]:
            missing = f" (not listed: {', '.join(view['missing'])})" if view["missing"] else ""
            acc.emit(
                EventKind.WARNING,
                text=f"{name}: the control plane lists {view['listed']} instance(s) of the "
                f"group, the runtime has {view['expected']}{missing}",
            )
    if unhealthy:
        if "unhealthy" not in run.overrides:
            fail(
                acc,
                "instances already unhealthy on the control plane before the upgrade: "
                f"{'; '.join(unhealthy)} (fix them, or start with the 'unhealthy' override)",
            )
            return False
        acc.emit(
            EventKind.OVERRIDE_USED, override="unhealthy", by=run.requester, instances=unhealthy
        )
    elif seen:
        acc.emit(
            EventKind.PRECHECK, check="control_plane_instances", status="ok", note="; ".join(seen)
        )
    return True


def on_cp_verify(acc: Acc, p: Pending, result: dict[str, Any], config: Config) -> None:
    """After the group's last replacement: the CP lists them all Healthy on the target, or the
    group has failed (a hard failure: automatic rollback)."""
    g = acc.run.group(p.args["group"])
    if result.get("skipped"):
        acc.emit(EventKind.CP_VERIFIED, group=g.name, status="skipped", note=result["skipped"])
        acc.set(phase=GroupPhase.SMOKE)
        return
    view = result["view"]
    acc.group(g.with_(control_plane=view))
    if verified(view):
        acc.emit(EventKind.CP_VERIFIED, group=g.name, status="ok", view=view)
        acc.set(phase=GroupPhase.SMOKE)
        return
    reason = shortfall(g.name, view)
    if result.get("waited_s") is not None:
        reason += f" (waited {result['waited_s']:.0f}s)"
    acc.emit(EventKind.CP_VERIFIED, group=g.name, status="failed", view=view, note=reason)
    start_rollback(acc, reason, by="engine", automatic=True)
