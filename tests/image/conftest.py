"""The container image under test: built once per session by the recipe ``make image`` uses
(upgrade_bot.image: a debootstrap base image, ``podman build``), layers cached between sessions.

The image is tagged for this session as well, so that another session's build (which prunes the
images nobody tags any more) cannot remove it while its tests run; the tag goes at the end.
A missing podman or debootstrap fails the tests: `make test` installs both.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from upgrade_bot import image as recipe
from upgrade_bot import podman


@dataclass(frozen=True)
class BuiltImage:
    ref: str
    """The image's ID: what this session built, whatever tags other sessions move."""
    built: recipe.Built
    env: dict[str, str]
    """The environment for the podman CLI with the build's storage and settings."""

    def podman(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """``podman ARGS`` on the image's storage (its result, whatever the exit code)."""
        return subprocess.run(
            ["podman", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


@pytest.fixture(scope="session")
def image() -> Iterator[BuiltImage]:
    missing = podman.missing_tools()
    if recipe.debootstrap_path() is None:
        missing.append("debootstrap")
    if missing:
        message = f"missing: {' '.join(missing)} (make system-deps installs them)"
        pytest.fail(message)  # `make test` installs them: a missing tool fails, never skips
    storage = recipe.cache_dir() / "podman"
    session_tag = f"localhost/upgrade-bot-test:session-{os.getpid()}-{int(time.time())}"
    try:
        built = recipe.build_image(storage, tags=(session_tag,))
    except recipe.ImageError as exc:
        pytest.fail(str(exc))
    print(
        f"\nimage {built.tag} ({built.image_id[:12]}): base {built.base_s:.1f}s, "
        f"podman build {built.build_s:.1f}s (storage {storage})"
    )
    under_test = BuiltImage(built.image_id, built, recipe.podman_environ(storage))
    yield under_test
    under_test.podman("untag", built.image_id, session_tag)
