"""Parsing the slash command's text into a request. Pure: no Slack, no engine calls."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from upgrade_bot.engine import is_version

OVERRIDES = ("cp-version", "unhealthy")

USAGE = {
    "plan": "plan VERSION [GROUP ...]",
    "start": 'start VERSION [GROUP ...] [--override cp-version|unhealthy] [--waiver "REASON"] '
    "[--auto]",
    "status": "status [RUN]",
    "pause": "pause RUN [REASON]",
    "resume": "resume RUN",
    "approve": "approve RUN",
    "rollback": "rollback RUN [REASON]",
    "abort": "abort RUN [REASON]",
    "ack": "ack RUN",
    "history": "history [COUNT]",
    "unlock": "unlock GROUP REASON",
    "help": "help",
}


class ParseError(Exception):
    """Bad input: ``str(error)`` is the short answer, ``usage`` the right form."""

    def __init__(self, message: str, usage: str | None = None) -> None:
        super().__init__(message)
        self.usage = usage


@dataclass(frozen=True)
class Request:
    action: str
    version: str | None = None
    groups: tuple[str, ...] = ()
    run_id: str | None = None
    reason: str | None = None
    overrides: tuple[str, ...] = ()
    waiver: str | None = None
    auto: bool = False
    limit: int = 10
    extra: dict[str, str] = field(default_factory=dict)


def parse(text: str) -> Request:
    """``start 3.8.1 prod-eu prod-us`` → Request(action="start", version="3.8.1", …)."""
    try:
        words = shlex.split(text.strip())
    except ValueError:
        raise ParseError("Unbalanced quotes in the command.", None) from None
    if not words or words[0] in ("help", "-h", "--help"):
        return Request("help")
    action, args = words[0].lower(), words[1:]
    if action not in USAGE:
        raise ParseError(f"Unknown command `{action}`.", None)
    usage = USAGE[action]
    if action in ("plan", "start"):
        return _plan_or_start(action, args, usage)
    if action == "status":
        _at_most(args, 1, usage)
        return Request("status", run_id=args[0] if args else None)
    if action == "history":
        _at_most(args, 1, usage)
        if args and not args[0].isdigit():
            raise ParseError(f"`{args[0]}` is not a count.", usage)
        return Request("history", limit=min(int(args[0]), 50) if args else 10)
    if action == "unlock":
        if len(args) < 2:
            raise ParseError("Name the group and give a reason.", usage)
        return Request("unlock", groups=(args[0],), reason=" ".join(args[1:]))
    if action == "help":
        return Request("help")
    # pause, resume, approve, rollback, abort, ack: a run, maybe a reason
    if not args:
        raise ParseError("Which run? Give its ID (see `status`).", usage)
    takes_reason = action in ("pause", "rollback", "abort")
    if not takes_reason:
        _at_most(args, 1, usage)
    reason = " ".join(args[1:]) or None
    return Request(action, run_id=args[0], reason=reason)


def _at_most(args: list[str], n: int, usage: str) -> None:
    if len(args) > n:
        raise ParseError(f"Too many words: `{' '.join(args[n:])}`.", usage)


def _plan_or_start(action: str, args: list[str], usage: str) -> Request:
    if not args:
        raise ParseError("Which version? e.g. `3.8.1`.", usage)
    version, rest = args[0], args[1:]
    if not is_version(version):
        raise ParseError(f"`{version}` is not a version like 3.8.1.", usage)
    groups: list[str] = []
    overrides: list[str] = []
    waiver = None
    auto = False
    i = 0
    while i < len(rest):
        word = rest[i]
        if action == "start" and word == "--override":
            if i + 1 >= len(rest) or rest[i + 1] not in OVERRIDES:
                raise ParseError(f"`--override` takes one of: {', '.join(OVERRIDES)}.", usage)
            overrides.append(rest[i + 1])
            i += 2
        elif action == "start" and word == "--waiver":
            if i + 1 >= len(rest) or not rest[i + 1].strip() or rest[i + 1].startswith("--"):
                raise ParseError(
                    '`--waiver` needs a reason, e.g. `--waiver "DB snapshot taken"`.', usage
                )
            waiver = rest[i + 1]
            i += 2
        elif action == "start" and word == "--auto":
            auto = True
            i += 1
        elif word.startswith("-"):
            raise ParseError(f"Unknown option `{word}`.", usage)
        else:
            if word in groups:
                raise ParseError(f"Group `{word}` is named twice.", usage)
            groups.append(word)
            i += 1
    return Request(
        action,
        version=version,
        groups=tuple(groups),
        overrides=tuple(overrides),
        waiver=waiver,
        auto=auto,
    )
