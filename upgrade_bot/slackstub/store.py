"""What the stand-in Slack remembers: messages, threads, metadata, ephemerals, reactions, files.

Messages are kept as Slack represents them (``type``, ``ts``, ``user``, ``bot_id``, ``text``,
``blocks``, ``thread_ts``, ``metadata``, ``reactions``, ``files``, ``edited``); the fields Slack
computes on read — a parent's ``reply_count``/``latest_reply``/``reply_users``, and whether
``metadata`` is shown at all — are added by :meth:`SlackState.view`.

Timestamps are ``"<seconds>.<6 digits>"`` strings from one clock that never repeats or goes
backwards, so ``ts`` both orders and identifies messages, as on Slack.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any

from .workspace import Workspace


class TsClock:
    """Slack message timestamps: wall-clock microseconds, strictly increasing."""

    def __init__(self) -> None:
        self._last = 0

    def next(self) -> str:
        """A fresh ``ts`` later than every one issued before."""
        now = time.time_ns() // 1000
        self._last = max(now, self._last + 1)
        return f"{self._last // 1_000_000}.{self._last % 1_000_000:06d}"


def ts_key(ts: str) -> tuple[int, int]:
    """A sortable key for a ``ts`` string (string order breaks when digit counts differ)."""
    sec, _, frac = ts.partition(".")
    return int(sec), int(frac.ljust(6, "0")[:6] or 0)


def is_ts(value: Any) -> bool:
    """Whether a value looks like a Slack ``ts`` (``"1712345678.000100"``)."""
    if not isinstance(value, str):
        return False
    sec, dot, frac = value.partition(".")
    return bool(dot) and sec.isdigit() and frac.isdigit() and len(frac) == 6


@dataclass
class StoredFile:
    """An uploaded file: announced by files.getUploadURLExternal, filled by the upload URL,
    shared by files.completeUploadExternal."""

    id: str
    name: str
    length: int
    user: str
    created: int
    content: bytes | None = None
    title: str = ""
    mimetype: str = "application/octet-stream"
    filetype: str = "binary"
    alt_txt: str | None = None
    shares: list[dict[str, str]] = field(default_factory=list)  # {"channel", "ts", "thread_ts"?}
    completed: bool = False

    def to_api(self, base_url: str, team_id: str) -> dict[str, Any]:
        """The ``file`` object Slack shows in messages."""
        url = f"{base_url}/files-pri/{team_id}-{self.id}/{self.name}"
        public: dict[str, list[dict[str, Any]]] = {}
        for share in self.shares:
            entry = {"ts": share["ts"]} | (
                {"thread_ts": share["thread_ts"]} if share.get("thread_ts") else {}
            )
            public.setdefault(share["channel"], []).append(entry)
        return {
            "id": self.id,
            "created": self.created,
            "timestamp": self.created,
            "name": self.name,
            "title": self.title or self.name,
            "mimetype": self.mimetype,
            "filetype": self.filetype,
            "user": self.user,
            "size": len(self.content or b""),
            "mode": "hosted",
            "is_external": False,
            "is_public": bool(self.shares),
            "url_private": url,
            "url_private_download": url + "?download=1",
            "permalink": url,
            "channels": sorted(public),
            "shares": {"public": public} if public else {},
        } | ({"alt_txt": self.alt_txt} if self.alt_txt else {})


class SlackState:
    """The mutable contents of the workspace. Plain methods; no I/O."""

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace
        self.clock = TsClock()
        # Per channel, every message (top-level and replies) in the order posted.
        self._messages: dict[str, list[dict[str, Any]]] = {c: [] for c in workspace.channels}
        self.ephemerals: list[dict[str, Any]] = []
        self.files: dict[str, StoredFile] = {}

    # -- reading ------------------------------------------------------------------------------

    def find(self, channel: str, ts: str) -> dict[str, Any] | None:
        """The stored message (live object, not a copy) or None."""
        for msg in self._messages.get(channel, []):
            if msg["ts"] == ts and not msg.get("_deleted"):
                return msg
        return None

    def _replies(self, channel: str, parent_ts: str) -> list[dict[str, Any]]:
        return [
            m
            for m in self._messages.get(channel, [])
            if m.get("thread_ts") == parent_ts and m["ts"] != parent_ts and not m.get("_deleted")
        ]

    @staticmethod
    def _visible_top_level(msg: dict[str, Any]) -> bool:
        if msg.get("_deleted"):
            return False
        thread_ts = msg.get("thread_ts")
        # A reply is only in the channel's history if broadcast; a reply whose parent does not
        # exist is stored yet visible nowhere (Slack accepts a well-formed unknown thread_ts).
        return (
            thread_ts is None
            or thread_ts == msg["ts"]
            or msg.get("subtype") == ("thread_broadcast")
        )

    def view(self, channel: str, msg: dict[str, Any], *, include_metadata: bool) -> dict[str, Any]:
        """A copy of a message as conversations.* return it."""
        out = {k: copy.deepcopy(v) for k, v in msg.items() if not k.startswith("_")}
        if not include_metadata:
            out.pop("metadata", None)
        is_parent = msg.get("thread_ts") in (None, msg["ts"])
        replies = self._replies(channel, msg["ts"]) if is_parent else []
        if replies:
            users = list(dict.fromkeys(r.get("user", "") for r in replies))
            out |= {
                "thread_ts": msg["ts"],
                "reply_count": len(replies),
                "reply_users_count": len(users),
                "latest_reply": replies[-1]["ts"],
                "reply_users": users,
                "is_locked": False,
                "subscribed": False,
            }
        return out

    def history(self, channel: str, *, include_metadata: bool) -> list[dict[str, Any]]:
        """Top-level messages, oldest first (conversations.history reverses this)."""
        return [
            self.view(channel, m, include_metadata=include_metadata)
            for m in self._messages.get(channel, [])
            if self._visible_top_level(m)
        ]

    def thread(
        self, channel: str, ts: str, *, include_metadata: bool = True
    ) -> list[dict[str, Any]]:
        """Parent then replies, oldest first; ``ts`` may be the parent's or any reply's.

        Empty when there is no such thread (conversations.replies → ``thread_not_found``).
        """
        msg = self.find(channel, ts)
        if msg is None:
            return []
        parent_ts = msg.get("thread_ts") or msg["ts"]
        parent = self.find(channel, parent_ts)
        if parent is None:  # an orphan reply: visible nowhere
            return []
        msgs = [parent, *self._replies(channel, parent_ts)]
        return [self.view(channel, m, include_metadata=include_metadata) for m in msgs]

    # -- writing ------------------------------------------------------------------------------

    def post(self, channel: str, fields: dict[str, Any]) -> dict[str, Any]:
        """Store a new message with a fresh ts; returns the live stored message."""
        msg = {"type": "message", "ts": self.clock.next(), **fields}
        self._messages.setdefault(channel, []).append(msg)
        return msg

    def delete(self, channel: str, ts: str) -> bool:
        """Mark a message deleted (it stays in the record, hidden from reads)."""
        msg = self.find(channel, ts)
        if msg is None:
            return False
        msg["_deleted"] = True
        return True

    def add_reaction(self, channel: str, ts: str, name: str, user: str) -> str | None:
        """Add a reaction; returns a Slack error code or None."""
        msg = self.find(channel, ts)
        if msg is None:
            return "message_not_found"
        reactions = msg.setdefault("reactions", [])
        entry = next((r for r in reactions if r["name"] == name), None)
        if entry is None:
            entry = {"name": name, "users": [], "count": 0}
            reactions.append(entry)
        if user in entry["users"]:
            return "already_reacted"
        entry["users"].append(user)
        entry["count"] = len(entry["users"])
        return None

    def add_ephemeral(self, channel: str, user: str, fields: dict[str, Any]) -> dict[str, Any]:
        """Store an ephemeral message only ``user`` sees; returns it (with ``message_ts``)."""
        eph = {"channel": channel, "user": user, "message_ts": self.clock.next(), **fields}
        self.ephemerals.append(eph)
        return eph

    def all_messages(self, channel: str) -> list[dict[str, Any]]:
        """Every stored message of a channel in post order, replies included (copies)."""
        return [
            {k: copy.deepcopy(v) for k, v in m.items() if not k.startswith("_")}
            for m in self._messages.get(channel, [])
            if not m.get("_deleted")
        ]
