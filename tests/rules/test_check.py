"""`postroom check`: compiler-style findings, exit status, and the shipped sample."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rules.check import check_rc
from rules.parser import parse_rc

REPO = Path(__file__).resolve().parents[2]


def findings(text: str) -> list[str]:
    return [str(f) for f in check_rc(parse_rc(text, "rc"))]


def test_clean_file_has_no_findings():
    rc = "MAILDIR=$HOME/Mail\n:0:\n* ^Subject:.*hello\nhello\n:0\nMaildir/\n"
    assert findings(rc) == []


def test_invalid_regex_is_an_error_with_position():
    out = findings(":0:\n* ^Subject: (unclosed\nbox\n")
    assert len(out) == 1
    assert out[0].startswith("rc:2:1: error: invalid regexp")


def test_unknown_flag_is_reported():
    out = findings(":0 cZq\nbox\n")
    assert any(":1:" in f and 'Skipped "Zq"' in f for f in out), out


def test_recipe_after_unconditional_delivery_never_runs():
    out = findings(":0:\ninbox\n:0:\n* ^Subject: x\nother\n")
    assert any(f.startswith("rc:3:1: warning: never runs") for f in out), out


def test_copy_and_blocks_do_not_end_processing():
    assert not any("never runs" in f for f in findings(":0 c:\ncopy\n:0:\nbox\n"))
    assert not any("never runs" in f for f in findings(":0\n{\n  X=1\n}\n:0:\nbox\n"))


def test_mbox_without_lock_is_a_warning_but_maildir_is_not():
    assert any("without a lock" in f for f in findings(":0\nmbox\n"))
    assert not any("without a lock" in f for f in findings(":0\nMaildir/\n"))
    assert not any("without a lock" in f for f in findings(":0\nMH/.\n"))


def test_variables_used_but_never_set():
    out = findings(":0:\n* ^Subject: x\n$FOLDR/box\n")
    assert any("variable FOLDR is used but never set" in f for f in out), out
    assert findings("FOLDR=x\n:0:\n* ^Subject: x\n$FOLDR/box\n") == []
    assert findings(":0:\n* ^Subject: x\n$HOME/box\n") == []       # preset by procmail


def test_chain_flag_without_a_preceding_recipe():
    out = findings(":0 A:\nbox\n")
    assert any("chains to a preceding recipe" in f for f in out), out


def test_syntax_errors_come_from_the_parser():
    out = findings(":0\n* x\n\n:0\nbox\n}\n")
    assert any("error: Missing action" in f for f in out), out
    assert any("error: Closing brace unexpected" in f for f in out), out


def run_check(*paths: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mta.cli", "check", *paths], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_sample_procmailrc_is_clean():
    proc = run_check("samples/procmailrc")
    assert proc.returncode == 0 and proc.stdout == "", proc.stdout + proc.stderr


@pytest.mark.parametrize("text, status", [(":0:\n* (\nbox\n", 1), (":0\nbox\n", 0)])
def test_exit_status_reflects_errors_only(tmp_path, text, status):
    rc = tmp_path / "rc"
    rc.write_text(text)
    proc = run_check(str(rc))
    assert proc.returncode == status, proc.stdout
    assert proc.stdout.startswith(f"{rc}:"), proc.stdout


def test_unreadable_file_is_noinput(tmp_path):
    proc = run_check(str(tmp_path / "missing"))
    assert proc.returncode == 66 and "cannot read" in proc.stderr
