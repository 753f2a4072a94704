"""The slash command's subcommands, declared once, and the parsing of its text into a request.

``COMMANDS`` is the one table: it drives parsing, ``help`` and the usage lines (``messages``),
the usage hint in ``slack-app-manifest.yaml`` (its test compares them) and the listener dispatch
(each entry names the listener function that answers it). Adding a subcommand is one entry here
plus its answer in ``listeners``. Pure: no Slack, no engine calls.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass

from upgrade_bot.engine import OVERRIDES, is_version

SLASH_OVERRIDES = tuple(o for o in OVERRIDES if o != "backup")
"""The overrides ``start --override`` takes: the backup is waived with ``--waiver "REASON"``
instead, because a waiver needs a reason."""


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


Parser = Callable[[str, list[str], str], Request]
"""(subcommand, its words, its usage line) → the request; raises ParseError."""


@dataclass(frozen=True)
class Subcommand:
    name: str
    args: str
    """Its arguments as the usage shows them: ``VERSION [GROUP ...]``."""
    summary: str
    """What it does, one short line for ``help``."""
    parse: Parser
    answer: str | None
    """The listener's answer for it (a key of ``listeners.ANSWERS``); None: answered in the ack."""

    @property
    def usage(self) -> str:
        """``plan VERSION [GROUP ...]``: the subcommand and its arguments."""
        return f"{self.name} {self.args}".rstrip()


def _at_most(args: list[str], n: int, usage: str) -> None:
    if len(args) > n:
        raise ParseError(f"Too many words: `{' '.join(args[n:])}`.", usage)


def _plan_or_start(action: str, args: list[str], usage: str) -> Request:
    if not args:
        raise ParseError("Which version? e.g. `3.8.1`.", usage)
    version, rest = args[0], args[1:]
    if not is_version(version):
        raise ParseError(f"`{version}` is not a version like 3.8.1 or 3.2.14.6.", usage)
    groups: list[str] = []
    overrides: list[str] = []
    waiver = None
    auto = False
    i = 0
    while i < len(rest):
        word = rest[i]
        if action == "start" and word == "--override":
            if i + 1 >= len(rest) or rest[i + 1] not in SLASH_OVERRIDES:
                raise ParseError(f"`--override` takes one of: {', '.join(SLASH_OVERRIDES)}.", usage)
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


def _status(action: str, args: list[str], usage: str) -> Request:
    _at_most(args, 1, usage)
    return Request(action, run_id=args[0] if args else None)


def _history(action: str, args: list[str], usage: str) -> Request:
    _at_most(args, 1, usage)
    if args and not args[0].isdigit():
        raise ParseError(f"`{args[0]}` is not a count.", usage)
    return Request(action, limit=min(int(args[0]), 50) if args else 10)


def _unlock(action: str, args: list[str], usage: str) -> Request:
    if len(args) < 2:
        raise ParseError("Name the group and give a reason.", usage)
    return Request(action, groups=(args[0],), reason=" ".join(args[1:]))


def _run(action: str, args: list[str], usage: str) -> Request:
    """A run, nothing else: ``resume RUN``."""
    if not args:
        raise ParseError("Which run? Give its ID (see `status`).", usage)
    _at_most(args, 1, usage)
    return Request(action, run_id=args[0])


def _run_and_reason(action: str, args: list[str], usage: str) -> Request:
    """A run, maybe a reason: ``pause RUN [REASON]``."""
    if not args:
        raise ParseError("Which run? Give its ID (see `status`).", usage)
    return Request(action, run_id=args[0], reason=" ".join(args[1:]) or None)


def _help(action: str, args: list[str], usage: str) -> Request:
    return Request("help")


COMMANDS: dict[str, Subcommand] = {
    c.name: c
    for c in (
        Subcommand(
            "plan",
            "VERSION [GROUP ...]",
            "what an upgrade would do; changes nothing",
            _plan_or_start,
            "plan",
        ),
        Subcommand(
            "start",
            f"VERSION [GROUP ...] [--override {'|'.join(SLASH_OVERRIDES)}] "
            '[--waiver "REASON"] [--auto]',
            "upgrade one group at a time, in the order given (all groups when none named)",
            _plan_or_start,
            "start",
        ),
        Subcommand(
            "status",
            "[RUN]",
            "where a run stands (the active runs without RUN)",
            _status,
            "status",
        ),
        Subcommand(
            "pause",
            "RUN [REASON]",
            "stop after the current step; resume later",
            _run_and_reason,
            "run",
        ),
        Subcommand("resume", "RUN", "carry on after a pause or hold", _run, "run"),
        Subcommand("approve", "RUN", "approve the group waiting at the gate", _run, "run"),
        Subcommand(
            "rollback",
            "RUN [REASON]",
            "restore every upgraded instance, newest group first",
            _run_and_reason,
            "run",
        ),
        Subcommand(
            "abort", "RUN [REASON]", "stop where it is, no rollback", _run_and_reason, "run"
        ),
        Subcommand("ack", "RUN", "acknowledge the changelog (the requester only)", _run, "run"),
        Subcommand("history", "[COUNT]", "recent runs", _history, "history"),
        Subcommand(
            "unlock",
            "GROUP REASON",
            "break-glass: free a group whose run is gone (audited)",
            _unlock,
            "unlock",
        ),
        Subcommand("help", "", "this help", _help, None),
    )
}
"""Every subcommand, in the order ``help`` lists them."""


def parse(text: str) -> Request:
    """``start 3.8.1 prod-eu prod-us`` → Request(action="start", version="3.8.1", …)."""
    try:
        words = shlex.split(text.strip())
    except ValueError:
        raise ParseError("Unbalanced quotes in the command.", None) from None
    if not words or words[0] in ("-h", "--help"):
        return Request("help")
    action, args = words[0].lower(), words[1:]
    sub = COMMANDS.get(action)
    if sub is None:
        raise ParseError(f"Unknown command `{action}`.", None)
    return sub.parse(action, args, sub.usage)


def usage_hint() -> str:
    """The slash command's hint in Slack's autocomplete (``usage_hint`` in the app manifest)."""
    return " | ".join(COMMANDS)
