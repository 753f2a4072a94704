"""The runbook's step 9 in Slack: an anomaly during the observation window is posted in the
thread with Roll back offered, and the button rolls the upgrade back.

Bob approves a failing gate (people may; the verdict only recommends), so that the fleet carries
the bad release into the observation window, where the check-ins judge it with the same rules.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from upgrade_bot.sandbox.spec import parse_fault

from .harness import ALICE, BOB, CHANNEL, poll, running_bot, start_and_acknowledge

pytestmark = pytest.mark.traffic

OBSERVED = {
    "rollout": {"watch": False},  # the gate, not a mid-group halt, lets the release through
    "observation": {"window_s": 600, "checkin_interval_s": 1},
    "approval": {"required": 1},
}


async def test_an_alert_in_the_observation_window_offers_a_rollback_that_works(
    tmp_path: Path,
) -> None:
    async with running_bot(
        tmp_path,
        groups=1,
        production=False,
        defaults=OBSERVED,
        faults=dict([parse_fault("3.8.1=errors:0.3")]),
        slack={"charts": False},
    ) as bot:
        await start_and_acknowledge(bot)
        gate = await poll(lambda: bot.with_button("gate_approve"), "the gate")
        await bot.stub.users.click(BOB, CHANNEL, gate, "gate_approve")

        alert = await poll(lambda: bot.with_button("observe_rollback"), "the observation alert")
        text = str(alert)
        assert "fails since its upgrade" in text and "5xx ratio" in text
        await poll(lambda: "paused" in str(bot.run_message()), "the run paused by the alert")

        await bot.stub.users.click(ALICE, CHANNEL, alert, "observe_rollback")
        await poll(
            lambda: any("rolled back" in m.get("text", "") for m in bot.thread()),
            "the rollback's final summary",
        )
        truth = bot.handle.status()
        assert {s["version"] for s in truth["slots"]} == {"3.8.0"}
        assert truth["traffic"]["failed"] == 0
        assert bot.postings_are_unique()
