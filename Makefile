# ektp-agent: `make run` (the demo) and `make test` (the whole suite) set up everything
# they need on a fresh Debian / Raspberry Pi OS machine: a virtualenv in .venv with the
# package and its dev tools, and Mosquitto, strace, Chromium (with chromedriver) and promtool from
# Debian's packages when they are missing.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: all setup mosquitto system-packages run test lint typecheck pytest bench chaos mutation timings clean

all: test

setup: $(STAMP) mosquitto

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install python3 (>= 3.11) and python3-venv"; exit 2; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || { echo "error: cannot create $(VENV); on Debian run: $(SUDO) apt-get install python3-venv"; exit 2; }
	@echo "installing the package and its dev tools into $(VENV) (pip's output goes to $(VENV)/pip.log)"
	@{ $(PY) -m pip install --upgrade pip && $(PY) -m pip install -e '.[dev]'; } >$(VENV)/pip.log 2>&1 || \
	  { tail -n 40 $(VENV)/pip.log; echo "error: pip failed: the last lines of its output are above, all of it in $(VENV)/pip.log"; exit 1; }
	@touch $(STAMP)

# Mosquitto and strace are system packages (Debian's), not Python ones: the tests and the demo
# start their own brokers from Mosquitto's binary on free loopback ports, and the power-loss
# test (tests/test_outbox_power_loss.py) watches the outbox's system calls with strace. The
# browser tests of the fleet web view (tests/test_web_browser.py) drive Debian's Chromium
# through chromedriver, and the alert rules are checked with promtool (tests/test_alert_rules.py),
# which comes in Debian's prometheus package (that package also installs a Prometheus server
# and, where systemd runs, starts it on port 9090: `systemctl disable --now prometheus` stops it).
SYSTEM_PACKAGES := mosquitto mosquitto-clients strace chromium chromium-driver prometheus
SYSTEM_COMMANDS := mosquitto strace chromium chromedriver promtool

mosquitto: system-packages

system-packages:
	@missing=""; for c in $(SYSTEM_COMMANDS); do \
	  command -v $$c >/dev/null 2>&1 || [ -x /usr/sbin/$$c ] || missing="$$missing $$c"; done; \
	if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" = 0 ] || sudo -n true 2>/dev/null; then \
	  echo "installing $(SYSTEM_PACKAGES) from Debian's packages (missing:$$missing)"; \
	  { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null; } || \
	  { echo "error: apt-get could not install $(SYSTEM_PACKAGES) (its words are above)"; exit 2; }; \
	else \
	  echo "error: these commands are missing and this user cannot install their packages:$$missing"; \
	  echo "       run: sudo apt-get install $(SYSTEM_PACKAGES)   (then make again)"; exit 2; \
	fi

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy agent drivers wire demo

# Two workers, one test file each at a time (a file's tests share its fixtures and order):
# most tests wait on brokers and processes, so two cores finish in about half the time.
# PYTEST_WORKERS=0 runs everything in one process.
PYTEST_WORKERS ?= 2
# Its own short temporary folder (the simulators' Unix socket paths must fit in 107 bytes,
# and xdist adds a level), kept when a test failed, removed when all passed.
pytest: setup
	@tmp=$$(mktemp -d /tmp/ektp-test.XXXXXX) && \
	$(VENV)/bin/pytest -q --basetemp=$$tmp $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadfile) \
	  && rm -rf $$tmp || { echo "test files kept in $$tmp"; exit 1; }

test: setup lint typecheck pytest

# On a terminal the demo runs until Ctrl-C; without one it stops by itself after 60 s.
# Options go through ARGS, e.g. make run ARGS="--duration 120 --cut-after 10".
run: setup
	$(PY) -m demo $(ARGS)

# The figures of docs/benchmarks.md (about 35 minutes; slow_link needs root for its namespace;
# fleet_scale needs the PostgreSQL of $EKTP_TEST_PG).
bench: setup
	$(PY) bench/store_commit.py
	$(PY) bench/drain_reader.py
	$(PY) bench/packet_overhead.py
	$(PY) bench/drain.py --repeats 3
	$(PY) bench/slow_link.py
	$(PY) bench/parigi.py
	$(PY) bench/thin_link.py
	$(PY) bench/thin_link.py --rate-kbit 128 --cut-every 60
	$(PY) bench/sync_outage.py
	$(PY) bench/metrics_render.py
	$(PY) bench/fleet_scale.py
	$(PY) bench/timings.py

# The full chaos runs of docs/reliability.md (about 25 minutes).
chaos: setup
	$(PY) bench/chaos.py

# Every mutation of docs/reliability.md applied in a scratch copy of HEAD, one at a time, with
# the tests that guard its promise run against it; each must fail (about 20 minutes).
mutation: setup
	$(PY) bench/mutation.py --control

# The time limits that left the correctness tests, measured (docs/benchmarks.md; about a minute).
timings: setup
	$(PY) bench/timings.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
