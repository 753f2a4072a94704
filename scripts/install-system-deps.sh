#!/bin/sh
# System packages the demo and the tests need. Installs what is missing when run as root on
# Debian; elsewhere it names what is missing and stops.
set -eu

missing=""
command -v redis-server >/dev/null 2>&1 || missing="$missing redis-server"
python3 -c "import ensurepip, venv" >/dev/null 2>&1 || missing="$missing python3-venv"
# The metrics tests and `demo --metrics prometheus` run a real Prometheus server.
command -v prometheus >/dev/null 2>&1 || missing="$missing prometheus"

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
