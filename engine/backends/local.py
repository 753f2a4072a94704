"""Local backend: slots are gateway simulator processes of the sandbox.

It replaces an instance the way a careful operator does: start the replacement beside the old
one, wait until ``/status/ready`` answers 200, hand the slot over, then stop the old instance
with SIGQUIT so that it stops accepting and finishes what is in flight. ``stop_signal="SIGTERM"``
exists only as the sandbox's negative control: it cuts in-flight requests.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

import httpx

from .. import config
from ..errors import NotReadyError, PermanentError, TemporaryError
from .base import PerSlotRollout, SlotInfo

FENCE_HEADER = "X-Upgrade-Fence"


def build(group: str, settings: config.LocalBackend) -> LocalBackend:
    """The backend of ``group`` as its configuration's ``backend`` section describes it."""
    return LocalBackend(
        group,
        settings.sandbox_url,
        stop_signal=settings.stop_signal,
        stop_timeout_s=settings.stop_timeout_s,
    )


class LocalBackend(PerSlotRollout):
    def __init__(
        self,
        group: str,
        sandbox_url: str,
        *,
        stop_signal: str = "SIGQUIT",
        stop_timeout_s: float = 60.0,
        poll_interval_s: float = 0.1,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.group = group
        self.stop_signal = stop_signal
        self.stop_timeout_s = stop_timeout_s
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
        if not await self._wait_ready(new["id"], ready_timeout_s):
            await self._stop(new["id"], "SIGTERM", headers)  # it never received traffic
            raise NotReadyError(
                f"{slot_id}: {image} was not ready within {ready_timeout_s:g}s "
                f"(the slot keeps serving {slot.get('image')})"
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

    async def _wait_ready(self, inst_id: str, timeout_s: float) -> bool:
        """Poll the instance's own status listener, as a kubelet readiness probe would."""
        info = await self._call("GET", f"/instances/{inst_id}")
        url = info["endpoints"]["status"] + "/status/ready"
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(timeout=2.0) as probe:
            while time.monotonic() < deadline:
                try:
                    if (await probe.get(url)).status_code == 200:
                        return True
                except httpx.TransportError:
                    pass
                await asyncio.sleep(self.poll_interval_s)
        return False

    def _check_slot(self, slot_id: str) -> None:
        if not slot_id.startswith(self.group + "/"):
            raise PermanentError(f"slot '{slot_id}' is not in group '{self.group}'")

    async def preflight(self) -> list[str]:
        warnings = []
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
