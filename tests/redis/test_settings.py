"""REDIS_URL and the REDIS_* options, read into settings and clients (no server needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection
from redis.asyncio.sentinel import SentinelConnectionPool, SentinelManagedSSLConnection

from upgrade_bot.engine.adapters import redis_conn
from upgrade_bot.engine.adapters.redis_conn import RedisSettings, parse_settings
from upgrade_bot.engine.adapters.store import RedisStore
from upgrade_bot.engine.errors import ConfigError

from .servers import TlsFiles, make_tls_files


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


def problems(url: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_settings(url, env or {})
    assert caught.value.path == "environment"
    return "\n".join(caught.value.problems)


# --- the forms of REDIS_URL ---------------------------------------------------------------------


def test_a_plain_url_names_host_port_and_db() -> None:
    s = parse_settings("redis://redis.example:6380/2")
    assert (s.hosts, s.db, s.tls, s.sentinel) == ((("redis.example", 6380),), 2, False, False)
    assert s.describe() == "redis.example:6380"


def test_defaults_are_port_6379_and_db_0() -> None:
    s = parse_settings("redis://redis")
    assert (s.hosts, s.db) == ((("redis", 6379),), 0)


def test_credentials_in_the_url_are_decoded_and_never_described() -> None:
    s = parse_settings("rediss://bot:p%40ss%3Aw0rd@redis:6379/0")
    assert (s.username, s.password, s.tls) == ("bot", "p@ss:w0rd", True)
    assert "p@ss" not in s.describe() and "bot" not in s.describe()
    assert "p@ss" not in repr(s)
    assert s.describe() == "redis:6379 (TLS)"


def test_a_password_alone_in_the_url_is_the_default_users() -> None:
    s = parse_settings("redis://:secret@redis:6379/0")
    assert (s.username, s.password) == (None, "secret")


def test_a_unix_socket_url() -> None:
    s = parse_settings("unix:///run/redis/redis.sock?db=3")
    assert (s.path, s.db, s.hosts) == ("/run/redis/redis.sock", 3, ())
    assert s.describe() == "unix:/run/redis/redis.sock"


def test_a_sentinel_url_names_the_sentinels_the_master_and_the_db() -> None:
    s = parse_settings("redis+sentinel://:pw@s1:26380,s2,[::1]:26381/mymaster/1")
    assert s.sentinel and not s.tls
    assert s.hosts == (("s1", 26380), ("s2", 26379), ("::1", 26381))
    assert (s.master, s.db, s.password) == ("mymaster", 1, "pw")
    assert s.describe() == (
        "the primary of 'mymaster' via sentinels s1:26380,s2:26379,[::1]:26381, db 1"
    )


def test_rediss_sentinel_is_tls_throughout() -> None:
    s = parse_settings("rediss+sentinel://s1:26379/mymaster")
    assert (s.tls, s.sentinel, s.db) == (True, True, 0)
    assert s.describe().endswith("(TLS)")


def test_redis_py_url_options_are_taken_with_their_types() -> None:
    s = parse_settings("redis://redis:6379/0?socket_timeout=2.5&health_check_interval=10")
    assert dict(s.options) == {"socket_timeout": 2.5, "health_check_interval": 10}


# --- the environment ----------------------------------------------------------------------------


def test_the_environment_overrides_the_urls_credentials() -> None:
    env = {"REDIS_USERNAME": "upgrade-bot", "REDIS_PASSWORD": "from-env"}
    s = parse_settings("redis://other:from-url@redis:6379/0", env)
    assert (s.username, s.password) == ("upgrade-bot", "from-env")


def test_the_sentinel_password_is_the_sentinels_own() -> None:
    env = {"REDIS_PASSWORD": "data", "REDIS_SENTINEL_PASSWORD": "sentinels"}
    s = parse_settings("redis+sentinel://s1/mymaster", env)
    assert (s.password, s.sentinel_password) == ("data", "sentinels")
    assert set(s.secrets) == {"data", "sentinels"}


def test_tls_files_are_taken_when_they_hold_what_they_should(tls: TlsFiles) -> None:
    env = {
        "REDIS_TLS_CA_FILE": str(tls.ca),
        "REDIS_TLS_CERT_FILE": str(tls.cert),
        "REDIS_TLS_KEY_FILE": str(tls.key),
    }
    s = parse_settings("rediss://redis:6379/0", env)
    assert (s.ca_file, s.cert_file, s.key_file, s.insecure) == (
        str(tls.ca),
        str(tls.cert),
        str(tls.key),
        False,
    )


def test_skipping_verification_takes_true_only() -> None:
    assert parse_settings("rediss://r", {"REDIS_TLS_INSECURE_SKIP_VERIFY": "true"}).insecure
    assert not parse_settings("rediss://r", {"REDIS_TLS_INSECURE_SKIP_VERIFY": "false"}).insecure
    assert "must be 'true'" in problems("rediss://r", {"REDIS_TLS_INSECURE_SKIP_VERIFY": "yes"})


# --- bad settings -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "env", "expected"),
    [
        ("http://redis:6379", {}, "REDIS_URL has 'http://'; expected one of redis://"),
        ("redis-sentinel://s1/m", {}, "REDIS_URL has 'redis-sentinel://'"),
        ("localhost:6379", {}, "REDIS_URL has no scheme; expected one of"),
        ("user:pw@redis:6379", {}, "REDIS_URL has no scheme"),
        ("redis+sentinel://s1:26379,s2:26379", {}, "needs the master's name"),
        ("redis+sentinel://s1:26379/", {}, "needs the master's name"),
        ("redis://", {}, "REDIS_URL names no host"),
        ("redis://redis:http/0", {}, "port 'http' of redis is not a TCP port"),
        ("redis://redis:6379/zero", {}, "the database 'zero' is not a number"),
        ("redis://a:1,b:2/0", {}, "names one server; for several, use redis+sentinel://"),
        ("redis://redis/0?password=x", {}, "unknown option 'password'"),
        ("redis://redis/0?socket_timeout=soon", {}, "option 'socket_timeout' has an invalid"),
        ("unix://", {}, "needs the socket's path"),
        (
            "redis://redis/0",
            {"REDIS_TLS_CA_FILE": "/etc/ssl/ca.pem"},
            "REDIS_TLS_CA_FILE set, but REDIS_URL does not use TLS: use rediss://",
        ),
        (
            "redis+sentinel://s1/m",
            {"REDIS_TLS_INSECURE_SKIP_VERIFY": "true"},
            "REDIS_TLS_INSECURE_SKIP_VERIFY set, but REDIS_URL does not use TLS",
        ),
        (
            "rediss://redis/0",
            {"REDIS_TLS_CA_FILE": "/nonexistent/ca.pem"},
            "REDIS_TLS_CA_FILE: /nonexistent/ca.pem does not exist",
        ),
        (
            "redis://redis/0",
            {"REDIS_SENTINEL_PASSWORD": "x"},
            "REDIS_SENTINEL_PASSWORD is set but REDIS_URL is not a Sentinel URL",
        ),
    ],
)
def test_bad_settings_name_the_variable_and_what_is_expected(
    url: str, env: dict[str, str], expected: str
) -> None:
    assert expected in problems(url, env)


def test_every_problem_is_listed_at_once() -> None:
    found = problems(
        "redis+sentinel://s1:x",
        {"REDIS_SENTINEL_PASSWORD": "", "REDIS_TLS_KEY_FILE": "/k"},
    )
    assert "port 'x'" in found and "master's name" in found and "REDIS_TLS_KEY_FILE" in found


def test_a_file_that_is_no_ca_certificate_is_refused(tmp_path: Path) -> None:
    bogus = tmp_path / "ca.pem"
    bogus.write_text("not a certificate\n")
    assert "REDIS_TLS_CA_FILE: " in problems("rediss://r", {"REDIS_TLS_CA_FILE": str(bogus)})


def test_a_client_certificate_needs_its_key(tls: TlsFiles) -> None:
    found = problems("rediss://r", {"REDIS_TLS_CERT_FILE": str(tls.cert)})
    assert "REDIS_TLS_CERT_FILE is set without REDIS_TLS_KEY_FILE" in found
    wrong_key = {"REDIS_TLS_CERT_FILE": str(tls.cert), "REDIS_TLS_KEY_FILE": str(tls.other_key)}
    assert "not a PEM certificate and its unencrypted private key" in problems(
        "rediss://r", wrong_key
    )


def test_secrets_never_appear_in_problems() -> None:
    found = problems("redis://user:hunter2@redis:nope/0", {"REDIS_PASSWORD": "s3cret"})
    assert "hunter2" not in found and "s3cret" not in found


# --- clients ------------------------------------------------------------------------------------


async def test_a_tls_client_verifies_against_the_given_ca(tls: TlsFiles) -> None:
    settings = parse_settings("rediss://redis:6379/0", {"REDIS_TLS_CA_FILE": str(tls.ca)})
    client = redis_conn.client(settings, decode_responses=True)
    pool = client.connection_pool
    assert pool.connection_class is SSLConnection
    kwargs = pool.connection_kwargs
    assert (kwargs["ssl_ca_certs"], kwargs["ssl_cert_reqs"], kwargs["ssl_check_hostname"]) == (
        str(tls.ca),
        "required",
        True,
    )
    await redis_conn.close(client)


async def test_a_unix_client_uses_the_socket() -> None:
    client = redis_conn.client(parse_settings("unix:///run/redis.sock"), decode_responses=True)
    assert client.connection_pool.connection_class is UnixDomainSocketConnection
    assert client.connection_pool.connection_kwargs["path"] == "/run/redis.sock"
    await redis_conn.close(client)


async def test_a_sentinel_client_asks_the_sentinels_with_their_own_password() -> None:
    env = {"REDIS_PASSWORD": "data", "REDIS_SENTINEL_PASSWORD": "sent"}
    settings = parse_settings("rediss+sentinel://s1:26379,s2:26380/mymaster/2", env)
    client = redis_conn.client(settings, decode_responses=True, socket_timeout=3.0)
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    assert (pool.service_name, pool.connection_class) == ("mymaster", SentinelManagedSSLConnection)
    assert (pool.connection_kwargs["password"], pool.connection_kwargs["db"]) == ("data", 2)
    sentinels = pool.sentinel_manager.sentinels
    assert [s.connection_pool.connection_kwargs["port"] for s in sentinels] == [26379, 26380]
    for s in sentinels:
        kwargs = s.connection_pool.connection_kwargs
        assert (kwargs["password"], kwargs["socket_timeout"]) == ("sent", 3.0)
        assert s.connection_pool.connection_class is SSLConnection
    await redis_conn.close(client)


async def test_the_store_describes_where_its_data_is_without_credentials() -> None:
    env = {"REDIS_PASSWORD": "s3cret"}
    store = RedisStore.from_url("redis+sentinel://u:pw@s1/mymaster", environ=env)
    assert store.location == "the primary of 'mymaster' via sentinels s1:26379"
    assert store._scrub("auth s3cret failed") == "auth *** failed"
    await store.close()


def test_settings_are_frozen() -> None:
    s = parse_settings("redis://r")
    assert isinstance(s, RedisSettings)
    with pytest.raises(AttributeError):
        s.db = 1  # type: ignore[misc]
