"""The Slack section of the configuration file (``slack:``), read by the Slack layer only."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class Reactions(BaseModel):
    """Slack reaction *names* (no colons) that act on an approval gate."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    approve: str = "white_check_mark"
    pause: str = "double_vertical_bar"
    rollback: str = "rewind"


class SlackSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    channel: str
    """Channel ID where run messages are posted (runs started elsewhere post there too)."""
    command: str = Field("/upgrade", pattern=r"^/[a-z0-9_-]+$")
    reactions: Reactions = Field(default_factory=Reactions)
    min_edit_interval_s: float = Field(1.0, ge=0)
    """Never edit one message more often than this (Slack's chat.update is tier 3)."""
    usergroup_cache_s: float = Field(300, ge=0)
    charts: bool = True

    @field_validator("channel")
    @classmethod
    def _channel_id(cls, value: str) -> str:
        if not re.fullmatch(r"[CG][A-Z0-9]+", value):
            raise ValueError(
                f"expected a channel ID like C0123ABCDEF (Slack: channel details → copy the ID), "
                f"got {value!r}"
            )
        return value


def slack_settings(raw: dict[str, Any] | None, path: str = "<config>") -> SlackSettings:
    """Validate the ``slack:`` section; problems name the key, as the rest of the file does."""
    from upgrade_bot.engine import ConfigError, describe_validation_error

    if raw is None:
        raise ConfigError(path, ["slack: required key is missing (at least 'channel')"])
    try:
        return SlackSettings.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(path, describe_validation_error(err, raw, "slack")) from None
