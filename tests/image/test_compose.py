"""docker-compose.yaml, the example users run: valid by the Compose Specification (parsed by
``compose-spec``, a spec-complete parser that refuses unknown keys and malformed values), Socket
Mode, Redis with append-only persistence on a named volume, the bot with least privilege, and
only environment variables that ``serve`` reads — each secret from .env, none written inline.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from compose_spec import PyCompose

from upgrade_bot import image as recipe
from upgrade_bot.engine.config import ControlPlane

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yaml"
READS = re.compile(r"""(?:environ|env)(?:\.get)?\s*[(\[]\s*["']([A-Z][A-Z0-9_]+)["']""")


def names_serve_reads() -> set[str]:
    """Environment variables the bot's code reads by name, and the configurable one holding the
    control plane's key (by default)."""
    names: set[str] = set()
    for root in ("upgrade_bot", "engine", "bot"):
        for path in (REPO / root).rglob("*.py"):
            names |= set(READS.findall(path.read_text()))
    names.add(ControlPlane.model_fields["api_key_env"].default)
    return names


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    # The spec's own rules first (raises ValueError naming the key), then the file as written.
    PyCompose.from_yaml(COMPOSE.read_text())
    return yaml.safe_load(COMPOSE.read_text())


def test_a_typo_in_the_compose_file_would_be_caught() -> None:
    typo = COMPOSE.read_text().replace("read_only: true", "read_ony: true")
    with pytest.raises(ValueError, match="read_ony"):
        PyCompose.from_yaml(typo)


def test_the_bot_runs_the_projects_image_in_socket_mode_with_least_privilege(
    compose: dict[str, Any],
) -> None:
    bot = compose["services"]["bot"]
    assert bot["image"] == f"{recipe.IMAGE}:{recipe.project_version(REPO)}"
    assert bot["build"] in (".", {"context": "."})
    assert bot.get("command", ["serve"]) == ["serve"]  # no --http: Socket Mode, no ingress
    assert str(bot["user"]).split(":")[0] == "10001"
    assert bot["read_only"] is True and "/tmp" in bot["tmpfs"]
    assert bot["cap_drop"] == ["ALL"] and "no-new-privileges:true" in bot["security_opt"]
    assert "./config.yaml:/etc/upgrade-bot/config.yaml:ro" in bot["volumes"]
    assert any("/healthz" in part for part in bot["healthcheck"]["test"])
    assert bot["depends_on"]["redis"]["condition"] == "service_healthy"
    # the ops port only on the host's loopback
    assert all(str(p).startswith("127.0.0.1:") for p in bot.get("ports", []))


def test_the_bots_environment_is_what_serve_reads_and_secrets_come_from_env(
    compose: dict[str, Any],
) -> None:
    env = compose["services"]["bot"]["environment"]
    assert not set(env) - names_serve_reads(), set(env) - names_serve_reads()
    assert {"REDIS_URL", "SLACK_BOT_TOKEN", "SLACK_APP_TOKEN"} <= set(env)
    assert env["REDIS_URL"].startswith("redis://redis:")
    for secret in ("SLACK_BOT_TOKEN", "SLACK_APP_TOKEN", "CP_API_KEY"):
        assert re.fullmatch(rf"\$\{{{secret}(:[?-][^}}]*)?\}}", env[secret]), env[secret]
    example = (REPO / ".env.example").read_text()
    documented = set(re.findall(r"^([A-Z][A-Z0-9_]*)=", example, re.MULTILINE))
    assert documented <= names_serve_reads()
    assert {"SLACK_BOT_TOKEN", "SLACK_APP_TOKEN", "CP_API_KEY"} <= documented
    # the example carries no value for a secret
    assert not re.search(r"^(SLACK_\w+|CP_API_KEY)=\S", example, re.MULTILINE)


def test_redis_keeps_its_data_append_only_on_a_named_volume(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    command = redis["command"]
    command = command.split() if isinstance(command, str) else command
    assert command[0] == "redis-server"
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    volume, _, target = redis["volumes"][0].partition(":")
    assert target == "/data" and volume in compose["volumes"]  # a named volume, not a bind
    assert "ping" in redis["healthcheck"]["test"]
    assert "ports" not in redis  # reachable on the compose network only
