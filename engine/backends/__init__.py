"""Backends by the configuration's ``backend.type``: one registry entry per runtime.

Each entry names a module of this package exposing ``build(group, settings) -> Backend``
(``settings`` is the group's ``backend`` section). A module is imported only when a group uses
its type, so a runtime's SDK is loaded only where it is needed. Adding a runtime is one entry
here plus its own module.
"""

from __future__ import annotations

import contextlib
import importlib
from typing import cast

from ..config import Group
from ..errors import ConfigError
from .base import Backend

BACKENDS: dict[str, str] = {
    "local": "local",
    "docker": "docker",
    "kubernetes": "kubernetes",
}
"""``backend.type`` -> module of this package that builds it."""


def build_backend(group: Group) -> Backend:
    """The backend of ``group``; ``ConfigError`` when its type is not available here."""
    kind = group.backend.type
    module_name = BACKENDS.get(kind)
    module = None
    if module_name is not None:
        with contextlib.suppress(ModuleNotFoundError):  # the runtime's SDK is not installed
            module = importlib.import_module(f"{__name__}.{module_name}")
    if module is None:
        raise ConfigError(
            "<config>",
            [
                f"groups ({group.name}).backend.type: '{kind}' is not available in this "
                f"version of upgrade-bot (available: {', '.join(sorted(BACKENDS))})"
            ],
        )
    return cast(Backend, module.build(group.name, group.backend))
