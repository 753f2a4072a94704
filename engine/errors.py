"""The engine's small error vocabulary.

Adapters translate SDK exceptions (docker, kubernetes, httpx, redis) into these at the boundary,
so that the runner decides between "try again later" and "give up" without knowing any SDK.
"""

from __future__ import annotations


class EngineError(Exception):
    """Base of every error the engine raises or expects from its adapters."""


class TemporaryError(EngineError):
    """The action may succeed if repeated later (a connection refused, a 5xx, a conflict)."""

    def __init__(self, message: str, *, delay_s: float = 2.0) -> None:
        super().__init__(message)
        self.delay_s = delay_s


class PermanentError(EngineError):
    """Repeating the action will not help (image missing, slot unknown, permission denied)."""


class NotReadyError(PermanentError):
    """A slot did not become ready within its deadline."""


class ConfigError(EngineError):
    """A configuration file is unreadable or invalid; ``problems`` lists every finding."""

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        super().__init__("\n".join(f"{path}: {p}" for p in problems))


class StaleRecord(EngineError):
    """A compare-and-set write lost: the record changed since it was read."""


class Fenced(EngineError):
    """The writer's lease token is no longer current: another driver owns the run."""


class GroupBusy(EngineError):
    """A group is locked by another run."""

    def __init__(self, group: str, run_id: str) -> None:
        super().__init__(f"group {group} is busy: run {run_id} holds it")
        self.group = group
        self.run_id = run_id


class RunExists(EngineError):
    """A run with this ID already exists."""


class StoreUnavailable(TemporaryError):
    """Redis cannot be reached."""


class Refused(EngineError):
    """A request the engine will not carry out; the message says why, for the requester."""


class UnknownRun(Refused):
    """No run has this ID (never had, or its record has expired)."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"no run '{run_id}'")
        self.run_id = run_id


class Duplicate(EngineError):
    """The same request (same delivery ID) was already handled."""
