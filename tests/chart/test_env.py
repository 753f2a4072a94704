"""The environment the chart gives the bot is the one the code reads: every name is read by the
project's source, and `upgrade-bot serve` started with the chart's arguments and environment
takes the settings the chart means."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import matplotlib
import pytest

from upgrade_bot import cli
from upgrade_bot.serve import SlackSecrets

from .rendering import ROOT, VALUE_SETS, merged, render

# Every optional env the chart can set, in one install.
EVERYTHING = merged(
    VALUE_SETS["existing-secret"],
    {
        "slack": {"apiUrl": "https://slack-proxy.internal/api/"},
        "redis": {"tls": {"insecureSkipVerify": True}},
    },
)
SETS = {**VALUE_SETS, "everything": EVERYTHING}
# Read by a library, not by the project: matplotlib's cache directory
# (matplotlib/__init__.py `_get_config_or_cache_dir`: os.environ.get('MPLCONFIGDIR')).
LIBRARY_ENV = {"MPLCONFIGDIR": Path(matplotlib.__file__)}


def project_source() -> str:
    files = [p for d in ("upgrade_bot", "engine", "bot") for p in (ROOT / d).rglob("*.py")]
    return "\n".join(p.read_text() for p in files)


def chart_env_names() -> set[str]:
    names: set[str] = set()
    for values in SETS.values():
        given = {e["name"] for e in values.get("extraEnv", [])}  # the user's, not the chart's
        names |= set(render(values).env()) - given
    return names


def test_every_variable_the_chart_sets_is_read_by_the_bot() -> None:
    source = project_source()
    names = chart_env_names()
    assert {"UPGRADE_BOT_IDENTITY", "REDIS_URL", "SLACK_BOT_TOKEN", "REDIS_TLS_CA_FILE"} <= names
    unread = []
    for name in sorted(names):
        if name in LIBRARY_ENV:
            assert f"'{name}'" in LIBRARY_ENV[name].read_text(), name
        elif not re.search(rf"[\"']{name}[\"']", source):
            unread.append(name)
    assert unread == [], f"the chart sets variables no code reads: {unread}"


def plain_env(rendered: Any) -> dict[str, str]:
    """The environment as the kubelet would give it, with stand-ins for the referenced values."""
    out = {}
    for name, entry in rendered.env().items():
        if "value" in entry:
            out[name] = entry["value"]
        elif "fieldRef" in entry["valueFrom"]:
            out[name] = "bot-upgrade-bot-6d9f7c5b8-x2x7q"  # metadata.name: a pod's name
        else:
            out[name] = {"SLACK_BOT_TOKEN": "xoxb-1", "SLACK_APP_TOKEN": "xapp-1"}.get(
                name, "s3cret"
            )
    return out


@pytest.mark.parametrize("name", ["defaults", "http-mode"])
def test_serve_takes_the_chart_settings_from_its_args_and_environment(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    rendered = render(merged(VALUE_SETS[name], {"terminationGracePeriodSeconds": 45}))
    for key in [k for k in os.environ if k.startswith("UPGRADE_BOT_")]:
        monkeypatch.delenv(key)
    for key, value in plain_env(rendered).items():
        monkeypatch.setenv(key, value)
    args = cli.build_parser().parse_args(rendered.bot["args"])  # the parser reads env defaults
    assert args.command == "serve"
    assert args.config == Path("/etc/upgrade-bot/config.yaml")
    assert args.ops_port == rendered.bot["ports"][0]["containerPort"] == 8080
    assert args.log_format == "json"
    assert args.log_level == "INFO"
    assert args.shutdown_grace == 40.0  # 45 s of termination grace, minus 5
    assert args.http is (name == "http-mode")
    if args.http:
        assert args.port == 3000


@pytest.mark.parametrize("name", ["defaults", "http-mode", "existing-secret"])
def test_the_slack_secrets_the_chart_gives_are_the_ones_serve_requires(name: str) -> None:
    rendered = render(VALUE_SETS[name])
    http = "--http" in rendered.bot["args"]
    env = {k: v for k, v in plain_env(rendered).items() if k.startswith("SLACK_")}
    SlackSecrets.from_env(http=http, environ=env)  # raises ConfigError naming what is missing
    for missing in env:
        if missing != "SLACK_API_URL":
            with pytest.raises(Exception, match=missing):
                SlackSecrets.from_env(
                    http=http, environ={k: v for k, v in env.items() if k != missing}
                )
