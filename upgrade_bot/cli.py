"""``upgrade-bot``: the composition root. The only module that wires settings, store, backends,
engine and bot together."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from . import headless
from .engine import EngineError, LeaseBusy, Refused, Unresumable, Version, is_version, normalize
from .engine.config import load_config
from .engine.errors import ConfigError, GroupBusy
from .logs import FORMATS
from .sandbox import manage
from .sandbox.spec import READINESS_MODES, SandboxSpec, group_names, parse_fault

EXIT_OK = headless.EXIT_COMPLETED
EXIT_USAGE = headless.EXIT_USAGE
EXIT_CONFIG = headless.EXIT_CONFIG


class CliError(Exception):
    """One clear line for the user; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def _version(text: str) -> str:
    if not is_version(text):
        raise argparse.ArgumentTypeError(f"'{text}' is not a version like 3.8.1 or 3.2.14.6")
    return normalize(text)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"'{text}' must be at least 1")
    return value


def _port(text: str | int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a port number") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"'{text}' is not a port number (1-65535)")
    return value


def _seconds(text: str | float) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number of seconds") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"'{text}' must be more than 0 seconds")
    return value


def _fault(text: str) -> tuple[str, object]:
    try:
        return parse_fault(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="upgrade-bot",
        description="Rolling upgrades of API gateway data-plane instances, approved from Slack.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = sub.add_parser("validate", help="check a configuration file")
    validate.add_argument("--config", required=True, type=Path)

    sandbox = sub.add_parser("sandbox", help="a local gateway fleet for rehearsal")
    sandbox_sub = sandbox.add_subparsers(dest="action", required=True, metavar="ACTION")
    up = sandbox_sub.add_parser("up", help="start a fleet in the background")
    up.add_argument("--dir", required=True, type=Path)
    up.add_argument("--groups", type=_positive_int, default=3)
    up.add_argument("--instances", type=_positive_int, default=3)
    up.add_argument("--version", type=_version, default="3.8.0")
    up.add_argument("--cp-version", type=_version, default=None)
    up.add_argument("--product", choices=["apisix", "api7"], default="apisix")
    up.add_argument("--rate", type=float, default=150.0, help="requests/s across all groups")
    up.add_argument("--latency-ms", type=float, default=50.0, help="simulated upstream latency")
    up.add_argument(
        "--readiness",
        choices=READINESS_MODES,
        default="status",
        help="how the written bot config judges an instance ready",
    )
    up.add_argument(
        "--fault",
        type=_fault,
        action="append",
        default=[],
        metavar="VERSION=KIND",
        help="never-ready, slow-start[:S], errors[:RATIO], latency[:MS], no-cp",
    )
    st = sandbox_sub.add_parser("status", help="observed truth of the fleet")
    st.add_argument("--dir", required=True, type=Path)
    st.add_argument("--json", action="store_true")
    dn = sandbox_sub.add_parser("down", help="stop the fleet")
    dn.add_argument("--dir", required=True, type=Path)

    HEADLESS.update(headless.add_commands(sub, _version))

    serve = sub.add_parser("serve", help="run the Slack bot (Socket Mode, or --http)")
    env = os.environ.get
    serve.add_argument(
        "--config",
        type=Path,
        default=env("UPGRADE_BOT_CONFIG") or None,
        help="the configuration file (default: $UPGRADE_BOT_CONFIG)",
    )
    serve.add_argument("--http", action="store_true", help="serve /slack/events over HTTP")
    serve.add_argument("--host", default="0.0.0.0", help="HTTP mode: address to listen on")
    serve.add_argument("--port", type=_port, default=3000)
    serve.add_argument(
        "--ops-host",
        default=env("UPGRADE_BOT_OPS_HOST") or "0.0.0.0",
        help="address of /healthz, /readyz and /metrics (default: $UPGRADE_BOT_OPS_HOST or "
        "0.0.0.0)",
    )
    serve.add_argument(
        "--ops-port",
        type=_port,
        default=env("UPGRADE_BOT_OPS_PORT") or 8080,
        help="port of /healthz, /readyz and /metrics (default: $UPGRADE_BOT_OPS_PORT or 8080)",
    )
    serve.add_argument(
        "--log-format",
        choices=FORMATS,
        default=env("UPGRADE_BOT_LOG_FORMAT") or "text",
        help="text, or one JSON object per line (default: $UPGRADE_BOT_LOG_FORMAT or text)",
    )
    serve.add_argument(
        "--log-level",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        type=str.upper,
        default=(env("UPGRADE_BOT_LOG_LEVEL") or "INFO").upper(),
    )
    serve.add_argument(
        "--shutdown-grace",
        type=_seconds,
        default=env("UPGRADE_BOT_SHUTDOWN_GRACE_S") or 25.0,
        metavar="SECONDS",
        help="on SIGTERM, exit within this long (default: $UPGRADE_BOT_SHUTDOWN_GRACE_S or 25)",
    )

    demo = sub.add_parser("demo", help="a full rehearsal on the sandbox")
    from .demo import add_arguments

    add_arguments(demo, _version, _positive_int)
    return parser


def sandbox_spec(args: argparse.Namespace) -> SandboxSpec:
    faults: dict = {}
    for version, fault in args.fault:
        faults[version] = faults[version].merged(fault) if version in faults else fault
    return SandboxSpec(
        groups=group_names(args.groups),
        instances=args.instances,
        version=args.version,
        product=args.product,
        faults=faults,
        rate_per_s=args.rate,
        latency_ms=args.latency_ms,
        readiness=args.readiness,
        cp_version=args.cp_version or str(max(Version(args.version), Version("3.8.1"))),
    )


def cmd_validate(args: argparse.Namespace) -> int:
    from .bot.settings import slack_settings

    config = load_config(args.config)
    if config.slack is not None:
        slack_settings(config.slack, str(args.config))  # the Slack layer's own section
    print(
        f"{args.config}: OK ({len(config.groups)} groups: "
        f"{', '.join(g.name for g in config.groups)})"
        + ("" if config.slack is not None else "; no slack section: `serve` needs one")
    )
    return EXIT_OK


def cmd_sandbox(args: argparse.Namespace) -> int:
    if args.action == "up":
        handle = manage.up(args.dir, sandbox_spec(args))
        print(f"sandbox up in {handle.dir}")
        print(f"  config: {handle.config_path}")
        print(f"  control: {handle.control_url}   control plane: {handle.cp_url}")
        print(f"  redis: {handle.redis_url}")
        for group, url in handle.front_doors.items():
            print(f"  {group}: {url}")
        return EXIT_OK
    if args.action == "status":
        data = manage.status(args.dir)
        if args.json:
            print(json.dumps(data, indent=2))
        else:
            t = data["traffic"]
            print(
                f"traffic: {t['total']} requests, {t['ok']} ok, "
                f"{t['requests_5xx']} 5xx, {t['failed']} failed"
            )
            for s in data["slots"]:
                print(
                    f"  {s['id']:<14} {s['version']:<8} replaced {s['replacements']}x, "
                    f"restored {s['restorations']}x, served before ready "
                    f"{s['served_before_ready']}"
                )
        return EXIT_OK
    if args.action == "down":
        stopped = manage.down(args.dir)
        print("sandbox down" if stopped else f"no sandbox was up in {args.dir}")
        return EXIT_OK
    raise CliError(f"unknown sandbox action '{args.action}'", EXIT_USAGE)


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo
    from .podman import PodmanError

    try:
        return asyncio.run(run_demo(args))
    except PodmanError as exc:
        print(f"demo --backend docker: {exc}", file=sys.stderr)
        return 2


def cmd_serve(args: argparse.Namespace) -> int:
    import signal

    from .logs import configure
    from .serve import StartupError, serve

    if args.config is None:
        raise CliError(
            "serve needs a configuration file: --config FILE, or UPGRADE_BOT_CONFIG", EXIT_USAGE
        )
    configure(args.log_format, args.log_level)

    async def until_signalled() -> None:
        """SIGTERM (a pod stopping) or SIGINT end the bot gracefully; runs stay in Redis and
        the next bot resumes them."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await serve(
            args.config,
            http=args.http,
            host=args.host,
            port=args.port,
            stop=stop,
            ops_host=args.ops_host,
            ops_port=args.ops_port,
            shutdown_grace_s=args.shutdown_grace,
        )
        print("upgrade-bot: stopped; unfinished runs resume when a bot starts again", flush=True)

    try:
        asyncio.run(until_signalled())
    except StartupError as exc:
        print(f"upgrade-bot: {exc}", file=sys.stderr)
        return headless.EXIT_FAILED
    return EXIT_OK


COMMANDS = {"validate": cmd_validate, "sandbox": cmd_sandbox, "demo": cmd_demo, "serve": cmd_serve}
HEADLESS: dict = {}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command in HEADLESS:
            return asyncio.run(HEADLESS[args.command](args))
        return COMMANDS[args.command](args)
    except (Refused, GroupBusy, LeaseBusy) as exc:
        print(f"upgrade-bot: {exc}", file=sys.stderr)
        return headless.EXIT_REFUSED
    except Unresumable as exc:
        print(f"upgrade-bot: {exc}", file=sys.stderr)
        return headless.EXIT_FAILED
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"{exc.path}: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    except (CliError, manage.SandboxError) as exc:
        print(f"upgrade-bot: {exc}", file=sys.stderr)
        return getattr(exc, "code", 1)
    except EngineError as exc:
        print(f"upgrade-bot: {exc}", file=sys.stderr)
        return headless.EXIT_FAILED
    except KeyboardInterrupt:
        print("upgrade-bot: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
