# Two commands on a fresh machine: `make demo` and `make test`; `make check` while you work.
# Each creates .venv and installs what it needs (system packages too, as root on Debian).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test check lint lock image system-deps clean

$(STAMP): requirements.lock pyproject.toml setup.py scripts/install-system-deps.sh
	sh scripts/install-system-deps.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/upgrade-bot demo

# The whole suite, as CI runs it (.ci/run): the fast lane on two workers, then the `traffic`
# tests one at a time (they drive sustained traffic and time-bound runs on a 2-core machine).
# Both parts always run; the target fails if either does.
test: $(STAMP)
	rc=0; \
	$(BIN)/python -m pytest -m "not traffic" -n 2 || rc=1; \
	$(BIN)/python -m pytest -m traffic || rc=1; \
	exit $$rc

# The fast lane, under 2 minutes: lint, then every test not marked `traffic` (the import
# contracts in tests/test_architecture.py, all pure engine and Slack-rendering tests among them).
# `traffic` tests drive sustained traffic or whole runs through sandboxes and real bot processes.
# These tests share no engine, so they run on two workers (pytest-xdist), here and in `make test`.
check: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -m "not traffic" -n 2

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest tests/test_architecture.py

system-deps:
	sh scripts/install-system-deps.sh

# The container image (Dockerfile) built with podman, its Debian base made with debootstrap;
# layers are cached under ~/.cache/upgrade-bot/podman (upgrade_bot/image.py).
image: $(STAMP)
	$(BIN)/python -m upgrade_bot.image

# Re-pin after changing dependencies in pyproject.toml: requirements.lock is what `make`
# installs (runtime, sandbox and dev tools); requirements-runtime.lock is what the container
# image installs (runtime dependencies only: no test, lint or rehearsal tools), resolved for the
# image's interpreter (Debian 12's Python 3.11.2, glibc 2.36).
lock: $(STAMP)
	$(BIN)/python -m pip install --quiet uv
	$(BIN)/uv pip compile pyproject.toml --extra sandbox --extra dev --python $(BIN)/python -o requirements.lock
	$(BIN)/uv pip compile pyproject.toml --python-version 3.11.2 --python-platform x86_64-manylinux_2_36 -o requirements-runtime.lock

clean:
	rm -rf $(VENV) .demo build *.egg-info
