"""One decision under construction, and the transitions every part of ``decide`` shares.

``decide`` (entry point and forward steps), ``commands`` (people's requests and intents),
``outcomes`` (what effects reported), ``gates`` and ``rollback`` all build one :class:`Acc`:
the changed run, the effects to perform, the audit events, the next wake-up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .events import EventKind
from .model import EffectKind, GroupRun, Pending, Run, RunState


@dataclass(frozen=True)
class Tick:
    """Time passed, or the driver (re)started: do the next thing."""


@dataclass(frozen=True)
class Outcome:
    """The pending effect ``key`` succeeded with ``result``."""

    key: str
    result: dict[str, Any]


@dataclass(frozen=True)
class Failure:
    """The pending effect ``key`` failed; ``temporary``: worth repeating after ``delay_s``."""

    key: str
    error: str
    temporary: bool = False
    delay_s: float = 2.0


@dataclass(frozen=True)
class Decision:
    """The new run, the effects to perform (after saving it), its audit events, when to wake."""

    run: Run
    effects: tuple[Pending, ...] = ()
    events: tuple[dict[str, Any], ...] = ()
    refusal: str | None = None
    wake_at: float | None = None


@dataclass
class Acc:
    """Accumulates one decision; a small builder keeps the step functions readable."""

    run: Run
    now: float
    events: list[dict[str, Any]] = field(default_factory=list)
    effects: list[Pending] = field(default_factory=list)
    wake_at: float | None = None
    original: Run | None = None

    def __post_init__(self) -> None:
        self.original = self.run

    def emit(self, kind: EventKind, /, **data: Any) -> None:
        self.events.append({"type": kind, "run_id": self.run.id, "at": self.now, **data})

    def set(self, **changes: Any) -> None:
        self.run = self.run.with_(**changes)

    def group(self, g: GroupRun) -> None:
        self.run = self.run.with_group(g)

    def act(self, kind: EffectKind, key: str, **args: Any) -> None:
        pending = Pending(key=key, kind=kind, args=args)
        self.run = self.run.with_(pending=pending)
        self.effects.append(pending)

    def wake(self, at: float | None) -> None:
        if at is not None:
            self.wake_at = at if self.wake_at is None else min(self.wake_at, at)

    def decision(self, refusal: str | None = None) -> Decision:
        # Only a real change bumps updated_at: a resumed driver re-emitting its pending
        # effect must not write (and so must not look like progress).
        run = self.run
        if run != self.original:
            run = run.with_(updated_at=self.now)
        return Decision(run, tuple(self.effects), tuple(self.events), refusal, self.wake_at)


_FINAL_EVENTS = {
    RunState.COMPLETED: EventKind.RUN_COMPLETED,
    RunState.ROLLED_BACK: EventKind.RUN_ROLLED_BACK,
    RunState.FAILED: EventKind.RUN_FAILED,
    RunState.ABORTED: EventKind.RUN_ABORTED,
}


def finish(acc: Acc, state: RunState, reason: str) -> None:
    """End the run in ``state`` (terminal), reporting every slot as it stands."""
    acc.set(
        state=state, reason=reason, pending=None, hold=None, finished_at=acc.now, paused_from=None
    )
    acc.emit(
        _FINAL_EVENTS[state], reason=reason, fleet=acc.run.mixed_fleet(), slots=acc.run.slot_table()
    )


def wrap_up(acc: Acc, state: RunState, reason: str) -> None:
    """End a run that completed or rolled back: first the backends finish (FINISH_BACKENDS:
    kept containers removed, the compose line said or written), then ``finish``."""
    groups = {}
    for g in acc.run.groups:
        before = next((s.previous_image for s in g.slots if s.previous_image), None)
        after = next((s.current_image for s in g.slots if s.current_image), None) or before
        groups[g.name] = {"before": before, "after": after}
    acc.act(
        EffectKind.FINISH_BACKENDS, f"finish:{state}", groups=groups, state=state, reason=reason
    )


def fail(acc: Acc, reason: str) -> None:
    finish(acc, RunState.FAILED, reason)
