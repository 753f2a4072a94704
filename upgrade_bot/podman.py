"""podman's Docker-compatible API service in a folder: a Docker host with no daemon to install.

``podman system service --time=0 unix://DIR/podman.sock`` serves the Docker Engine API (and
libpod's) on a socket (podman-system-service(1)). Its storage, run root and settings live under
``DIR``, so it neither needs nor touches a system-wide container set-up, and stopping it leaves
nothing behind but that folder. Settings found by trial on Debian 12 (DESIGN.md §9): the runc
runtime (crun fails on this kind of host's cgroup layout), cgroupfs, file events, and higher
default ulimits for gateways.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx

CONTAINERS_CONF = """\
# Written by upgrade-bot for its own podman service (containers.conf(5)).
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "{tmp}"
"""
STORAGE_CONF = """\
# Written by upgrade-bot for its own podman service (containers-storage.conf(5)).
[storage]
driver = "overlay"
runroot = "{run}"
graphroot = "{graph}"
"""
PACKAGES = ("podman", "runc", "catatonit")


class PodmanError(Exception):
    """Something the user must be told in one line."""


def missing_tools() -> list[str]:
    missing = [p for p in ("podman", "runc") if shutil.which(p) is None]
    if not (Path("/usr/libexec/podman/catatonit").exists() or shutil.which("catatonit")):
        missing.append("catatonit")
    return missing


def ensure_installed() -> None:
    """podman, runc and catatonit are there, installed with apt-get when running as root on
    Debian; otherwise ``PodmanError`` naming what is missing."""
    missing = missing_tools()
    if not missing:
        return
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (
            ["apt-get", "update", "-qq"],
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
        ):
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise PodmanError(
                    f"installing {' '.join(missing)} failed: {done.stderr.strip()[-300:]}"
                )
        return
    raise PodmanError(
        f"missing: {' '.join(missing)}; install them (e.g. 'sudo apt-get install "
        f"{' '.join(missing)}') or set DOCKER_HOST to a Docker host"
    )


def mounts_under(directory: Path) -> list[str]:
    """Mount points at or below ``directory`` (``/proc/self/mounts``, Linux)."""
    prefix = str(directory)
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return []
    points = [line.split()[1].replace("\\040", " ") for line in lines if len(line.split()) > 1]
    return [p for p in points if p == prefix or p.startswith(prefix + "/")]


class PodmanService:
    """One podman API service with its own storage under ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory.resolve()
        self.socket = self.dir / "podman.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def environ(self) -> dict[str, str]:
        """Where podman (the service, or the CLI for a look) finds this service's settings."""
        return {
            "CONTAINERS_CONF": str(self.dir / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(self.dir / "storage.conf"),
        }

    def configure(self) -> dict[str, str]:
        """Write the folder's settings and storage; returns ``environ()``. Enough for the podman
        CLI (``podman build``/``run`` with that environment) without starting the service."""
        for sub in ("tmp", "run", "graph"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        (self.dir / "containers.conf").write_text(CONTAINERS_CONF.format(tmp=self.dir / "tmp"))
        (self.dir / "storage.conf").write_text(
            STORAGE_CONF.format(run=self.dir / "run", graph=self.dir / "graph")
        )
        return self.environ()

    def start(self, timeout_s: float = 60.0) -> str:
        """Start the service; returns its ``DOCKER_HOST`` URL once it answers ``/_ping``."""
        self.configure()
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        log = (self.dir / "service.log").open("ab")
        self.proc = subprocess.Popen(
            ["podman", "system", "service", "--time=0", self.url],
            env={**os.environ, **self.environ()},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        log.close()
        (self.dir / "service.pid").write_text(str(self.proc.pid))
        deadline = time.monotonic() + timeout_s
        transport = httpx.HTTPTransport(uds=str(self.socket))
        with httpx.Client(transport=transport, base_url="http://podman", timeout=5) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise PodmanError(f"podman service exited: {self._log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    # GET /_ping (Engine API "SystemPing") answers OK once the API serves.
                    if self.socket.exists() and client.get("/_ping").status_code == 200:
                        return self.url
                time.sleep(0.05)
        self.stop()
        raise PodmanError(f"podman service did not answer within {timeout_s:g}s")

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the service (its containers keep their state in the folder)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        self.unmount()

    def unmount(self) -> None:
        """Undo the mounts podman's storage leaves under the folder (overlay mounts itself on
        ``graph/overlay``), so that the folder can be removed."""
        for point in sorted(mounts_under(self.dir), key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            lines = (self.dir / "service.log").read_text(errors="replace").splitlines()
            return " | ".join(lines[-3:])
        return "(no log)"
