"""Following a Deployment's rollout as Kubernetes reports it (see ``kubernetes.py``)."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from ..errors import NotReadyError, PermanentError
from .base import Progress, Rollout, SlotInfo, SlotProgress, SlotStep

if TYPE_CHECKING:
    from .kubernetes import KubernetesBackend


def pod_ready(pod: Any) -> bool:
    for cond in (pod.status.conditions if pod.status else None) or []:
        if cond.type == "Ready":
            return cond.status == "True"
    return False


def deadline_exceeded(d: Any) -> str | None:
    for cond in (d.status.conditions if d.status else None) or []:
        if cond.type == "Progressing" and cond.reason == "ProgressDeadlineExceeded":
            return cond.message or "ProgressDeadlineExceeded"
    return None


class Follower:
    """Reads the rollout until the asked positions are ready, it fails, or a pause comes."""

    def __init__(
        self,
        backend: KubernetesBackend,
        image: str,
        container: str,
        replicas: int,
        asked: list[str],
        progress: Progress | None,
    ) -> None:
        self.b = backend
        self.image = image
        self.container = container
        self.replicas = replicas
        self.asked = asked
        self.progress = progress
        self.ready: dict[str, SlotInfo] = {}
        self.started: set[str] = set()

    def _report(self, news: SlotProgress) -> None:
        if self.progress is not None:
            self.progress(news)

    def _position(self, slot_id: str) -> int:
        return int(slot_id.rsplit("/", 1)[1])

    async def follow(self, ready_timeout_s: float, pause: asyncio.Event | None) -> Rollout:
        since = time.monotonic()
        while True:
            d = await self.b.deployment()
            drift = self._drift(d)
            if drift:
                todo = [s for s in self.asked if s not in self.ready]
                error = PermanentError(drift)
                self._report(SlotProgress(todo[0], SlotStep.FAILED, error=error))
                return Rollout(
                    ready={s: self.ready[s] for s in self.asked if s in self.ready},
                    failed={todo[0]: error},
                    pending=tuple(todo[1:]),
                )
            pods = await self.b.pods(d)
            seen = (d.status.observed_generation or 0) >= (d.metadata.generation or 0)
            new = [p for p in pods if self._runs_image(p)]
            new_ready = [p for p in new if pod_ready(p)]
            complete = (
                seen
                and len(new) == len(pods) == self.replicas
                and len(new_ready) == self.replicas
                and (d.status.updated_replicas or 0) == self.replicas
                and (d.status.available_replicas or 0) == self.replicas
            )
            for slot_id in self.asked:
                position = self._position(slot_id)
                if slot_id in self.ready:
                    continue
                if position < len(new) and slot_id not in self.started:
                    self.started.add(slot_id)
                    self._report(SlotProgress(slot_id, SlotStep.STARTED))
                last = position == self.replicas - 1
                if seen and position < len(new_ready) and (complete or not last):
                    info = self.b._slot_info(slot_id, new_ready[position], self.container)
                    self.ready[slot_id] = info
                    self._report(SlotProgress(slot_id, SlotStep.READY, info=info))
                    since = time.monotonic()
            todo = [s for s in self.asked if s not in self.ready]
            if not todo:
                if not complete:
                    # The rollout goes no further than the engine asked: the metric watch
                    # judges these slots with the Deployment paused, and the next call (the
                    # next batch, or a rollback) unpauses it.
                    await self.b.pause_rollout()
                return Rollout(ready={s: self.ready[s] for s in self.asked}, failed={})
            stuck = deadline_exceeded(d) if seen else None
            timed_out = time.monotonic() - since > ready_timeout_s
            if stuck or timed_out:
                why = (
                    f"the rollout is stuck (ProgressDeadlineExceeded: {stuck})"
                    if stuck
                    else f"not ready within {ready_timeout_s:g}s"
                )
                message = (
                    f"{todo[0]}: {self.image} {why}; {len(new_ready)} of {self.replicas} pods "
                    "ready on it"
                )
                if not new_ready and not self.ready:
                    back = await self.b.undo(self.image)
                    if back:
                        message += f"; the Deployment was put back on {back}"
                error = NotReadyError(message)
                self._report(SlotProgress(todo[0], SlotStep.FAILED, error=error))
                return Rollout(
                    ready={s: self.ready[s] for s in self.asked if s in self.ready},
                    failed={todo[0]: error},
                    pending=tuple(todo[1:]),
                )
            if pause is not None and pause.is_set():
                await self.b.pause_rollout()
                return Rollout(
                    ready={s: self.ready[s] for s in self.asked if s in self.ready},
                    failed={},
                    pending=tuple(todo),
                    paused=True,
                )
            await asyncio.sleep(self.b.settings.poll_interval_s)

    def _runs_image(self, pod: Any) -> bool:
        for c in pod.spec.containers:
            if c.name == self.container:
                return c.image == self.image
        return False

    def _drift(self, d: Any) -> str | None:
        """A change someone else made while the bot waits (reported, never fought)."""
        replicas = d.spec.replicas if d.spec.replicas is not None else 1
        if replicas != self.replicas:
            return (
                f"{self.b.group}: the Deployment's replicas changed from {self.replicas} to "
                f"{replicas} during the rollout (an autoscaler?); upgrade-bot does not fight it: "
                "check the HorizontalPodAutoscaler and start the group again"
            )
        container = self.b.container_of(d.spec.template.spec)
        if container.image != self.image:
            return (
                f"{self.b.group}: the Deployment's image was changed to {container.image} while "
                f"upgrade-bot rolled out {self.image} (a GitOps controller such as Argo CD or "
                "Flux reverting it?); upgrade-bot does not fight it: change the image in Git"
            )
        return None
