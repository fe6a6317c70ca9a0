# ektp-agent: `make run` (the demo) and `make test` (the whole suite) set up everything
# they need on a fresh Debian / Raspberry Pi OS machine: a virtualenv in .venv with the
# package and its dev tools, and Mosquitto, strace, Chromium (with chromedriver) and promtool from
# Debian's packages when they are missing.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: all setup mosquitto system-packages deb deb-packages deb-test run test lint typecheck pytest bench chaos mutation timings clean

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
	@$(call install-missing,$(SYSTEM_PACKAGES),$(SYSTEM_COMMANDS))

# Debian's packaging tools, for `make deb` only (`make deb-test` runs it).
DEB_PACKAGES := debhelper dh-virtualenv dpkg-dev python3-venv lintian
DEB_COMMANDS := dh dh_virtualenv dpkg-buildpackage lintian

deb-packages:
	@$(call install-missing,$(DEB_PACKAGES),$(DEB_COMMANDS))

# $(call install-missing,PACKAGES,COMMANDS): apt-get install PACKAGES when one of COMMANDS is missing.
define install-missing
missing=""; for c in $(2); do \
  command -v $$c >/dev/null 2>&1 || [ -x /usr/sbin/$$c ] || missing="$$missing $$c"; done; \
if [ -z "$$missing" ]; then :; \
elif [ "$$(id -u)" = 0 ] || sudo -n true 2>/dev/null; then \
  echo "installing $(1) from Debian's packages (missing:$$missing)"; \
  { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(1) >/dev/null; } || \
  { echo "error: apt-get could not install $(1) (its words are above)"; exit 2; }; \
else \
  echo "error: these commands are missing and this user cannot install their packages:$$missing"; \
  echo "       run: sudo apt-get install $(1)   (then make again)"; exit 2; \
fi
endef

# `make deb`: ektp-agent_VERSION_ARCH.deb and ektp-central_VERSION_ARCH.deb for this machine's
# architecture (on a Pi: arm64), built by dpkg-buildpackage with debhelper and dh-virtualenv
# (debian/rules) from a copy of the tree in $(DEB_DIR)/src, then checked by lintian. The files
# land in $(DEB_DIR); dpkg-buildpackage's output in $(DEB_DIR)/build.log. DEB_VERSION sets the
# packages' version (default: pyproject.toml's).
DEB_DIR     ?= build/deb
DEB_VERSION ?= $(shell $(PYTHON) -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
DEB_ARCH    := $(shell dpkg --print-architecture 2>/dev/null)

# LINTIAN=0 skips lintian (about 1.5 minutes); `make deb`, `make deb-test` and `make bench` run it.
LINTIAN ?= 1
deb: deb-packages
	@rm -rf $(DEB_DIR)/src && mkdir -p $(DEB_DIR)/src && rm -f $(DEB_DIR)/ektp-*_$(DEB_VERSION)_*
	@git ls-files -z --cached --others --exclude-standard | tar --null -T - --ignore-failed-read -cf - | tar -xf - -C $(DEB_DIR)/src
	@printf 'ektp-agent (%s) unstable; urgency=medium\n\n  * Built by make deb from %s.\n\n -- %s  %s\n' \
	  '$(DEB_VERSION)' "$$(git describe --always --dirty 2>/dev/null || echo 'a tree without git')" \
	  "$$(sed -n 's/^Maintainer: //p' debian/control)" "$$(date -R)" > $(DEB_DIR)/src/debian/changelog
	@echo "building ektp-agent and ektp-central $(DEB_VERSION) for $(DEB_ARCH) in $(DEB_DIR) (log: $(DEB_DIR)/build.log)"
	@cd $(DEB_DIR)/src && dpkg-buildpackage -b -us -uc >../build.log 2>&1 || \
	  { tail -n 40 ../build.log; echo "error: dpkg-buildpackage failed: the last lines of its output are above, all of it in $(DEB_DIR)/build.log"; exit 1; }
	@debs="$(DEB_DIR)/ektp-agent_$(DEB_VERSION)_$(DEB_ARCH).deb $(DEB_DIR)/ektp-central_$(DEB_VERSION)_$(DEB_ARCH).deb"; \
	if [ "$(LINTIAN)" = 1 ]; then echo "lintian --fail-on error,warning --info $$debs"; lintian --fail-on error,warning --info $$debs; \
	else echo "lintian not run (LINTIAN=0)"; fi
	@ls -l $(DEB_DIR)/ektp-agent_$(DEB_VERSION)_$(DEB_ARCH).deb $(DEB_DIR)/ektp-central_$(DEB_VERSION)_$(DEB_ARCH).deb

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

# `make test` checks the Debian packaging without building it (tests/test_deb.py, seconds);
# the build, install, upgrade and purge of both packages is `make deb-test` (minutes, root).
test: setup lint typecheck pytest

# `make deb-test`: the full cycle of the Debian packages (tests/deb_cycle/test_deb_cycle.py, as
# root, about 4 minutes with lintian): `make deb` builds both, each is installed with dpkg -i,
# checked, upgraded with a packet pending, removed and purged. `make bench` runs it; `make test`
# does not (tests/conftest.py leaves the folder out of a plain pytest run).
deb-test: setup deb-packages
	@tmp=$$(mktemp -d /tmp/ektp-deb-test.XXXXXX) && \
	EKTP_DEB_LINTIAN=$(LINTIAN) $(VENV)/bin/pytest -q --basetemp=$$tmp tests/deb_cycle \
	  && rm -rf $$tmp || { echo "test files kept in $$tmp"; exit 1; }

# On a terminal the demo runs until Ctrl-C; without one it stops by itself after 60 s.
# Options go through ARGS, e.g. make run ARGS="--duration 120 --cut-after 10".
run: setup
	$(PY) -m demo $(ARGS)

# The figures of docs/benchmarks.md (about 35 minutes; slow_link needs root for its namespace;
# fleet_scale needs the PostgreSQL of $EKTP_TEST_PG), then the Debian packages' full cycle
# (`make deb-test`: built with lintian, installed, upgraded, purged; root).
bench: setup
	$(PY) bench/store_commit.py
	$(PY) bench/drain_reader.py
	$(PY) bench/packet_overhead.py
	$(PY) bench/record_size.py --sweep
	$(PY) bench/drain.py --repeats 3
	$(PY) bench/slow_link.py
	$(PY) bench/parigi.py
	$(PY) bench/thin_link.py
	$(PY) bench/thin_link.py --rate-kbit 128 --cut-every 60
	$(PY) bench/sync_outage.py
	$(PY) bench/metrics_render.py
	$(PY) bench/fleet_scale.py
	$(PY) bench/timings.py
	$(MAKE) deb-test

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
