"""The dependency rules of DESIGN §3, enforced by import-linter, and proven live.

import-linter reads the package from the file system, so each test assembles the tree as the
installed wheel lays it out (bot/ and engine/ under upgrade_bot/) in a temporary folder; the
planted-violation tests add one bad import to that copy and show the contract breaks.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ENGINE_CONTRACT = "engine core imports no IO library and nothing from bot"
BOT_CONTRACT = "bot imports no container runtime SDK"
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc")


def assemble(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    shutil.copytree(REPO / "upgrade_bot", root / "upgrade_bot", ignore=IGNORE)
    shutil.copytree(REPO / "bot", root / "upgrade_bot" / "bot", ignore=IGNORE)
    shutil.copytree(REPO / "engine", root / "upgrade_bot" / "engine", ignore=IGNORE)
    return root


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "lint-imports"
    env = dict(os.environ, PYTHONPATH=str(root))
    return subprocess.run(
        [str(exe), str(REPO / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def broken(output: str) -> set[str]:
    return {name for name in (ENGINE_CONTRACT, BOT_CONTRACT) if f"{name} BROKEN" in output}


def test_the_code_as_it_is_keeps_every_contract(tmp_path: Path) -> None:
    result = lint_imports(assemble(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{ENGINE_CONTRACT} KEPT" in result.stdout
    assert f"{BOT_CONTRACT} KEPT" in result.stdout


@pytest.mark.parametrize(
    ("where", "planted", "contract"),
    [
        ("engine/planted.py", "import redis\n", ENGINE_CONTRACT),
        ("engine/planted.py", "import slack_sdk\n", ENGINE_CONTRACT),
        ("engine/planted.py", "from upgrade_bot.bot import planted_target\n", ENGINE_CONTRACT),
        ("engine/planted.py", "import apscheduler\n", ENGINE_CONTRACT),
        ("bot/planted.py", "import docker\n", BOT_CONTRACT),
        ("bot/planted.py", "import kubernetes\n", BOT_CONTRACT),
        ("bot/planted.py", "from upgrade_bot.engine.backends import local\n", BOT_CONTRACT),
    ],
)
def test_a_planted_violation_breaks_its_contract(
    tmp_path: Path, where: str, planted: str, contract: str
) -> None:
    root = assemble(tmp_path)
    (root / "upgrade_bot" / "bot" / "planted_target.py").write_text("X = 1\n")
    (root / "upgrade_bot" / where).write_text(planted)
    result = lint_imports(root)
    assert result.returncode != 0
    assert broken(result.stdout) == {contract}, result.stdout
