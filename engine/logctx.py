"""Which run, group and slot a log line is about.

Context variables set by whoever works on a run (the driver around each effect, the notifier
around each delivery), so that every line logged meanwhile — by the engine, a backend, an
adapter — carries them without being passed down. The bot's log formatter reads ``current()``.
Asyncio copies the context into each task it creates, so a task sees what was bound when it was
created and nothing it binds leaks back.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

_IDS: dict[str, contextvars.ContextVar[str | None]] = {
    name: contextvars.ContextVar(f"upgrade_bot_{name}", default=None)
    for name in ("run", "group", "slot")
}


@contextlib.contextmanager
def bound(**ids: str | None) -> Iterator[None]:
    """``with bound(run=..., group=..., slot=...):`` — ids left out (or None) are kept."""
    unknown = set(ids) - set(_IDS)
    if unknown:
        raise ValueError(f"unknown log context field(s): {', '.join(sorted(unknown))}")
    tokens = [(_IDS[name], _IDS[name].set(value)) for name, value in ids.items() if value]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def current() -> dict[str, str]:
    """The ids bound here, e.g. ``{"run": "up-…", "group": "prod-eu"}``."""
    return {name: value for name, var in _IDS.items() if (value := var.get()) is not None}
