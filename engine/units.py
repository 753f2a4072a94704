"""One way to show a ratio as a percentage and a latency in milliseconds, everywhere.

The verdict's reasons, the Slack summary, the CLI transcript and the demo report all format
through these two functions, so a number reads the same wherever a person meets it.
"""

from __future__ import annotations

from typing import Any


def pct(ratio: Any) -> str:
    """``0.0123`` → ``"1.2%"``, two decimals below 1 % so that a small ratio does not read as
    none (``"0.10%"``), and zero as ``"0.0%"``. ``None`` → ``"n/a"``."""
    if ratio is None:
        return "n/a"
    percent = float(ratio) * 100
    if percent == 0 or abs(percent) >= 1:
        return f"{percent:.1f}%"
    return f"{percent:.2f}%"


def ms(value: Any) -> str:
    """``12.34`` → ``"12.3 ms"``, ``10.0`` → ``"10 ms"``, ``250.4`` → ``"250 ms"``; ``None`` →
    ``"n/a"``."""
    if value is None:
        return "n/a"
    v = float(value)
    if abs(v) >= 100:
        return f"{v:.0f} ms"
    text = f"{v:.1f}".rstrip("0").rstrip(".")
    return f"{text} ms"
