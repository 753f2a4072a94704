"""The run store: every run's record, its audit stream, leases and group locks, in Redis.

A run's JSON record is the single source of truth. Each write is one Lua script, so a crash of
the bot (or of Redis, which runs with an append-only file) can never leave half of it applied:

* the record write and the domain events it produces land together (outbox pattern): events go
  to the run's audit stream in the same script that bumps the record's revision;
* a writer states the revision it read (compare-and-set), and a driver also presents its lease
  token (fencing), so a driver that was frozen while another replica took over is refused;
* the gateway-group locks are taken together with the run's creation, all or none.

Keys, under a prefix ``P`` (default ``upgrade-bot``)::

    P:run:{id}           {"rev": N, "record": {...}}       (expires `retention_s` after finish)
    P:audit:{id}         stream of events, field e = JSON  (expires with the record)
    P:groups:{id}        set of the groups the run locked  (expires with the record)
    P:cursors:{id}       hash consumer -> last event id read (expires with the stream)
    P:lease:{id}         "<token>:<holder>" with a TTL
    P:fence:{id}         counter of lease tokens (never goes back while the run exists)
    P:lock:group:{g}     run id holding the gateway group (no TTL: released by finish)
    P:runs               sorted set of run ids by creation time (history)
    P:runs:active        set of unfinished run ids
    P:audit:global       stream of actions not tied to one run (trimmed to the retention)
    P:dedupe:{key}       de-duplication markers
    P:op:{uuid}          result of one write, kept briefly so that a retried write is not
                         applied twice (redis-py re-sends a command after a connection error)

The run id ``global`` is reserved: its stream and cursors are those of the global audit stream,
so ``events(GLOBAL, ...)``, ``get_cursor(consumer, GLOBAL)`` and ``set_cursor`` work on it.
"""

from __future__ import annotations

import contextlib
import json
import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoPermissionError, ReadOnlyError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from upgrade_bot.engine import errors
from upgrade_bot.engine.store import Fence

from . import redis_conn
from .redis_conn import RedisSettings

GLOBAL = "global"
DEFAULT_PREFIX = "upgrade-bot"
DEFAULT_RETENTION_S = 90 * 86400
# A retried write (same op id) finds its first result for this long; retries take seconds.
OP_TTL_MS = 600_000
_STREAM_ID = re.compile(r"^\d+-\d+$")


# Every command the store sends, itself or from its Lua scripts (Redis checks the commands a
# script calls against the caller's ACL too), so the least grant an ACL user needs. redis-py's
# Script sends EVALSHA, and SCRIPT LOAD when the server lacks the script (redis/commands/core.py
# AsyncScript.__call__); SELECT only for a db other than 0. Rule syntax: redis.io ACL docs.
ACL_COMMANDS = (
    "ping", "select", "evalsha", "script|load", "multi", "exec", "time",
    "get", "set", "del", "exists", "incr", "pttl", "pexpire",
    "hget", "hset", "sadd", "srem", "smembers",
    "zadd", "zmscore", "zrevrange", "zremrangebyscore",
    "xadd", "xrange", "xtrim",
)  # fmt: skip


def acl_rules(prefix: str = DEFAULT_PREFIX) -> str:
    """The ACL rules (after ``ACL SETUSER <user> on >password``) the store needs, no more."""
    return f"resetkeys ~{prefix}:* resetchannels -@all " + " ".join(f"+{c}" for c in ACL_COMMANDS)


# --- errors ----------------------------------------------------------------------------------
# The store raises the engine's own error classes (or subclasses adding detail), so that the
# engine core, which must not import this adapter, catches them by their engine.errors names.

GroupBusy = errors.GroupBusy  # (group, run_id); the message names the run holding the group
StoreUnavailable = errors.StoreUnavailable  # a TemporaryError: callers retry later


class StaleRecord(errors.StaleRecord):
    """The record's revision is not the one the writer read: reload and decide again."""

    def __init__(
        self, run_id: str, expected_rev: int, actual_rev: int | None, message: str = ""
    ) -> None:
        self.run_id = run_id
        self.expected_rev = expected_rev
        self.actual_rev = actual_rev
        super().__init__(
            message
            or f"run {run_id}: record is at revision {actual_rev}, not {expected_rev}"
            " (changed by another writer); reload it"
        )


class RunNotFound(StaleRecord):
    """There is no record for this run (never created, or expired after its retention)."""

    def __init__(self, run_id: str, expected_rev: int = 0) -> None:
        super().__init__(run_id, expected_rev, None, f"run {run_id} has no record")


class Fenced(errors.Fenced):
    """The writer's lease token is no longer the current one: another driver owns the run."""

    def __init__(self, fence: Fence, current: dict[str, Any] | None) -> None:
        self.fence = fence
        self.current = current
        now = (
            f"the lease is held by {current['holder']} with token {current['token']}"
            if current
            else "no one holds the lease"
        )
        super().__init__(
            f"run {fence.run_id}: lease token {fence.token} of {fence.holder} is stale; {now}"
        )


class StoreForbidden(errors.PermanentError):
    """Redis refused a command to the bot's ACL user (NOPERM): its grant is too narrow."""


class RunExists(errors.RunExists):
    """A run with this id already exists."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(f"run {run_id} already exists")


# --- Lua -------------------------------------------------------------------------------------

# Prepended to every non-idempotent write: KEYS[1] is the op key, ARGV[1] its TTL (ms). A write
# that redis-py re-sends after losing the reply returns the first result instead of acting twice.
_OP = """
local done = redis.call('GET', KEYS[1])
if done then return cjson.decode(done) end
local function commit(result)
  redis.call('SET', KEYS[1], cjson.encode(result), 'PX', ARGV[1])
  return result
end
local function trim_global(key, retention_ms)
  local t = redis.call('TIME')
  local cutoff = tonumber(t[1]) * 1000 - tonumber(retention_ms)
  if cutoff > 0 then
    redis.call('XTRIM', key, 'MINID', '~', string.format('%d', cutoff))
  end
end
"""

# KEYS: op, run, audit, runs, active, groups, lock...
# ARGV: op_ttl, run_id, wrapper, created_at, ngroups, group..., nevents, event...
_CREATE = (
    _OP
    + """
local run_id = ARGV[2]
if redis.call('EXISTS', KEYS[2]) == 1 then return {'exists'} end
local ng = tonumber(ARGV[5])
for i = 1, ng do
  local holder = redis.call('GET', KEYS[6 + i])
  if holder and holder ~= run_id then return {'busy', ARGV[5 + i], holder} end
end
for i = 1, ng do
  redis.call('SET', KEYS[6 + i], run_id)
  redis.call('SADD', KEYS[6], ARGV[5 + i])
end
redis.call('SET', KEYS[2], ARGV[3])
local at = 6 + ng
for i = 1, tonumber(ARGV[at]) do
  redis.call('XADD', KEYS[3], '*', 'e', ARGV[at + i])
end
redis.call('ZADD', KEYS[4], ARGV[4], run_id)
redis.call('SADD', KEYS[5], run_id)
return commit({'ok', 1})
"""
)

# KEYS: op, run, audit, lease.  ARGV: op_ttl, expected_rev, wrapper, lease_value|'', n, event...
# The fence is checked before the revision, so that a stale driver always learns it is fenced.
_SAVE = (
    _OP
    + """
if ARGV[4] ~= '' then
  local lease = redis.call('GET', KEYS[4])
  if lease ~= ARGV[4] then return {'fenced', lease or ''} end
end
local cur = redis.call('GET', KEYS[2])
if not cur then return {'missing'} end
local rev = tonumber(string.match(cur, '^{"rev": ?(%d+)'))
if not rev then rev = tonumber(cjson.decode(cur)['rev']) end
if rev ~= tonumber(ARGV[2]) then return {'stale', rev} end
redis.call('SET', KEYS[2], ARGV[3], 'KEEPTTL')
for i = 1, tonumber(ARGV[5]) do
  redis.call('XADD', KEYS[3], '*', 'e', ARGV[5 + i])
end
return commit({'ok', rev + 1})
"""
)

# KEYS: op, run, audit, lease.  ARGV: op_ttl, lease_value|'', n, event...
_APPEND = (
    _OP
    + """
if ARGV[2] ~= '' then
  local lease = redis.call('GET', KEYS[4])
  if lease ~= ARGV[2] then return {'fenced', lease or ''} end
end
if redis.call('EXISTS', KEYS[2]) == 0 then return {'missing'} end
local result = {'ok'}
for i = 1, tonumber(ARGV[3]) do
  result[#result + 1] = redis.call('XADD', KEYS[3], '*', 'e', ARGV[3 + i])
end
return commit(result)
"""
)

# KEYS: op, global.  ARGV: op_ttl, retention_ms, event.
_GLOBAL = (
    _OP
    + """
local id = redis.call('XADD', KEYS[2], '*', 'e', ARGV[3])
trim_global(KEYS[2], ARGV[2])
return commit({'ok', id})
"""
)

# KEYS: op, lock, global, run audit, run record.  ARGV: op_ttl, holder, event, retention_ms.
_BREAK = (
    _OP
    + """
local holder = redis.call('GET', KEYS[2])
if not holder then return {'none'} end
if holder ~= ARGV[2] then return {'moved', holder} end
redis.call('DEL', KEYS[2])
redis.call('XADD', KEYS[3], '*', 'e', ARGV[3])
trim_global(KEYS[3], ARGV[4])
redis.call('XADD', KEYS[4], '*', 'e', ARGV[3])
-- a run whose record is gone must not get an audit stream that lives forever
if redis.call('EXISTS', KEYS[5]) == 0 and redis.call('PTTL', KEYS[4]) == -1 then
  redis.call('PEXPIRE', KEYS[4], ARGV[4])
end
return commit({'ok', holder})
"""
)

# KEYS: run, audit, active, groups, fence, cursors, lock...  ARGV: run_id, retention_ms.
# Idempotent by construction (no op key): only this run's locks go; a TTL is set only once.
_FINISH = """
for i = 7, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1] then redis.call('DEL', KEYS[i]) end
end
redis.call('SREM', KEYS[3], ARGV[1])
for _, key in ipairs({KEYS[1], KEYS[2], KEYS[4], KEYS[5], KEYS[6]}) do
  if redis.call('PTTL', key) == -1 then redis.call('PEXPIRE', key, ARGV[2]) end
end
return 1
"""

# KEYS: lease, fence.  ARGV: identity, ttl_ms.
_ACQUIRE = """
local cur = redis.call('GET', KEYS[1])
if cur and string.match(cur, '^%d+:(.*)$') ~= ARGV[1] then return false end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], string.format('%d', token) .. ':' .. ARGV[1], 'PX', ARGV[2])
return token
"""

# KEYS: lease.  ARGV: lease_value, ttl_ms.
_RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

# KEYS: lease.  ARGV: lease_value.
_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""

# KEYS: cursors, audit.  ARGV: consumer, event_id.  Returns the cursor now stored.
_CURSOR = """
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then
  local cm, cs = parse(cur)
  local nm, ns = parse(ARGV[2])
  if cm and (nm < cm or (nm == cm and ns <= cs)) then return cur end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
-- cursors live as long as the stream they point into (a finished run's stream expires)
local ttl = redis.call('PTTL', KEYS[2])
if ttl > 0 and redis.call('PTTL', KEYS[1]) == -1 then redis.call('PEXPIRE', KEYS[1], ttl) end
return ARGV[2]
"""

# KEYS: dedupe.  ARGV: op id, ttl_ms.  A re-sent call (same op id) is still the first time.
_FIRST = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then return 1 end
return 0
"""


# --- helpers ---------------------------------------------------------------------------------


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _ms(seconds: float) -> int:
    """Milliseconds for PX/PEXPIRE, at least 1 (0 is an error for Redis)."""
    return max(1, round(seconds * 1000))


def _parse_lease(value: str | None) -> dict[str, Any] | None:
    if not value:
        return None
    token, _, holder = value.partition(":")
    return {"holder": holder, "token": int(token)}


def _check_stream_id(event_id: str) -> str:
    if not _STREAM_ID.match(event_id):
        raise ValueError(f"not a stream id: {event_id!r} (expected <ms>-<seq>)")
    return event_id


# NOPERM as redis-py words it, inside a transaction, and from a script (Redis 7).
_FORBIDDEN = re.compile(r"NOPERM|no permissions to|can't run this command")


def _check_run_id(run_id: str) -> str:
    if not run_id:
        raise ValueError("run id must not be empty")
    if run_id == GLOBAL:
        raise ValueError(f"run id {GLOBAL!r} is reserved for the global audit stream")
    return run_id


# --- the store -------------------------------------------------------------------------------


class RedisStore:
    """Runs, audit streams, leases and group locks in one Redis (see the module docstring)."""

    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str = DEFAULT_PREFIX,
        retention_s: float = DEFAULT_RETENTION_S,
        *,
        settings: RedisSettings | None = None,
    ) -> None:
        kwargs = client.connection_pool.connection_kwargs
        if not kwargs.get("decode_responses"):
            raise ValueError("RedisStore needs a client created with decode_responses=True")
        if retention_s <= 0:
            raise ValueError("retention_s must be positive")
        self._client = client
        self._owns_client = False
        self._settings = settings  # for messages: where the data is, and what to scrub
        self.prefix = prefix
        self.retention_s = retention_s
        self._create = client.register_script(_CREATE)
        self._save = client.register_script(_SAVE)
        self._append = client.register_script(_APPEND)
        self._global = client.register_script(_GLOBAL)
        self._break = client.register_script(_BREAK)
        self._finish = client.register_script(_FINISH)
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._cursor = client.register_script(_CURSOR)
        self._first = client.register_script(_FIRST)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        environ: Mapping[str, str] | None = None,
        prefix: str = DEFAULT_PREFIX,
        retention_s: float = DEFAULT_RETENTION_S,
        **client_kw: Any,
    ) -> RedisStore:
        """A store on its own client for ``url`` and the ``REDIS_*`` options of ``environ``.

        Every form of REDIS_URL (TLS, Unix socket, Sentinel) is read by
        :func:`redis_conn.parse_settings`; bad settings raise ConfigError. ``client_kw`` are
        redis-py connection options. Without ``environ``, no ``REDIS_*`` variable is read.
        """
        return cls.from_settings(
            redis_conn.parse_settings(url, environ),
            prefix=prefix,
            retention_s=retention_s,
            **client_kw,
        )

    @classmethod
    def from_settings(
        cls,
        settings: RedisSettings,
        *,
        prefix: str = DEFAULT_PREFIX,
        retention_s: float = DEFAULT_RETENTION_S,
        **client_kw: Any,
    ) -> RedisStore:
        """A store on its own client for ``settings``.

        The client retries a few times on connection errors (a restarted Redis drops pooled
        connections, a failover moves the primary) but gives up within seconds, so that
        callers see StoreUnavailable and apply their own back-off instead of hanging.
        """
        client_kw["decode_responses"] = True
        client_kw.setdefault("socket_connect_timeout", 5.0)
        client_kw.setdefault("socket_timeout", 10.0)
        client_kw.setdefault("retry", Retry(ExponentialBackoff(cap=0.5, base=0.05), 3))
        client = redis_conn.client(settings, **client_kw)
        store = cls(client, prefix=prefix, retention_s=retention_s, settings=settings)
        store._owns_client = True
        return store

    async def close(self) -> None:
        """Close the client if this store created it (``from_url``); a given client is kept."""
        if self._owns_client:
            await redis_conn.close(self._client)

    # --- keys

    def _k(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def _op_key(self) -> str:
        return self._k("op", uuid.uuid4().hex)

    def _run_keys(self, run_id: str) -> dict[str, str]:
        return {
            "run": self._k("run", run_id),
            "audit": self._k("audit", run_id),
            "groups": self._k("groups", run_id),
            "cursors": self._k("cursors", run_id),
            "lease": self._k("lease", run_id),
            "fence": self._k("fence", run_id),
        }

    def _lock_key(self, group: str) -> str:
        return self._k("lock", "group", group)

    # --- errors

    @property
    def location(self) -> str:
        """``host:port``, the socket path or the Sentinel service; never any credential."""
        if self._settings is not None:
            return self._settings.describe()
        kwargs = self._client.connection_pool.connection_kwargs
        if kwargs.get("path"):
            return f"unix:{kwargs['path']}"
        return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"

    def _scrub(self, text: str) -> str:
        secrets = {self._client.connection_pool.connection_kwargs.get("password")}
        if self._settings is not None:
            secrets.update(self._settings.secrets)
        for secret in sorted((s for s in secrets if s), key=len, reverse=True):
            text = text.replace(secret, "***")
        return text

    def _unavailable(self, exc: Exception) -> str:
        tls = self._settings.tls if self._settings is not None else None
        what = redis_conn.failure(exc, tls=tls)
        return f"Redis at {self.location} {what} ({type(exc).__name__}: {self._scrub(str(exc))})"

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """Translate "Redis is not there (or not writable)" into StoreUnavailable."""
        try:
            yield
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise StoreUnavailable(self._unavailable(exc)) from exc
        except ResponseError as exc:
            # A replica after failover, a server that cannot persist (MISCONF), a primary short
            # of replicas (``min-replicas-to-write``: NOREPLICAS): all pass.
            if isinstance(exc, ReadOnlyError) or str(exc).startswith(("MISCONF", "NOREPLICAS")):
                raise StoreUnavailable(
                    f"Redis at {self.location} does not accept writes: {self._scrub(str(exc))}"
                ) from exc
            # The ACL user lacks a command or key; from a script, Redis says so in other words.
            if isinstance(exc, NoPermissionError) or _FORBIDDEN.search(str(exc)):
                raise StoreForbidden(
                    f"Redis at {self.location} refused a command to the bot's user "
                    f"({self._scrub(str(exc))}); grant it: "
                    f"ACL SETUSER <user> {acl_rules(self.prefix)}"
                ) from exc
            raise

    # --- health

    async def ping(self) -> None:
        """Raise StoreUnavailable ("Redis at host:port is unreachable ...") unless Redis answers."""
        with self._guard():
            await self._client.ping()

    # --- runs

    async def create_run(
        self,
        run_id: str,
        record: dict[str, Any],
        events: Sequence[dict[str, Any]],
        groups: Sequence[str],
        created_at: float,
    ) -> int:
        """Create the run and lock its groups atomically; returns revision 1.

        Raises RunExists, or GroupBusy naming the first group held by another run (then nothing
        is written: no lock is taken, no event appended).
        """
        _check_run_id(run_id)
        unique = list(dict.fromkeys(groups))
        keys = self._run_keys(run_id)
        wrapper = _dumps({"rev": 1, "record": record})
        with self._guard():
            result = await self._create(
                keys=[
                    self._op_key(),
                    keys["run"],
                    keys["audit"],
                    self._k("runs"),
                    self._k("runs", "active"),
                    keys["groups"],
                    *(self._lock_key(g) for g in unique),
                ],
                args=[
                    OP_TTL_MS,
                    run_id,
                    wrapper,
                    repr(float(created_at)),
                    len(unique),
                    *unique,
                    len(events),
                    *(_dumps(e) for e in events),
                ],
            )
        if result[0] == "exists":
            raise RunExists(run_id)
        if result[0] == "busy":
            raise GroupBusy(result[1], result[2])
        return int(result[1])

    async def load(self, run_id: str) -> tuple[dict[str, Any], int] | None:
        """The run's record and revision, or None if there is no such run."""
        with self._guard():
            raw = await self._client.get(self._k("run", run_id))
        if raw is None:
            return None
        wrapper = json.loads(raw)
        return wrapper["record"], int(wrapper["rev"])

    async def save(
        self,
        run_id: str,
        record: dict[str, Any],
        *,
        expected_rev: int,
        fence: Fence | None,
        events: Sequence[dict[str, Any]] = (),
    ) -> int:
        """Write the record as revision ``expected_rev + 1`` with its events; returns it.

        Raises Fenced if ``fence`` is given and no longer holds the lease (checked first),
        StaleRecord if the record is not at ``expected_rev`` (RunNotFound if there is none).
        On any refusal nothing is written. ``fence=None`` is for user commands, which rely on
        the revision check alone.
        """
        if fence is not None and fence.run_id != run_id:
            raise ValueError(f"fence is for run {fence.run_id}, not {run_id}")
        keys = self._run_keys(run_id)
        wrapper = _dumps({"rev": expected_rev + 1, "record": record})
        with self._guard():
            result = await self._save(
                keys=[self._op_key(), keys["run"], keys["audit"], keys["lease"]],
                args=[
                    OP_TTL_MS,
                    expected_rev,
                    wrapper,
                    fence.lease_value if fence else "",
                    len(events),
                    *(_dumps(e) for e in events),
                ],
            )
        status = result[0]
        if status == "fenced":
            assert fence is not None
            raise Fenced(fence, _parse_lease(result[1]))
        if status == "missing":
            raise RunNotFound(run_id, expected_rev)
        if status == "stale":
            raise StaleRecord(run_id, expected_rev, int(result[1]))
        return int(result[1])

    async def finish(self, run_id: str) -> None:
        """Release the run's group locks, mark it inactive and start its retention. Idempotent.

        Only locks whose value is still this run are released (a lock broken and re-taken by
        another run stays). The record, audit stream, cursors and fence counter expire after
        the retention; calling again does not push that back.
        """
        keys = self._run_keys(run_id)
        with self._guard():
            # The group set never changes after creation, so reading it first is safe.
            groups = sorted(await self._client.smembers(keys["groups"]))
            await self._finish(
                keys=[
                    keys["run"],
                    keys["audit"],
                    self._k("runs", "active"),
                    keys["groups"],
                    keys["fence"],
                    keys["cursors"],
                    *(self._lock_key(g) for g in groups),
                ],
                args=[run_id, _ms(self.retention_s)],
            )

    async def history(self, limit: int = 20, now: float | None = None) -> list[str]:
        """Run ids, newest first; with ``now``, forget runs created before the retention."""
        runs = self._k("runs")
        with self._guard():
            if now is not None:
                await self._client.zremrangebyscore(runs, "-inf", f"({now - self.retention_s!r}")
            if limit <= 0:
                return []
            return list(await self._client.zrevrange(runs, 0, limit - 1))

    async def active_runs(self) -> list[str]:
        """Unfinished run ids, oldest first."""
        with self._guard():
            active = list(await self._client.smembers(self._k("runs", "active")))
            if not active:
                return []
            scores = await self._client.zmscore(self._k("runs"), active)
        created = dict(zip(active, scores, strict=True))
        return sorted(active, key=lambda run: (created[run] or 0.0, run))

    # --- events

    async def append_events(
        self,
        run_id: str,
        events: Sequence[dict[str, Any]],
        *,
        fence: Fence | None = None,
    ) -> list[str]:
        """Append events outside a record write; returns their ids.

        Raises RunNotFound if the run has no record (an orphan stream would never expire), and
        Fenced if ``fence`` is given and is no longer current.
        """
        if not events:
            return []
        keys = self._run_keys(run_id)
        with self._guard():
            result = await self._append(
                keys=[self._op_key(), keys["run"], keys["audit"], keys["lease"]],
                args=[
                    OP_TTL_MS,
                    fence.lease_value if fence else "",
                    len(events),
                    *(_dumps(e) for e in events),
                ],
            )
        if result[0] == "fenced":
            assert fence is not None
            raise Fenced(fence, _parse_lease(result[1]))
        if result[0] == "missing":
            raise RunNotFound(run_id)
        return [str(i) for i in result[1:]]

    async def events(
        self, run_id: str, after: str = "0-0", count: int = 1000
    ) -> list[tuple[str, dict[str, Any]]]:
        """Up to ``count`` events of the run after the id ``after`` (exclusive), oldest first."""
        return await self._read(self._k("audit", run_id), after, count)

    async def audit_global(self, event: dict[str, Any]) -> str:
        """Append to the global audit stream (actions not tied to one run); returns the id."""
        with self._guard():
            result = await self._global(
                keys=[self._op_key(), self._k("audit", GLOBAL)],
                args=[OP_TTL_MS, _ms(self.retention_s), _dumps(event)],
            )
        return str(result[1])

    async def _read(self, key: str, after: str, count: int) -> list[tuple[str, dict[str, Any]]]:
        _check_stream_id(after)
        with self._guard():
            entries = await self._client.xrange(key, min=f"({after}", max="+", count=count)
        return [(event_id, json.loads(fields["e"])) for event_id, fields in entries]

    async def get_cursor(self, consumer: str, run_id: str) -> str:
        """The last event id ``consumer`` has handled in the run's stream ("0-0" if none)."""
        with self._guard():
            cursor = await self._client.hget(self._k("cursors", run_id), consumer)
        return cursor or "0-0"

    async def set_cursor(self, consumer: str, run_id: str, event_id: str) -> str:
        """Move the consumer's cursor to ``event_id``, never backwards; returns the cursor."""
        _check_stream_id(event_id)
        with self._guard():
            return str(
                await self._cursor(
                    keys=[self._k("cursors", run_id), self._k("audit", run_id)],
                    args=[consumer, event_id],
                )
            )

    # --- leases

    async def acquire_lease(self, run_id: str, identity: str, ttl_s: float) -> Fence | None:
        """Take the run's lease with a new fencing token, or None if another identity holds it.

        The same identity (a restarted bot) takes it back at once, even before it expires; the
        new token fences the old one.
        """
        if not identity:
            raise ValueError("identity must not be empty")
        keys = self._run_keys(run_id)
        with self._guard():
            token = await self._acquire(
                keys=[keys["lease"], keys["fence"]], args=[identity, _ms(ttl_s)]
            )
        if token is None:
            return None
        return Fence(run_id=run_id, holder=identity, token=int(token))

    async def renew_lease(self, fence: Fence, ttl_s: float) -> bool:
        """Extend the lease to ``ttl_s`` from now; False if it is no longer exactly ours."""
        with self._guard():
            ok = await self._renew(
                keys=[self._k("lease", fence.run_id)], args=[fence.lease_value, _ms(ttl_s)]
            )
        return bool(ok)

    async def release_lease(self, fence: Fence) -> None:
        """Give the lease up (no-op if it is no longer ours)."""
        with self._guard():
            await self._release(keys=[self._k("lease", fence.run_id)], args=[fence.lease_value])

    async def check_fence(self, fence: Fence) -> bool:
        """True while ``fence`` is the current lease of its run."""
        with self._guard():
            value = await self._client.get(self._k("lease", fence.run_id))
        return value == fence.lease_value

    async def newest_token(self, run_id: str) -> int:
        """The highest fencing token ever handed out for the run (0 before the first lease)."""
        with self._guard():
            value = await self._client.get(self._k("fence", run_id))
        return int(value or 0)

    async def lease_holder(self, run_id: str) -> dict[str, Any] | None:
        """``{"holder", "token", "ttl_s"}`` of the run's current lease, or None."""
        key = self._k("lease", run_id)
        with self._guard():
            async with self._client.pipeline(transaction=True) as pipe:
                value, pttl = await pipe.get(key).pttl(key).execute()
        lease = _parse_lease(value)
        if lease is None:
            return None
        lease["ttl_s"] = max(0, int(pttl)) / 1000
        return lease

    # --- group locks

    async def lock_holder(self, group: str) -> str | None:
        """The run id holding the gateway group's lock, or None."""
        with self._guard():
            holder = await self._client.get(self._lock_key(group))
        return holder or None

    async def break_lock(self, group: str, *, user: str, reason: str, now: float) -> str | None:
        """Break-glass: delete the group's lock; returns the former holder (None if unlocked).

        Appends ``lock_broken`` to the global audit stream and to the former run's stream in
        the same script. Whether breaking is allowed is the caller's decision.
        """
        lock = self._lock_key(group)
        for _ in range(10):
            with self._guard():
                holder = await self._client.get(lock)
            if holder is None:
                return None
            event = {
                "type": "lock_broken",
                "group": group,
                "run_id": holder,
                "user": user,
                "reason": reason,
                "at": now,
            }
            keys = self._run_keys(holder)
            with self._guard():
                result = await self._break(
                    keys=[
                        self._op_key(),
                        lock,
                        self._k("audit", GLOBAL),
                        keys["audit"],
                        keys["run"],
                    ],
                    args=[OP_TTL_MS, holder, _dumps(event), _ms(self.retention_s)],
                )
            if result[0] == "none":
                return None
            if result[0] == "ok":
                return str(result[1])
            # "moved": the lock changed hands between the read and the script; read again.
        raise StoreUnavailable(f"the lock of group {group} keeps changing hands; try again")

    # --- de-duplication

    async def first_time(self, key: str, ttl_s: float = 86400) -> bool:
        """True the first time ``key`` is seen within ``ttl_s``, False afterwards."""
        with self._guard():
            first = await self._first(
                keys=[self._k("dedupe", key)], args=[uuid.uuid4().hex, _ms(ttl_s)]
            )
        return bool(first)
