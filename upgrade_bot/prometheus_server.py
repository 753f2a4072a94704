"""A local Prometheus server (the Debian ``prometheus`` package) scraping sandbox gateways.

Used by ``upgrade-bot demo --metrics prometheus`` and by the tests. The server listens on
loopback only and finds its targets by file-based service discovery: every ``*.json`` file in
``sd/`` (and ``sd-renamed/``, see below) lists targets with their labels, and Prometheus
re-reads a file when it changes, so replaced instances are scraped as soon as the file says so
(prometheus/prometheus ``docs/configuration/configuration.md`` ``<file_sd_config>``, v2.42.0:
``[ { "targets": [ "<host>" ], "labels": { "<labelname>": "<labelvalue>" } } ]``).

:class:`TargetSync` keeps one such file current from a sandbox's control API
(``GET /groups/{group}/slots``: every live instance of every slot, old and new while a slot is
replaced), each target labelled ``group`` (the default selector of ``metrics.type:
prometheus``) and ``slot``.

The ``renamed`` job stands for a gateway whose ``plugin_attr.prometheus.metric_prefix`` is not
``apisix_``: it renames every scraped ``apisix_*`` series to ``<prefix>*`` with a
``metric_relabel_configs`` rule (configuration.md ``<relabel_config>``), since the sandbox's
exporter always uses APISIX's default prefix.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from .redis_server import free_port

METRICS_PATH = "/apisix/prometheus/metrics"
"""The exporter's path (apache/apisix docs/en/latest/plugins/prometheus.md)."""
RENAMED_PREFIX = "gw_"


class PrometheusError(RuntimeError):
    """Prometheus could not be started (one line, with the reason)."""



def find_binary() -> str | None:
    return shutil.which("prometheus") or (
        "/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None
    )


class PrometheusServer:
    """``prometheus`` in ``directory``: its config, its TSDB, its log and its SD files."""

    def __init__(
        self,
        directory: Path,
        *,
        port: int | None = None,
        scrape_interval_s: float = 1.0,
        renamed_prefix: str = RENAMED_PREFIX,
    ) -> None:
        self.dir = Path(directory).resolve()
        self.port = port or free_port()
        self.scrape_interval_s = scrape_interval_s
        self.renamed_prefix = renamed_prefix
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def sd_dir(self) -> Path:
        return self.dir / "sd"

    @property
    def renamed_sd_dir(self) -> Path:
        return self.dir / "sd-renamed"

    def config(self) -> dict[str, Any]:
        interval = f"{round(self.scrape_interval_s * 1000)}ms"

        def job(name: str, sd_dir: Path, **extra: Any) -> dict[str, Any]:
            return {
                "job_name": name,
                "metrics_path": METRICS_PATH,
                "file_sd_configs": [{"files": [str(sd_dir / "*.json")], "refresh_interval": "5s"}],
                **extra,
            }

        return {
            # scrape_timeout must not exceed scrape_interval (configuration.md <global>).
            "global": {"scrape_interval": interval, "scrape_timeout": interval},
            "scrape_configs": [
                job("apisix", self.sd_dir),
                job(
                    "renamed",
                    self.renamed_sd_dir,
                    metric_relabel_configs=[
                        {
                            "source_labels": ["__name__"],
                            "regex": "apisix_(.*)",
                            "target_label": "__name__",
                            "replacement": f"{self.renamed_prefix}${{1}}",
                        }
                    ],
                ),
            ],
        }

    def start(self, timeout_s: float = 60.0) -> str:
        """Start the server and wait until it answers ``/-/ready``; returns its URL."""
        binary = find_binary()
        if binary is None:
            raise PrometheusError(
                "the 'prometheus' binary is missing (Debian: apt-get install prometheus; "
                "scripts/install-system-deps.sh installs it as root)"
            )
        for d in (self.dir, self.sd_dir, self.renamed_sd_dir):
            d.mkdir(parents=True, exist_ok=True)
        config_path = self.dir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        log = (self.dir / "prometheus.log").open("ab")
        # Flags as `prometheus --help` of the Debian package (2.42) lists them.
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1d",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise PrometheusError(f"prometheus exited at start: {self.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                # GET /-/ready: 200 once the server serves queries (docs/management_api.md).
                if httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200:
                    return self.url
            time.sleep(0.1)
        self.stop()
        raise PrometheusError(f"prometheus did not become ready within {timeout_s:g}s")

    def tail(self, lines: int = 5) -> str:
        with contextlib.suppress(OSError):
            text = (self.dir / "prometheus.log").read_text(errors="replace")
            return " | ".join(text.splitlines()[-lines:])
        return "(no log)"

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def write_targets(
        self, name: str, targets: list[dict[str, Any]], *, renamed: bool = False
    ) -> None:
        """Replace SD file ``name`` atomically (Prometheus never reads half a file)."""
        directory = self.renamed_sd_dir if renamed else self.sd_dir
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f".{name}.tmp"
        tmp.write_text(json.dumps(targets, indent=1, sort_keys=True))
        os.replace(tmp, directory / f"{name}.json")

    def remove_targets(self, name: str, *, renamed: bool = False) -> None:
        directory = self.renamed_sd_dir if renamed else self.sd_dir
        with contextlib.suppress(FileNotFoundError):
            (directory / f"{name}.json").unlink()


def sandbox_targets(
    control_url: str, groups: list[str], labels: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """File-SD entries for every live instance of the sandbox's groups (``labels`` added)."""
    entries = []
    for group in groups:
        resp = httpx.get(f"{control_url}/groups/{group}/slots", timeout=10)
        resp.raise_for_status()
        for slot in resp.json()["slots"]:
            for inst in slot["instances"]:
                metrics = (inst.get("endpoints") or {}).get("metrics")
                if metrics:
                    host = metrics.split("://", 1)[-1].rstrip("/")
                    entries.append(
                        {
                            "targets": [host],
                            "labels": {**(labels or {}), "group": group, "slot": slot["id"]},
                        }
                    )
    return entries


class TargetSync:
    """A thread keeping SD file ``name`` equal to the sandbox's live instances."""

    def __init__(
        self,
        server: PrometheusServer,
        name: str,
        control_url: str,
        groups: list[str],
        *,
        renamed: bool = False,
        labels: dict[str, str] | None = None,
        interval_s: float = 0.25,
    ) -> None:
        self.server, self.name, self.control_url, self.groups = server, name, control_url, groups
        self.labels = labels
        self.renamed, self.interval_s = renamed, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"sd-{name}", daemon=True)
        self.last: list[dict[str, Any]] | None = None

    def sync(self) -> list[dict[str, Any]]:
        targets = sandbox_targets(self.control_url, self.groups, self.labels)
        if targets != self.last:
            self.server.write_targets(self.name, targets, renamed=self.renamed)
            self.last = targets
        return targets

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            with contextlib.suppress(httpx.HTTPError, KeyError, ValueError, OSError):
                self.sync()

    def start(self) -> TargetSync:
        self.sync()
        self._thread.start()
        return self

    def stop(self, *, remove: bool = True) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        if remove:
            self.server.remove_targets(self.name, renamed=self.renamed)


__all__ = [
    "METRICS_PATH",
    "RENAMED_PREFIX",
    "PrometheusError",
    "PrometheusServer",
    "TargetSync",
    "find_binary",
    "free_port",
    "sandbox_targets",
]
