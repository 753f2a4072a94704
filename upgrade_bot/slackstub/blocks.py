"""Block Kit validation as Slack does it before storing a message, and the normalisation it applies.

Slack answers ``invalid_blocks`` with an ``errors`` list of ``"<reason> [json-pointer:/blocks/…]"``
strings (also echoed in ``response_metadata.messages`` with an ``[ERROR]`` prefix), and
``invalid_blocks_format`` when ``blocks`` is not a JSON array at all. Each block is first built with
``slack_sdk.models.blocks.Block.parse`` and serialised with ``to_dict()`` (which runs slack_sdk's
own validators on the block and its elements); on top of that come the documented limits slack_sdk
does not check or checks more loosely, and the ones that catch real mistakes: no more than 50
blocks, unique ``block_id`` (≤ 255 chars), text *objects* rather than bare strings, section text ≤
3000 and field text ≤ 2000 chars, header text ≤ 150 plain_text chars, 1 to 25 actions
elements and 1 to 10 context elements, button text ≤ 75 plain_text chars, ``action_id`` ≤ 255 and
unique within its block, button ``value`` ≤ 2000 chars, ``style`` primary/danger, and no
properties a block type does not have.

Normalisation mirrors what Slack returns for stored messages: every block gets a ``block_id`` (a
short random-looking one when the app gave none) and ``plain_text`` objects get ``emoji: true``.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from slack_sdk.models.blocks import Block

MAX_BLOCKS = 50
MAX_BLOCK_ID = 255
TEXT_TYPES = ("plain_text", "mrkdwn")


def parse_blocks_param(raw: Any) -> tuple[list[Any] | None, bool]:
    """``blocks`` from a request: a list (JSON body) or a JSON string (form body).

    Returns ``(blocks, well_formed)``; ``(None, True)`` when absent.
    """
    if raw is None or raw == "":
        return None, True
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            return None, False
    if not isinstance(raw, list):
        return None, False
    return raw, True


def _text_object(obj: Any, where: str, *, max_len: int, plain_only: bool = False) -> list[str]:
    if not isinstance(obj, dict):
        return [f"must be a text object [json-pointer:{where}]"]
    kind = obj.get("type")
    allowed = ("plain_text",) if plain_only else TEXT_TYPES
    if kind not in allowed:
        return [f"must be one of {', '.join(allowed)} [json-pointer:{where}/type]"]
    text = obj.get("text")
    if not isinstance(text, str) or not text:
        return [f"must be a non-empty string [json-pointer:{where}/text]"]
    if len(text) > max_len:
        return [f"must be less than {max_len + 1} characters [json-pointer:{where}/text]"]
    return []


def _button(el: dict[str, Any], where: str) -> list[str]:
    errors = _text_object(el.get("text"), f"{where}/text", max_len=75, plain_only=True)
    value = el.get("value")
    if value is not None and (not isinstance(value, str) or len(value) > 2000):
        errors.append(f"must be a string of at most 2000 characters [json-pointer:{where}/value]")
    url = el.get("url")
    if url is not None and (not isinstance(url, str) or len(url) > 3000):
        errors.append(f"must be a string of at most 3000 characters [json-pointer:{where}/url]")
    if el.get("style") not in (None, "primary", "danger"):
        errors.append(f"must be one of primary, danger [json-pointer:{where}/style]")
    return errors


def _actions(block: dict[str, Any], where: str) -> list[str]:
    elements = block.get("elements")
    if not isinstance(elements, list) or not 1 <= len(elements) <= 25:
        return [f"must contain between 1 and 25 elements [json-pointer:{where}/elements]"]
    errors: list[str] = []
    seen: set[str] = set()
    for j, el in enumerate(elements):
        at = f"{where}/elements/{j}"
        if not isinstance(el, dict) or "type" not in el:
            errors.append(f"must be an element object [json-pointer:{at}]")
            continue
        action_id = el.get("action_id")
        if action_id is not None:
            if not isinstance(action_id, str) or len(action_id) > 255:
                errors.append(f"must be at most 255 characters [json-pointer:{at}/action_id]")
            elif action_id in seen:
                errors.append(f"action_id '{action_id}' already exists [json-pointer:{at}]")
            else:
                seen.add(action_id)
        if el["type"] == "button":
            errors.extend(_button(el, at))
    return errors


def _type_specific(block: dict[str, Any], where: str) -> list[str]:
    kind = block["type"]
    errors: list[str] = []
    if kind == "section":
        if block.get("text") is None and not block.get("fields"):
            errors.append(f"must provide text or fields [json-pointer:{where}]")
        if block.get("text") is not None:
            errors += _text_object(block["text"], f"{where}/text", max_len=3000)
        fields = block.get("fields")
        if fields is not None:
            if not isinstance(fields, list) or len(fields) > 10:
                errors.append(f"must be at most 10 items [json-pointer:{where}/fields]")
            else:
                for j, f in enumerate(fields):
                    errors += _text_object(f, f"{where}/fields/{j}", max_len=2000)
        accessory = block.get("accessory")
        if isinstance(accessory, dict) and accessory.get("type") == "button":
            errors += _button(accessory, f"{where}/accessory")
    elif kind == "header":
        errors += _text_object(block.get("text"), f"{where}/text", max_len=150, plain_only=True)
    elif kind == "actions":
        errors += _actions(block, where)
    elif kind == "context":
        elements = block.get("elements")
        if not isinstance(elements, list) or not 1 <= len(elements) <= 10:
            errors.append(f"must contain between 1 and 10 elements [json-pointer:{where}/elements]")
    elif kind == "image":
        alt = block.get("alt_text")
        if not isinstance(alt, str) or not alt or len(alt) > 2000:
            errors.append(f"must be 1 to 2000 characters [json-pointer:{where}/alt_text]")
    return errors


def validate_block(block: Any, index: int, seen_ids: set[str]) -> list[str]:
    """Reasons one block is invalid, each naming where (empty when valid)."""
    where = f"/blocks/{index}"
    if not isinstance(block, dict) or not isinstance(block.get("type"), str):
        return [f"must be a block object with a type [json-pointer:{where}]"]
    try:
        parsed = Block.parse(copy.deepcopy(block))
        if parsed is None:
            return [f"unsupported type: {block['type']} [json-pointer:{where}/type]"]
        parsed.to_dict()  # runs slack_sdk's validators on the block and its elements
    except Exception as exc:  # any failure to build (TypeError, formation error) is malformed
        return [f"{type(exc).__name__}: {exc} [json-pointer:{where}]"]
    errors: list[str] = []
    unknown = set(block) - set(parsed.attributes) - {"type"}
    for key in sorted(unknown):
        errors.append(f"unsupported property '{key}' [json-pointer:{where}/{key}]")
    block_id = block.get("block_id")
    if block_id is not None:
        if not isinstance(block_id, str) or not block_id or len(block_id) > MAX_BLOCK_ID:
            errors.append(f"must be 1 to {MAX_BLOCK_ID} characters [json-pointer:{where}/block_id]")
        elif block_id in seen_ids:
            errors.append(f"block_id '{block_id}' already exists [json-pointer:{where}/block_id]")
        else:
            seen_ids.add(block_id)
    return errors + _type_specific(block, where)


def validate_blocks(blocks: list[Any]) -> list[str]:
    """Every reason a list of blocks would be refused with ``invalid_blocks``."""
    if len(blocks) > MAX_BLOCKS:
        return [f"no more than {MAX_BLOCKS} items allowed [json-pointer:/blocks]"]
    seen: set[str] = set()
    errors: list[str] = []
    for i, block in enumerate(blocks):
        errors.extend(validate_block(block, i, seen))
    return errors


def _emoji_defaults(node: Any) -> None:
    if isinstance(node, dict):
        if node.get("type") == "plain_text" and "emoji" not in node:
            node["emoji"] = True
        for value in node.values():
            _emoji_defaults(value)
    elif isinstance(node, list):
        for value in node:
            _emoji_defaults(value)


def normalise_blocks(blocks: list[dict[str, Any]], salt: str) -> list[dict[str, Any]]:
    """The blocks as Slack stores them: a ``block_id`` on each, ``emoji`` on plain text.

    Generated IDs derive from ``salt`` (the message ts) so they are stable for one message yet
    differ between messages, as Slack's do.
    """
    out = copy.deepcopy(blocks)
    taken = {b["block_id"] for b in out if "block_id" in b}
    for i, block in enumerate(out):
        if "block_id" not in block:
            digest = hashlib.sha1(f"{salt}:{i}".encode()).hexdigest()
            size = 5
            while digest[:size] in taken:  # never collide with an ID the app chose
                size += 1
            block["block_id"] = digest[:size]
            taken.add(block["block_id"])
        _emoji_defaults(block)
    return out
