"""rules.regex and rules.areas against the real procmail, case by case.

Every (pattern, message, flags) in tests/rules/regex_cases.py becomes one recipe in an rc
file; all cases of one message run in a single procmail invocation (as the unprivileged
test user: procmail keeps root's identity when root gives it an rcfile).  Each recipe
first sets MATCH to a marker, then logs ``<<Rn>>$MATCH<</Rn>>`` when its condition
matches, so the log tells for every case: matched or not, and what MATCH became (the
marker when procmail did not assign it).  postroom must agree on both.

Weighted cases run as ``* 1^1 pattern`` and log ``$=``: the number of successive matches
(procmailsc(5)), 2147483647 for "+infinity".  Invalid patterns must make procmail log
``Invalid regexp`` and rules.regex raise RegexError (a deliberate difference: procmail
counts such a condition as matched, postroom reports it).

Nothing is cached between test runs: procmail is asked every time.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import pytest

from rules.areas import search_area
from rules.errors import RegexError
from rules.macros import expand_macros
from rules.message import Message
from rules.regex import compile_regex

sys.path.insert(0, str(Path(__file__).parent))
from regex_cases import CASES, INVALID, MESSAGES, WEIGHTED  # noqa: E402

PROCMAIL = "/usr/bin/procmail"
TEST_USER = os.environ.get("POSTROOM_TEST_USER", "prtest")
UNSET = b"@@unset@@"
MAX32 = 2147483647

pytestmark = pytest.mark.skipif(
    not os.path.exists(PROCMAIL), reason="the procmail oracle is not installed (make test-deps)")


def _run_procmail(rc: bytes, mail: bytes) -> bytes:
    """Run procmail -m on ``rc`` with ``mail`` on stdin; return its log file."""
    work = Path(tempfile.mkdtemp(prefix="pr-regex-"))
    try:
        shutil.chown(work, TEST_USER, TEST_USER)
        (work / "rc").write_bytes(b"LOGFILE=" + str(work / "log").encode() + b"\n" + rc)
        os.chmod(work / "rc", 0o644)
        proc = subprocess.run(
            [PROCMAIL, "-m", str(work / "rc")], input=mail, capture_output=True,
            user=TEST_USER, group=TEST_USER, extra_groups=[], cwd=work, timeout=int(os.environ.get("PMTIMEOUT", "60")),
            env={"HOME": str(work), "PATH": "/usr/bin:/bin", "LOGNAME": TEST_USER})
        assert proc.returncode == 0, proc.stderr
        return (work / "log").read_bytes()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _area(flags: str) -> tuple[bool, bool]:
    header, body = "H" in flags, "B" in flags
    return (True, False) if not header and not body else (header, body)


def _recipe_flags(flags: str) -> str:
    return "".join(c for c in flags if c in "HBD")


_RESULT = re.compile(rb"<<([RW]\d+)>>(.*?)<</\1>>\n", re.S)


def _oracle() -> tuple[dict[int, bytes | None], dict[int, int]]:
    """procmail's verdict for every case: MATCH (UNSET when not assigned) or None when the
    condition did not match; and $= for every weighted case."""
    by_msg: dict[str, list[str]] = defaultdict(list)
    for n, (pattern, msg, flags) in enumerate(CASES):
        by_msg[msg].append(
            f'MATCH={UNSET.decode()}\n:0 {_recipe_flags(flags)}\n* {pattern}\n'
            f'{{ LOG="<<R{n}>>$MATCH<</R{n}>>\n" }}\n')
    for n, (pattern, msg, flags) in enumerate(WEIGHTED):
        by_msg[msg].append(
            f':0 {_recipe_flags(flags)}\n* 1^1 {pattern}\n{{ }}\n'
            f'LOG="<<W{n}>>$=<</W{n}>>\n"\n')
    matches: dict[int, bytes | None] = {n: None for n in range(len(CASES))}
    scores: dict[int, int] = {}
    for msg, recipes in by_msg.items():
        rc = ("VERBOSE=no\nLOGABSTRACT=no\n" + "".join(recipes) + ":0\n/dev/null\n")
        log = _run_procmail(rc.encode("latin-1"), MESSAGES[msg])
        for key, value in _RESULT.findall(log):
            n = int(key[1:])
            if key.startswith(b"R"):
                matches[n] = value
            else:
                scores[n] = int(value)
    return matches, scores


@pytest.fixture(scope="module")
def oracle() -> tuple[dict[int, bytes | None], dict[int, int]]:
    return _oracle()


def _ours(pattern: str, msg: str, flags: str) -> bytes | None:
    header, body = _area(flags)
    text = search_area(Message(MESSAGES[msg]), header=header, body=body)
    found = compile_regex(pattern, case_sensitive="D" in flags).search(text)
    if found is None:
        return None
    return UNSET if found.match is None else found.match


def test_table_is_large_enough() -> None:
    assert len(CASES) >= 200


@pytest.mark.parametrize("n", range(len(CASES)), ids=[f"{c[1]}-{c[2] or 'H'}-{c[0]!r}"
                                                      for c in CASES])
def test_search_agrees_with_procmail(oracle, n: int) -> None:
    pattern, msg, flags = CASES[n]
    expected = oracle[0][n]
    assert _ours(pattern, msg, flags) == expected, (pattern, msg, flags)


@pytest.mark.parametrize("n", range(len(WEIGHTED)), ids=[f"{c[1]}-{c[2] or 'H'}-{c[0]!r}"
                                                         for c in WEIGHTED])
def test_count_agrees_with_procmail(oracle, n: int) -> None:
    pattern, msg, flags = WEIGHTED[n]
    header, body = _area(flags)
    text = search_area(Message(MESSAGES[msg]), header=header, body=body)
    count = compile_regex(pattern, case_sensitive="D" in flags).count(text, MAX32)
    assert (MAX32 if count is None else count) == oracle[1][n], (pattern, msg, flags)


def test_invalid_patterns_are_reported_where_procmail_logs_them() -> None:
    rc = "VERBOSE=no\nLOGABSTRACT=no\n" + "".join(
        f':0\n* {p}\n{{ LOG="<<R{n}>>$MATCH<</R{n}>>\n" }}\n' for n, p in enumerate(INVALID))
    log = _run_procmail((rc + ":0\n/dev/null\n").encode(), MESSAGES["plain"])
    for n, pattern in enumerate(INVALID):
        # procmail: logged, and the half-read program is run anyway (an unclosed "("
        # closed at the end, a stray ")" ending the pattern) ...
        shown = expand_macros(pattern)[0]  # procmail logs the expanded regex
        assert f'Invalid regexp "{shown}"'.encode() in log, pattern
        # ... postroom: the same reading, flagged invalid, matching as procmail's did
        rx = compile_regex(pattern)
        assert rx.invalid is not None, pattern
        assert (f"<<R{n}>>".encode() in log) == (_ours(pattern, "plain", "") is not None), pattern
