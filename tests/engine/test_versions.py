"""Gateway versions as the vendors number them: APISIX's three parts, API7 EE's four (or five),
a ``v`` prefix, pre-releases, and the ``dev`` an API7 development build reports."""

from __future__ import annotations

import random

import pytest

from upgrade_bot.engine.config import Image
from upgrade_bot.engine.versions import Version, is_version, normalize, path_warning

# API7's own list of its releases, newest first (api7/docs.apiseven.com enterprise_versions.json
# @faf96f0e, the numbered entries): the order to reproduce. A string sort gets it wrong.
API7_RELEASES_NEWEST_FIRST = ["3.2.16.7", "3.2.16.3", "3.2.14.4.1", "3.2.9.5", "2.13.2304"]


def test_api7_releases_are_ordered_as_api7_orders_them() -> None:
    shuffled = API7_RELEASES_NEWEST_FIRST[:]
    random.Random(7).shuffle(shuffled)
    assert sorted(shuffled, key=Version, reverse=True) == API7_RELEASES_NEWEST_FIRST
    assert sorted(API7_RELEASES_NEWEST_FIRST, reverse=True) != API7_RELEASES_NEWEST_FIRST


@pytest.mark.parametrize(
    ("low", "high"),
    [
        ("3.2.14.5", "3.2.14.6"),
        ("3.2.14.6", "3.2.14.10"),  # numbers, not text
        ("3.2.14", "3.2.14.1"),
        ("3.2.14.4.1", "3.2.14.6"),
        ("3.8.1", "3.9.0"),
        ("3.0.0-beta", "3.0.0"),  # a pre-release comes before its release
        ("3.9.0-rc1", "3.9.0-rc2"),
        ("3.9.0-rc2", "3.9.0"),
        ("3.2.14.6", "dev"),  # a development build is newer than any release (as adc reads it)
    ],
)
def test_ordering(low: str, high: str) -> None:
    assert Version(low) < Version(high)
    assert not Version(high) < Version(low)


def test_equal_forms() -> None:
    assert Version("v3.2.14.6") == Version("3.2.14.6")
    assert Version("3.2.14") == Version("3.2.14.0")
    assert Version("dev") == Version("DEV")
    assert str(Version("v3.2.14.6")) == "3.2.14.6" and str(Version("dev")) == "dev"


@pytest.mark.parametrize("text", ["3.8", "3", "latest", "3.8.x", "v", "", "3.8.1.2.3.4", "3..8.1"])
def test_not_versions(text: str) -> None:
    assert not is_version(text)
    with pytest.raises(ValueError, match=r"is not a version like 3\.8\.1 or 3\.2\.14\.6"):
        Version(text)


def test_parts() -> None:
    v = Version("3.2.14.6")
    assert (v.major, v.minor, v.patch, v.release) == (3, 2, 14, (3, 2, 14, 6))
    assert Version("dev").release == (999, 999, 999)


def test_upgrade_paths_with_four_parts() -> None:
    assert path_warning("3.2.14.5", "3.2.14.6") is None
    assert path_warning("3.2.14.6", "3.2.14.5") is not None  # a downgrade
    assert "skips minor versions" in str(path_warning("3.2.14.6", "3.4.0.1"))
    assert "development build" in str(path_warning("3.2.14.6", "dev"))


def test_image_tags_per_version_keep_working() -> None:
    image = Image(repository="api7/api7-ee-3-gateway", tags={"3.2.14.6": "3.2.14.6-ubuntu"})
    assert image.for_version("3.2.14.6") == "api7/api7-ee-3-gateway:3.2.14.6-ubuntu"
    assert image.for_version("v3.2.14.6") == "api7/api7-ee-3-gateway:3.2.14.6-ubuntu"
    assert image.for_version("3.2.14.5") == "api7/api7-ee-3-gateway:3.2.14.5"
    assert normalize(" v3.9.0 ") == "3.9.0"
