"""Local backend: slots are gateway simulator processes of the sandbox.

It replaces an instance the way a careful operator does: start the replacement beside the old
one, wait until it is ready (the group's ``readiness``: by default ``/status/ready`` answers
200; see :mod:`.readiness`), hand the slot over, then stop the old instance
with SIGQUIT so that it stops accepting and finishes what is in flight. ``stop_signal="SIGTERM"``
exists only as the sandbox's negative control: it cuts in-flight requests.
"""

from __future__ import annotations

import hashlib
from typing import Any

import httpx

from .. import config
from ..errors import NotReadyError, PermanentError, TemporaryError
from .base import PerSlotRollout, SlotInfo
from .readiness import Probe, preflight_warnings, wait_ready

FENCE_HEADER = "X-Upgrade-Fence"


def build(group: str, settings: config.LocalBackend) -> LocalBackend:
    """The backend of ``group`` as its configuration's ``backend`` section describes it."""
    return LocalBackend(
        group,
        settings.sandbox_url,
        stop_signal=settings.stop_signal,
        stop_timeout_s=settings.stop_timeout_s,
        readiness=settings.readiness,
    )


class LocalBackend(PerSlotRollout):
    def __init__(
        self,
        group: str,
        sandbox_url: str,
        *,
        stop_signal: str = "SIGQUIT",
        stop_timeout_s: float = 60.0,
        readiness: config.Readiness = config.StatusReadiness(mode="status"),
        poll_interval_s: float = 0.1,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.group = group
        self.stop_signal = stop_signal
        self.stop_timeout_s = stop_timeout_s
        self.readiness = readiness
        self.poll_interval_s = poll_interval_s
        self._client = client or httpx.AsyncClient(base_url=sandbox_url, timeout=30.0)

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            resp = await self._client.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise TemporaryError(f"sandbox unreachable ({type(exc).__name__})") from None
        if resp.status_code >= 500:
            raise TemporaryError(f"sandbox error {resp.status_code}: {_error(resp)}")
        if resp.status_code == 409 and "fenced" in resp.text:
            raise PermanentError(f"the sandbox refused a stale driver: {_error(resp)}")
        if resp.status_code >= 400:
            raise PermanentError(f"sandbox refused {method} {path}: {_error(resp)}")
        return resp.json()

    async def list_slots(self) -> list[SlotInfo]:
        data = await self._call("GET", f"/groups/{self.group}/slots")
        return [_slot_info(s) for s in data["slots"]]

    async def ensure_image(
        self, slot_id: str, image: str, *, ready_timeout_s: float, fence: str | None = None
    ) -> SlotInfo:
        """Bring ``slot_id`` to ``image``: start beside, wait ready, hand over, drain the old."""
        self._check_slot(slot_id)
        headers = {FENCE_HEADER: fence} if fence else {}
        slot = await self._call("GET", f"/slots/{slot_id}")
        current = slot.get("current") or {}
        if slot.get("image") == image and slot.get("ready"):
            await self._stop_others(slot, keep=current.get("id"), headers=headers)
            return _slot_info(slot)
        # A replacement left by an interrupted attempt is reused, never doubled.
        pending = [
            i for i in slot["instances"] if i["image"] == image and i["id"] != current.get("id")
        ]
        new = (
            pending[0]
            if pending
            else await self._call(
                "POST", f"/slots/{slot_id}/instances", json={"image": image}, headers=headers
            )
        )
        probe = await self._wait_ready(new["id"], ready_timeout_s)
        if not probe.ready:
            await self._stop(new["id"], "SIGTERM", headers)  # it never received traffic
            raise NotReadyError(
                f"{slot_id}: {image} was not ready within {ready_timeout_s:g}s "
                f"(last probe: {probe.detail}; the slot keeps serving {slot.get('image')})"
            )
        await self._call(
            "POST", f"/slots/{slot_id}/activate", json={"instance": new["id"]}, headers=headers
        )
        slot = await self._call("GET", f"/slots/{slot_id}")
        await self._stop_others(slot, keep=new["id"], headers=headers)
        return _slot_info(await self._call("GET", f"/slots/{slot_id}"))

    async def _stop_others(
        self, slot: dict[str, Any], keep: str | None, headers: dict[str, str]
    ) -> None:
        for inst in slot["instances"]:
            if inst["id"] != keep:
                await self._stop(inst["id"], self.stop_signal, headers)

    async def _stop(self, inst_id: str, signal_name: str, headers: dict[str, str]) -> None:
        await self._call(
            "POST",
            f"/instances/{inst_id}/stop",
            json={"signal": signal_name, "timeout_s": self.stop_timeout_s},
            timeout=self.stop_timeout_s + 10,
            headers=headers,
        )

    async def _wait_ready(self, inst_id: str, timeout_s: float) -> Probe:
        """Probe the instance itself, as a kubelet readiness probe would."""
        info = await self._call("GET", f"/instances/{inst_id}")
        return await wait_ready(
            self.readiness, info["endpoints"], timeout_s, poll_interval_s=self.poll_interval_s
        )

    def _check_slot(self, slot_id: str) -> None:
        if not slot_id.startswith(self.group + "/"):
            raise PermanentError(f"slot '{slot_id}' is not in group '{self.group}'")

    async def preflight(self) -> list[str]:
        warnings = preflight_warnings(self.readiness)
        if self.stop_signal != "SIGQUIT":
            warnings.append(
                f"instances are stopped with {self.stop_signal}: in-flight requests will be cut "
                "(use SIGQUIT for a graceful drain)"
            )
        return warnings

    async def close(self) -> None:
        await self._client.aclose()


def _error(resp: httpx.Response) -> str:
    try:
        return str(resp.json().get("error", resp.text))
    except ValueError:
        return resp.text[:200]


def _slot_info(slot: dict[str, Any]) -> SlotInfo:
    current = slot.get("current") or {}
    image = slot.get("image") or ""
    return SlotInfo(
        id=slot["id"],
        image=image,
        version=slot.get("version"),
        ready=bool(slot.get("ready")),
        # The sandbox has no registry: a stable stand-in digest of the image reference.
        digest="sha256:" + hashlib.sha256(image.encode()).hexdigest() if image else None,
        endpoints=current.get("endpoints", {}),
        # the simulator heartbeats with its instance id as its host name, as a pod would
        hostname=current.get("id"),
    )
