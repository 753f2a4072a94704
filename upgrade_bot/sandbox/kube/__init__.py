"""An emulated Kubernetes cluster for the Kubernetes backend's rehearsals and tests.

No API server binary can be had on these machines (DESIGN.md §9), so the cluster is:

* :mod:`.api` — the Kubernetes API over HTTP: ``kmock``'s server, request parsing, error format
  and discovery, with the object semantics real clients rely on added (generation,
  resourceVersion, selectors, strategic merge, PUT, server-side apply, the status subresource,
  ``*List`` kinds, protobuf-encoded Secrets from Helm);
* :mod:`.controller` — the Deployment controller and a kubelet: rolling updates honouring
  maxSurge/maxUnavailable, ``spec.paused`` and ``progressDeadlineSeconds``; pods are gateway
  simulator processes whose readiness is the probe the pod declares;
* :mod:`.cluster` — both on their own thread and event loop (the official client blocks), with
  a front door per Service-like selector, a kubeconfig, and a timing scale factor so that the
  vendor charts' 10 s delays and 30 s preStop sleeps do not make rehearsals slow;
* :mod:`.rehearsal` — the cluster as ``upgrade-bot demo --backend kubernetes`` uses it: the
  vendor's APISIX chart (``charts/apisix-2.14.0``, see ``charts/SOURCE.md``) installed as one
  Helm release per group, front doors, traffic, Redis, a bot configuration.
"""

from pathlib import Path

CHART_DIR = Path(__file__).parent / "charts"
"""Vendor charts shipped with the sandbox (the demo installs them; tests use them too)."""
