"""`postroom sendmail` (a real subprocess) writing the real spool; option parsing; stdin rules."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from mta.sendmail import UsageError, header_recipients, parse_args, read_message

PY = sys.executable


def sendmail(root: Path, *args: str, stdin: bytes = b"Subject: hi\n\nbody\n",
             env: dict | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([PY, "-m", "mta.cli", "sendmail", "--embedded", str(root), *args],
                          input=stdin, capture_output=True, timeout=30, env=env)


def queued(root: Path) -> list[tuple[dict, bytes]]:
    incoming = root / "var" / "spool" / "incoming"
    out = []
    for d in sorted(incoming.iterdir()) if incoming.exists() else []:
        out.append((json.loads((d / "envelope.json").read_text()), (d / "message").read_bytes()))
    return out


def test_queues_with_added_headers(tmp_path: Path) -> None:
    r = sendmail(tmp_path, "-f", "robot@example.org", "-F", "The Robot", "-oi", "bob@example.com",
                 "carol")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b""
    [(env, msg)] = queued(tmp_path)
    assert env["sender"] == "robot@example.org" and env["protocol"] == "local"
    assert [x["address"] for x in env["recipients"]] == ["bob@example.com", "carol"]
    head, _, body = msg.partition(b"\n\n")
    assert head.startswith(b"Received: (from ")
    assert b"\nSubject: hi" in head
    assert b'\nFrom: The Robot <robot@example.org>' in head
    assert b"\nDate: " in head and b"\nMessage-ID: <" in head
    assert env["message_id"] and env["message_id"].encode() in head
    assert body == b"body\n" and env["size"] == len(msg)


def test_extract_recipients_and_remove_bcc(tmp_path: Path) -> None:
    data = (b"From: a@example.org\r\nTo: Bob <bob@example.com>, carol@example.com\r\n"
            b"Cc: dave@example.com\r\nBcc: secret@example.com,\r\n  other@example.com\r\n"
            b"Subject: t\r\n\r\nline\r\n.\r\nafter dot\r\n")
    r = sendmail(tmp_path, "-t", "-i", "extra@example.com", stdin=data)
    assert r.returncode == 0, r.stderr
    [(env, msg)] = queued(tmp_path)
    assert [x["address"] for x in env["recipients"]] == [
        "extra@example.com", "bob@example.com", "carol@example.com", "dave@example.com",
        "secret@example.com", "other@example.com"]
    assert b"Bcc" not in msg and b"other@example.com" not in msg and b"\r" not in msg
    assert msg.endswith(b"\nline\n.\nafter dot\n")        # -i: the lone dot is data
    assert b"\nFrom: a@example.org\n" in msg and msg.count(b"\nFrom: ") == 1


def test_lone_dot_ends_message_without_i(tmp_path: Path) -> None:
    r = sendmail(tmp_path, "bob", stdin=b"Subject: x\n\nkept\n.\nlost\n")
    assert r.returncode == 0, r.stderr
    [(_, msg)] = queued(tmp_path)
    assert msg.endswith(b"\nkept\n") and b"lost" not in msg


def test_null_sender_and_default_sender(tmp_path: Path) -> None:
    assert sendmail(tmp_path, "-f", "<>", "bob").returncode == 0
    assert sendmail(tmp_path, "bob").returncode == 0
    senders = sorted(env["sender"] for env, _ in queued(tmp_path))
    assert senders[0] == "" and senders[1].endswith("@" + senders[1].split("@")[1])
    assert "@" in senders[1]


def test_errors(tmp_path: Path) -> None:
    r = sendmail(tmp_path)
    assert r.returncode == 64 and b"no recipients" in r.stderr
    r = sendmail(tmp_path, "-Q")
    assert r.returncode == 64 and b"unknown option" in r.stderr
    r = sendmail(tmp_path, "bad address@@x")
    assert r.returncode == 65
    r = subprocess.run([PY, "-m", "mta.cli", "sendmail", "-C", str(tmp_path / "missing.toml"), "bob"],
                       input=b"x\n", capture_output=True, timeout=30)
    assert r.returncode == 78 and b"missing.toml" in r.stderr
    assert queued(tmp_path) == []


def test_config_file_option(tmp_path: Path) -> None:
    (tmp_path / "postroom.toml").write_text('[server]\nhostname = "h.example"\nspool_dir = "q"\n')
    r = subprocess.run([PY, "-m", "mta.cli", "sendmail", "-C", str(tmp_path / "postroom.toml"), "bob"],
                       input=b"\nbody without header\n", capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
    [d] = list((tmp_path / "q" / "incoming").iterdir())
    msg = (d / "message").read_bytes()
    assert b"by h.example (postroom)" in msg and msg.endswith(b"\n\nbody without header\n")
    assert json.loads((d / "envelope.json").read_text())["sender"].endswith("@h.example")


def test_parse_args() -> None:
    o = parse_args(["-oi", "-fme@x", "-F", "Me", "-odb", "-oem", "--", "-notanoption"])
    assert (o.ignore_dots, o.sender, o.fullname, o.recipients) == (True, "me@x", "Me", ["-notanoption"])
    o = parse_args(["-t", "-i", "-v", "a", "b"])
    assert o.extract and o.ignore_dots and o.recipients == ["a", "b"]
    o = parse_args(["--config", "/etc/x.toml", "-bm", "a"])
    assert o.config == "/etc/x.toml" and o.recipients == ["a"]
    with pytest.raises(UsageError):
        parse_args(["-f"])
    with pytest.raises(UsageError):
        parse_args(["-bd"])
    # joined flags (cron and scripts use -ti), and Postfix's accepted no-ops
    o = parse_args(["-ti", "a"])
    assert o.extract and o.ignore_dots and o.recipients == ["a"]
    o = parse_args(["-it", "-G", "-m", "-O", "x=y", "-p", "smtp", "-V", "env", "-em", "-Am", "b"])
    assert o.extract and o.ignore_dots and o.recipients == ["b"]
    assert parse_args(["-q30m"]).flush and parse_args(["-q"]).flush


def test_bcc_never_travels_without_t_either(tmp_path: Path) -> None:
    data = b"From: a@example.org\nTo: bob@example.com\nBcc: secret@example.com\nSubject: t\n\nx\n"
    r = sendmail(tmp_path, "bob@example.com", stdin=data)
    assert r.returncode == 0, r.stderr
    [(env, msg)] = queued(tmp_path)
    assert [x["address"] for x in env["recipients"]] == ["bob@example.com"]
    assert b"secret" not in msg and b"Bcc" not in msg


def test_q_asks_for_a_queue_run_and_reads_nothing(tmp_path: Path) -> None:
    r = sendmail(tmp_path, "-q", stdin=b"")
    assert r.returncode == 0, r.stderr
    assert queued(tmp_path) == []


def test_t_takes_a_resent_message_to_its_resent_recipients(tmp_path: Path) -> None:
    # RFC 5322 3.6.6: the original To:/Cc: are not sent to again (Postfix's cleanup)
    data = (b"Resent-From: me@example.org\nResent-To: dave@example.com\n"
            b"Resent-Bcc: hidden@example.com\nFrom: a@example.org\nTo: bob@example.com\n"
            b"Cc: carol@example.com\nSubject: fwd\n\nx\n")
    r = sendmail(tmp_path, "-t", stdin=data)
    assert r.returncode == 0, r.stderr
    [(env, msg)] = queued(tmp_path)
    assert [x["address"] for x in env["recipients"]] == ["dave@example.com", "hidden@example.com"]
    assert b"hidden" not in msg and b"Resent-Bcc" not in msg and b"\nResent-To: dave" in msg


def test_header_recipients() -> None:
    head = b"To: \"Doe, J\" <j@x.example>, k@x.example\nCc: (none)\nSubject: To: fake@x\n"
    assert header_recipients(head) == ["j@x.example", "k@x.example"]


lines = st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"").replace(b"\r", b"")),
                 max_size=20)


@settings(max_examples=60, deadline=None)
@given(lines, st.sampled_from([b"\n", b"\r\n"]))
def test_read_message_with_i_keeps_every_line(body: list[bytes], eol: bytes) -> None:
    data = b"".join(line + eol for line in body)
    assert read_message(io.BytesIO(data), ignore_dots=True) == b"".join(line + b"\n" for line in body)
    cut = read_message(io.BytesIO(data), ignore_dots=False)
    expect = []
    for line in body:
        if line == b".":
            break
        expect.append(line + b"\n")
    assert cut == b"".join(expect)


@pytest.mark.parametrize("data, head, body", [
    (b"Subject: hdr\nthis is body\n", b"\nSubject: hdr\n", b"this is body\n"),
    (b"Dear Bob: hello\nmore\n", None, b"Dear Bob: hello\nmore\n"),
    (b"From a@b.example Mon Dec  7 10:00:00 2026\nSubject: x\n\nbody\n", b"\nSubject: x\n", b"body\n"),
])
def test_the_body_starts_where_the_header_fields_end(tmp_path: Path, data: bytes, head, body: bytes) -> None:
    # Postfix's cleanup: the first line that is no header field starts the body; a
    # leading mbox From_ line is dropped (text was filed among the header fields)
    r = sendmail(tmp_path, "bob@example.com", stdin=data)
    assert r.returncode == 0, r.stderr
    [(_env, msg)] = queued(tmp_path)
    h, _, b = msg.partition(b"\n\n")
    assert b == body
    if head is not None:
        assert head in h + b"\n"
    assert b"From a@b.example Mon" not in msg


def test_bp_lists_the_queue_and_bi_checks_the_aliases(tmp_path: Path) -> None:
    # sendmail -bp is mailq, -bi (and -I) newaliases: scripts and cron run them by
    # these names; they were refused as unsupported modes (exit 64)
    r = sendmail(tmp_path, "-bp", stdin=b"")
    assert r.returncode == 0 and r.stdout == b"Mail queue is empty\n", r.stderr
    assert sendmail(tmp_path, "bob@example.com").returncode == 0
    [qid] = [d.name for d in (tmp_path / "var" / "spool" / "incoming").iterdir()]
    r = sendmail(tmp_path, "-bp", stdin=b"")
    assert r.returncode == 0, r.stderr
    assert qid.encode() in r.stdout and b"bob@example.com" in r.stdout
    aliases = tmp_path / "etc" / "aliases"
    aliases.parent.mkdir(parents=True, exist_ok=True)
    aliases.write_text("team: alice, bob\n")
    for flag in ("-bi", "-I"):
        r = sendmail(tmp_path, flag, stdin=b"")
        assert r.returncode == 0 and b"1 aliases" in r.stdout, r.stderr
    aliases.write_text("team: alice, bob\nthis line has no colon\n")
    r = sendmail(tmp_path, "-bi", stdin=b"")
    assert r.returncode == 65 and f"{aliases}:2:".encode() in r.stderr
    assert len(queued(tmp_path)) == 1        # nothing was read or queued by them


def test_a_message_over_the_size_limit_is_refused_and_not_queued(tmp_path: Path) -> None:
    (tmp_path / "postroom.toml").write_text(
        '[server]\nhostname = "h.example"\nspool_dir = "q"\n[smtp.limits]\nmax_message_size = 1000\n')
    def run(body: bytes) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([PY, "-m", "mta.cli", "sendmail", "-C", str(tmp_path / "postroom.toml"), "bob"],
                              input=b"Subject: s\n\n" + body, capture_output=True, timeout=30)
    r = run(b"x" * 2000 + b"\n")
    assert r.returncode == 65 and b"message file too big" in r.stderr
    assert not (tmp_path / "q" / "incoming").exists() or not list((tmp_path / "q" / "incoming").iterdir())
    r = run(b"y" * 900 + b"\n")       # 12 + 901 bytes: within the limit
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "q" / "incoming").iterdir())) == 1


def test_sender_in_angle_brackets_and_the_full_name_of_an_added_from(tmp_path: Path) -> None:
    import os
    import pwd
    r = sendmail(tmp_path, "-f", "The Robot <robot@example.org>", "bob", stdin=b"Subject: a\n\nx\n")
    assert r.returncode == 0, r.stderr
    env = dict(os.environ, NAME="Jane Doe")
    r = sendmail(tmp_path, "bob", stdin=b"Subject: b\n\nx\n", env=env)
    assert r.returncode == 0, r.stderr
    env.pop("NAME")
    r = sendmail(tmp_path, "bob", stdin=b"Subject: c\n\nx\n", env=env)
    assert r.returncode == 0, r.stderr
    got = {m.split(b"Subject: ")[1][:1]: (e["sender"], m) for e, m in queued(tmp_path)}
    sender, msg = got[b"a"]
    assert sender == "robot@example.org" and b"\nFrom: robot@example.org\n" in msg
    sender, msg = got[b"b"]
    assert f"\nFrom: Jane Doe <{sender}>\n".encode() in msg
    gecos = pwd.getpwuid(os.getuid()).pw_gecos.split(",")[0].strip()
    sender, msg = got[b"c"]
    assert (f"\nFrom: {gecos} <{sender}>\n" if gecos else f"\nFrom: {sender}\n").encode() in msg
