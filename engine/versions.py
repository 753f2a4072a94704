"""Gateway versions: parsing, ordering, and which upgrade paths are tested ones."""

from __future__ import annotations

import re
from functools import total_ordering

_VERSION = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")


@total_ordering
class Version:
    __slots__ = ("major", "minor", "patch")

    def __init__(self, text: str) -> None:
        match = _VERSION.match(text.strip())
        if not match:
            raise ValueError(f"'{text}' is not a version like 3.8.1")
        self.major, self.minor, self.patch = (int(g) for g in match.groups())

    @property
    def key(self) -> tuple[int, int, int]:
        return (self.major, self.minor, self.patch)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Version) and self.key == other.key

    def __lt__(self, other: Version) -> bool:
        return self.key < other.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"

    def __repr__(self) -> str:
        return f"Version('{self}')"


def is_version(text: str) -> bool:
    return bool(_VERSION.match(text.strip()))


def path_warning(current: str, target: str) -> str | None:
    """A warning when ``current → target`` is not a tested path (patch→patch, adjacent minor)."""
    cur, tgt = Version(current), Version(target)
    if tgt < cur:
        return f"{current} → {target} is a downgrade; the vendor's guide covers upgrades only"
    if tgt.major != cur.major:
        return f"{current} → {target} crosses a major version; read the upgrade notes closely"
    if tgt.minor - cur.minor > 1:
        return (
            f"{current} → {target} skips minor versions "
            f"(tested paths are patch→patch and adjacent minors)"
        )
    return None
