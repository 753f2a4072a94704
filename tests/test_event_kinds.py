"""One registry of event kinds: every kind the engine emits is declared with its fields, and
both places that show events to people (the Slack thread and the CLI transcript) say what they
do with each kind, so a new kind cannot slip through unrendered."""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from upgrade_bot import transcript
from upgrade_bot.bot import render
from upgrade_bot.engine import EVENT_FIELDS, FINAL_KINDS, TERMINAL, EventKind, kind_of

ENGINE = Path(__file__).resolve().parents[1] / "engine"


def unrendered(table: Mapping[Any, Any], kinds: Iterable[str] = EventKind) -> set[str]:
    """The kinds ``table`` has no entry for."""
    return {str(k) for k in kinds if k not in table}


def emitted_kinds() -> set[str]:
    """Every event type the engine's source emits: ``acc.emit("paused", …)``,
    ``acc.emit(EventKind.PAUSED, …)`` and ``{"type": "lock_broken", …}`` records."""
    found: set[str] = set()

    def literal(node: ast.expr) -> str | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        if isinstance(node, ast.Attribute) and getattr(node.value, "id", "") == "EventKind":
            return EventKind[node.attr].value
        return None

    for path in ENGINE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "emit":
                if node.args and (kind := literal(node.args[0])) is not None:
                    found.add(kind)
            elif isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values, strict=True):
                    if isinstance(key, ast.Constant) and key.value == "type":
                        if (kind := literal(value)) is not None:
                            found.add(kind)
    return found


def test_every_kind_the_engine_emits_is_declared() -> None:
    emitted = emitted_kinds()
    assert {"paused", "gate_opened", "lock_broken", "refused", "run_started"} <= emitted, (
        "the scan of the engine's source found too little: it is broken"
    )
    assert emitted <= set(EventKind), emitted - set(EventKind)
    # run_<state>, emitted with an f-string when a run ends: one kind per terminal state
    assert {f"run_{state}" for state in TERMINAL} == set(FINAL_KINDS)


def test_every_kind_declares_its_fields() -> None:
    assert unrendered(EVENT_FIELDS) == set()
    for spec in EVENT_FIELDS.values():
        assert {"type", "run_id", "at"} <= spec.__required_keys__


def test_every_kind_has_a_thread_post_in_slack_and_a_line_in_the_transcript() -> None:
    assert unrendered(render.EVENT_POSTS) == set()
    assert unrendered(transcript.LINES) == set()


def test_a_kind_left_out_of_a_renderer_table_is_caught() -> None:
    without_paused = {k: v for k, v in render.EVENT_POSTS.items() if k != EventKind.PAUSED}
    assert unrendered(without_paused) == {"paused"}
    planted = [*EventKind, "planted_kind"]
    assert unrendered(transcript.LINES, planted) == {"planted_kind"}
    assert unrendered(render.EVENT_POSTS, planted) == {"planted_kind"}


def test_a_type_this_version_does_not_know_is_shown_as_nothing() -> None:
    event = {"type": "from_a_newer_version", "run_id": "r1", "at": 0.0}
    assert kind_of(event) is None
    assert render.event_message(event) is None
    assert transcript.render_event(event) is None
