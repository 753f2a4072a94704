"""Backup hooks: produce an artifact before a group is upgraded, and fingerprint it.

Two kinds, from the configuration's ``backup`` section:

* ``command`` -- run an argv (no shell) with ``{run_id}`` replaced; the command writes the
  artifact itself. A timeout kills the command's whole process group.
* ``http`` -- send ``{"run_id": ...}`` to an endpoint and store the response body as the
  artifact (streamed to a temporary file beside it, then renamed, so a half-written artifact
  never carries the final name).

Either way the result is ``{"artifact", "size", "sha256", "duration_s", "kind"}``; the hash is
computed in chunks, since database dumps can be gigabytes. Failures the operator must fix
(exit code, timeout, missing artifact, non-2xx) are :class:`PermanentError`; an unreachable
endpoint is a :class:`TemporaryError`. Messages name the program, never its arguments, and
URLs without user info or query: both may carry credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import signal
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

import httpx

from ..config import CommandHook, HttpHook
from ..errors import PermanentError, TemporaryError
from .controlplane import display_url

CHUNK = 1024 * 1024
STDERR_TAIL_LINES = 5
# bytes of output kept per stream while the command runs: enough for the tail, bounded
_OUTPUT_KEEP = 64 * 1024
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# how long to wait for a killed process group's pipes to close before giving up on them
_KILL_GRACE_S = 5.0


async def run_backup(
    hook: CommandHook | HttpHook,
    *,
    run_id: str,
    client: httpx.AsyncClient | None = None,
) -> dict[str, Any]:
    """Run the backup hook for ``run_id`` and describe the artifact it produced.

    ``client`` is used by HTTP hooks (one is created and closed when omitted).
    ``duration_s`` covers producing the artifact and fingerprinting it.
    """
    if not _RUN_ID.match(run_id):
        # run_id becomes part of a file path: refuse anything that could leave the directory
        raise PermanentError(f"run id {run_id!r} is not usable in a backup artifact path")
    artifact = Path(_substitute(hook.artifact, run_id))
    started = time.monotonic()
    if isinstance(hook, CommandHook):
        await _run_command(hook, run_id, artifact)
        kind = "command"
        size, digest = await asyncio.to_thread(_fingerprint, artifact)
    else:
        size, digest = await _run_http(hook, run_id, artifact, client)
        kind = "http"
    return {
        "artifact": str(artifact),
        "size": size,
        "sha256": digest,
        "duration_s": round(time.monotonic() - started, 3),
        "kind": kind,
    }


def _substitute(text: str, run_id: str) -> str:
    # str.replace, not str.format: commands such as awk '{print $1}' contain braces
    return text.replace("{run_id}", run_id)


# --- command ---------------------------------------------------------------------------------


async def _run_command(hook: CommandHook, run_id: str, artifact: Path) -> None:
    argv = [_substitute(arg, run_id) for arg in hook.command]
    program = os.path.basename(argv[0])
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            # its own process group, so that a timeout also kills what a wrapper script started
            start_new_session=True,
        )
    except FileNotFoundError:
        raise PermanentError(f"backup command {program} was not found") from None
    except PermissionError:
        raise PermanentError(f"backup command {program} is not executable") from None

    stdout: deque[bytes] = deque()
    stderr: deque[bytes] = deque()
    assert proc.stdout is not None and proc.stderr is not None
    readers = [
        asyncio.create_task(_keep_tail(proc.stdout, stdout)),
        asyncio.create_task(_keep_tail(proc.stderr, stderr)),
    ]
    try:
        # the pipes close when the command and everything it started are done; a background
        # process that keeps them open counts as still running
        async with asyncio.timeout(hook.timeout_s):
            await asyncio.gather(*readers)
            code = await proc.wait()
    except BaseException as exc:  # a timeout, or the caller cancelled us: leave nothing running
        _kill_group(proc.pid)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_KILL_GRACE_S):
                await proc.wait()
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        if isinstance(exc, TimeoutError):
            raise PermanentError(
                f"backup command {program} did not finish within {hook.timeout_s:g} s and "
                "was killed"
            ) from None
        raise

    if code != 0:
        tail = _tail(stderr) or _tail(stdout)
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        raise PermanentError(
            f"backup command {program} {how}" + (f"; last output:\n{tail}" if tail else "")
        )


async def _keep_tail(stream: asyncio.StreamReader, keep: deque[bytes]) -> None:
    """Drain ``stream`` (a full pipe would block the command), keeping its last bytes."""
    kept = 0
    while chunk := await stream.read(CHUNK):
        keep.append(chunk)
        kept += len(chunk)
        while kept - len(keep[0]) >= _OUTPUT_KEEP:
            kept -= len(keep.popleft())


def _tail(chunks: deque[bytes]) -> str:
    text = b"".join(chunks).decode("utf-8", errors="replace")
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    return "\n".join(lines[-STDERR_TAIL_LINES:])


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # already gone
    except PermissionError:
        # the group id was reused by someone else's session; kill just our child
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _fingerprint(path: Path) -> tuple[int, str]:
    """Size and SHA-256 of a file, read in chunks; a missing or empty file was not produced."""
    digest = hashlib.sha256()
    size = 0
    try:
        with path.open("rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
    except (FileNotFoundError, IsADirectoryError):
        raise PermanentError(f"backup artifact {path} was not produced") from None
    except OSError as exc:
        raise PermanentError(
            f"backup artifact {path} cannot be read ({exc.strerror or type(exc).__name__})"
        ) from None
    if size == 0:
        raise PermanentError(f"backup artifact {path} was not produced")
    return size, digest.hexdigest()


# --- http ------------------------------------------------------------------------------------


async def _run_http(
    hook: HttpHook, run_id: str, artifact: Path, client: httpx.AsyncClient | None
) -> tuple[int, str]:
    where = display_url(hook.url)
    own = client is None
    http = client or httpx.AsyncClient()
    # connecting is the network's business (retry later); a slow backup is the hook's
    http_timeout = httpx.Timeout(hook.timeout_s, connect=min(hook.timeout_s, 10.0))
    try:
        async with asyncio.timeout(hook.timeout_s):
            return await _download(http, hook, run_id, artifact, http_timeout, where)
    except TimeoutError:
        raise PermanentError(
            f"backup endpoint {where} did not finish within {hook.timeout_s:g} s"
        ) from None
    finally:
        if own:
            await http.aclose()


async def _download(
    http: httpx.AsyncClient,
    hook: HttpHook,
    run_id: str,
    artifact: Path,
    http_timeout: httpx.Timeout,
    where: str,
) -> tuple[int, str]:
    try:
        async with http.stream(
            hook.method, hook.url, json={"run_id": run_id}, timeout=http_timeout
        ) as resp:
            if not 200 <= resp.status_code < 300:
                raise PermanentError(
                    f"backup endpoint {where} answered HTTP {resp.status_code} to {hook.method}"
                )
            return await _store(resp, artifact)
    except (httpx.InvalidURL, httpx.UnsupportedProtocol):
        raise PermanentError(f"backup endpoint {where} is not a valid URL") from None
    except httpx.ConnectTimeout:
        raise TemporaryError(f"backup endpoint {where} unreachable (ConnectTimeout)") from None
    except httpx.TimeoutException:
        raise PermanentError(
            f"backup endpoint {where} did not finish within {hook.timeout_s:g} s"
        ) from None
    except httpx.HTTPError as exc:
        raise TemporaryError(
            f"backup endpoint {where} unreachable ({type(exc).__name__})"
        ) from None


async def _store(resp: httpx.Response, artifact: Path) -> tuple[int, str]:
    """Stream the body to ``artifact`` via a temporary sibling; hash while writing."""
    try:
        artifact.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(
            dir=artifact.parent, prefix=f".{artifact.name}.", suffix=".part"
        )
    except OSError as exc:
        raise PermanentError(
            f"backup artifact {artifact} cannot be written ({exc.strerror or type(exc).__name__})"
        ) from None
    digest = hashlib.sha256()
    size = 0
    try:
        with os.fdopen(fd, "wb") as f:
            async for chunk in resp.aiter_bytes(CHUNK):
                f.write(chunk)
                digest.update(chunk)
                size += len(chunk)
            f.flush()
            # the artifact must survive a crash right after we report it: fsync before rename
            await asyncio.to_thread(os.fsync, f.fileno())
        if size == 0:
            raise PermanentError(
                f"backup artifact {artifact} was not produced (HTTP {resp.status_code} with "
                "an empty body)"
            )
        os.replace(tmp_name, artifact)
    except OSError as exc:
        raise PermanentError(
            f"backup artifact {artifact} cannot be written ({exc.strerror or type(exc).__name__})"
        ) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)  # after a successful rename it is already gone
    return size, digest.hexdigest()
