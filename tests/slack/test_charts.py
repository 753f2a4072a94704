"""The group chart: a PNG sized for a phone whose colours say the verdict — red when the window
after broke a limit, green when it passed — with the replacement moments marked."""

from __future__ import annotations

import io

import numpy as np
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
