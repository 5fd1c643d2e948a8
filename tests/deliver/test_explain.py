"""`postroom deliver --explain` / `postroom explain`: a dry run that reports every
recipe and changes nothing on disk."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

RC = """\
LOGFILE=log
:0 c:
* ^Subject:.*\\/lunch.*
copies
:0 B
* 2^1 noon
* -1^0 ^X-Spam: yes
{
  :0:
  * ! ^From:.*nobody
  lunch-$MATCH
}
:0 wc
| formail -r | $SENDMAIL -t
"""

MAIL = b"""From: Alice <alice@example.org>
To: bob@example.org
Subject: lunch today

Lunch at noon? noon is fine.
"""


def explain(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "rc").write_text(RC)
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "TZ")}
    return subprocess.run([sys.executable, "-m", "mta.cli", *args], input=MAIL.decode(),
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)


def test_explain_reports_each_recipe_and_changes_nothing(tmp_path):
    proc = explain(tmp_path, "deliver", "--explain", "-f", "alice@example.org", "./rc")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "./rc:2: recipe :0c" in out
    assert "* ^Subject:.*\\/lunch.*: matched, MATCH='lunch today'" in out
    assert "2^1 noon: matched, score 4" in out            # two matches of noon, w=2, x=1
    assert "-1^0 ^X-Spam: yes: no match, score 4" in out
    assert "total score 4" in out
    assert "would save to copies" in out
    assert 'would lock "lunch-lunch.lock"' in out        # unquoted $MATCH splits: 2 folders
    assert "? program not run" not in out
    assert "./rc:13:" not in out                           # processing ended before it
    assert "the mail would end up in: lunch-lunch today" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rc"]   # nothing written


def test_explain_subcommand_with_user_and_rcfile(tmp_path):
    msg = tmp_path / "msg"
    msg.write_bytes(MAIL)
    proc = explain(tmp_path, "explain", str(msg), "./rc")
    assert proc.returncode == 0, proc.stderr
    assert "./rc:5: recipe :0B" in proc.stdout
    assert "exit status would be: 0" in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["msg", "rc"]


def test_explain_marks_program_conditions_as_not_run(tmp_path):
    (tmp_path / "rc2").write_text(":0\n* ? test -f /etc/passwd\nbox\n")
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "TZ")}
    proc = subprocess.run([sys.executable, "-m", "mta.cli", "deliver", "--explain", "./rc2"],
                          input=MAIL.decode(), cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60)
    assert "? program not run, counted as failed: test -f /etc/passwd" in proc.stdout
    assert "conditions not met" in proc.stdout
