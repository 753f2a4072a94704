"""How the bot logs: text for people, or one JSON object per line for a log pipeline, each line
with the run, group and slot it is about (``engine.logctx``), and every secret it was given
redacted — whatever logged it (the bot, slack_sdk, redis-py, a backend) and whatever the level.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping
from urllib.parse import unquote, urlsplit

from pythonjsonlogger.json import JsonFormatter

from .engine import logctx

FORMATS = ("text", "json")
MASK = "***"

SECRET_NAME = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|APIKEY|PRIVATE_KEY|CREDENTIAL)")
"""Environment variables whose values are secrets (SLACK_BOT_TOKEN, CP_API_KEY, …)."""
URL_NAME = re.compile(r"_URL$|_URI$|_DSN$")
"""Environment variables that may carry a password in a URL (REDIS_URL)."""
PATTERNS = (
    re.compile(r"xox[abposr]-[A-Za-z0-9-]{6,}"),  # Slack bot/user/config tokens
    re.compile(r"xapp-[A-Za-z0-9-]{6,}"),  # Slack app-level tokens (Socket Mode)
    re.compile(r"(?<=://)[^\s/@:]*:[^\s/@]+(?=@)"),  # user:password@ in any URL
)
MIN_SECRET = 6
"""Shorter values are not masked as literals (masking "abc" everywhere mangles logs)."""


def secrets_in(environ: Mapping[str, str]) -> list[str]:
    """The secret values in ``environ``: variables named like secrets, and the passwords inside
    URL-valued variables."""
    found: set[str] = set()
    for name, value in environ.items():
        if not value:
            continue
        if SECRET_NAME.search(name.upper()):
            found.add(value)
        elif URL_NAME.search(name.upper()) and "@" in value:
            try:
                password = urlsplit(value.split(",", 1)[0]).password
            except ValueError:
                continue
            if password:
                found.update({password, unquote(password)})
    return sorted((s for s in found if len(s) >= MIN_SECRET), key=len, reverse=True)


class Redactor:
    """Masks known secret values and secret-shaped strings in text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets = sorted({s for s in secrets if len(s) >= MIN_SECRET}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        for pattern in PATTERNS:
            text = pattern.sub(MASK, text)
        return text


class _Context(logging.Filter):
    """Puts the run/group/slot ids bound where the line was logged onto the record."""

    def filter(self, record: logging.LogRecord) -> bool:
        ids = logctx.current()
        for name in ("run", "group", "slot"):
            setattr(record, name, ids.get(name))
        record.context = "".join(f" [{k}={v}]" for k, v in ids.items())
        return True


class _Redacting(logging.Formatter):
    """Formats with ``inner``, then redacts the whole line (message, arguments, traceback)."""

    def __init__(self, inner: logging.Formatter, redact: Redactor) -> None:
        super().__init__()
        self.inner = inner
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        return self.redact(self.inner.format(record))


def formatter(fmt: str, redact: Redactor) -> logging.Formatter:
    if fmt == "json":
        # python-json-logger (nhairs/python-json-logger, docs "Quickstart"): the named fields
        # of the format string become keys; None-valued ids are dropped below.
        inner: logging.Formatter = _JsonLine(
            "%(asctime)s %(levelname)s %(name)s %(message)s %(run)s %(group)s %(slot)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            datefmt="%Y-%m-%dT%H:%M:%S%z",
        )
    else:
        inner = logging.Formatter("%(asctime)s %(levelname)s %(name)s:%(context)s %(message)s")
    return _Redacting(inner, redact)


class _JsonLine(JsonFormatter):
    def process_log_record(self, log_data: dict) -> dict:  # type: ignore[override]
        return {k: v for k, v in log_data.items() if v is not None}


def configure(
    fmt: str = "text",
    level: str = "INFO",
    *,
    environ: Mapping[str, str] | None = None,
    extra_secrets: Iterable[str] = (),
    stream: object = None,
) -> Redactor:
    """Set up the root logger for ``serve``: one handler on stderr (or ``stream``)."""
    if fmt not in FORMATS:
        raise ValueError(f"log format '{fmt}' is not one of {', '.join(FORMATS)}")
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"log level '{level}' is not one of DEBUG, INFO, WARNING, ERROR")
    redact = Redactor([*secrets_in(os.environ if environ is None else environ), *extra_secrets])
    handler = logging.StreamHandler(stream)  # type: ignore[arg-type]
    handler.addFilter(_Context())
    handler.setFormatter(formatter(fmt, redact))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    # One line a second from the scheduler otherwise; DEBUG asks for everything.
    if numeric > logging.DEBUG:
        logging.getLogger("apscheduler").setLevel(logging.WARNING)
    return redact
