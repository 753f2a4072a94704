"""Real Redis set-ups as users run them: a TLS-only server, ACL users, a Sentinel-watched pair.

Built on ``upgrade_bot.redis_server.RedisServer`` (the binary lookup, free ports, readiness by
PING, logs on failure, stop/kill), only adding the options each set-up needs:

* ``make_tls_files``: a CA and a server certificate for 127.0.0.1/localhost (``openssl`` CLI),
  plus a second CA that signed nothing (the "wrong CA");
* ``TlsRedisServer``: TLS only (``--port 0 --tls-port P``), as redis.io's TLS page shows
  (https://redis.io/docs/latest/operate/oss_and_stack/management/security/encryption/);
* ``acl_file``: users for ``--aclfile`` (https://redis.io/docs/latest/operate/oss_and_stack/
  management/security/acl/: ``user <name> on >password <rules>``);
* ``SentinelCluster``: one primary, one replica (``--replicaof``) and three sentinels
  (``redis-server sentinel.conf --sentinel``, which is what Debian's ``redis-sentinel`` runs),
  configured as redis.io's Sentinel page documents (``sentinel monitor``,
  ``down-after-milliseconds``, ``failover-timeout``, ``auth-pass``, ``requirepass``:
  https://redis.io/docs/latest/operate/oss_and_stack/management/sentinel/).

All helpers block; async tests call them through ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from upgrade_bot.redis_server import HOST, RedisServer

MASTER = "mymaster"


# --- TLS ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path  # the server's, signed by ``ca``, for 127.0.0.1 and localhost
    key: Path
    other_ca: Path  # a CA that signed nothing here
    other_key: Path


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def make_tls_files(directory: Path) -> TlsFiles:
    """A CA, a server certificate it signed (SAN 127.0.0.1, localhost) and an unrelated CA."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    for name in ("ca", "other-ca"):
        _openssl(
            "req", "-x509", *ec, "-keyout", str(d / f"{name}.key"), "-out",
            str(d / f"{name}.crt"), "-days", "2", "-subj", f"/CN=upgrade-bot test {name}",
        )  # fmt: skip
    _openssl(
        "req", *ec, "-keyout", str(d / "server.key"), "-out", str(d / "server.csr"),
        "-subj", "/CN=localhost",
    )  # fmt: skip
    (d / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl(
        "x509", "-req", "-in", str(d / "server.csr"), "-CA", str(d / "ca.crt"), "-CAkey",
        str(d / "ca.key"), "-CAcreateserial", "-out", str(d / "server.crt"), "-days", "2",
        "-extfile", str(d / "san.cnf"),
    )  # fmt: skip
    for key in d.glob("*.key"):
        key.chmod(0o600)
    return TlsFiles(
        ca=d / "ca.crt",
        cert=d / "server.crt",
        key=d / "server.key",
        other_ca=d / "other-ca.crt",
        other_key=d / "other-ca.key",
    )


class TlsRedisServer(RedisServer):
    """A server that speaks TLS only, on ``port`` (redis.io, "TLS": ``--tls-port``, ``--port 0``).

    Clients need no certificate of their own (``--tls-auth-clients no``) unless
    ``client_certs`` is set (``--tls-auth-clients yes``: each must present one the CA signed).
    """

    def __init__(
        self,
        data_dir: Path,
        files: TlsFiles,
        *,
        client_certs: bool = False,
        extra_args: Sequence[str] = (),
        probe: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.files = files
        self.client_certs = client_certs
        probe = {"ssl": True, "ssl_ca_certs": str(files.ca), **(probe or {})}
        if client_certs:
            probe.update(ssl_certfile=str(files.cert), ssl_keyfile=str(files.key))
        super().__init__(data_dir, extra_args=extra_args, probe=probe, **kwargs)

    def args(self) -> list[str]:
        return [
            *super().args(),
            "--port", "0",
            "--tls-port", str(self.port),
            "--tls-cert-file", str(self.files.cert),
            "--tls-key-file", str(self.files.key),
            "--tls-ca-cert-file", str(self.files.ca),
            "--tls-auth-clients", "yes" if self.client_certs else "no",
        ]  # fmt: skip

    @property
    def url(self) -> str:
        return f"rediss://{HOST}:{self.port}/0"


# --- ACL ----------------------------------------------------------------------------------------


ADMIN, ADMIN_PASSWORD = "admin", "adm1n-Pa55word"
ADMIN_PROBE = {"username": ADMIN, "password": ADMIN_PASSWORD}  # RedisServer's PING + INFO


def acl_file(path: Path, users: dict[str, tuple[str, str]]) -> Path:
    """An ACL file with ``users`` (name -> (password, rules)), the default user off, and an
    ``admin`` user with every right (``ADMIN_PROBE``: the readiness probe needs INFO)."""
    lines = ["user default off", f"user {ADMIN} on >{ADMIN_PASSWORD} ~* &* +@all"]
    lines += [f"user {name} on >{password} {rules}" for name, (password, rules) in users.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


# --- Sentinel -----------------------------------------------------------------------------------


class SentinelServer(RedisServer):
    """``redis-server sentinel.conf --sentinel``: the configuration file must come first, and
    be writable (Sentinel rewrites it with what it learns)."""

    def __init__(
        self, data_dir: Path, conf: str, *, tls: TlsFiles | None = None, **kwargs: Any
    ) -> None:
        super().__init__(data_dir, **kwargs)
        self.conf = conf
        self.tls = tls

    def args(self) -> list[str]:
        conf = self.data_dir / "sentinel.conf"
        if not conf.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            conf.write_text(self.conf)
        return [
            self.binary, str(conf), "--sentinel",
            "--port", str(self.port), "--bind", HOST, "--dir", str(self.data_dir),
            "--daemonize", "no", "--logfile", str(self.log_path), *self.extra_args,
            *(self._tls_args() if self.tls else []),
        ]  # fmt: skip

    def _tls_args(self) -> list[str]:
        """TLS only, and TLS to the data nodes and the other sentinels (``tls-replication``)."""
        assert self.tls is not None
        return [
            "--port", "0", "--tls-port", str(self.port),
            "--tls-cert-file", str(self.tls.cert), "--tls-key-file", str(self.tls.key),
            "--tls-ca-cert-file", str(self.tls.ca), "--tls-auth-clients", "no",
            "--tls-replication", "yes",
        ]  # fmt: skip


def _wait(check: Any, what: str, within: float, explain: Any = None) -> Any:
    deadline = time.monotonic() + within
    last: Any = None
    while True:
        with contextlib.suppress(redis.RedisError, OSError):
            last = check()
            if last:
                return last
        if time.monotonic() > deadline:
            detail = f"\n{explain()}" if explain is not None else ""
            message = f"timed out after {within:g}s waiting for {what} ({last!r})"
            raise AssertionError(message + detail)
        time.sleep(0.05)


class SentinelCluster:
    """A primary, its replica and three sentinels watching them (quorum 2), all on loopback.

    ``password`` protects the data nodes (``requirepass``/``masterauth``; the sentinels use it
    through ``sentinel auth-pass``); ``sentinel_password`` protects the sentinels themselves
    (``requirepass`` in sentinel.conf, which they also use with each other). ``url`` is the
    REDIS_URL a bot would be given; passwords go in REDIS_PASSWORD / REDIS_SENTINEL_PASSWORD.
    With ``tls``, every node and sentinel speaks TLS only (``rediss+sentinel://``; replication
    and the sentinels' links over TLS too: ``tls-replication yes``).
    """

    def __init__(
        self,
        root: Path,
        *,
        password: str | None = None,
        sentinel_password: str | None = None,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 5000,
        tls: TlsFiles | None = None,
    ) -> None:
        self.root = Path(root)
        self.tls = tls
        self._client_tls: dict[str, Any] = (
            {"ssl": True, "ssl_ca_certs": str(tls.ca)} if tls is not None else {}
        )
        self.password = password
        self.sentinel_password = sentinel_password
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self._auth = ["--requirepass", password, "--masterauth", password] if password else []
        self.primary = self._data_node("primary")
        self.replica: RedisServer | None = None
        self.sentinels: list[SentinelServer] = []

    def _data_node(self, name: str, *extra: str) -> RedisServer:
        # A replica's first sync starts at once, not after the default 5 s wait for others
        # (redis.conf: repl-diskless-sync-delay).
        args = [*self._auth, "--repl-diskless-sync-delay", "0", *extra]
        probe = {"password": self.password}
        if self.tls is None:
            return RedisServer(self.root / name, extra_args=args, probe=probe)
        args += ["--tls-replication", "yes"]  # the replica's link to the primary: TLS too
        return TlsRedisServer(self.root / name, self.tls, extra_args=args, probe=probe)

    # --- start and stop

    def start(self) -> SentinelCluster:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        self.primary.start()
        self.replica = self._data_node("replica", "--replicaof", HOST, str(self.primary.port))
        self.replica.start()
        _wait(
            lambda: self._info(self.replica)["master_link_status"] == "up",
            "the replica to sync with the primary",
            within=30,
        )
        conf = [
            f"sentinel monitor {MASTER} {HOST} {self.primary.port} 2",
            f"sentinel down-after-milliseconds {MASTER} {self.down_after_ms}",
            f"sentinel failover-timeout {MASTER} {self.failover_timeout_ms}",
            f"sentinel parallel-syncs {MASTER} 1",
        ]
        if self.password:
            conf.append(f"sentinel auth-pass {MASTER} {self.password}")
        if self.sentinel_password:
            conf.append(f"requirepass {self.sentinel_password}")
        probe = {"password": self.sentinel_password, **self._client_tls}
        dirs = [self.root / f"sentinel-{i}" for i in range(3)]
        self.sentinels = [SentinelServer(d, "", tls=self.tls, probe=probe) for d in dirs]
        # What the sentinels would otherwise learn from each other over the primary's hello
        # channel (every 2 s): their ids, their peers, the replica. Sentinel keeps this state in
        # its configuration file (``sentinel myid``, ``known-sentinel``, ``known-replica``).
        ids = [f"{i + 1:040x}" for i in range(3)]
        known_replica = f"sentinel known-replica {MASTER} {HOST} {self.replica.port}"
        for i, sentinel in enumerate(self.sentinels):
            peers = [
                f"sentinel known-sentinel {MASTER} {HOST} {other.port} {ids[j]}"
                for j, other in enumerate(self.sentinels)
                if j != i
            ]
            lines = [*conf, f"sentinel myid {ids[i]}", known_replica, *peers]
            sentinel.conf = "\n".join(lines) + "\n"
        for sentinel in self.sentinels:
            sentinel.start()
        # Failover needs each sentinel to know the replica and its two peers (they find each
        # other through the primary's hello channel, every 2 s).
        for sentinel in self.sentinels:
            _wait(
                lambda s=sentinel: (
                    (m := self._master_state(s))["num-slaves"] == 1
                    and m["num-other-sentinels"] == 2
                ),
                f"sentinel {sentinel.port} to see the replica and its peers",
                within=60,
                explain=self.logs,
            )

    def stop(self) -> None:
        if self.replica is not None and self.replica.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                self.resume_replica()  # a stopped process would sit out SIGTERM
        for server in [*self.sentinels, self.replica, self.primary]:
            if server is not None:
                server.stop()

    def __enter__(self) -> SentinelCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- what a bot is given

    @property
    def url(self) -> str:
        hosts = ",".join(f"{HOST}:{s.port}" for s in self.sentinels)
        scheme = "rediss+sentinel" if self.tls else "redis+sentinel"
        return f"{scheme}://{hosts}/{MASTER}/0"

    @property
    def environ(self) -> dict[str, str]:
        env = {"REDIS_PASSWORD": self.password or "", "REDIS_SENTINEL_PASSWORD": ""}
        if self.sentinel_password:
            env["REDIS_SENTINEL_PASSWORD"] = self.sentinel_password
        if self.tls:
            env["REDIS_TLS_CA_FILE"] = str(self.tls.ca)
        return {k: v for k, v in env.items() if v}

    # --- looking and acting

    def _info(self, server: RedisServer | None) -> dict[str, Any]:
        assert server is not None
        with redis.Redis(
            host=HOST, port=server.port, password=self.password, socket_timeout=2,
            decode_responses=True, **self._client_tls,
        ) as client:  # fmt: skip
            return dict(client.info("replication"))

    def _sentinel(self, sentinel: SentinelServer) -> redis.Redis:
        return redis.Redis(
            host=HOST, port=sentinel.port, password=self.sentinel_password, socket_timeout=2,
            decode_responses=True, **self._client_tls,
        )  # fmt: skip

    def _master_state(self, sentinel: SentinelServer) -> dict[str, Any]:
        with self._sentinel(sentinel) as client:
            return dict(client.sentinel_master(MASTER))

    def primary_ports(self) -> set[int]:
        """The primary's port as each live sentinel reports it."""
        ports: set[int] = set()
        for sentinel in self.sentinels:
            with contextlib.suppress(redis.RedisError, OSError), self._sentinel(sentinel) as c:
                _, port = c.sentinel_get_master_addr_by_name(MASTER)
                ports.add(int(port))
        return ports

    def kill_primary(self) -> None:
        """``kill -9`` of the primary: no flush, no goodbye to the replica or the clients."""
        self.primary.kill()

    def wait_failover(self, within: float = 60.0) -> int:
        """Wait until every sentinel names the replica as the primary and it takes writes."""
        assert self.replica is not None
        port = self.replica.port
        _wait(lambda: self.primary_ports() == {port}, "the sentinels to promote the replica",
              within=within, explain=self.logs)  # fmt: skip
        _wait(
            lambda: self._info(self.replica)["role"] == "master",
            "the replica to become a primary",
            within=within,
        )
        return port

    def pause_replica(self) -> None:
        """SIGSTOP the replica and cut its link (``CLIENT KILL TYPE replica`` on the primary,
        https://redis.io/docs/latest/commands/client-kill/):
        the primary goes on acknowledging writes the replica never gets. (A stopped replica
        alone would still get them: the kernel buffers what the primary sends.)"""
        assert self.replica is not None and self.replica.pid is not None
        os.kill(self.replica.pid, signal.SIGSTOP)
        with redis.Redis(
            host=HOST, port=self.primary.port, password=self.password, socket_timeout=2,
            **self._client_tls,
        ) as client:  # fmt: skip
            assert client.client_kill_filter(_type="replica") == 1

    def resume_replica(self) -> None:
        assert self.replica is not None and self.replica.pid is not None
        os.kill(self.replica.pid, signal.SIGCONT)

    def logs(self, lines: int = 15) -> str:
        out = []
        for server in [self.primary, self.replica, *self.sentinels]:
            if server is None:
                continue
            with contextlib.suppress(OSError):
                tail = server.log_path.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {server.log_path}\n" + "\n".join(tail))
        return "\n".join(out)


@contextlib.contextmanager
def sentinel_cluster(root: Path, **kwargs: Any) -> Iterator[SentinelCluster]:
    cluster = SentinelCluster(root, **kwargs)
    with cluster:
        yield cluster


__all__ = [
    "ADMIN_PROBE",
    "MASTER",
    "SentinelCluster",
    "SentinelServer",
    "TlsFiles",
    "TlsRedisServer",
    "acl_file",
    "make_tls_files",
    "sentinel_cluster",
]
