"""The sandbox's backup hook: dumps the control-plane stand-in's state to a file.

It plays the part of ``pg_dump`` of the API7 control-plane database in a rehearsal; the bot runs
it as an ordinary command hook and records the artifact's size and SHA-256.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import httpx


def main() -> int:
    parser = argparse.ArgumentParser(description="dump the sandbox control plane (backup hook)")
    parser.add_argument("--cp-url", required=True)
    parser.add_argument("--key-file", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    headers = {"X-API-KEY": args.key_file.read_text().strip()}
    with httpx.Client(base_url=args.cp_url, headers=headers, timeout=10) as client:
        dump = {
            "version": client.get("/api/version").raise_for_status().json(),
            "instances": client.get("/api/instances", params={"page_size": 1000})
            .raise_for_status()
            .json(),
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(dump, indent=2))
    tmp.replace(args.out)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
