# upgrade-bot's container image: Debian 12's own Python 3.11 running the bot from a virtual
# environment that holds the runtime dependencies of requirements-runtime.lock and nothing else
# (no test, lint or rehearsal tools; no compiler in the final stage). README "Container image".
#
# Build:  docker build -t ghcr.io/upgrade-bot/upgrade-bot:0.1.0 .
#    or:  podman build --format docker -t ghcr.io/upgrade-bot/upgrade-bot:0.1.0 .
#         (HEALTHCHECK is part of the Docker image format only, not of OCI's)
# Run:    entrypoint `upgrade-bot`, default command `serve` (Socket Mode); the config file at
#         /etc/upgrade-bot/config.yaml; secrets in the environment; a writable /tmp suffices.

ARG VERSION=0.1.0

# --- builder: the virtual environment at /opt/venv ------------------------------------------
FROM debian:bookworm-slim AS builder

# The venv's interpreter is the final stage's /usr/bin/python3, so both stages install the same
# Python minor version (3.11, Debian 12).
RUN apt-get update \
    && apt-get install -y --no-install-recommends 'python3=3.11.*' 'python3-venv=3.11.*' \
    && rm -rf /var/lib/apt/lists/*

RUN python3 -m venv /opt/venv
# Exactly the lock (--no-deps: nothing unpinned comes along), binary wheels only: the build
# needs no compiler and fails loudly if a pin has no wheel.
COPY requirements-runtime.lock /tmp/requirements-runtime.lock
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps --only-binary=:all: \
        -r /tmp/requirements-runtime.lock

# The project itself as a wheel; `pip check` proves the lock holds all it needs. pip and
# setuptools, build tools, then leave the venv.
COPY pyproject.toml setup.py README.md /src/
COPY upgrade_bot /src/upgrade_bot
COPY bot /src/bot
COPY engine /src/engine
RUN /opt/venv/bin/pip wheel --no-cache-dir --no-deps --wheel-dir /tmp/dist /src \
    && /opt/venv/bin/pip install --no-cache-dir --no-deps /tmp/dist/upgrade_bot-*.whl \
    && /opt/venv/bin/pip check \
    && /opt/venv/bin/pip uninstall --yes pip setuptools

# --- final: Python, CA certificates, the venv, a non-root user --------------------------------
FROM debian:bookworm-slim

ARG VERSION
# Pre-defined annotation keys of the OCI image spec (opencontainers/image-spec, annotations.md).
LABEL org.opencontainers.image.title="upgrade-bot" \
      org.opencontainers.image.description="Slack chat-ops bot for rolling upgrades of API gateway data-plane instances (API7 EE, Apache APISIX)" \
      org.opencontainers.image.source="https://github.com/upgrade-bot/upgrade-bot" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"

# ca-certificates stays unpinned on purpose: trust anchors must be the newest the release ships.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends 'python3=3.11.*' ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 upgrade-bot \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin upgrade-bot

COPY --from=builder /opt/venv /opt/venv

# The bot writes nothing outside /tmp (matplotlib's cache included), so the root filesystem can
# be mounted read-only with a tmpfs or emptyDir on /tmp.
ENV PATH="/opt/venv/bin:${PATH}" \
    MPLCONFIGDIR=/tmp/matplotlib \
    UPGRADE_BOT_CONFIG=/etc/upgrade-bot/config.yaml \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# Numeric, so that Kubernetes' runAsNonRoot can verify it without /etc/passwd.
USER 10001:10001

# 8080: the ops server (/healthz, /readyz, /metrics); 3000: HTTP mode's /slack/events.
EXPOSE 8080 3000

# Liveness of the event loop (/healthz on the ops port), with the venv's Python: no curl needed.
# Dockerfile reference, HEALTHCHECK: exit 0 healthy, 1 unhealthy.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('UPGRADE_BOT_OPS_PORT', '8080'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4).status == 200 else 1)"]

ENTRYPOINT ["upgrade-bot"]
CMD ["serve"]
