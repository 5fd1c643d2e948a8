"""End-to-end sends with swaks, a real independent SMTP client (/usr/bin/swaks)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

SWAKS = shutil.which("swaks") or "/usr/bin/swaks"


def swaks(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    if not Path(SWAKS).exists():
        pytest.fail("swaks is required (Debian package swaks; make test-deps installs it)")
    return subprocess.run([SWAKS, "--server", f"127.0.0.1:{port}", "--helo", "swaks.example",
                           "--from", "sender@example.org", *args],
                          capture_output=True, text=True, timeout=30)


def test_swaks_pipelined_send_to_two_recipients(smtp_server):
    rs = smtp_server()
    r = swaks(rs.port, "--to", "a@example.net,b@example.net", "--pipeline",
              "--header", "Subject: via swaks", "--body", "line one\n.leading dot\nend")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "<** " not in r.stdout            # swaks marks error replies with <**
    assert len(rs.queued) == 1
    d = Path(rs.spool.dirs["incoming"]) / rs.queued[0]
    env = json.loads((d / "envelope.json").read_text())
    assert env["sender"] == "sender@example.org" and env["helo"] == "swaks.example"
    assert [r["address"] for r in env["recipients"]] == ["a@example.net", "b@example.net"]
    body = (d / "message").read_bytes()
    assert b"Subject: via swaks\n" in body and b"\n.leading dot\n" in body and b"\r" not in body


def test_swaks_rejected_recipient_and_size(smtp_server):
    from mta.smtp.simplepolicy import SimplePolicy
    rs = smtp_server(policy=SimplePolicy(domains=["example.net"]), max_message_size=2000)
    r = swaks(rs.port, "--to", "a@elsewhere.example", "--pipeline")
    assert r.returncode != 0 and "<** 550 5.7.1 Relaying denied" in r.stdout
    r = swaks(rs.port, "--to", "a@example.net", "--body", "x" * 900 + "\n" + "y" * 900 + "\n" + "z" * 900)
    assert "<** 552 5.3.4" in r.stdout
    assert rs.queued == []
