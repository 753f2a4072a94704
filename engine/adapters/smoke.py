"""Smoke requests through freshly replaced gateway instances.

For every slot (slot id → proxy base URL) send ``smoke.count`` requests ``smoke.method
smoke.path`` one after another, and report which ones did not answer an expected status.
Slots are probed concurrently. Per-request failures are the result, never an exception:
``{"passed", "requests", "failed", "failures"}`` where ``failures`` holds at most
:data:`MAX_FAILURE_LINES` lines such as ``prod-eu/2: 500 (expected 200)`` or
``prod-eu/3: ConnectError``. Lines name the slot, never the URL.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import httpx

from ..config import Smoke

MAX_FAILURE_LINES = 20


def _expected(statuses: list[int]) -> str:
    if len(statuses) == 1:
        return f"expected {statuses[0]}"
    return "expected one of " + ", ".join(str(s) for s in statuses)


async def _probe_slot(
    slot: str, base_url: str, smoke: Smoke, client: httpx.AsyncClient
) -> list[str]:
    """Failure lines of one slot's ``smoke.count`` sequential requests."""
    url = base_url.rstrip("/") + smoke.path
    expected = set(smoke.expect_status)
    failures: list[str] = []
    for n in range(1, smoke.count + 1):
        try:
            # stream: only the status matters, so a large body is never downloaded
            async with client.stream(smoke.method, url, timeout=smoke.timeout_s) as resp:
                status = resp.status_code
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            failures.append(f"{slot}/{n}: {type(exc).__name__}")
            continue
        if status not in expected:
            failures.append(f"{slot}/{n}: {status} ({_expected(smoke.expect_status)})")
    return failures


async def run_smoke(
    endpoints: Mapping[str, str], smoke: Smoke, client: httpx.AsyncClient
) -> dict[str, Any]:
    """Smoke-test every slot; ``passed`` only when every request answered an expected status.

    An empty ``endpoints`` does not pass: nothing was shown to work.
    """
    slots = list(endpoints)
    per_slot = await asyncio.gather(
        *(_probe_slot(slot, endpoints[slot], smoke, client) for slot in slots)
    )
    failures = [line for lines in per_slot for line in lines]
    requests = len(slots) * smoke.count
    shown = failures
    if len(failures) > MAX_FAILURE_LINES:
        # keep the list short enough for a chat message, and say what was left out
        hidden = len(failures) - (MAX_FAILURE_LINES - 1)
        shown = [*failures[: MAX_FAILURE_LINES - 1], f"… and {hidden} more failures"]
    if not slots:
        shown = ["no endpoints to smoke-test"]
    return {
        "passed": bool(slots) and not failures,
        "requests": requests,
        "failed": len(failures),
        "failures": shown,
    }
