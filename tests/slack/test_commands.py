"""The slash command's table drives parsing, help, usage lines and the listeners' answers."""

from __future__ import annotations

import dataclasses

import pytest

from upgrade_bot.bot import messages
from upgrade_bot.bot.commands import COMMANDS, ParseError, parse
from upgrade_bot.bot.listeners import ANSWERS, unanswered


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_subcommand_is_parsed_listed_in_help_and_answered(name: str) -> None:
    sub = COMMANDS[name]
    assert f"`/gw {sub.usage}` — {sub.summary}" in messages.help_text("/gw")
    assert messages.usage(name, "/gw") == f"Usage: `/gw {sub.usage}`"
    try:
        assert parse(name).action == name
    except ParseError as exc:  # it needs arguments: the answer shows its own usage
        assert exc.usage == sub.usage
    assert sub.answer is None or sub.answer in ANSWERS


def test_a_word_that_is_no_subcommand_is_refused_with_a_pointer_to_help() -> None:
    with pytest.raises(ParseError) as caught:
        parse("upgrade 3.8.1")
    assert caught.value.usage is None
    assert messages.usage_error(str(caught.value), None, "/gw").endswith("Try `/gw help`.")


def test_a_subcommand_whose_answer_is_missing_is_caught() -> None:
    planted = dataclasses.replace(COMMANDS["plan"], name="replan", answer="replan")
    assert unanswered([*COMMANDS.values(), planted], ANSWERS) == {"replan"}
    assert unanswered(COMMANDS.values(), ANSWERS) == set()
