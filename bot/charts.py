"""A small PNG per group, for people who would rather look than read: the 5xx ratio, the 4xx
ratio and the p99 latency over the group's whole window — the baseline, each look taken while it
was replaced, the settle window after, and the metrics source's own series where it keeps one —
against the limits the verdict applied, with the moments instances were replaced marked.

Sized for a phone (about 640 x 440 px). Pure: a run in, PNG bytes out. Drawn with matplotlib's
object API (no pyplot, no global state), so that charts can be drawn in a worker thread.
"""

from __future__ import annotations

import io
from typing import Any

from upgrade_bot.engine import GroupRun, Run
from upgrade_bot.engine.metrics import window_point

COLORS = {"pass": "#2e7d32", "fail": "#c62828", "inconclusive": "#ef6c00"}
BEFORE_COLOR = "#546e7a"
LIMIT_COLOR = "#212121"
REPLACED_COLOR = "#1565c0"


WATCH_COLOR = "#6a1b9a"
SOURCE_COLOR = "#90a4ae"
MAX_BYTES = 100_000
"""A chart stays under this size (Slack shows it inline on a phone)."""


def chartable(g: GroupRun) -> bool:
    """Whether the group has both windows measured (a chart would show something)."""
    return bool(g.before and g.after and g.verdict and g.baseline_snapshot and g.settle_snapshot)


def points_of(g: GroupRun) -> list[dict[str, Any]]:
    """The group's points over time; a record saved before points were kept has its two
    windows only."""
    if g.points:
        return list(g.points)
    return [
        window_point(kind, snapshot, summary)
        for kind, snapshot, summary in (
            ("baseline", g.baseline_snapshot, g.before),
            ("settle", g.settle_snapshot, g.after),
        )
        if snapshot and summary
    ]


def filename(run: Run, group: str) -> str:
    return f"{run.id}-{group}.png"


def title(run: Run, g: GroupRun) -> str:
    phase = str((g.verdict or {}).get("phase", "")).upper()
    versions = sorted({s.previous_version for s in g.slots if s.previous_version})
    before = "/".join(versions) or "?"
    return f"{g.name} · {before} → {run.target_version} · {phase}"


def group_chart(run: Run, group: str) -> bytes | None:
    """The group's chart as PNG bytes, or None while its windows are not both measured."""
    fig = group_figure(run, group)
    if fig is None:
        return None
    out = io.BytesIO()
    fig.savefig(out, format="png")
    return out.getvalue()


def group_figure(run: Run, group: str) -> Any:
    """The group's chart as a matplotlib Figure (None while its windows are not both
    measured); x is seconds since the group's baseline started."""
    g = run.group(group)
    if not chartable(g):
        return None
    assert g.verdict and g.baseline_snapshot
    origin = float(g.baseline_snapshot["taken_at"])
    points = points_of(g)
    phase = str(g.verdict.get("phase", ""))
    limits = g.verdict.get("limits") or {}
    colors = {
        "baseline": BEFORE_COLOR,
        "watch": WATCH_COLOR,
        "settle": COLORS.get(phase, "black"),
    }

    # matplotlib takes ~2 s to import: load it when a chart is drawn, not with every CLI
    # command that happens to import the bot.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.4), dpi=100)
    panels = fig.subplots(3, 1, sharex=True)
    for axes, (label, value, limit_key, limit_label) in zip(
        panels,
        (
            ("5xx %", lambda s: 100 * s["ratio_5xx"], "ratio_5xx", "limit"),
            ("4xx %", lambda s: 100 * s["ratio_4xx"], "ratio_404", "404 limit"),
            ("p99 ms", lambda s: s.get("p99_ms"), "p99_ms", "limit"),
        ),
        strict=True,
    ):
        scale = 100 if limit_key.startswith("ratio") else 1
        limit = limits.get(limit_key)
        _series(axes, label, origin, points, value, colors)
        if limit is not None:
            axes.axhline(
                limit * scale, color=LIMIT_COLOR, linewidth=1, linestyle="--", label=limit_label
            )
        for i, t in enumerate(g.replaced_at):
            axes.axvline(
                t - origin,
                color=REPLACED_COLOR,
                linewidth=0.8,
                linestyle=":",
                label="instance replaced" if i == 0 else None,
            )
        top = axes.get_ylim()[1]
        axes.set_ylim(0, max(top, 1.0 if scale == 100 else top) * 1.1)
    panels[-1].set_xlabel("seconds since the group's baseline started", fontsize=8)
    panels[0].legend(loc="upper left", fontsize=6, frameon=False, ncol=5)
    fig.suptitle(title(run, g), fontsize=10, color=COLORS.get(phase, "black"))
    fig.tight_layout()
    return fig


def _series(
    axes: Any,
    label: str,
    origin: float,
    points: list[dict[str, Any]],
    value: Any,
    colors: dict[str, str],
) -> None:
    """Each window as a thick segment over its time span, the source's series as a line."""
    axes.set_ylabel(label, fontsize=8)
    axes.tick_params(labelsize=7)
    source = [p for p in points if p["kind"] == "source" and value(p["summary"]) is not None]
    if source:
        axes.plot(
            [(p["start"] + p["end"]) / 2 - origin for p in source],
            [value(p["summary"]) for p in source],
            color=SOURCE_COLOR,
            linewidth=1,
            label="series",
        )
    seen: set[str] = set()
    for p in points:
        v = value(p["summary"])
        if p["kind"] == "source" or v is None or p["end"] <= p["start"]:
            continue
        kind = p["kind"]
        axes.hlines(
            v,
            p["start"] - origin,
            p["end"] - origin,
            color=colors.get(kind, "black"),
            linewidth=3,
            label={"baseline": "before", "watch": "while replacing", "settle": "after"}.get(kind)
            if kind not in seen
            else None,
        )
        seen.add(kind)
