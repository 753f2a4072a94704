"""Reading run records written by this or an earlier version of the bot.

A record carries its schema version and a hash of its plan. A bot that finds a record it cannot
safely continue says so (``Unresumable``) instead of guessing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from .errors import EngineError
from .model import SCHEMA_VERSION, GroupRun, Run, UnknownField


class Unresumable(EngineError):
    """A record this code cannot safely continue."""


class _Refuse(Exception):
    """A migration found something it cannot translate (the message says what)."""


def _v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    """Schema 1 → 2: ``cp`` held three unrelated things; each gets its own field.

    Also: the pre-group phase placeholder "list" (never read) becomes the first group phase,
    and a pending window-end measurement carries the window's start mark in its args, since
    the metrics source (not ``decide``) now turns a window into a summary.
    """
    data = dict(data)
    cp = dict(data.pop("cp", None) or {})
    data["cp_version"] = cp.pop("version", None)
    data["seen_revision"] = cp.pop("seen_revision", None)
    data["intent"] = cp.pop("intent", None)
    if cp:
        raise _Refuse(f"unknown cp key(s) {', '.join(sorted(cp))}")
    if data.get("phase") == "list":
        data["phase"] = "baseline_start"
    pending = data.get("pending")
    if pending and pending.get("kind") == "scrape":
        name, _, phase = str(pending.get("key", "")).rpartition(":")
        field = {"baseline_end": "baseline_snapshot", "settle_end": "settle_snapshot"}.get(phase)
        if field is not None:
            group = next((g for g in data.get("groups", ()) if g.get("name") == name), None)
            if group is None:
                raise _Refuse(f"pending effect {pending.get('key')} names no group of the run")
            args = {**pending.get("args", {}), "mark": group.get(field)}
            data["pending"] = {**pending, "args": args}
    return data


def _v2_to_v3(data: dict[str, Any]) -> dict[str, Any]:
    """Schema 2 → 3: groups watch their metrics while they are replaced and keep them as points
    over time. A group saved before has no watch window (its mark was never taken): it is not
    watched, as when it was saved, and its points start empty."""
    data = dict(data)
    data["groups"] = [
        {**g, "watch_snapshot": None, "watched": 0, "watch": None, "observed": None, "points": []}
        for g in data.get("groups", ())
    ]
    return data


def _v3_to_v4(data: dict[str, Any]) -> dict[str, Any]:
    """Schema 3 → 4: groups gained ``control_plane`` (the CP's view after the group), absent
    (None) in older records; a group already past its replacements simply has none."""
    data = dict(data)
    data["groups"] = [{**g, "control_plane": None} for g in data.get("groups", ())]
    return data


# schema N → N+1, applied in order. Each takes and returns the JSON dict.
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {
    1: _v1_to_v2,
    2: _v2_to_v3,
    3: _v3_to_v4,
}


def plan_hash(target_version: str, groups: tuple[GroupRun, ...] | list[GroupRun]) -> str:
    """What the run promised to do: target, group order, images, batch sizes."""
    plan = {
        "target": target_version,
        "groups": [[g.name, g.target_image, g.batch_size] for g in groups],
    }
    return hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()[:16]


def load_run(data: dict[str, Any]) -> Run:
    """The run a saved record describes, migrated to this code's schema — or ``Unresumable``.

    Strict: a record saved by a newer bot, or holding a key or value this code does not know,
    is refused whole (never half-read: a dropped field would be lost at the next save).
    """
    schema = int(data.get("schema", 0))
    run_id = data.get("id", "?")
    if schema > SCHEMA_VERSION:
        raise Unresumable(
            f"run {run_id} was saved by a newer upgrade-bot (record schema {schema}, this bot "
            f"reads up to {SCHEMA_VERSION}); upgrade this bot before touching the run"
        )
    while schema < SCHEMA_VERSION:
        migrate = MIGRATIONS.get(schema)
        if migrate is None:
            raise Unresumable(
                f"run {run_id} has record schema {schema}, which this bot cannot read"
            )
        try:
            data = migrate(data)
        except _Refuse as exc:
            raise Unresumable(
                f"run {run_id}: its record (schema {schema}) cannot be migrated to schema "
                f"{schema + 1}: {exc}"
            ) from None
        schema += 1
        data["schema"] = schema
    try:
        run = Run.from_dict(data)
    except (UnknownField, TypeError) as exc:
        raise Unresumable(
            f"run {run_id}: its record (schema {schema}) holds what this bot (schema "
            f"{SCHEMA_VERSION}) does not know ({exc}); it may have been saved by a newer "
            "upgrade-bot: upgrade this bot before touching the run"
        ) from None
    if plan_hash(run.target_version, run.groups) != run.plan_hash:
        raise Unresumable(
            f"run {run_id}: its plan does not match its hash (the record was edited or corrupted); "
            "refusing to continue — abort it and start a new run"
        )
    return run
