"""The group chart: a PNG sized for a phone whose colours say the verdict — red when the window
after broke a limit, green when it passed — with the replacement moments marked."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from upgrade_bot.bot import charts

from ..engine.runs import NEW, Fleet, Sim, Traffic


def colour_count(png: bytes, hex_colour: str) -> int:
    """Pixels of exactly this colour (the thick lines are drawn in solid colours)."""
    rgb = tuple(int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    return int((pixels == np.array(rgb)).all(axis=2).sum())


def chart_of(traffic: Traffic | None = None) -> bytes:
    fleet = Fleet()
    if traffic is not None:
        fleet.traffic[NEW] = traffic
    sim = Sim(fleet=fleet)
    sim.drive_to_gate("staging")
    png = charts.group_chart(sim.run, "staging")
    assert png is not None
    return png


def test_a_passing_group_is_drawn_green_and_sized_for_a_phone() -> None:
    png = chart_of()
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.size == (640, 440)
    assert colour_count(png, charts.COLORS["pass"]) > 500
    assert colour_count(png, charts.COLORS["fail"]) == 0
    assert colour_count(png, charts.REPLACED_COLOR) > 0  # the replacement moments


def test_a_failing_group_is_drawn_red() -> None:
    png = chart_of(Traffic(ratio_5xx=0.05, latency_ms=60))
    assert colour_count(png, charts.COLORS["fail"]) > 500
    assert colour_count(png, charts.COLORS["pass"]) == 0


def test_no_chart_before_both_windows_are_measured() -> None:
    sim = Sim()
    assert charts.group_chart(sim.run, "staging") is None
    sim.drive_to_gate("staging")
    assert charts.group_chart(sim.run, "prod-eu") is None  # not yet upgraded
    assert charts.title(sim.run, sim.run.group("staging")).startswith("staging · ")
    assert charts.title(sim.run, sim.run.group("staging")).endswith("· PASS")


def test_the_chart_is_a_time_series_of_every_window_with_the_replacements_where_they_happened():
    sim = Sim()
    sim.drive_to_gate("staging")
    g = sim.run.group("staging")
    kinds = [p["kind"] for p in g.points]
    assert kinds == ["baseline", "watch", "settle"]  # the record keeps them for history

    fig = charts.group_figure(sim.run, "staging")
    origin = float(g.baseline_snapshot["taken_at"])
    latency = fig.axes[2]
    assert [a.get_ylabel() for a in fig.axes] == ["5xx %", "4xx %", "p99 ms"]
    for axes in fig.axes:
        marks = sorted(
            line.get_xdata()[0]
            for line in axes.get_lines()
            if line.get_color() == charts.REPLACED_COLOR
        )
        assert marks == sorted(t - origin for t in g.replaced_at)
        # one thick segment per window, where the window was
        spans = sorted(tuple(seg[:, 0]) for coll in axes.collections for seg in coll.get_segments())
        assert spans == sorted(
            (p["start"] - origin, p["end"] - origin) for p in g.points if p["end"] > p["start"]
        )
    limits = {line.get_label(): line.get_ydata()[0] for line in latency.get_lines()}
    assert limits["limit"] == sim.run.group("staging").verdict["limits"]["p99_ms"]
    png = charts.group_chart(sim.run, "staging")
    assert png is not None and png.startswith(b"\x89PNG") and len(png) < charts.MAX_BYTES


def test_a_source_series_is_drawn_as_a_line_under_the_windows() -> None:
    sim = Sim()
    sim.drive_to_gate("staging")
    g = sim.run.group("staging")
    series = [
        {"kind": "source", "start": g.points[0]["start"] + i, "end": g.points[0]["start"] + i + 1,
         "summary": {**g.points[0]["summary"], "ratio_5xx": i / 100}}
        for i in range(30)
    ]  # fmt: skip
    run = sim.run.with_group(g.with_(points=(*g.points, *series)))
    fig = charts.group_figure(run, "staging")
    (line,) = [x for x in fig.axes[0].get_lines() if x.get_label() == "series"]
    assert list(line.get_ydata()) == pytest.approx([float(i) for i in range(30)])  # percent
