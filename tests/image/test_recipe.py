"""The image recipe's reading of the host (upgrade_bot.image): which Debian mirror apt uses, what
apt sources the base image gets, which pip index settings the build sees."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from upgrade_bot import image as recipe

# This host's own layout (Debian 12's deb822 file), plus a one-line third-party source.
DEB822 = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""


def apt_root(tmp_path: Path, *, sources: str = DEB822, lines: str = "") -> Path:
    (tmp_path / "sources.list.d").mkdir(parents=True)
    (tmp_path / "sources.list.d" / "debian.sources").write_text(sources)
    (tmp_path / "sources.list.d" / "nodesource.sources.disabled").write_text(
        "Types: deb\nURIs: https://deb.example.org/node\nSuites: bookworm\nComponents: main\n"
    )
    (tmp_path / "sources.list").write_text(lines)
    return tmp_path


def test_the_mirror_is_the_one_apt_takes_bookworm_main_from(tmp_path: Path) -> None:
    sources = recipe.apt_sources(apt_root(tmp_path))
    assert recipe.mirror_for(sources) == "http://deb.debian.org/debian"  # not the disabled file
    one_line = "deb [arch=amd64 signed-by=/k.gpg] http://ftp.de.debian.org/debian bookworm main\n"
    sources = recipe.apt_sources(apt_root(tmp_path / "b", sources="", lines=one_line))
    assert recipe.mirror_for(sources) == "http://ftp.de.debian.org/debian"


def test_no_debian_source_is_one_clear_error(tmp_path: Path) -> None:
    lines = "deb http://archive.ubuntu.com/ubuntu jammy main\n"
    sources = recipe.apt_sources(apt_root(tmp_path, sources="", lines=lines))
    with pytest.raises(recipe.ImageError, match="no source for Debian bookworm main"):
        recipe.mirror_for(sources)


def test_the_base_image_gets_the_official_suites_from_the_hosts_mirrors(tmp_path: Path) -> None:
    text = recipe.base_apt_sources(recipe.apt_sources(apt_root(tmp_path)))
    assert "URIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\n" in text
    assert "URIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\n" in text


def test_the_base_tarball_is_one_per_day_and_mirror() -> None:
    day = dt.date(2026, 11, 29)
    name = recipe.base_tarball_name("http://deb.debian.org/debian", day)
    assert name.startswith("debian-bookworm-minbase-deb.debian.org-") and "2026-11-29" in name
    assert name != recipe.base_tarball_name("http://ftp.de.debian.org/debian", day)
    assert name != recipe.base_tarball_name("http://deb.debian.org/debian", day.replace(day=30))


def test_the_build_sees_the_hosts_remote_index_and_ca_but_no_local_paths(tmp_path: Path) -> None:
    conf = tmp_path / "pip.conf"
    conf.write_text(
        "[global]\nindex-url = https://pypi.example.org/simple\n"
        "extra-index-url = file:///opt/pypi/simple https://extra.example.org/simple\n"
        "find-links = /opt/wheels\n"
    )
    settings = recipe.pip_index_settings({"PIP_CONFIG_FILE": str(conf), "PATH": "/usr/bin"})
    assert settings == {
        "index-url": "https://pypi.example.org/simple",
        "extra-index-url": "https://extra.example.org/simple",
    }
    text = recipe.build_pip_conf(settings, "/root/.config/pip/ca-certificates.crt")
    assert "cert = /root/.config/pip/ca-certificates.crt" in text
    assert "file://" not in text and "find-links" not in text
