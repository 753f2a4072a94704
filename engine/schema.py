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
from .model import SCHEMA_VERSION, GroupRun, Run


class Unresumable(EngineError):
    """A record this code cannot safely continue."""


# schema N → N+1, applied in order. Each takes and returns the JSON dict.
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}


def plan_hash(target_version: str, groups: tuple[GroupRun, ...] | list[GroupRun]) -> str:
    """What the run promised to do: target, group order, images, batch sizes."""
    plan = {
        "target": target_version,
        "groups": [[g.name, g.target_image, g.batch_size] for g in groups],
    }
    return hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()[:16]


def load_run(data: dict[str, Any]) -> Run:
    schema = int(data.get("schema", 0))
    run_id = data.get("id", "?")
    if schema > SCHEMA_VERSION:
        raise Unresumable(
            f"run {run_id} was written by a newer upgrade-bot (record schema {schema}, this bot "
            f"reads up to {SCHEMA_VERSION}); upgrade this bot before touching the run"
        )
    while schema < SCHEMA_VERSION:
        migrate = MIGRATIONS.get(schema)
        if migrate is None:
            raise Unresumable(
                f"run {run_id} has record schema {schema}, which this bot cannot read"
            )
        data = migrate(data)
        schema += 1
        data["schema"] = schema
    run = Run.from_dict(data)
    if plan_hash(run.target_version, run.groups) != run.plan_hash:
        raise Unresumable(
            f"run {run_id}: its plan does not match its hash (the record was edited or corrupted); "
            "refusing to continue — abort it and start a new run"
        )
    return run
