"""upgrade-bot's engine: the runbook as durable, crash-safe runs. Knows nothing of Slack.

This module is the public API for the CLI and the Slack layer.
"""

from .api import Duplicate, Engine, Plan, Refused, UnknownRun
from .config import Config, ConfigError, load_config, parse_config
from .decide import Command, Decision
from .errors import EngineError, GroupBusy, PermanentError, TemporaryError
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
    Gate,
    GroupRun,
    Run,
    SlotRun,
)
from .runner import DriveResult, LeaseBusy, LeaseLost
from .schema import Unresumable
from .versions import Version, is_version

__all__ = [
    "ABORTED",
    "COMPLETED",
    "FAILED",
    "HELD",
    "PAUSED",
    "ROLLED_BACK",
    "ROLLING_BACK",
    "RUNNING",
    "TERMINAL",
    "WAITING",
    "Command",
    "Config",
    "ConfigError",
    "Decision",
    "DriveResult",
    "Duplicate",
    "Engine",
    "EngineError",
    "Gate",
    "GroupBusy",
    "GroupRun",
    "LeaseBusy",
    "LeaseLost",
    "PermanentError",
    "Plan",
    "Refused",
    "Run",
    "SlotRun",
    "TemporaryError",
    "UnknownRun",
    "Unresumable",
    "Version",
    "is_version",
    "load_config",
    "parse_config",
]
