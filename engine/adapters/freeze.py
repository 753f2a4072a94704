"""The configuration-freeze signal of plain APISIX: the etcd modify index its instances export.

APISIX's prometheus exporter publishes ``apisix_etcd_modify_indexes{key="max_modify_index"}``:
the highest etcd ``modifiedIndex`` among the routes, services, SSLs, consumers, global rules,
upstreams, stream routes and protos an instance has loaded (apache/apisix
``apisix/plugins/prometheus/exporter.lua`` @f519a0f0, ``etcd_modify_index``; listed in
``docs/en/latest/plugins/prometheus.md``). Any configuration change moves it. It exists only when
the instance reads its configuration from etcd (``config.type == "etcd"``, not standalone YAML),
and not in stream-only mode — then the freeze cannot be verified this way, and the run says so.

API7 EE: the data plane reports its configuration revision to the CP in its heartbeat
(``conf_server_revision``), but the Admin API's instance list does not return it (API7 EE Admin
API reference, api7/docs.apiseven.com ``enterprise_versioned_docs/version-3.2.14.6/reference/
admin-api.json`` @faf96f0e, ``listInstances``), and no other endpoint gives a group's revision.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from .scrape import METRICS_PATH

INDEX_METRIC = "apisix_etcd_modify_indexes"
INDEX_KEY = "max_modify_index"
NOT_VERIFIABLE_API7 = (
    "config freeze not verifiable here: API7 EE's Admin API returns no configuration revision "
    "(the instances report theirs to the CP in heartbeats, but GET /api/instances does not list "
    "it) — do not change configuration until the run ends"
)
NOT_VERIFIABLE_NO_INDEX = (
    "config freeze not verifiable here: no instance exports "
    'apisix_etcd_modify_indexes{key="max_modify_index"} (standalone configuration, or the '
    "prometheus plugin is off) — do not change configuration until the run ends"
)


def modify_index(text: str) -> int | None:
    """``apisix_etcd_modify_indexes{key="max_modify_index"}`` in prometheus text, if present."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == INDEX_METRIC and sample.labels.get("key") == INDEX_KEY:
                if math.isfinite(sample.value):
                    return int(sample.value)
    return None


async def _one(base_url: str, client: httpx.AsyncClient) -> int | None:
    try:
        resp = await client.get(base_url.rstrip("/") + METRICS_PATH)
    except httpx.HTTPError:
        return None  # an instance being replaced; the others still tell
    if resp.status_code != 200:
        return None
    try:
        return modify_index(resp.text)
    except ValueError:
        return None


async def config_index(
    metrics_urls: Mapping[str, str], client: httpx.AsyncClient
) -> dict[str, Any]:
    """The freeze signal over the instances (slot → metrics base URL): the highest index any of
    them has loaded, or a ``skipped`` note when none exports it."""
    slots = sorted(metrics_urls)
    found = await asyncio.gather(*(_one(metrics_urls[s], client) for s in slots))
    by_slot = {s: i for s, i in zip(slots, found, strict=True) if i is not None}
    if not by_slot:
        return {"skipped": NOT_VERIFIABLE_NO_INDEX}
    return {"revision": max(by_slot.values()), "by_slot": by_slot, "source": INDEX_METRIC}
