"""Release notes between two versions, read from a vendor's Markdown changelog.

Pure: the text comes from :mod:`upgrade_bot.engine.adapters.changelog_source`.

A changelog has one heading per release. Vendors spell them differently, so a release heading
is any ATX heading whose text is a version, optionally bracketed or linked, optionally after
``Release``/``Version``/``v`` and optionally followed by a date or other words::

    ## 3.8.1
    ## [3.8.1] - 2024-01-02
    ## [3.8.1](https://…/compare/3.8.0...3.8.1) (2024-01-02)
    ## Release 3.8.1
    ## v3.8.1

The level of the first release heading is the release level (``##`` in practice). Every other
heading -- deeper (``### Bugfix``), shallower, or at the same level without a version (Apache
APISIX's own changelog writes ``## Bugfix`` and ``## CVE`` inside releases) -- is part of the
current entry's text. Text before the first release (title, table of contents) is dropped, and
lines inside fenced code blocks are never headings.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from .versions import Version

_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_RELEASE = re.compile(
    r"""^
    (?:(?:release|version)\s+)?          # "Release 3.8.1", "Version 3.8.1"
    \[?                                  # "[3.8.1]" (Keep a Changelog)
    v?                                   # "v3.8.1"
    (?P<version>\d+(?:\.\d+){2,4})
    (?P<pre>[-+][0-9A-Za-z][0-9A-Za-z.+-]*)?   # "3.0.0-beta", "0.9.0-RC1"
    \]?
    (?:\([^)\s]*\))?                     # "[3.8.1](https://…)"
    (?:$|[\s:,(\u2013\u2014-].*$)      # " - 2024-01-02", " (2024-01-02)", " LTS"
    """,
    re.IGNORECASE | re.VERBOSE,
)


@dataclass(frozen=True)
class Entry:
    """One release: its version (``3.8.1``) and its notes (Markdown, heading excluded)."""

    version: str
    text: str


def release_of(heading: str) -> tuple[str, bool] | None:
    """``(version, is_prerelease)`` when a heading's text names a release, else ``None``."""
    match = _RELEASE.match(heading.strip())
    if not match:
        return None
    return match.group("version"), match.group("pre") is not None


def parse_changelog(markdown: str) -> list[Entry]:
    """Split a Markdown changelog into its releases, in document order.

    Pre-releases (``## 3.0.0-beta``) end the previous entry but are not returned: the engine
    upgrades between released versions only, and their notes would otherwise be attached to
    the release below them. A version that appears twice keeps its first (topmost) entry.
    """
    entries: list[Entry] = []
    seen: set[str] = set()
    level: int | None = None
    current: str | None = None  # None: preamble or a pre-release, whose lines are dropped
    lines: list[str] = []
    fence: str | None = None

    def flush() -> None:
        if current is not None and current not in seen:
            seen.add(current)
            entries.append(Entry(current, "\n".join(lines).strip("\n")))

    for line in markdown.splitlines():
        if fence is not None:
            if line.lstrip(" ").startswith(fence):
                fence = None
        elif (opened := _FENCE.match(line)) is not None:
            fence = opened.group(1)
        elif (heading := _ATX.match(line)) is not None:
            depth = len(heading.group(1))
            release = release_of(heading.group(2) or "")
            if release is not None and (level is None or depth == level):
                flush()
                level = depth
                version, prerelease = release
                current = None if prerelease else version
                lines = []
                continue
        lines.append(line)
    flush()
    return entries


def entries_between(entries: Iterable[Entry], current: str, target: str) -> list[Entry]:
    """The releases after ``current`` up to and including ``target``, oldest first.

    Empty for a downgrade or when ``current == target``. Raises ValueError when ``current``
    or ``target`` is not a version like 3.8.1.
    """
    low, high = Version(current), Version(target)
    chosen = [(Version(e.version), e) for e in entries]
    return [e for v, e in sorted(chosen, key=lambda pair: pair[0]) if low < v <= high]
