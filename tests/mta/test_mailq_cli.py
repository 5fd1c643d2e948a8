"""`postroom mailq` / `postroom queue` with a configuration they cannot load: EX_CONFIG
(78) and the reason on stderr, naming the command and the file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("args", [["mailq"], ["queue", "flush"], ["queue", "delete", "X1"]])
def test_unreadable_config_is_ex_config(tmp_path, args):
    missing = tmp_path / "missing.toml"
    proc = subprocess.run([sys.executable, "-m", "mta.cli", *args[:1], "--config", str(missing),
                           *args[1:]], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 78
    assert proc.stderr.startswith(f"postroom {args[0]}: {missing}")


def test_bad_key_is_named(tmp_path):
    bad = tmp_path / "postroom.toml"
    bad.write_text("[server]\nno_such_key = 1\n")
    proc = subprocess.run([sys.executable, "-m", "mta.cli", "mailq", "--config", str(bad)],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 78 and "no_such_key" in proc.stderr
