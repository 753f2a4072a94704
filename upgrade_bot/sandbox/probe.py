"""A container healthcheck for the gateway simulator: exit 0 once ``/status/ready`` answers 200.

Used as ``HEALTHCHECK CMD python -m upgrade_bot.sandbox.probe`` (exec form, no argument with a
space: podman's Docker-compatible API splits a ``CMD`` healthcheck's arguments on spaces, found
by trial with podman 4.3). The port comes from the simulator's own ``GATEWAY_STATUS_PORT``.
Standard library only, like the simulator it checks.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main() -> int:
    port = os.environ.get("GATEWAY_STATUS_PORT", "7085")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status/ready", timeout=2) as resp:
            return 0 if resp.status == 200 else 1
    except (urllib.error.URLError, OSError):
        return 1


if __name__ == "__main__":
    sys.exit(main())
