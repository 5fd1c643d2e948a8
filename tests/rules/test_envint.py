"""rules.envint.renvint against the real procmail: EXITCODE is read by procmail's
renvint, and the exit status shows what it made of the value (a negative result keeps
the delivery's own status, 0 here; the status is taken modulo 256)."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rules.envint import renvint

PROCMAIL = "/usr/bin/procmail"
TEST_USER = os.environ.get("POSTROOM_TEST_USER", "prtest")
VALUES = ["7", " 5", "+4", "3x", "1e2", "0x10", "-1", "300", "256", "abc", "a", "All",
          "yes", "Y", "true", "enabled", "on", "ON", "one", "off", "Off", "o", "no", "false",
          "disabled", "x3", "+", "-", "\t9"]


def _procmail_exit(value: str, workdir: str, pw: pwd.struct_passwd) -> int:
    rc = os.path.join(workdir, "rc")
    with open(rc, "w") as f:
        f.write(f"EXITCODE={value}\n:0\n/dev/null\n")
    os.chown(rc, pw.pw_uid, pw.pw_gid)
    proc = subprocess.run([PROCMAIL, rc], input=b"From: a@example.org\nSubject: x\n\nbody\n",
                          user=pw.pw_uid, group=pw.pw_gid, extra_groups=[], cwd=workdir,
                          env={"PATH": "/usr/bin:/bin", "HOME": workdir}, capture_output=True,
                          timeout=30)
    return proc.returncode


@pytest.mark.skipif(not os.path.exists(PROCMAIL), reason="procmail is not installed")
def test_exitcode_values_read_as_procmail_reads_them() -> None:
    pw = pwd.getpwnam(TEST_USER)
    workdir = tempfile.mkdtemp(prefix="postroom-envint-")
    os.chown(workdir, pw.pw_uid, pw.pw_gid)
    try:
        got = {v: _procmail_exit(v, workdir, pw) for v in VALUES}
    finally:
        shutil.rmtree(workdir)
    ours = {v: (renvint(-1, v) if renvint(-1, v) >= 0 else 0) % 256 for v in VALUES}
    assert ours == got


@given(st.integers(min_value=-(1 << 62), max_value=1 << 62), st.sampled_from(["", " ", "\t\n"]),
       st.text(alphabet="xyz .;", max_size=5))
def test_a_leading_decimal_number_is_the_value(n: int, space: str, tail: str) -> None:
    assert renvint(99, f"{space}{n}{tail}") == n


@given(st.text(max_size=12))
def test_a_text_without_a_leading_number_is_a_word_or_the_default(text: str) -> None:
    if text.lstrip(" \t\n\v\f\r")[:1] in set("+-0123456789"):
        return                       # a number (or a sign): the test above
    first = text.lstrip(" \t\n\v\f\r")[:1].lower()
    want = {"y": 1, "t": 1, "e": 1, "n": 0, "f": 0, "d": 0, "a": 2}.get(first, -5)
    if first == "o":
        rest = text.lstrip(" \t\n\v\f\r")[1:3].lower()
        want = 1 if rest[:1] == "n" else 0 if rest == "ff" else -5
    assert renvint(-5, text) == want
    assert renvint(-5, "") == -5 and renvint(-5, None) == -5
