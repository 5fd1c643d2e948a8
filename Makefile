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
APT_PACKAGES := procmail swaks python3-venv strace
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
# into the launcher.  `postroom deliver` first tries the warm server (`postroom deliverd`,
# deliver/deliverd.py) through deliver/fastclient.py, which imports almost nothing, and
# delivers in process when no server answers.  DELIVERD_SOCKET is the socket it tries
# when $POSTROOM_DELIVERD is unset (empty: never).  Every other subcommand works as before.
DELIVERD_SOCKET ?= /run/postroom/deliverd.sock
$(VENV)/.launcher: $(VENV)/.installed deliver/fastclient.py Makefile
	@$(VPY) -c 'import os, sys, sysconfig, mta; \
	from deliver.fastclient import launcher_script; \
	paths = [os.path.dirname(os.path.dirname(os.path.abspath(mta.__file__)))]; \
	paths += [sysconfig.get_paths()[k] for k in ("purelib", "platlib")]; \
	paths = list(dict.fromkeys(paths)); \
	script = launcher_script(os.path.abspath(sys.executable), paths, "$(DELIVERD_SOCKET)"); \
	target = os.path.join(os.path.dirname(sys.executable), "postroom"); \
	open(target + ".tmp", "w").write(script); os.chmod(target + ".tmp", 0o755); \
	os.replace(target + ".tmp", target)'
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
