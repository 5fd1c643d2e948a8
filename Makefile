# postroom — build, run and test.
#
# The virtual environment is made from Debian's own python3 (not a pyenv build under
# /root), so that the unprivileged test user can execute it: the differential tests run
# procmail and `postroom deliver` as that user, because procmail keeps root's identity
# when root gives it an rcfile.

SHELL := /bin/bash
PYTHON ?= $(shell [ -x /usr/bin/python3 ] && echo /usr/bin/python3 || command -v python3)
VENV := .venv
VPY := $(VENV)/bin/python
TEST_USER ?= prtest
APT_PACKAGES := procmail swaks python3-venv strace gcc libc6-dev
IS_ROOT := $(shell [ "$$(id -u)" = 0 ] && echo yes)

.PHONY: run test bench venv compile test-deps clean check-samples

$(VPY):
	@if ! $(PYTHON) -c 'import ensurepip' 2>/dev/null && [ "$(IS_ROOT)" = yes ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv; fi
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip

$(VENV)/.installed: $(VPY) pyproject.toml
	$(VPY) -m pip install -q -e '.[test]'
	@touch $@

# Byte-compile the project: the differential tests and the benchmarks run `postroom
# deliver` as $(TEST_USER), who cannot write __pycache__ here, so a missing or stale .pyc
# would be recompiled in memory on every run (tens of ms).  pip compiles what it installs
# into site-packages; an editable install leaves the project's own sources to us.
# compileall writes .pyc files even when PYTHONDONTWRITEBYTECODE is set (as in this sandbox).
compile: $(VENV)/.installed
	@$(VPY) -m compileall -q -j0 rules deliver mta

# The lean launcher: pip's console-script wrapper runs `python` with site, which here costs
# ~15 ms per process (Debian's sitecustomize, the editable install's import finder and
# its pathlib) - more than procmail's whole delivery.  `python -IS` skips site and ignores
# PYTHON* variables (safer for an MDA, too); the paths site would have added are written
# into the launcher (.venv/bin/postroom-python).  .venv/bin/postroom is the native client
# (deliver/client/postroom-deliver.c, built with the system cc by deliver/clientbuild.py;
# never committed): `postroom deliver` hands the delivery to the warm server (`postroom
# deliverd`, deliver/deliverd.py) without starting Python at all, and execs the Python
# launcher when no server answers and for every other subcommand.  Without a C compiler
# .venv/bin/postroom is the Python launcher, whose deliver/fastclient.py does the same
# hand-over at Python's start-up cost.  DELIVERD_SOCKET is the socket tried when
# $POSTROOM_DELIVERD is unset (empty: never).
DELIVERD_SOCKET ?= /run/postroom/deliverd.sock
$(VENV)/.launcher: $(VENV)/.installed deliver/fastclient.py deliver/clientbuild.py deliver/client/postroom-deliver.c Makefile
	@$(VPY) -c 'import os, sys, sysconfig, mta; \
	from deliver.clientbuild import install_launchers; \
	paths = [os.path.dirname(os.path.dirname(os.path.abspath(mta.__file__)))]; \
	paths += [sysconfig.get_paths()[k] for k in ("purelib", "platlib")]; \
	paths = list(dict.fromkeys(paths)); \
	kind = install_launchers(os.path.dirname(sys.executable), os.path.abspath(sys.executable), paths, "$(DELIVERD_SOCKET)"); \
	print("postroom launcher:", "native client + Python" if kind == "c" else "Python only (no C compiler)")'
	@touch $@

venv: $(VENV)/.installed $(VENV)/.launcher compile

# Debian's procmail/formail (the oracle) and swaks (a real SMTP client), installed when
# missing and we are root; plus an unprivileged user for the differential tests.
test-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	    if [ "$(IS_ROOT)" = yes ]; then \
	        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	    else echo "missing Debian packages:$$missing (run make test as root, or install them)"; exit 1; fi; \
	fi
	@if [ "$(IS_ROOT)" = yes ] && ! id -u $(TEST_USER) >/dev/null 2>&1; then \
	    useradd --create-home --shell /bin/sh $(TEST_USER); fi

test: test-deps venv
	POSTROOM_TEST_USER=$(TEST_USER) $(VPY) -m pytest -q

# The embedded default: SMTP on 127.0.0.1:2525, maps in ./etc, everything else in ./var,
# a demo user whose ~/.procmailrc is samples/procmailrc (`postroom serve --embedded`).
run: venv
	$(VPY) -m mta.cli serve --embedded .

bench: test-deps venv
	POSTROOM_TEST_USER=$(TEST_USER) $(VPY) tests/benchmarks/run.py

clean:
	rm -rf $(VENV) var .pytest_cache .hypothesis
