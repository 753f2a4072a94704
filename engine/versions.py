"""Gateway versions: parsing, ordering, and which upgrade paths are tested ones.

What a version looks like, from the vendors' own releases:

* APISIX releases have three parts (3.8.1); API7 EE releases four (3.2.14.6) and sometimes five
  (3.2.14.4.1) — the list of API7 EE releases, api7/docs.apiseven.com ``enterprise_versions.json``
  (commit faf96f0e), orders them part by part as numbers (3.2.16.7, 3.2.14.4.1, 3.2.9.5), which
  is how they are ordered here; a missing part counts as 0 (3.2.14 == 3.2.14.0).
* A leading ``v`` (``v3.2.14.6``) is accepted and dropped: image tags carry none.
* Pre-release suffixes (``3.0.0-beta``, ``3.9.0-rc1``) sort before their release, as semver and
  PEP 440 both order them; parsing and ordering are ``packaging.version``'s.
* ``dev``: what a development build of the API7 dashboard reports as its version (api7/adc
  ``libs/backend-api7/src/index.ts`` @1c37ce48, which then treats it as 999.999.999). It sorts
  after every release, as adc does.
"""

from __future__ import annotations

import re
from functools import total_ordering

from packaging.version import InvalidVersion
from packaging.version import Version as _Pep440

DEV = "dev"
_SHAPE = re.compile(
    r"^\d+(?:\.\d+){2,4}"  # 3.8.1, 3.2.14.6, 3.2.14.4.1
    r"(?:[-+][0-9A-Za-z][0-9A-Za-z.+-]*|[A-Za-z][0-9A-Za-z.+-]*)?$"  # -beta, -rc1, rc1
)
"""Three to five numeric parts, optionally a suffix. Checked before packaging parses, so that
'3.8' or '3' (which PEP 440 accepts) are not taken for a gateway release."""
EXAMPLE = "3.8.1 or 3.2.14.6"


def normalize(text: str) -> str:
    """``text`` without surrounding blanks and without a leading ``v``: the form tags use."""
    text = text.strip()
    if len(text) > 1 and text[0] in "vV" and text[1].isdigit():
        text = text[1:]
    return text


@total_ordering
class Version:
    """A gateway release (see the module docstring). ``str()`` is the normalized text."""

    __slots__ = ("_key", "text")

    def __init__(self, text: str) -> None:
        self.text = normalize(text)
        if self.text.lower() == DEV:
            self.text = DEV
            self._key: tuple[int, _Pep440 | None] = (1, None)
            return
        if not _SHAPE.match(self.text):
            raise ValueError(f"'{text}' is not a version like {EXAMPLE}")
        try:
            parsed = _Pep440(self.text)
        except InvalidVersion:
            raise ValueError(f"'{text}' is not a version like {EXAMPLE}") from None
        self._key = (0, parsed)

    @property
    def dev(self) -> bool:
        return self._key[1] is None

    @property
    def release(self) -> tuple[int, ...]:
        """The numeric parts, at least three (``dev``: 999.999.999, as adc reads it)."""
        parsed = self._key[1]
        if parsed is None:
            return (999, 999, 999)
        parts = parsed.release
        return parts + (0,) * (3 - len(parts)) if len(parts) < 3 else parts

    @property
    def major(self) -> int:
        return self.release[0]

    @property
    def minor(self) -> int:
        return self.release[1]

    @property
    def patch(self) -> int:
        return self.release[2]

    @property
    def key(self) -> tuple[int, _Pep440 | None]:
        return self._key

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Version) and self._key == other._key

    def __lt__(self, other: Version) -> bool:
        if self._key[0] != other._key[0]:
            return self._key[0] < other._key[0]
        if self._key[1] is None or other._key[1] is None:
            return False
        return self._key[1] < other._key[1]

    def __hash__(self) -> int:
        return hash(self._key)

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"Version('{self}')"


def is_version(text: str) -> bool:
    try:
        Version(text)
    except ValueError:
        return False
    return True


def path_warning(current: str, target: str) -> str | None:
    """A warning when ``current → target`` is not a tested path (patch→patch, adjacent minor)."""
    cur, tgt = Version(current), Version(target)
    if cur.dev or tgt.dev:
        return f"{current} → {target} involves a development build; no upgrade path is tested"
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
