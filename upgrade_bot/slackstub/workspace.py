"""Who is who in the stand-in workspace: team, app, bot, tokens, channels, users, user groups.

Identifiers follow Slack's shapes so that code which pattern-matches them (``C…`` channels,
``U…`` users, ``S…`` user groups, ``xoxb-`` bot and ``xapp-`` app-level tokens) behaves as it
would against Slack. Everything here is immutable configuration; what changes while the stub runs
(messages, reactions, files) lives in :mod:`.store`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

DEFAULT_CHANNELS = {"C0UPGRADES": "upgrades"}
DEFAULT_USERS = {"U0ALICE001": "alice", "U0BOB00002": "bob", "U0CAROL003": "carol"}
DEFAULT_USERGROUPS = {"S0ONCALL01": ("gateway-oncall", ("U0BOB00002", "U0CAROL003"))}


@dataclass(frozen=True)
class Channel:
    """A public channel the bot is a member of."""

    id: str
    name: str


@dataclass(frozen=True)
class User:
    """A workspace member (or the bot's own user)."""

    id: str
    name: str
    real_name: str = ""
    tz: str = "UTC"
    is_bot: bool = False

    def to_api(self, team_id: str) -> dict[str, Any]:
        """The ``user`` object of ``users.info``."""
        real = self.real_name or self.name.title()
        return {
            "id": self.id,
            "team_id": team_id,
            "name": self.name,
            "deleted": False,
            "real_name": real,
            "tz": self.tz,
            "tz_label": "Coordinated Universal Time",
            "tz_offset": 0,
            "is_admin": False,
            "is_owner": False,
            "is_bot": self.is_bot,
            "is_app_user": False,
            "updated": 1_700_000_000,
            "profile": {
                "real_name": real,
                "display_name": self.name,
                "real_name_normalized": real,
                "display_name_normalized": self.name,
                "team": team_id,
            },
        }


@dataclass(frozen=True)
class Usergroup:
    """A user group (``@gateway-oncall``), as ``usergroups.users.list`` sees it."""

    id: str
    handle: str
    users: tuple[str, ...]


@dataclass(frozen=True)
class Workspace:
    """The identities and secrets of one single-workspace app installation."""

    team_id: str = "T0STUB0001"
    team_domain: str = "upgrade-bot-stub"
    team_name: str = "Upgrade Bot Stub"
    app_id: str = "A0STUB0001"
    bot_user_id: str = "U0STUBBOT1"
    bot_id: str = "B0STUBBOT1"
    bot_name: str = "upgrade-bot"
    bot_token: str = "xoxb-1000000001-2000000002-stubbottoken00000000000"
    app_token: str = "xapp-1-A0STUB0001-3000000003-stubapptoken000000000000000000"
    signing_secret: str = "5157ab5ec2e75ec2e75ec2e75ec2e7aa"
    # The legacy verification token every payload still carries in its "token" field.
    verification_token: str = "stubverificationtoken000"
    scopes: tuple[str, ...] = (
        "chat:write",
        "commands",
        "reactions:read",
        "reactions:write",
        "channels:history",
        "files:write",
        "usergroups:read",
        "users:read",
    )
    channels: Mapping[str, Channel] = field(default_factory=dict)
    users: Mapping[str, User] = field(default_factory=dict)
    usergroups: Mapping[str, Usergroup] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        channels: Mapping[str, str] | Iterable[str] | None = None,
        users: Mapping[str, str] | None = None,
        usergroups: Mapping[str, tuple[str, Iterable[str]]] | None = None,
        **identity: Any,
    ) -> Workspace:
        """A workspace from plain data: ``channels`` maps ID to name (or lists IDs, named after
        themselves in lower case), ``users`` maps ID to name, ``usergroups`` maps ID to
        ``(handle, member IDs)``; other keyword arguments override identities and tokens."""
        if channels is None:
            channels = DEFAULT_CHANNELS
        if not isinstance(channels, Mapping):
            channels = {cid: cid.lower() for cid in channels}
        users = DEFAULT_USERS if users is None else users
        groups = DEFAULT_USERGROUPS if usergroups is None else usergroups
        ws = cls(**identity)
        bot = User(ws.bot_user_id, ws.bot_name, real_name="Upgrade Bot", is_bot=True)
        return cls(
            **identity,
            channels={cid: Channel(cid, name) for cid, name in channels.items()},
            users={bot.id: bot, **{uid: User(uid, name) for uid, name in users.items()}},
            usergroups={
                gid: Usergroup(gid, handle, tuple(members))
                for gid, (handle, members) in groups.items()
            },
        )

    def resolve_channel(self, ref: str | None) -> Channel | None:
        """A channel by ID, ``#name`` or ``name``, as chat.postMessage accepts; None if unknown.

        A user ID resolves to the bot's DM with that user (Slack opens it on first post); its ID
        is the user's with ``D`` for ``U`` (``U0ALICE001`` → ``D0ALICE001``).
        """
        if not ref:
            return None
        if ref in self.channels:
            return self.channels[ref]
        dm_user = self.users.get(ref) or self.users.get("U" + ref[1:] if ref[0] == "D" else "")
        if dm_user is not None and not dm_user.is_bot:
            return Channel("D" + dm_user.id[1:], f"dm-{dm_user.name}")
        name = ref.removeprefix("#")
        return next((c for c in self.channels.values() if c.name == name), None)

    def user(self, ref: str) -> User:
        """A user by ID, or a made-up one named after the ID (a guest the stub was not told of)."""
        return self.users.get(ref) or User(ref, ref.lower())

    def channel_name(self, channel_id: str) -> str:
        """The name of a channel (``dm-<user>`` for a DM), or its ID if unknown."""
        ch = self.resolve_channel(channel_id)
        return ch.name if ch else channel_id

    def public(self) -> dict[str, Any]:
        """Everything a client needs to talk to the stub, as plain JSON-able data."""
        return {
            "team_id": self.team_id,
            "team_domain": self.team_domain,
            "app_id": self.app_id,
            "bot_user_id": self.bot_user_id,
            "bot_id": self.bot_id,
            "bot_token": self.bot_token,
            "app_token": self.app_token,
            "signing_secret": self.signing_secret,
            "channels": {c.id: c.name for c in self.channels.values()},
            "users": {u.id: u.name for u in self.users.values() if not u.is_bot},
            "usergroups": {
                g.id: {"handle": g.handle, "users": list(g.users)} for g in self.usergroups.values()
            },
        }
