"""The compose file stays the source of truth: its service's ``image:`` line follows the group.

The next ``docker compose up`` recreates containers from the file, so a group upgraded (or rolled
back) by the bot must find its service's ``image:`` there too. Only that one value is rewritten,
in place: comments, order and quoting of everything else stay as they were. The line is found
through PyYAML's node positions (``yaml.compose``: ``start_mark``/``end_mark``), per the Compose
Specification's ``services.<name>.image`` (compose-spec/compose-spec ``spec.md``, "image").
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..errors import PermanentError


@dataclass(frozen=True)
class ImageChange:
    """The change of one service's image line: what the completion message shows."""

    file: str
    service: str
    old: str
    new: str

    def describe(self) -> str:
        return f"{self.file}: services.{self.service}.image: {self.old} → {self.new}"


def image_node(text: str, service: str, path: str) -> yaml.ScalarNode:
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        raise PermanentError(f"{path} is not valid YAML: {exc}") from None
    services = _child(root, "services")
    node = _child(services, service) if services is not None else None
    image = _child(node, "image") if node is not None else None
    if not isinstance(image, yaml.ScalarNode):
        raise PermanentError(f"{path} has no services.{service}.image to update")
    return image


def current_image(path: str | os.PathLike[str], service: str) -> str:
    return str(image_node(Path(path).read_text(), service, str(path)).value)


def set_image(path: str | os.PathLike[str], service: str, image: str) -> ImageChange | None:
    """Make ``services.<service>.image`` read ``image``; None when it already does."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise PermanentError(f"compose file {p} cannot be read ({exc.strerror})") from None
    node = image_node(text, service, str(p))
    if node.value == image:
        return None
    start, end = node.start_mark.index, node.end_mark.index
    quote = text[start] if text[start] in "'\"" else ""
    updated = text[:start] + f"{quote}{image}{quote}" + text[end:]
    tmp = p.with_name(p.name + ".upgrade-bot.tmp")
    try:
        tmp.write_text(updated)
        os.replace(tmp, p)
    except OSError as exc:
        raise PermanentError(f"compose file {p} cannot be written ({exc.strerror})") from None
    return ImageChange(file=str(p), service=service, old=str(node.value), new=image)


def _child(node: yaml.Node | None, key: str) -> yaml.Node | None:
    if not isinstance(node, yaml.MappingNode):
        return None
    for k, v in node.value:
        if isinstance(k, yaml.ScalarNode) and k.value == key:
            return v
    return None
