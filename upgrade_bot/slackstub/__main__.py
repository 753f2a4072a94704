"""``python -m upgrade_bot.slackstub``: run the Slack stand-in until interrupted.

Prints one JSON line with its URLs, tokens, signing secret, channels and users, then serves.
Envelopes are pushed with ``POST /_stub/deliver`` (see :mod:`.server`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Sequence

from .server import SlackStub
from .workspace import DEFAULT_CHANNELS, DEFAULT_USERGROUPS, DEFAULT_USERS, Workspace


def _pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not key:
        raise argparse.ArgumentTypeError(f"expected ID or ID=VALUE, got {text!r}")
    return key, value if sep else key.lower()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(prog="python -m upgrade_bot.slackstub", description=__doc__)
    p.add_argument("--port", type=int, default=0, help="loopback port (0: any free one)")
    p.add_argument(
        "--channel",
        action="append",
        type=_pair,
        default=None,
        metavar="ID[=NAME]",
        help="a channel (repeatable; default C0UPGRADES=upgrades)",
    )
    p.add_argument(
        "--user",
        action="append",
        type=_pair,
        default=None,
        metavar="ID[=NAME]",
        help="a user (repeatable; default alice, bob, carol)",
    )
    p.add_argument(
        "--usergroup",
        action="append",
        default=None,
        metavar="ID=HANDLE:U1,U2",
        help="a user group (repeatable; default S0ONCALL01=gateway-oncall:bob,carol)",
    )
    p.add_argument("--bot-token", default=None)
    p.add_argument("--app-token", default=None)
    p.add_argument("--signing-secret", default=None)
    p.add_argument("--ack-timeout", type=float, default=3.0)
    return p.parse_args(argv)


def _usergroups(specs: list[str] | None) -> dict[str, tuple[str, list[str]]]:
    if not specs:
        return {k: (h, list(m)) for k, (h, m) in DEFAULT_USERGROUPS.items()}
    out: dict[str, tuple[str, list[str]]] = {}
    for spec in specs:
        gid, _, rest = spec.partition("=")
        handle, _, members = rest.partition(":")
        out[gid] = (handle or gid.lower(), [m for m in members.split(",") if m])
    return out


def build_stub(args: argparse.Namespace) -> SlackStub:
    """The stub the options describe."""
    identity = {
        k: v
        for k, v in (
            ("bot_token", args.bot_token),
            ("app_token", args.app_token),
            ("signing_secret", args.signing_secret),
        )
        if v
    }
    workspace = Workspace.build(
        dict(args.channel) if args.channel else DEFAULT_CHANNELS,
        dict(args.user) if args.user else DEFAULT_USERS,
        _usergroups(args.usergroup),
        **identity,
    )
    return SlackStub(workspace=workspace, port=args.port, ack_timeout=args.ack_timeout)


async def serve(args: argparse.Namespace) -> None:
    """Start, announce, and serve until SIGINT/SIGTERM."""
    stub = build_stub(args)
    await stub.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(json.dumps(stub.info()), flush=True)
    try:
        await stop.wait()
    finally:
        await stub.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    args = parse_args(argv)
    if args.bot_token and not args.bot_token.startswith("xoxb-"):
        print("--bot-token must start with xoxb-", file=sys.stderr)
        return 2
    if args.app_token and not args.app_token.startswith("xapp-"):
        print("--app-token must start with xapp-", file=sys.stderr)
        return 2
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
