"""How a group's readiness choice reads in a plan and in preflight (the probes themselves are
in ``backends/readiness.py``)."""

from __future__ import annotations

from .config import (
    HealthcheckReadiness,
    ProxyReadiness,
    Readiness,
    StatusReadiness,
    TcpReadiness,
)


def describe(readiness: Readiness) -> str:
    """How a group's instances are judged ready, in words for the plan and preflight."""
    match readiness:
        case StatusReadiness(path=path):
            return f"status endpoint (GET {path} answers 200)"
        case TcpReadiness():
            return "TCP connect to the proxy port only"
        case ProxyReadiness(path=path, expect_status=expect):
            wanted = (
                "status " + "/".join(str(c) for c in expect) if expect else "neither 404 nor 5xx"
            )
            return f"proxy probe (GET {path} through the instance answers {wanted})"
        case HealthcheckReadiness():
            return "the container's own healthcheck"
    raise TypeError(f"unknown readiness {readiness!r}")


def preflight_warnings(readiness: Readiness) -> list[str]:
    """What preflight says about a weak readiness choice."""
    if isinstance(readiness, TcpReadiness):
        return [
            "readiness is only a TCP connect: a gateway accepts connections before it has its "
            "routes and answers 404 meanwhile; use readiness mode 'status' (APISIX 3.13+, or "
            "API7 with status_endpoint enabled) or 'proxy'"
        ]
    return []
