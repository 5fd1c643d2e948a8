"""Every expected diagnostic, in order: tests/rules/errors/<case>.rc + <case>.err.

The .err file holds one ``file:line:col: severity: message`` line per diagnostic.
Regenerate by hand with POSTROOM_REGEN_GOLDEN=1 (never in CI).  The real procmail is
the oracle for the wording procmail itself logs: for each case, the procmail phrases in
our diagnostics (``Missing action``, ``Skipped "..."`` ...) must appear in procmail's
log in the same order.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from rules.parser import parse_rc

ERRORS = Path(__file__).parent / "errors"
CASES = sorted(p.stem for p in ERRORS.glob("*.rc"))
REGEN = os.environ.get("POSTROOM_REGEN_GOLDEN") == "1"
PHRASES = re.compile(r'^(Missing action|Incomplete recipe|Closing brace unexpected|'
                     r'Missing closing brace|Skipped "[^"]*"|Conflicting [a-z-]+ suppressed)')


# Deliberate differences (README): a size test without a number is refused (procmail
# compares with 0, so ``* > lots`` would match every mail) instead of logging Skipped.
REFUSED = {"bad_size": ['Skipped "lots"'], "all_in_one": ['Skipped "x"']}


def _diags(name: str) -> list[str]:
    text = (ERRORS / f"{name}.rc").read_bytes().decode("latin-1")
    return [str(d) for d in parse_rc(text, f"{name}.rc").diagnostics]


def test_enough_cases() -> None:
    assert len(CASES) >= 15


@pytest.mark.parametrize("name", CASES)
def test_errors(name: str) -> None:
    got = "".join(line + "\n" for line in _diags(name))
    ref = ERRORS / f"{name}.err"
    if REGEN:
        ref.write_text(got, encoding="latin-1")
    assert got, "every error case must produce at least one diagnostic"
    assert got == ref.read_text(encoding="latin-1")


def _procmail_logs() -> dict[str, list[str]]:
    """Run the real procmail (as prtest) on every case at once; return the procmail
    phrases of each log in order."""
    base = Path(tempfile.mkdtemp(prefix="pr-errors-"))
    os.chmod(base, 0o755)
    procs = {}
    try:
        for name in CASES:
            work = base / name
            work.mkdir()
            shutil.copy(ERRORS / f"{name}.rc", work / "rc")
            (work / "msg").write_bytes(b"From: a@b\nSubject: hi\n\nbody\n")
            os.chmod(work, 0o777)
            for f in ("rc", "msg"):
                os.chmod(work / f, 0o644)
            env = {"HOME": str(work), "PATH": "/usr/bin:/bin", "LOGNAME": "prtest"}
            procs[name] = subprocess.Popen(
                ["/usr/bin/procmail", "-m", f"LOGFILE={work}/log",
                 f"DEFAULT={work}/def", "./rc"], stdin=open(work / "msg", "rb"),
                cwd=work, env=env, user="prtest", group="prtest", extra_groups=[],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        logs = {}
        for name, proc in procs.items():
            proc.wait(timeout=60)
            lines = (base / name / "log").read_bytes().decode("latin-1").splitlines()
            logs[name] = [m.group(1) for line in lines if line.startswith("procmail: ")
                          for m in [PHRASES.match(line[len("procmail: "):])] if m]
        return logs
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def procmail_logs() -> dict[str, list[str]]:
    return _procmail_logs()


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("procmail") is None,
                    reason="needs root to run procmail as prtest")
@pytest.mark.parametrize("name", CASES)
def test_procmail_logs_the_same_problems(name: str, procmail_logs) -> None:
    ours = []
    for line in _diags(name):
        msg = line.split(": ", 2)[2]
        m = PHRASES.match(msg)
        if m:
            ours.append(m.group(1))
    theirs = list(procmail_logs[name])
    for phrase in REFUSED.get(name, []):
        theirs.remove(phrase)
    assert ours == theirs
