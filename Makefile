# procpool: one entry point for setting up, running, testing and benchmarking.
#
#   make run     set everything up, start a daemon on ./run/control.sock, run the demo, stop it
#   make test    set everything up and run the whole suite (lint, types, sanitizers, all test tiers)
#   make bench   the benchmarks under bench/
#
# Works on a fresh Debian 12 machine as root: missing apt packages are installed first.

SHELL := /bin/bash
PYTHON ?= /usr/bin/python3
VENV ?= .venv
BIN := $(VENV)/bin
APT_PACKAGES := python3-venv python3-dev gcc make pkg-config libsystemd-dev systemd-container
STAMP := $(VENV)/.procpool-installed
TEST_STAMP := $(VENV)/.procpool-test-installed

.PHONY: all deps venv test-venv run test lint native-check unit integration e2e bench schema man clean distclean install uninstall

all: venv

deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "missing apt packages:$$missing (run 'make deps' as root)"; exit 1; fi; \
	  echo "installing apt packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

$(STAMP): pyproject.toml native/generated/_ring.c native/src/ring.c native/include/procpool/ring.h
	@$(MAKE) --no-print-directory deps
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $@

venv: $(STAMP)

# The checks and the test tiers also cover the Dask engine, whose client is an optional extra
# (procpool[dask]); a daemon without it (make run, make install) does not need it.
$(TEST_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e '.[dev,dask]'
	@touch $@

test-venv: $(TEST_STAMP)

run: venv
	@PATH="$(CURDIR)/$(BIN):$$PATH" bash examples/demo.sh

lint: test-venv
	$(BIN)/ruff check ctl daemon tests bench native examples
	$(BIN)/mypy

native-check: venv
	$(MAKE) -C native check-sanitize
	$(MAKE) -C native check-tsan
	$(MAKE) -C native check

unit: test-venv
	$(BIN)/python -m pytest -m unit -q

integration: test-venv
	$(BIN)/python -m pytest -m integration -q

e2e: test-venv
	$(BIN)/python -m pytest -m e2e -q

test: test-venv lint native-check
	$(BIN)/python -m pytest -q

# The peers (loky, Dask) are an optional extra, installed for the benchmark only. W1 with journald
# runs in the e2e tier's systemd container when this is root with systemd-nspawn and nsenter;
# otherwise the table says it was not run. BENCH_ARGS: more options, e.g. BENCH_ARGS=--quick.
BENCH_ARGS ?=
bench: venv
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	@journald=""; \
	if [ "$$(id -u)" = 0 ] && command -v systemd-nspawn >/dev/null && command -v nsenter >/dev/null; then \
	  journald=--journald; \
	else \
	  echo "W1 with journald left out: it needs root, systemd-nspawn and nsenter (make deps installs them)"; \
	fi; \
	echo "$(BIN)/python bench/run.py $$journald $(BENCH_ARGS)"; \
	$(BIN)/python bench/run.py $$journald $(BENCH_ARGS)

schema: venv
	$(BIN)/python -c 'import json; from procpool.contract.tree import json_schema; \
	  print(json.dumps(json_schema(), indent=2, sort_keys=True))' > ctl/procpool/contract/jobtree.schema.json

# procctl(1) and procpoold(8) from the commands' --help text, into build/man (make install puts
# them in /usr/local/share/man). Read one with: man -l build/man/man1/procctl.1
man: venv
	$(BIN)/python -m procpool.cli.manpage build/man

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache native/build run
	find . -name __pycache__ -prune -exec rm -rf {} +
	rm -f daemon/procpoold/_ring*.so

distclean: clean
	rm -rf $(VENV)

# Install procpoold as a systemd service (root): venv in /opt/procpoold, units, the procpool user.
# WHEELHOUSE=DIR installs offline from prebuilt wheels; DASK=1 adds the Dask engine (the dask extra,
# a drop-in that lets the daemon reach the scheduler, /etc/procpoold/procpoold.toml); see
# docs/systemd.md.
install:
	WHEELHOUSE='$(WHEELHOUSE)' DASK='$(DASK)' $(SHELL) systemd/install.sh install

# Stop and remove it again; the state in /var/lib/procpoold and the config in /etc/procpoold are kept
# unless PURGE=1.
uninstall:
	PURGE='$(PURGE)' $(SHELL) systemd/install.sh uninstall
