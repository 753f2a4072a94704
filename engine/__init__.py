"""upgrade-bot's engine: the runbook as durable, crash-safe runs. Knows nothing of Slack.

This module is the public API for the CLI and the Slack layer.
"""

from .api import Duplicate, Engine, Plan, Refused, UnknownRun
from .config import (
    Config,
    ConfigError,
    describe_validation_error,
    load_config,
    parse_config,
)
from .decide import OVERRIDES, Command, Decision
from .errors import EngineError, GroupBusy, PermanentError, TemporaryError
from .events import EVENT_FIELDS, FINAL_KINDS, EventKind, kind_of
from .feed import EventFeed
from .model import (
    ABORTED,
    COMPLETED,
    FAILED,
    HELD,
    PAUSED,
    ROLLED_BACK,
    ROLLING_BACK,
    RUNNING,
    TERMINAL,
    WAITING,
    Action,
    ApprovalMode,
    EffectKind,
    Gate,
    GateDecision,
    GroupPhase,
    GroupRun,
    GroupStatus,
    Intent,
    Run,
    RunState,
    RunStep,
    SlotRun,
    SlotStatus,
)
from .runner import DriveResult, LeaseBusy, LeaseLost
from .schema import Unresumable
from .sources import MetricsSource
from .units import ms, pct
from .versions import Version, is_version, normalize

__all__ = [
    "ABORTED",
    "COMPLETED",
    "EVENT_FIELDS",
    "FAILED",
    "FINAL_KINDS",
    "HELD",
    "OVERRIDES",
    "PAUSED",
    "ROLLED_BACK",
    "ROLLING_BACK",
    "RUNNING",
    "TERMINAL",
    "WAITING",
    "Action",
    "ApprovalMode",
    "Command",
    "Config",
    "ConfigError",
    "Decision",
    "DriveResult",
    "Duplicate",
    "EffectKind",
    "Engine",
    "EngineError",
    "EventFeed",
    "EventKind",
    "Gate",
    "GateDecision",
    "GroupBusy",
    "GroupPhase",
    "GroupRun",
    "GroupStatus",
    "Intent",
    "LeaseBusy",
    "LeaseLost",
    "MetricsSource",
    "PermanentError",
    "Plan",
    "Refused",
    "Run",
    "RunState",
    "RunStep",
    "SlotRun",
    "SlotStatus",
    "TemporaryError",
    "UnknownRun",
    "Unresumable",
    "Version",
    "describe_validation_error",
    "is_version",
    "kind_of",
    "load_config",
    "ms",
    "normalize",
    "parse_config",
    "pct",
]
