"""What a sandbox fleet looks like: groups, slots, versions and the fault knobs per version.

The spec is written to ``DIR/sandbox.json`` by ``sandbox up`` and read by the daemon. Fault knobs
live here and only here: the bot never sees them and has to discover a bad release by observing.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

GROUP_NAMES = ["prod-eu", "prod-us", "prod-ap", "prod-sa", "prod-af", "prod-me", "prod-oc"]
READINESS_MODES = ("status", "proxy", "tcp")
FAULT_KINDS = (
    "never-ready",
    "slow-start",
    "errors",
    "latency",
    "no-cp",
    "no-config",
    "not-found",
)
VERSION_IN_TAG = re.compile(r"(\d+(?:\.\d+){2,4})")


def group_names(count: int) -> list[str]:
    return [GROUP_NAMES[i] if i < len(GROUP_NAMES) else f"group-{i + 1}" for i in range(count)]


@dataclass(frozen=True)
class Fault:
    """The knobs of one version, as the simulator takes them."""

    never_ready: bool = False
    slow_start_s: float = 0.0
    error_ratio: float = 0.0
    added_latency_ms: float = 0.0
    no_cp: bool = False
    no_config: bool = False
    not_found_ratio: float = 0.0
    only_slot: int | None = None
    """The fault hits only the slot with this index in each group (``errors@1``)."""

    def merged(self, other: Fault) -> Fault:
        return Fault(
            never_ready=self.never_ready or other.never_ready,
            slow_start_s=max(self.slow_start_s, other.slow_start_s),
            error_ratio=max(self.error_ratio, other.error_ratio),
            added_latency_ms=max(self.added_latency_ms, other.added_latency_ms),
            no_cp=self.no_cp or other.no_cp,
            no_config=self.no_config or other.no_config,
            not_found_ratio=max(self.not_found_ratio, other.not_found_ratio),
            only_slot=other.only_slot if other.only_slot is not None else self.only_slot,
        )

    def knobs(self) -> dict[str, object]:
        """What the simulator's ``--faults`` takes (everything but where the fault applies)."""
        return {k: v for k, v in asdict(self).items() if k != "only_slot"}


def parse_fault(text: str) -> tuple[str, Fault]:
    """``3.8.1=errors:0.2`` → ("3.8.1", Fault(error_ratio=0.2)); ``KIND@N`` limits the fault to
    the slot with index N of each group. Raises ValueError with advice."""
    version, sep, kind_spec = text.partition("=")
    if not sep or not re.fullmatch(r"\d+(?:\.\d+){2,4}", version):
        raise ValueError(f"'{text}': expected VERSION=KIND, e.g. 3.8.1=errors:0.2")
    kind, _, arg = kind_spec.partition(":")
    kind, at, where = kind.partition("@")
    only_slot = None
    if at:
        if not where.isdigit():
            raise ValueError(f"'{text}': '@{where}' is not a slot index (e.g. errors@1)")
        only_slot = int(where)
    try:
        value = float(arg) if arg else None
    except ValueError:
        raise ValueError(f"'{text}': '{arg}' is not a number") from None
    fault = _fault(text, kind, value)
    return version, replace(fault, only_slot=only_slot) if at else fault


def _fault(text: str, kind: str, value: float | None) -> Fault:
    if kind == "never-ready":
        return Fault(never_ready=True)
    if kind == "slow-start":
        return Fault(slow_start_s=value if value is not None else 5.0)
    if kind == "errors":
        ratio = value if value is not None else 0.2
        if not 0 < ratio <= 1:
            raise ValueError(f"'{text}': the error ratio must be in (0, 1]")
        return Fault(error_ratio=ratio)
    if kind == "latency":
        return Fault(added_latency_ms=value if value is not None else 200.0)
    if kind == "no-cp":
        return Fault(no_cp=True)
    if kind == "no-config":
        return Fault(no_config=True)
    if kind == "not-found":
        ratio = value if value is not None else 0.2
        if not 0 < ratio <= 1:
            raise ValueError(f"'{text}': the not-found ratio must be in (0, 1]")
        return Fault(not_found_ratio=ratio)
    raise ValueError(
        f"'{text}': unknown fault kind '{kind}'; expected one of {', '.join(FAULT_KINDS)}"
    )


def version_of_image(image: str) -> str:
    """The gateway version an image runs: the first ``X.Y.Z`` in its tag."""
    tag = image.rsplit(":", 1)[-1] if ":" in image.rsplit("/", 1)[-1] else ""
    match = VERSION_IN_TAG.search(tag)
    if not match:
        raise ValueError(f"image '{image}' has no version (X.Y.Z or W.X.Y.Z) in its tag")
    return match.group(1)


@dataclass
class SandboxSpec:
    groups: list[str]
    instances: int = 3
    version: str = "3.8.0"
    product: str = "apisix"
    repository: str = "sandbox/apisix"
    faults: dict[str, Fault] = field(default_factory=dict)
    rate_per_s: float = 150.0
    latency_ms: float = 50.0
    ready_delay_s: float = 0.5
    cp_version: str | None = None
    heartbeat_interval_s: float = 10.0
    """How often instances heartbeat to the CP stand-in (a real data plane: every 10 s)."""
    readiness: str = "status"
    smoke: bool = True
    exporter_refresh_s: float = 0.0
    """Instances of versions from 3.14 serve a cached exposition renewed this often (APISIX's
    ``refresh_interval``; 0: every version renders on each scrape, as before 3.14)."""
    """Whether the bot's config smoke-tests each new instance (GET /smoke, a mocked route)."""
    """How the bot's config judges an instance ready (``backend.readiness.mode``): status,
    proxy or tcp."""
    health_interval_s: float = 0.2
    health_timeout_s: float = 5.0
    """How long a front door's readiness check may take. Generous on purpose: on a loaded
    machine a 1 s check times out for every member at once, and the front door then answers
    503 for a fleet that is fine."""

    def metrics_refresh_for(self, version: str) -> float:
        """The exporter refresh interval of ``version``'s instances (0 before 3.14)."""
        parts = tuple(int(p) for p in version.split(".")[:2])
        return self.exporter_refresh_s if parts >= (3, 14) else 0.0

    def image_for(self, version: str) -> str:
        return f"{self.repository}:{version}"

    def fault_for(self, version: str, slot_index: int | None = None) -> Fault:
        """The fault of ``version`` (on the slot with ``slot_index``, when one is given)."""
        fault = self.faults.get(version, Fault())
        if slot_index is not None and fault.only_slot not in (None, slot_index):
            return Fault()
        return fault

    def slot_ids(self, group: str) -> list[str]:
        return [f"{group}/{i}" for i in range(self.instances)]

    def save(self, path: Path) -> None:
        data = asdict(self)
        path.write_text(json.dumps(data, indent=2))

    @classmethod
    def load(cls, path: Path) -> SandboxSpec:
        data = json.loads(path.read_text())
        data["faults"] = {v: Fault(**f) for v, f in data.get("faults", {}).items()}
        return cls(**data)
