"""Changelog parsing on the real Apache APISIX changelog, synthetic edge cases, and reading."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from aiohttp import web

from upgrade_bot.engine.adapters.changelog_source import read_source
from upgrade_bot.engine.changelog import Entry, entries_between, parse_changelog, release_of
from upgrade_bot.engine.errors import PermanentError, TemporaryError

pytestmark = pytest.mark.timeout(60)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
APISIX = FIXTURES / "apisix_CHANGELOG_excerpt.md"


def versions(entries: list[Entry]) -> list[str]:
    return [e.version for e in entries]


# --- the real APISIX changelog ----------------------------------------------------------------


@pytest.fixture(scope="module")
def apisix() -> list[Entry]:
    return parse_changelog(APISIX.read_text(encoding="utf-8"))


def test_apisix_releases_in_document_order(apisix: list[Entry]) -> None:
    # the licence header and the table of contents (which lists 0.6.0..2.2.0) are not releases
    assert versions(apisix) == ["2.2.0", "2.1.0", "2.0.0", "1.5.0", "1.4.1", "1.4.0"]


def test_apisix_same_level_section_headings_stay_inside_their_release(
    apisix: list[Entry],
) -> None:
    by_version = {e.version: e.text for e in apisix}
    # APISIX 2.x writes "## Change", "## Bugfix", "## CVE" at the level of its release headings
    assert by_version["2.2.0"].startswith("## Change\n- disable node-status plugin by default")
    assert "## Bugfix\n- basic-auth plugin should run in rewrite phases." in by_version["2.2.0"]
    assert by_version["2.2.0"].endswith("(https://github.com/apache/apisix/milestone/10)")
    assert "## Not downward compatible features in future versions" in by_version["2.1.0"]
    assert by_version["2.0.0"].startswith("This is release candidate.\n\n### Core")
    assert by_version["2.0.0"].endswith(
        "## CVE\n\n- Fixed Admin API default access token vulnerability"
    )
    assert by_version["1.4.1"] == (
        "### Bugfix\n\n- Fix: multiple SSL certificates are configured, but only one "
        "certificate working fine. [1818](https://github.com/apache/incubator-apisix/pull/1818)"
    )
    # nothing is lost or duplicated between entries: every non-heading bullet appears once
    text = APISIX.read_text(encoding="utf-8")
    bullets = [line for line in text.splitlines() if line.startswith("- :sunrise:")]
    joined = "\n".join(e.text for e in apisix)
    assert all(joined.count(b) == text.count(b) for b in bullets)


def test_apisix_upgrade_window(apisix: list[Entry]) -> None:
    assert versions(entries_between(apisix, "1.4.0", "2.1.0")) == [
        "1.4.1",
        "1.5.0",
        "2.0.0",
        "2.1.0",
    ]
    assert versions(entries_between(apisix, "1.5.0", "1.5.0")) == []
    assert versions(entries_between(apisix, "2.2.0", "1.4.0")) == []  # a downgrade
    # versions that are not in the changelog still bound the window
    assert versions(entries_between(apisix, "1.4.5", "2.0.9")) == ["1.5.0", "2.0.0"]
    assert versions(entries_between(apisix, "0.1.0", "9.9.9"))[0] == "1.4.0"


# --- synthetic edge cases -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("heading", "expected"),
    [
        ("3.8.1", ("3.8.1", False)),
        ("[3.8.1] - 2024-01-02", ("3.8.1", False)),
        ("[3.8.1](https://github.com/o/r/compare/3.8.0...3.8.1) (2024-01-02)", ("3.8.1", False)),
        ("Release 3.8.1", ("3.8.1", False)),
        ("release v3.8.1", ("3.8.1", False)),
        ("Version 3.8.1", ("3.8.1", False)),
        ("v3.8.1", ("3.8.1", False)),
        ("3.8.1 (2024-01-02)", ("3.8.1", False)),
        ("3.8.1 \u2013 2021-01-25", ("3.8.1", False)),
        ("3.8.1: the LTS one", ("3.8.1", False)),
        ("3.0.0-beta", ("3.0.0", True)),
        ("0.9.0-RC1", ("0.9.0", True)),
        ("Bugfix", None),
        ("Unreleased", None),
        ("3.8", None),
        ("3.8.1.2", ("3.8.1.2", False)),  # API7 EE releases have four parts
        ("v3.2.14.6 (2025-03-01)", ("3.2.14.6", False)),
        ("3.8.1.2.3.4", None),
        ("Upgrading to 3.8.1", None),
    ],
)
def test_release_headings(heading: str, expected: tuple[str, bool] | None) -> None:
    assert release_of(heading) == expected


SYNTHETIC = """\
# Changelog

All notable changes. See [3.9.0](#390) for the newest.

## [Unreleased]

- not yet

## [3.9.0] - 2024-03-01

### Breaking
#### Admin API
- removed `/v1`

```sh
## 9.9.9 inside a code fence is not a release
# neither is this
```

## Release 3.8.2
Fixes only. ##

## v3.8.1
### 3.8.1 notes (a version in a deeper heading is text)

## 3.8.0-rc1
pre-release notes belong to no entry

## 3.8.0
first cut

## 3.8.0
a duplicate entry further down is ignored
"""


def test_synthetic_changelog() -> None:
    entries = parse_changelog(SYNTHETIC)
    assert versions(entries) == ["3.9.0", "3.8.2", "3.8.1", "3.8.0"]
    by_version = {e.version: e.text for e in entries}
    assert by_version["3.9.0"] == (
        "### Breaking\n#### Admin API\n- removed `/v1`\n\n```sh\n"
        "## 9.9.9 inside a code fence is not a release\n# neither is this\n```"
    )
    assert by_version["3.8.2"] == "Fixes only. ##"
    assert by_version["3.8.1"] == "### 3.8.1 notes (a version in a deeper heading is text)"
    assert by_version["3.8.0"] == "first cut"
    assert versions(entries_between(entries, "3.8.0", "3.9.0")) == ["3.8.1", "3.8.2", "3.9.0"]


def test_release_level_follows_the_first_release_heading() -> None:
    text = "# Product\n\n### 2.0.1\nfix\n\n## Notes\n\n### 2.0.0\nfirst\n#### 9.9.9\nnested\n"
    entries = parse_changelog(text)
    assert versions(entries) == ["2.0.1", "2.0.0"]
    assert entries[0].text == "fix\n\n## Notes"
    assert entries[1].text == "first\n#### 9.9.9\nnested"


def test_crlf_and_no_releases() -> None:
    assert parse_changelog("## 1.0.1\r\nfix\r\n\r\n## 1.0.0\r\nfirst\r\n") == [
        Entry("1.0.1", "fix"),
        Entry("1.0.0", "first"),
    ]
    assert parse_changelog("# Nothing\n\njust prose\n") == []
    assert parse_changelog("") == []


def test_entries_between_sorts_and_rejects_non_versions() -> None:
    scrambled = [Entry("1.10.0", "c"), Entry("1.2.0", "a"), Entry("1.9.1", "b")]
    assert versions(entries_between(scrambled, "1.0.0", "2.0.0")) == ["1.2.0", "1.9.1", "1.10.0"]
    with pytest.raises(ValueError, match="not a version"):
        entries_between(scrambled, "latest", "2.0.0")


# --- reading the source -------------------------------------------------------------------


async def test_read_local_file_relative_and_absolute(tmp_path: Path) -> None:
    async with httpx.AsyncClient() as client:
        relative = await read_source(
            "apisix_CHANGELOG_excerpt.md", base_dir=FIXTURES, client=client
        )
        absolute = await read_source(str(APISIX), base_dir=tmp_path, client=client)
    assert relative == absolute == APISIX.read_text(encoding="utf-8")


async def test_missing_file_is_permanent(tmp_path: Path) -> None:
    async with httpx.AsyncClient() as client:
        with pytest.raises(PermanentError, match=r"changelog file .*nope\.md does not exist"):
            await read_source("nope.md", base_dir=tmp_path, client=client)
        with pytest.raises(PermanentError, match="is a directory"):
            await read_source(".", base_dir=tmp_path, client=client)


@pytest.fixture
async def changelog_server() -> AsyncIterator[str]:
    text = APISIX.read_text(encoding="utf-8")

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text=text, content_type="text/markdown")

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPFound("/CHANGELOG.md")

    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=502, text="bad gateway")

    async def forbidden(request: web.Request) -> web.Response:
        return web.Response(status=403, text="no")

    app = web.Application()
    app.router.add_get("/CHANGELOG.md", ok)
    app.router.add_get("/old/CHANGELOG.md", moved)
    app.router.add_get("/broken.md", broken)
    app.router.add_get("/private.md", forbidden)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def test_read_url(changelog_server: str, tmp_path: Path) -> None:
    base = changelog_server
    async with httpx.AsyncClient() as client:
        text = await read_source(f"{base}/CHANGELOG.md", base_dir=tmp_path, client=client)
        assert versions(parse_changelog(text))[0] == "2.2.0"
        assert await read_source(f"{base}/old/CHANGELOG.md", base_dir=tmp_path, client=client) == (
            text
        )
        with pytest.raises(PermanentError, match=r"does not exist \(HTTP 404\)"):
            await read_source(f"{base}/missing.md?token=s3cret", base_dir=tmp_path, client=client)
        with pytest.raises(PermanentError, match=r"answered HTTP 403"):
            await read_source(f"{base}/private.md", base_dir=tmp_path, client=client)
        with pytest.raises(TemporaryError, match=r"unreachable \(HTTP 502\)"):
            await read_source(f"{base}/broken.md", base_dir=tmp_path, client=client)


async def test_url_errors_hide_credentials_and_query(changelog_server: str, tmp_path: Path) -> None:
    url = changelog_server.replace("http://", "http://bot:pa55word@") + "/missing.md?token=s3cret"
    async with httpx.AsyncClient() as client:
        with pytest.raises(PermanentError) as err:
            await read_source(url, base_dir=tmp_path, client=client)
    assert "pa55word" not in str(err.value) and "s3cret" not in str(err.value)
    assert f"{changelog_server}/missing.md" in str(err.value)


async def test_unreachable_url_is_temporary(tmp_path: Path) -> None:
    # bind a port, then close it: nobody listens there
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with httpx.AsyncClient() as client:
        with pytest.raises(TemporaryError, match=r"unreachable \(ConnectError\)"):
            await read_source(
                f"http://127.0.0.1:{port}/CHANGELOG.md", base_dir=tmp_path, client=client
            )
