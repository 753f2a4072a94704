"""What the control plane says about a group's instances, judged against what the runtime has.

Pure functions over plain data: the instance list the API7 Admin API returns (``GET
/api/instances`` items: ``id``, ``hostname``, ``version``, ``status``, …) and the host names the
runtime reports for the instances it runs now. The CP's own ``status`` is used as it is, never
re-derived from heartbeat times.

Matching: an instance on the CP is one of the runtime's when its ``hostname`` or its ``id`` is a
host name the runtime reports. Instances the runtime no longer has (the replaced ones, which the
CP keeps listing as LostConnection, then Offline, for days) are left out. When the runtime cannot
tell host names, every instance the CP lists for the group counts, except Offline ones (gone for
more than two hours: not a live instance).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .versions import Version

HEALTHY = "Healthy"
OFFLINE = "Offline"


def _same_version(a: Any, b: str) -> bool:
    try:
        return Version(str(a)) == Version(b)
    except ValueError:
        return False


def _name(instance: Mapping[str, Any]) -> str:
    return str(instance.get("hostname") or instance.get("id") or "?")


def current_instances(
    instances: Iterable[Mapping[str, Any]], hostnames: Sequence[str | None]
) -> tuple[list[Mapping[str, Any]], int]:
    """The CP's entries for the runtime's current instances, and how many others were left out."""
    listed = list(instances)
    known = {h for h in hostnames if h}
    if known and len(known) == len(hostnames):
        mine = [i for i in listed if i.get("hostname") in known or i.get("id") in known]
    else:
        mine = [i for i in listed if i.get("status") != OFFLINE]
    return mine, len(listed) - len(mine)


def group_view(
    instances: Iterable[Mapping[str, Any]],
    hostnames: Sequence[str | None],
    target: str | None = None,
) -> dict[str, Any]:
    """The CP's view of one group beside the runtime's.

    ``expected``: instances the runtime has; ``listed``: the CP's entries for them;
    ``healthy``: of those, Healthy (and on ``target`` when given); ``statuses`` and
    ``versions`` count the entries; ``unhealthy`` names the entries not Healthy (with status
    and version); ``missing`` the runtime's host names the CP does not list; ``excluded``
    how many CP entries belong to instances the runtime no longer has.
    """
    mine, excluded = current_instances(instances, hostnames)
    healthy = [
        i
        for i in mine
        if i.get("status") == HEALTHY
        and (target is None or _same_version(i.get("version"), target))
    ]
    listed_names = {str(i.get("hostname")) for i in mine} | {str(i.get("id")) for i in mine}
    return {
        "expected": len(hostnames),
        "listed": len(mine),
        "healthy": len(healthy),
        "target": target,
        "statuses": dict(Counter(str(i.get("status")) for i in mine)),
        "versions": dict(Counter(str(i.get("version")) for i in mine)),
        "unhealthy": [
            f"{_name(i)} ({i.get('status')}, {i.get('version')})"
            for i in mine
            if i.get("status") != HEALTHY
        ],
        "off_target": [
            f"{_name(i)} ({i.get('version')})"
            for i in mine
            if target is not None
            and i.get("status") == HEALTHY
            and not _same_version(i.get("version"), target)
        ],
        "missing": sorted(h for h in hostnames if h and h not in listed_names),
        "excluded": excluded,
    }


def verified(view: Mapping[str, Any]) -> bool:
    """Every instance the runtime has is listed Healthy on the target version."""
    return bool(view["healthy"] >= view["expected"])


def shortfall(group: str, view: Mapping[str, Any]) -> str:
    """Why ``view`` does not verify, in one sentence naming the counts."""
    parts = [
        f"the CP lists {view['healthy']} of {view['expected']} instances Healthy on "
        f"{view['target']}"
    ]
    if view["missing"]:
        parts.append(f"not listed: {', '.join(view['missing'][:5])}")
    if view["unhealthy"]:
        parts.append(f"not Healthy: {', '.join(view['unhealthy'][:5])}")
    if view["off_target"]:
        parts.append(f"on another version: {', '.join(view['off_target'][:5])}")
    if view["excluded"]:
        parts.append(f"{view['excluded']} replaced instance(s) left out")
    return f"control-plane check failed on {group}: " + "; ".join(parts)


def describe(view: Mapping[str, Any]) -> str:
    """``3/3 Healthy on 3.8.1`` (or ``… Healthy`` without a target): the summary line's text."""
    on = f" on {view['target']}" if view.get("target") else ""
    return f"{view['healthy']}/{view['expected']} Healthy{on}"
