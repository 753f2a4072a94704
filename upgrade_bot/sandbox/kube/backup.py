"""The Kubernetes rehearsal's backup hook: saves the groups' Helm release records to a file.

A Helm release's history is its Secrets labelled ``owner=helm`` (helm/helm
``pkg/storage/driver/secrets.go``); keeping them is what restoring a release needs. The bot runs
this as an ordinary command hook and records the artifact's size and SHA-256.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kubernetes import client, config


def main() -> int:
    parser = argparse.ArgumentParser(description="save Helm release records (backup hook)")
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--namespaces", required=True, help="comma-separated")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    api = config.new_client_from_config(config_file=args.kubeconfig)
    core = client.CoreV1Api(api)
    dump = {}
    for ns in filter(None, args.namespaces.split(",")):
        # GET /api/v1/namespaces/{ns}/secrets?labelSelector=owner=helm (secret-v1, "list")
        secrets = core.list_namespaced_secret(ns, label_selector="owner=helm")
        dump[ns] = [{"name": s.metadata.name, "data": s.data} for s in secrets.items]
    api.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(dump))
    tmp.replace(args.out)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
