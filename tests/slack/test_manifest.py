"""The Slack app manifest asks for exactly what the code uses: no scope, event or command more."""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
MANIFEST = yaml.safe_load((REPO / "slack-app-manifest.yaml").read_text())

SCOPES_BY_METHOD = {
    "chat_postMessage": {"chat:write"},
    "chat_update": {"chat:write"},
    "chat_postEphemeral": {"chat:write"},
    "conversations_history": {"channels:history", "groups:history"},
    "conversations_replies": {"channels:history", "groups:history"},
    "usergroups_users_list": {"usergroups:read"},
    "files_upload_v2": {"files:write"},
}
SCOPES_BY_EVENT = {"reaction_added": {"reactions:read"}}


def _bot_sources() -> list[ast.Module]:
    return [ast.parse(p.read_text()) for p in sorted((REPO / "bot").glob("*.py"))]


def web_api_methods() -> set[str]:
    """Every ``client.<method>(...)`` the Slack layer calls."""
    found = set()
    for tree in _bot_sources():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                target = node.func.value
                if isinstance(target, ast.Attribute | ast.Name) and (
                    getattr(target, "id", None) == "client"
                    or getattr(target, "attr", "") == "client"
                ):
                    found.add(node.func.attr)
    return found


def decorated(kind: str) -> set[str]:
    """Names passed to ``@app.<kind>("...")`` decorators."""
    found = set()
    for tree in _bot_sources():
        for node in ast.walk(tree):
            if isinstance(node, ast.AsyncFunctionDef):
                for dec in node.decorator_list:
                    if (
                        isinstance(dec, ast.Call)
                        and isinstance(dec.func, ast.Attribute)
                        and dec.func.attr == kind
                        and dec.args
                    ):
                        arg = dec.args[0]
                        if isinstance(arg, ast.Constant):
                            found.add(arg.value)
                        elif isinstance(arg, ast.Dict):  # {"action_id": "gate_approve"}
                            found.update(v.value for v in arg.values if isinstance(v, ast.Constant))
    return found


def test_every_web_api_method_used_has_a_known_scope() -> None:
    methods = web_api_methods()
    assert methods, "no Web API calls found: the scan is broken"
    assert methods <= set(SCOPES_BY_METHOD), methods - set(SCOPES_BY_METHOD)


def test_the_manifest_asks_for_exactly_the_scopes_the_code_uses() -> None:
    needed = {"commands"}
    for method in web_api_methods():
        needed |= SCOPES_BY_METHOD[method]
    for event in decorated("event"):
        needed |= SCOPES_BY_EVENT[event]
    assert set(MANIFEST["oauth_config"]["scopes"]["bot"]) == needed


def test_the_manifest_subscribes_to_exactly_the_events_listened_to() -> None:
    assert set(MANIFEST["settings"]["event_subscriptions"]["bot_events"]) == decorated("event")


def test_the_manifest_declares_the_command_interactivity_and_socket_mode() -> None:
    commands = [c["command"] for c in MANIFEST["features"]["slash_commands"]]
    assert commands == ["/upgrade"]
    from upgrade_bot.bot.settings import SlackSettings

    assert SlackSettings(channel="C1").command == "/upgrade"
    assert MANIFEST["settings"]["interactivity"]["is_enabled"] is True
    assert MANIFEST["settings"]["socket_mode_enabled"] is True
    assert decorated("action"), "buttons are used, so interactivity must stay enabled"


def test_the_manifest_usage_hint_names_every_subcommand_the_bot_parses() -> None:
    from upgrade_bot.bot.commands import COMMANDS, usage_hint

    (command,) = MANIFEST["features"]["slash_commands"]
    assert command["usage_hint"] == usage_hint()
    assert command["usage_hint"].split(" | ") == list(COMMANDS)
