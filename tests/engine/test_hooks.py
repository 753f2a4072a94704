"""Backup hooks: real subprocesses and a real HTTP endpoint on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from upgrade_bot.engine.adapters.hooks import run_backup
from upgrade_bot.engine.config import CommandHook, HttpHook
from upgrade_bot.engine.errors import PermanentError, TemporaryError

from ..support import eventually

pytestmark = pytest.mark.timeout(60)

PY = sys.executable
RUN_ID = "r-20240102-abc123"


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def is_zombie(pid: int) -> bool:
    """Whether ``pid`` is killed but not yet reaped (or already gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (FileNotFoundError, IndexError):
        return True


def command(tmp_path: Path, script: str, *, timeout_s: float = 30, **kw: Any) -> CommandHook:
    """A command hook running ``script`` in this Python, with the artifact under tmp_path."""
    artifact = kw.pop("artifact", str(tmp_path / "backup-{run_id}.bin"))
    return CommandHook(
        type="command",
        command=[PY, "-c", script, artifact, "{run_id}", *kw.pop("extra", [])],
        artifact=artifact,
        timeout_s=timeout_s,
    )


# --- command ---------------------------------------------------------------------------------


async def test_command_success_size_and_sha256(tmp_path: Path) -> None:
    # 3 MiB + 7 bytes: more than one hashing chunk, not a multiple of it
    script = (
        "import sys\n"
        "path, run_id = sys.argv[1], sys.argv[2]\n"
        "with open(path, 'wb') as f:\n"
        "    f.write(run_id.encode() * 10)\n"
        "    f.write(bytes(range(256)) * (3 * 4096))\n"
        "    f.write(b'tail!!!')\n"
    )
    result = await run_backup(command(tmp_path, script), run_id=RUN_ID)
    artifact = tmp_path / f"backup-{RUN_ID}.bin"
    assert result["artifact"] == str(artifact)
    assert result["kind"] == "command"
    assert result["size"] == artifact.stat().st_size == len(RUN_ID) * 10 + 3 * 1024 * 1024 + 7
    assert result["sha256"] == sha256_of(artifact)
    assert isinstance(result["duration_s"], float) and result["duration_s"] >= 0
    # {run_id} reached the command's arguments too
    assert artifact.read_bytes().startswith(RUN_ID.encode())
    # the runner keeps hook results in its JSON audit log
    assert json.loads(json.dumps(result)) == result


async def test_braces_other_than_run_id_are_left_alone(tmp_path: Path) -> None:
    script = "import sys; open(sys.argv[1], 'w').write(sys.argv[3])"
    hook = command(tmp_path, script, extra=["{print $1} {run_id}"])
    result = await run_backup(hook, run_id=RUN_ID)
    artifact = tmp_path / f"backup-{RUN_ID}.bin"
    assert result["artifact"] == str(artifact)
    assert artifact.read_text() == f"{{print $1}} {RUN_ID}"


async def test_failing_command_reports_exit_code_and_stderr_tail(tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "for n in range(1, 31):\n"
        "    print(f'progress line {n}', file=sys.stderr)\n"
        "print('pg_dump: error: connection to server failed', file=sys.stderr)\n"
        "sys.exit(3)\n"
    )
    hook = command(tmp_path, script, extra=["--password=hunter2"])
    with pytest.raises(PermanentError) as err:
        await run_backup(hook, run_id=RUN_ID)
    message = str(err.value)
    program = os.path.basename(PY)
    assert message.startswith(f"backup command {program} exited with code 3; last output:\n")
    assert message.endswith("pg_dump: error: connection to server failed")
    assert "progress line 27" in message and "progress line 26" not in message  # last 5 lines
    assert "hunter2" not in message  # arguments are never shown


async def test_command_exiting_zero_without_artifact(tmp_path: Path) -> None:
    hook = command(tmp_path, "pass")
    with pytest.raises(PermanentError) as err:
        await run_backup(hook, run_id=RUN_ID)
    assert str(err.value) == (
        f"backup artifact {tmp_path / f'backup-{RUN_ID}.bin'} was not produced"
    )


async def test_command_leaving_an_empty_artifact(tmp_path: Path) -> None:
    hook = command(tmp_path, "import sys; open(sys.argv[1], 'wb').close()")
    with pytest.raises(PermanentError, match="was not produced"):
        await run_backup(hook, run_id=RUN_ID)


async def test_missing_program(tmp_path: Path) -> None:
    hook = CommandHook(
        type="command", command=[str(tmp_path / "no-such-backup-tool")], artifact="x"
    )
    with pytest.raises(PermanentError, match="backup command no-such-backup-tool was not found"):
        await run_backup(hook, run_id=RUN_ID)


async def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    """A wrapper's child is killed too; the pid file lets the test check without sleeping."""
    pid_file = tmp_path / "grandchild.pid"
    script = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "time.sleep(600)\n"
    )
    hook = command(tmp_path, script, timeout_s=3)
    with pytest.raises(PermanentError) as err:
        await run_backup(hook, run_id=RUN_ID)
    assert "did not finish within 3 s and was killed" in str(err.value)
    grandchild = int(pid_file.read_text())
    await eventually(lambda: gone(grandchild), f"process {grandchild} to be killed", within=10)


def gone(pid: int) -> bool:
    """``pid`` no longer exists (a zombie reaped by init counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return is_zombie(pid)  # killed; its parent died too, so init reaps it


async def test_cancellation_kills_the_command(tmp_path: Path) -> None:
    pid_file = tmp_path / "cmd.pid"
    script = (
        f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\ntime.sleep(600)\n"
    )
    task = asyncio.create_task(run_backup(command(tmp_path, script), run_id=RUN_ID))
    await eventually(
        lambda: pid_file.exists() and pid_file.read_text(), "the command's pid", within=20
    )
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    pid = int(pid_file.read_text())
    await eventually(lambda: gone(pid), f"process {pid} to be killed", within=10)


async def test_run_id_that_could_escape_the_directory_is_refused(tmp_path: Path) -> None:
    for bad in ("../etc", "a/b", "", ".hidden"):
        with pytest.raises(PermanentError, match="not usable in a backup artifact path"):
            await run_backup(command(tmp_path, "pass"), run_id=bad)


# --- http ------------------------------------------------------------------------------------


@dataclass
class Endpoint:
    url: str
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


PAYLOAD = bytes(range(256)) * 8192 + b"end"  # 2 MiB + 3 bytes, streamed in pieces


@pytest.fixture
async def endpoint() -> AsyncIterator[Endpoint]:
    ep = Endpoint(url="")

    async def backup(request: web.Request) -> web.StreamResponse:
        ep.requests.append((request.method, await request.json()))
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await resp.prepare(request)
        for start in range(0, len(PAYLOAD), 100_000):
            await resp.write(PAYLOAD[start : start + 100_000])
        await resp.write_eof()
        return resp

    async def refuse(request: web.Request) -> web.Response:
        return web.Response(status=500, text="disk full")

    async def empty(request: web.Request) -> web.Response:
        return web.Response(status=200)

    app = web.Application()
    app.router.add_route("*", "/backup", backup)
    app.router.add_post("/fail", refuse)
    app.router.add_post("/empty", empty)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    ep.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield ep
    finally:
        await runner.cleanup()


def http_hook(url: str, artifact: Path, method: str = "POST") -> HttpHook:
    return HttpHook(type="http", url=url, method=method, artifact=str(artifact), timeout_s=30)


async def test_http_hook_stores_the_body(endpoint: Endpoint, tmp_path: Path) -> None:
    artifact = tmp_path / "dumps" / "{run_id}" / "cp.tar"
    result = await run_backup(http_hook(f"{endpoint.url}/backup", artifact), run_id=RUN_ID)
    stored = tmp_path / "dumps" / RUN_ID / "cp.tar"
    assert result["artifact"] == str(stored)
    assert result["kind"] == "http"
    assert stored.read_bytes() == PAYLOAD
    assert result["size"] == len(PAYLOAD)
    assert result["sha256"] == hashlib.sha256(PAYLOAD).hexdigest() == sha256_of(stored)
    assert endpoint.requests == [("POST", {"run_id": RUN_ID})]
    assert names(stored.parent) == ["cp.tar"]  # no temporary left


async def test_http_hook_with_a_shared_client_and_put(endpoint: Endpoint, tmp_path: Path) -> None:
    async with httpx.AsyncClient() as client:
        result = await run_backup(
            http_hook(f"{endpoint.url}/backup", tmp_path / "a.bin", method="PUT"),
            run_id=RUN_ID,
            client=client,
        )
        assert not client.is_closed
    assert result["size"] == len(PAYLOAD)
    assert endpoint.requests[0][0] == "PUT"


async def test_http_non_2xx_is_permanent_and_leaves_no_file(
    endpoint: Endpoint, tmp_path: Path
) -> None:
    artifact = tmp_path / "a.bin"
    with pytest.raises(PermanentError) as err:
        await run_backup(http_hook(f"{endpoint.url}/fail?token=s3cret", artifact), run_id=RUN_ID)
    assert str(err.value) == f"backup endpoint {endpoint.url}/fail answered HTTP 500 to POST"
    assert names(tmp_path) == []


async def test_http_empty_body_is_not_an_artifact(endpoint: Endpoint, tmp_path: Path) -> None:
    with pytest.raises(PermanentError, match="was not produced"):
        await run_backup(http_hook(f"{endpoint.url}/empty", tmp_path / "a.bin"), run_id=RUN_ID)
    assert names(tmp_path) == []


async def test_http_unreachable_is_temporary(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    hook = http_hook(f"http://user:pw@127.0.0.1:{port}/backup", tmp_path / "a.bin")
    with pytest.raises(TemporaryError) as err:
        await run_backup(hook, run_id=RUN_ID)
    assert str(err.value) == (
        f"backup endpoint http://127.0.0.1:{port}/backup unreachable (ConnectError)"
    )


async def test_http_body_cut_short_is_temporary_and_keeps_the_old_artifact(
    tmp_path: Path,
) -> None:
    async def cut(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": "1000000"})
        await resp.prepare(request)
        await resp.write(b"x" * 1000)
        assert request.transport is not None
        request.transport.close()  # the backup service crashed mid-stream
        return resp

    app = web.Application()
    app.router.add_post("/backup", cut)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/backup"
    artifact = tmp_path / "a.bin"
    artifact.write_bytes(b"previous good backup")
    try:
        with pytest.raises(TemporaryError, match="unreachable"):
            await run_backup(http_hook(url, artifact), run_id=RUN_ID)
    finally:
        await runner.cleanup()
    # atomic replacement: the half-written body never took the artifact's name
    assert artifact.read_bytes() == b"previous good backup"
    assert names(tmp_path) == ["a.bin"]


async def test_http_endpoint_slower_than_the_timeout_is_permanent(tmp_path: Path) -> None:
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(b"partial")
        await release.wait()  # the dump never finishes
        return resp

    app = web.Application()
    app.router.add_post("/backup", slow)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/backup"
    hook = HttpHook(type="http", url=url, artifact=str(tmp_path / "a.bin"), timeout_s=0.5)
    try:
        with pytest.raises(PermanentError, match=r"did not finish within 0\.5 s"):
            await run_backup(hook, run_id=RUN_ID)
    finally:
        release.set()
        await runner.cleanup()
    assert names(tmp_path) == []
