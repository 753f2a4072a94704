#!/bin/sh
# System packages the demo and the tests need. Installs what is missing when run as root on
# Debian; elsewhere it names what is missing and stops.
set -eu

missing=""
command -v redis-server >/dev/null 2>&1 || missing="$missing redis-server"
# The chart's tests run its in-chart Redis readiness probe, which is redis-cli.
command -v redis-cli >/dev/null 2>&1 || missing="$missing redis-tools"
# The Redis TLS tests make their CA and certificates with the openssl CLI; Sentinel runs as
# `redis-server --sentinel` (the same binary Debian's redis-sentinel package starts).
command -v openssl >/dev/null 2>&1 || missing="$missing openssl"
python3 -c "import ensurepip, venv" >/dev/null 2>&1 || missing="$missing python3-venv"
# The metrics tests and `demo --metrics prometheus` run a real Prometheus server.
command -v prometheus >/dev/null 2>&1 || missing="$missing prometheus"
# The Docker backend's tests and `demo --backend docker` run containers on podman's
# Docker-compatible API service; runc because crun fails on this kind of host's cgroup layout.
command -v podman >/dev/null 2>&1 || missing="$missing podman"
command -v runc >/dev/null 2>&1 || missing="$missing runc"
# catatonit: the init (`init=True`) that forwards SIGQUIT/SIGTERM to the gateway process.
[ -x /usr/libexec/podman/catatonit ] || command -v catatonit >/dev/null 2>&1 || missing="$missing catatonit"
# The container image's tests and `make image` make the Debian base image with debootstrap
# (no image registry is reached); it lives in /usr/sbin, outside a normal user's PATH.
[ -x /usr/sbin/debootstrap ] || command -v debootstrap >/dev/null 2>&1 || missing="$missing debootstrap"

[ -z "$missing" ] && exit 0

if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing system packages:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
    exit 0
fi
echo "missing system packages:$missing" >&2
echo "install them (e.g. 'sudo apt-get install$missing') and run make again" >&2
exit 1
