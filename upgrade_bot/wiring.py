"""The composition root's wiring: settings, store, backends, performer and engine, built once."""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

from .engine.adapters.controlplane import ControlPlaneClient
from .engine.adapters.performer import EffectPerformer
from .engine.adapters.store import RedisStore
from .engine.api import Engine
from .engine.backends import build_backend
from .engine.config import Config
from .engine.errors import ConfigError
from .engine.runner import Clock, SystemClock, no_checkpoint


def new_run_id(target: str) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return f"up-{target}-{stamp}-{secrets.token_hex(2)}"


def bot_identity(config: Config) -> str:
    return config.identity or os.environ.get("UPGRADE_BOT_IDENTITY") or socket.gethostname()


def redis_url_for(config: Config, *, require_env: bool) -> str:
    """``serve`` requires REDIS_URL; headless commands fall back to the config's redis_url."""
    url = os.environ.get("REDIS_URL")
    if url:
        return url
    if require_env:
        raise ConfigError(
            "environment",
            [
                "REDIS_URL is not set: the bot keeps every run's state in Redis and will not "
                "start without it (a bot whose state vanishes with its pod is worse than no bot)"
            ],
        )
    if config.redis_url:
        return config.redis_url
    raise ConfigError(
        "environment", ["REDIS_URL is not set and the configuration has no redis_url"]
    )


@asynccontextmanager
async def engine_for(
    config: Config,
    *,
    config_dir: Path,
    redis_url: str,
    clock: Clock | None = None,
    checkpoint: Callable[[str, str], None] = no_checkpoint,
    poll_interval_s: float = 0.2,
    identity: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> AsyncIterator[Engine]:
    """The engine on ``redis_url`` (any REDIS_URL form) with the ``REDIS_*`` options of
    ``environ`` (default: this process's environment); raises ConfigError on bad settings."""
    store = RedisStore.from_url(
        redis_url,
        environ=os.environ if environ is None else environ,
        prefix=config.store.key_prefix,
        retention_s=config.store.audit_retention_days * 86400,
    )
    backends = {g.name: build_backend(g) for g in config.groups}
    cp = ControlPlaneClient.from_config(config.control_plane) if config.control_plane else None
    clock = clock or SystemClock()
    performer = EffectPerformer(config, backends, cp=cp, base_dir=config_dir, clock=clock)
    engine = Engine(
        config=config,
        store=store,
        performer=performer,
        identity=identity or bot_identity(config),
        new_id=new_run_id,
        clock=clock,
        poll_interval_s=poll_interval_s,
        checkpoint=checkpoint,
    )
    try:
        await store.ping()
        yield engine
    finally:
        await performer.close()
        await store.close()
