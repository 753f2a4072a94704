"""From ``REDIS_URL`` and the ``REDIS_*`` options to a redis.asyncio client: the one place.

Forms of ``REDIS_URL`` (the credentials in it are the data nodes')::

    redis://[user:password@]host[:6379][/db]              plain TCP
    rediss://[user:password@]host[:6379][/db]             TLS
    unix://[user:password@]/path/to/redis.sock[?db=N]     Unix socket
    redis+sentinel://[user:password@]h1[:26379],h2[:26379]/MASTER_NAME[/db]
    rediss+sentinel://…                                   TLS to the sentinels and the data nodes

redis-py's own URL options may follow as a query string (``?socket_timeout=5``; the ones listed
in ``redis.asyncio.connection.URL_QUERY_ARGUMENT_PARSERS``); anything else there is refused.

Options from the environment, so that the URL can carry no secret:

* ``REDIS_USERNAME`` / ``REDIS_PASSWORD``: the ACL user and password of the data nodes (they
  override the URL's);
* ``REDIS_SENTINEL_PASSWORD``: the sentinels' own password (``requirepass`` in sentinel.conf),
  for Sentinel URLs only;
* ``REDIS_TLS_CA_FILE``, ``REDIS_TLS_CERT_FILE`` + ``REDIS_TLS_KEY_FILE`` (a client certificate,
  when the server has ``tls-auth-clients yes``), ``REDIS_TLS_INSECURE_SKIP_VERIFY=true``: TLS
  settings, for ``rediss://`` and ``rediss+sentinel://`` only.

Bad settings are a :class:`ConfigError` naming the variable and what is expected; the settings'
:meth:`RedisSettings.describe` names the server without any credential, for messages.
"""

from __future__ import annotations

import contextlib
import os
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.connection import URL_QUERY_ARGUMENT_PARSERS
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import TimeoutError as RedisTimeoutError

from upgrade_bot.engine.errors import ConfigError

SOURCE = "environment"
REDIS_PORT = 6379
SENTINEL_PORT = 26379
SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel")
TLS_FILES = {
    "REDIS_TLS_CA_FILE": "ca_file",
    "REDIS_TLS_CERT_FILE": "cert_file",
    "REDIS_TLS_KEY_FILE": "key_file",
}
INSECURE = "REDIS_TLS_INSECURE_SKIP_VERIFY"


@dataclass(frozen=True)
class RedisSettings:
    """Where Redis is and how to talk to it; passwords stay out of ``repr``."""

    scheme: str
    hosts: tuple[tuple[str, int], ...] = ()  # the server, or the sentinels
    path: str | None = None  # unix://
    master: str | None = None  # the Sentinel service name
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_password: str | None = field(default=None, repr=False)
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False
    options: tuple[tuple[str, Any], ...] = ()  # redis-py URL options from the query string

    @property
    def tls(self) -> bool:
        return self.scheme.startswith("rediss")

    @property
    def sentinel(self) -> bool:
        return self.scheme.endswith("+sentinel")

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every password these settings carry, for scrubbing messages."""
        return tuple(s for s in (self.password, self.sentinel_password) if s)

    def describe(self) -> str:
        """Where the data is, with no user name or password: for messages and logs."""
        tls = " (TLS)" if self.tls else ""
        if self.path is not None:
            return f"unix:{self.path}"
        hosts = ",".join(_host_port(h, p) for h, p in self.hosts)
        if self.sentinel:
            db = f", db {self.db}" if self.db else ""
            return f"the primary of '{self.master}' via sentinels {hosts}{db}{tls}"
        return f"{hosts}{tls}"


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --- parsing ------------------------------------------------------------------------------------


def parse_settings(url: str, environ: Mapping[str, str] | None = None) -> RedisSettings:
    """The settings ``url`` and the ``REDIS_*`` variables of ``environ`` describe.

    Raises ConfigError listing every problem found (each names the variable at fault).
    """
    env = environ or {}
    problems: list[str] = []
    try:
        parts = urlsplit(url.strip())
        scheme = parts.scheme.lower()
    except ValueError as exc:
        raise ConfigError(SOURCE, [f"REDIS_URL is not a URL ({exc})"]) from None
    if scheme not in SCHEMES:
        # never the URL itself: it may hold a password
        shown = f"'{scheme}://'" if "://" in url else "no scheme"
        raise ConfigError(
            SOURCE,
            [
                f"REDIS_URL has {shown}; expected one of "
                + ", ".join(f"{s}://" for s in SCHEMES)
                + " (e.g. redis://redis:6379/0)"
            ],
        )
    netloc = parts.netloc
    userinfo, _, hostlist = netloc.rpartition("@")
    url_user, _, url_password = userinfo.partition(":")
    fields: dict[str, Any] = {
        "scheme": scheme,
        "username": unquote(url_user) or None,
        "password": unquote(url_password) or None,
    }
    options = _query_options(parts.query, problems)
    db = options.pop("db", None)
    path_parts = [unquote(p) for p in parts.path.split("/") if p]

    if scheme == "unix":
        if not parts.path:
            problems.append(
                "REDIS_URL: a unix:// URL needs the socket's path (unix:///run/redis.sock)"
            )
        fields["path"] = unquote(parts.path)
    elif scheme.endswith("+sentinel"):
        fields["hosts"] = _hosts(hostlist, SENTINEL_PORT, problems)
        if not path_parts:
            problems.append(
                "REDIS_URL: a Sentinel URL needs the master's name after the sentinels "
                "(redis+sentinel://sentinel-1:26379,sentinel-2:26379/mymaster[/db])"
            )
        else:
            fields["master"] = path_parts[0]
        if len(path_parts) > 1 and db is None:
            db = _db(path_parts[1], problems)
        if len(path_parts) > 2:
            problems.append(f"REDIS_URL: unexpected path after the db: {'/'.join(path_parts[2:])}")
    else:
        hosts = _hosts(hostlist, REDIS_PORT, problems)
        if len(hosts) > 1:
            problems.append(
                f"REDIS_URL: {scheme}:// names one server; for several, use "
                f"{scheme}+sentinel://…/MASTER_NAME"
            )
        fields["hosts"] = hosts[:1]
        if path_parts and db is None:
            db = _db(path_parts[0], problems)
        if len(path_parts) > 1:
            problems.append(f"REDIS_URL: unexpected path after the db: {'/'.join(path_parts[1:])}")
    fields["db"] = db or 0
    fields["options"] = tuple(sorted(options.items()))

    # The environment's credentials override the URL's.
    if env.get("REDIS_USERNAME"):
        fields["username"] = env["REDIS_USERNAME"]
    if env.get("REDIS_PASSWORD"):
        fields["password"] = env["REDIS_PASSWORD"]
    if env.get("REDIS_SENTINEL_PASSWORD"):
        if not scheme.endswith("+sentinel"):
            problems.append(
                "REDIS_SENTINEL_PASSWORD is set but REDIS_URL is not a Sentinel URL "
                "(redis+sentinel://… or rediss+sentinel://…)"
            )
        fields["sentinel_password"] = env["REDIS_SENTINEL_PASSWORD"]

    fields.update(_tls(env, tls=scheme.startswith("rediss"), problems=problems))
    if problems:
        raise ConfigError(SOURCE, problems)
    return RedisSettings(**fields)


def _query_options(query: str, problems: list[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        parser = URL_QUERY_ARGUMENT_PARSERS.get(name)
        if parser is None:
            problems.append(
                f"REDIS_URL: unknown option '{name}' in the query string; known: "
                + ", ".join(sorted(URL_QUERY_ARGUMENT_PARSERS))
                + " (credentials go in REDIS_USERNAME / REDIS_PASSWORD)"
            )
            continue
        try:
            options[name] = parser(value)
        except (TypeError, ValueError):
            problems.append(f"REDIS_URL: option '{name}' has an invalid value")
    return options


def _hosts(text: str, default_port: int, problems: list[str]) -> tuple[tuple[str, int], ...]:
    hosts: list[tuple[str, int]] = []
    for item in (h.strip() for h in text.split(",")):
        if not item:
            continue
        if item.startswith("["):  # [IPv6]:port
            host, _, rest = item[1:].partition("]")
            port_text = rest[1:] if rest.startswith(":") else ""
        else:
            host, _, port_text = item.partition(":")
        host = unquote(host)
        if not host:
            problems.append(f"REDIS_URL: no host name in '{item}'")
            continue
        port = default_port
        if port_text:
            if not port_text.isdigit() or not 0 < int(port_text) < 65536:
                problems.append(f"REDIS_URL: port '{port_text}' of {host} is not a TCP port")
                continue
            port = int(port_text)
        hosts.append((host, port))
    if not text.strip():
        problems.append("REDIS_URL names no host (redis://HOST:PORT/DB)")
    return tuple(hosts)


def _db(text: str, problems: list[str]) -> int:
    if text.isdigit():
        return int(text)
    problems.append(f"REDIS_URL: the database '{text}' is not a number (…/0)")
    return 0


def _tls(env: Mapping[str, str], *, tls: bool, problems: list[str]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    given = [name for name in (*TLS_FILES, INSECURE) if env.get(name)]
    if given and not tls:
        problems.append(
            f"{', '.join(given)} set, but REDIS_URL does not use TLS: use rediss:// "
            "(or rediss+sentinel://), or unset them"
        )
        return fields
    for name, attr in TLS_FILES.items():
        path = env.get(name)
        if not path:
            continue
        if not os.path.isfile(path):
            problems.append(f"{name}: {path} does not exist or is not a file")
        elif not os.access(path, os.R_OK):
            problems.append(f"{name}: {path} is not readable by this process")
        else:
            fields[attr] = path
    insecure = env.get(INSECURE, "").strip().lower()
    if insecure not in ("", "true", "false"):
        problems.append(f"{INSECURE} must be 'true' (or 'false'), not '{env[INSECURE]}'")
    fields["insecure"] = insecure == "true"
    if env.get("REDIS_TLS_CERT_FILE") and not env.get("REDIS_TLS_KEY_FILE"):
        problems.append("REDIS_TLS_CERT_FILE is set without REDIS_TLS_KEY_FILE (its private key)")
    if env.get("REDIS_TLS_KEY_FILE") and not env.get("REDIS_TLS_CERT_FILE"):
        problems.append("REDIS_TLS_KEY_FILE is set without REDIS_TLS_CERT_FILE (its certificate)")
    if not problems and tls:
        _check_tls_files(fields, problems)
    return fields


def _check_tls_files(fields: Mapping[str, Any], problems: list[str]) -> None:
    """Load the files the way the connections will, so that a wrong file fails at start."""
    context = ssl.create_default_context()
    if fields.get("ca_file"):
        try:
            context.load_verify_locations(cafile=fields["ca_file"])
        except (ssl.SSLError, OSError) as exc:
            problems.append(
                f"REDIS_TLS_CA_FILE: {fields['ca_file']} holds no PEM CA certificate ({exc})"
            )
    if fields.get("cert_file") and fields.get("key_file"):
        try:
            context.load_cert_chain(fields["cert_file"], fields["key_file"])
        except (ssl.SSLError, OSError) as exc:
            problems.append(
                f"REDIS_TLS_CERT_FILE / REDIS_TLS_KEY_FILE: not a PEM certificate and its "
                f"unencrypted private key ({exc})"
            )


# --- the client ---------------------------------------------------------------------------------


def _tls_kwargs(settings: RedisSettings) -> dict[str, Any]:
    """redis-py's SSL options (redis/asyncio/connection.py, ``SSLConnection.__init__``)."""
    if not settings.tls:
        return {}
    return {
        "ssl_ca_certs": settings.ca_file,
        "ssl_certfile": settings.cert_file,
        "ssl_keyfile": settings.key_file,
        "ssl_cert_reqs": "none" if settings.insecure else "required",
        "ssl_check_hostname": not settings.insecure,
    }


def client(settings: RedisSettings, **client_kw: Any) -> aioredis.Redis:
    """A redis.asyncio client for ``settings``; ``client_kw`` are redis-py connection options
    (timeouts, ``retry``, ``decode_responses``), overridden by the URL's query options.

    For Sentinel, the client is ``Sentinel(...).master_for(name, ...)`` as redis-py documents it
    (redis/redis-py: docs/connections.rst "Sentinel Client", redis/asyncio/sentinel.py): each
    new connection asks the sentinels for the current primary, and a connection that meets a
    demoted primary (READONLY) is dropped, so the next command finds the promoted replica.
    Close it with :func:`close`, which also closes the clients of the sentinels.
    """
    kwargs: dict[str, Any] = {**client_kw, **dict(settings.options)}
    kwargs.update(db=settings.db, username=settings.username, password=settings.password)
    tls = _tls_kwargs(settings)
    if settings.path is not None:
        # redis/asyncio/client.py ``Redis.__init__``: ``unix_socket_path`` (what parse_url sets)
        return aioredis.Redis(unix_socket_path=settings.path, **kwargs)
    if not settings.sentinel:
        host, port = settings.hosts[0]
        return aioredis.Redis(host=host, port=port, ssl=settings.tls, **kwargs, **tls)
    # The sentinels' own connections: their password, the same TLS settings and timeouts
    # (redis/asyncio/sentinel.py: ``sentinel_kwargs`` are used for the sentinel clients only).
    # No retries of their own: discovery already asks each sentinel in turn, and every
    # connection attempt to the primary (retried by ``retry``) runs discovery again.
    sentinel_kwargs = {k: v for k, v in client_kw.items() if k.startswith("socket_")}
    sentinel_kwargs.update(
        password=settings.sentinel_password, ssl=settings.tls, retry=Retry(NoBackoff(), 0), **tls
    )
    sentinel = Sentinel(list(settings.hosts), sentinel_kwargs=sentinel_kwargs)
    assert settings.master is not None
    return sentinel.master_for(settings.master, ssl=settings.tls, **kwargs, **tls)


async def close(redis_client: aioredis.Redis) -> None:
    """Close a client from :func:`client`, and its sentinels' clients for a Sentinel one.

    redis-py's ``Sentinel.aclose`` closes the sentinel clients but not the clients handed out
    by ``master_for``; the pool keeps a reference to its Sentinel (``sentinel_manager``).
    """
    pool = redis_client.connection_pool
    try:
        await redis_client.aclose()
    finally:
        if isinstance(pool, SentinelConnectionPool):
            with contextlib.suppress(Exception):
                await pool.sentinel_manager.aclose()


# --- why a connection failed ------------------------------------------------------------------

# WRONGPASS/NOAUTH from a server, or a sentinel's refusal inside MasterNotFoundError.
_AUTH_FAILED = re.compile(r"WRONGPASS|NOAUTH|AuthenticationError|invalid (username-)?password")


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from (redis-py keeps the OSError there)."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain and len(chain) < 10:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def failure(exc: Exception, *, tls: bool | None) -> str:
    """What a redis-py connection or timeout error means, for a person ("refused the
    credentials", "presented a TLS certificate this client does not trust (…)", …), with a hint
    when the scheme looks wrong for the port (``tls``: whether TLS was used, None if unknown)."""
    chain = _chain(exc)
    if any(isinstance(e, ssl.SSLCertVerificationError) for e in chain):
        return (
            "presented a TLS certificate this client does not trust (REDIS_TLS_CA_FILE must "
            "name the CA that signed it, and the certificate the host connected to)"
        )
    if any(isinstance(e, ssl.SSLError) for e in chain):
        return "failed the TLS handshake"
    text = " ".join(str(e) for e in chain)
    if "auth" in type(exc).__name__.lower() or _AUTH_FAILED.search(text):
        return "refused the credentials"
    if isinstance(exc, RedisTimeoutError):
        hint = " (if that port does not speak TLS, use redis:// instead of rediss://)"
        return "did not answer in time" + (hint if tls else "")
    if tls is False and any(isinstance(e, ConnectionResetError) for e in chain):
        return "is unreachable (it closed the connection: if it expects TLS, use rediss://)"
    return "is unreachable"


__all__ = ["RedisSettings", "client", "close", "failure", "parse_settings"]
