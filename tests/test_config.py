"""`upgrade-bot validate`: every problem named with the file, the key and what is expected."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from upgrade_bot.engine.config import load_config, parse_config
from upgrade_bot.engine.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]

GOOD_GROUP = """
  - name: prod-eu
    image: {repository: api7/api7-ee-3-gateway}
    backend: {type: local, sandbox_url: "http://127.0.0.1:1"}
"""


def validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "upgrade_bot", "validate", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_documented_example_is_valid() -> None:
    result = validate(REPO / "config.example.yaml")
    assert result.returncode == 0, result.stderr
    assert "OK (3 groups: prod-eu, edge-docker, rehearsal)" in result.stdout


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("groups: [\n  - name: x\n", ["line 2, column 3", "not valid YAML"]),
        ("", ["the file is empty"]),
        ("- just\n- a list\n", ["expected a mapping at the top level"]),
        ("groups: []\n", ["groups: List should have at least 1 item"]),
        (
            "groups:\n  - name: prod-eu\n    image: {repository: r}\n    backend: {type: nomad}\n",
            [
                "groups[0] (prod-eu).backend: expected one of 'local', 'docker', 'kubernetes', "
                "got 'nomad'"
            ],
        ),
        (
            "groups:\n  - name: prod-eu\n    image: {repository: r, tags: {'3.8': x}}\n"
            "    backend: {type: docker}\n",
            [
                "groups[0] (prod-eu).backend.labels: required key is missing",
                "groups[0] (prod-eu).image.tags: '3.8' is not a version like 3.8.1 or 3.2.14.6",
            ],
        ),
        (
            "groups:\n  - name: prod-eu\n    image: {repository: r}\n"
            "    backend: {type: kubernetes, namespace: api7}\n",
            ["groups[0] (prod-eu).backend: set 'deployment' or 'selector'"],
        ),
        (
            "groups:" + GOOD_GROUP + "defaults:\n  thresholds: {max_5xx_ratio: 2}\n",
            ["defaults.thresholds.max_5xx_ratio: Input should be less than or equal to 1"],
        ),
        (
            "groups:" + GOOD_GROUP + "slack: {channel: '#upgrades', reactions: {approve: 1}}\n",
            [
                "slack.channel: expected a channel ID like C0123ABCDEF",
                "slack.reactions.approve: Input should be a valid string",
            ],
        ),
        (
            "groups:" + GOOD_GROUP + "slack: {channel: C0UPGRADES, charts: maybe}\n",
            ["slack.charts: Input should be a valid boolean"],
        ),
        (
            "groups:" + GOOD_GROUP + "colour: blue\n",
            ["colour: unknown key"],
        ),
        (
            "groups:" + GOOD_GROUP + GOOD_GROUP,
            ["group name 'prod-eu' appears twice"],
        ),
        (
            "groups:" + GOOD_GROUP + "defaults:\n  policy: {approve: ['not a user']}\n",
            ["defaults.policy.approve[0]: String should match pattern"],
        ),
    ],
)
def test_validate_names_the_file_the_key_and_what_is_expected(
    tmp_path: Path, text: str, expected: list[str]
) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    result = validate(path)
    assert result.returncode == 3
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    for fragment in expected:
        assert any(line.startswith(f"{path}: ") and fragment in line for line in lines), (
            fragment,
            result.stderr,
        )


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    result = validate(tmp_path / "nope.yaml")
    assert result.returncode == 3
    assert result.stderr.strip() == f"{tmp_path / 'nope.yaml'}: no such file"


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config("groups:\n  - name: BAD\n    colour: 1\n", "c.yaml")
    keys = {p.split(":")[0] for p in err.value.problems}
    assert keys == {
        "groups[0] (BAD).name",
        "groups[0] (BAD).backend",
        "groups[0] (BAD).image",
        "groups[0] (BAD).colour",
    }


def test_image_for_a_version_uses_the_tag_mapping() -> None:
    config = load_config(REPO / "config.example.yaml")
    assert config.group("prod-eu").image.for_version("3.8.1") == "api7/api7-ee-3-gateway:3.8.1"
    assert config.group("edge-docker").image.for_version("3.9.0") == "apache/apisix:3.9.0-debian"
