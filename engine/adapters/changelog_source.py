"""Fetch the changelog text named by the configuration: a local file or an http(s) URL.

The parsing lives in :mod:`upgrade_bot.engine.changelog`; this module only reads. A missing
file, a 404 or any other answer that repeating will not change is a :class:`PermanentError`;
network trouble, 429 and 5xx are a :class:`TemporaryError`. Messages show URLs without user
info or query (a token might sit there).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from ..errors import PermanentError, TemporaryError
from .controlplane import display_url

# A changelog is a few hundred KiB at most; anything far larger is not one.
MAX_BYTES = 16 * 1024 * 1024


def is_url(source: str) -> bool:
    """Whether ``source`` names an http(s) URL rather than a file."""
    return source.lower().startswith(("http://", "https://"))


async def read_source(source: str, *, base_dir: Path, client: httpx.AsyncClient) -> str:
    """The text of ``source``: an http(s) URL, or a path (relative ones from ``base_dir``)."""
    if is_url(source):
        return await _read_url(source, client)
    return await asyncio.to_thread(_read_file, source, base_dir)


def _read_file(source: str, base_dir: Path) -> str:
    path = Path(source).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    try:
        if path.stat().st_size > MAX_BYTES:
            raise PermanentError(f"changelog file {path} is larger than {MAX_BYTES} bytes")
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PermanentError(f"changelog file {path} does not exist") from None
    except IsADirectoryError:
        raise PermanentError(f"changelog path {path} is a directory, not a file") from None
    except UnicodeDecodeError:
        raise PermanentError(f"changelog file {path} is not UTF-8 text") from None
    except OSError as exc:
        raise PermanentError(
            f"changelog file {path} cannot be read ({exc.strerror or type(exc).__name__})"
        ) from None


async def _read_url(url: str, client: httpx.AsyncClient) -> str:
    where = display_url(url)
    try:
        # raw.githubusercontent.com and release pages redirect; follow them
        resp = await client.get(url, follow_redirects=True)
    except (httpx.InvalidURL, httpx.UnsupportedProtocol):
        raise PermanentError(f"changelog URL {where} is invalid") from None
    except httpx.HTTPError as exc:
        raise TemporaryError(f"changelog at {where} unreachable ({type(exc).__name__})") from None
    status = resp.status_code
    if status == 429 or status >= 500:
        raise TemporaryError(f"changelog at {where} unreachable (HTTP {status})")
    if status in (404, 410):
        raise PermanentError(f"changelog at {where} does not exist (HTTP {status})")
    if status != 200:
        raise PermanentError(f"changelog at {where} answered HTTP {status}")
    if len(resp.content) > MAX_BYTES:
        raise PermanentError(f"changelog at {where} is larger than {MAX_BYTES} bytes")
    return resp.text
