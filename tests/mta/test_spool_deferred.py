"""Deferred queue entries: ``Spool.new_message(deferred=True)`` (what the SMTP receiver uses).

A deferred IncomingMessage has its queue id at once but creates tmp/<qid>/ only when the
data outgrows the write buffer (256 KiB) or in ``commit``.  Checked here with real files,
rival processes and strace(1) — the last being the only honest witness that the message,
the envelope and both directories are fsync'd before ``commit`` returns, and before the
receiver's 250.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import smtplib
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mta.queue import Envelope, QueueError, RecipientState, Spool
from mta.queue.ids import is_qid
from mta.queue.spool import _WRITE_BUFFER

ROOT = str(Path(__file__).parents[2])
STRACE = shutil.which("strace") or "/usr/bin/strace"


def env(*rcpts: str) -> Envelope:
    return Envelope(sender="s@example.org", recipients=[RecipientState(r) for r in rcpts or ("r@example.net",)],
                    received_at=time.time(), size=0)


def listing(spool: Spool, state: str) -> list[str]:
    return sorted(os.listdir(spool.dirs[state]))


def child(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)


# --------------------------------------------------------------------------- no file before commit

def test_small_message_makes_no_file_before_commit(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path))
    m = spool.new_message(deferred=True)
    assert is_qid(m.qid)
    for _ in range(100):
        m.write(b"Subject: small\n\n" + b"x" * 1000 + b"\n")
    assert m.size == 100 * 1017
    assert listing(spool, "tmp") == [] and listing(spool, "incoming") == []
    qid = m.commit(env("a@x.example", "b@x.example"))
    assert qid == m.qid and m.committed
    assert listing(spool, "tmp") == [] and listing(spool, "incoming") == [qid]
    d = Path(spool.dirs["incoming"]) / qid
    assert (d / "message").read_bytes() == (b"Subject: small\n\n" + b"x" * 1000 + b"\n") * 100
    e = Envelope.from_json((d / "envelope.json").read_bytes())
    assert [r.address for r in e.recipients] == ["a@x.example", "b@x.example"]
    assert spool.scan_due(time.time()) == [qid]
    with pytest.raises(QueueError):
        m.write(b"more")
    with pytest.raises(QueueError):
        m.commit(env())


def test_large_message_spills_to_tmp_locked_and_commits(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path))
    m = spool.new_message(deferred=True)
    block = bytes(range(256)) * 256                   # 64 KiB
    written = b""
    while len(written) + len(block) <= _WRITE_BUFFER:
        m.write(block)
        written += block
        assert listing(spool, "tmp") == []            # still only in memory
    m.write(block)
    written += block
    assert listing(spool, "tmp") == [m.qid]
    spilled = Path(spool.dirs["tmp"]) / m.qid / "message"
    assert spilled.exists()
    # a live writer: another process cannot take the lock, and recovery leaves it alone
    r = child("""
        import fcntl, os, sys
        fd = os.open(sys.argv[1], os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            print("locked")
        except BlockingIOError:
            print("busy")
    """, str(spilled))
    assert r.stdout == "busy\n", r.stderr
    assert Spool(str(tmp_path), recover=False).recover(tmp_grace=0) == {"claims": 0, "tmp": 0}
    for _ in range(3):
        m.write(block)
        written += block
    qid = m.commit(env())
    assert listing(spool, "tmp") == [] and listing(spool, "incoming") == [qid]
    assert (Path(spool.dirs["incoming"]) / qid / "message").read_bytes() == written
    assert m.size == len(written)


# --------------------------------------------------------------------------- abort

def test_abort_leaves_nothing_small_or_large(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path))
    small = spool.new_message(deferred=True)
    small.write(b"Subject: x\n\nshort\n")
    small.abort()
    big = spool.new_message(deferred=True)
    big.write(b"y" * (_WRITE_BUFFER + 1))
    assert listing(spool, "tmp") == [big.qid]
    big.abort()
    for size in (10, _WRITE_BUFFER * 2):
        with pytest.raises(ConnectionResetError):
            with spool.new_message(deferred=True) as m:
                m.write(b"z" * size)
                raise ConnectionResetError("client vanished mid-DATA")
    assert all(listing(spool, s) == [] for s in ("tmp", "incoming", "active", "deferred"))
    with pytest.raises(QueueError):
        small.write(b"after abort")
    with pytest.raises(QueueError):
        big.commit(env())
    assert listing(spool, "incoming") == []


def test_queue_id_taken_meanwhile_is_a_queue_error_and_spares_the_other(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path))
    with spool.new_message(deferred=True) as m:
        m.write(b"mine\n")
        other = Path(spool.dirs["tmp"]) / m.qid
        other.mkdir()                                   # someone else's entry, same id
        (other / "message").write_bytes(b"theirs\n")
        with pytest.raises(QueueError, match="already in use"):
            m.commit(env())
    assert (other / "message").read_bytes() == b"theirs\n"   # not ours to remove
    assert listing(spool, "incoming") == []


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=_WRITE_BUFFER // 2), min_size=1, max_size=8),
       st.booleans())
def test_tmp_exists_exactly_when_the_buffer_overflows(sizes: list[int], commit: bool) -> None:
    with tempfile.TemporaryDirectory() as root:
        spool = Spool(root)
        m = spool.new_message(deferred=True)
        data = b""
        for i, n in enumerate(sizes):
            chunk = bytes([65 + i]) * n
            m.write(chunk)
            data += chunk
            assert listing(spool, "tmp") == ([m.qid] if len(data) > _WRITE_BUFFER else [])
        if commit:
            qid = m.commit(env())
            assert (Path(spool.dirs["incoming"]) / qid / "message").read_bytes() == data
        else:
            m.abort()
            assert listing(spool, "incoming") == []
        assert listing(spool, "tmp") == []


# --------------------------------------------------------------------------- durability

def test_another_process_reads_message_and_envelope_right_after_commit(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path))
    for size in (100, 3 * _WRITE_BUFFER):
        m = spool.new_message(deferred=True)
        data = os.urandom(size)
        m.write(data)
        qid = m.commit(env(f"n{size}@x.example"))
        r = child("""
            import hashlib, json, os, sys
            d = os.path.join(sys.argv[1], "incoming", sys.argv[2])
            with open(os.path.join(d, "message"), "rb") as f:
                h = hashlib.sha256(f.read()).hexdigest()
            with open(os.path.join(d, "envelope.json"), "rb") as f:
                e = json.load(f)
            print(json.dumps({"sha": h, "rcpts": [r["address"] for r in e["recipients"]]}))
        """, str(tmp_path), qid)
        assert r.returncode == 0, r.stderr
        got = json.loads(r.stdout)
        assert got == {"sha": hashlib.sha256(data).hexdigest(), "rcpts": [f"n{size}@x.example"]}


def _strace(argv: list[str], out: Path, **kw) -> subprocess.Popen[str]:
    return subprocess.Popen([STRACE, "-f", "-y", "-s", "300", "-o", str(out),
                             "-e", "trace=mkdir,openat,fsync,fdatasync,rename,write,sendto,sync_file_range", *argv],
                            cwd=ROOT, text=True, stdout=subprocess.PIPE, **kw)


def _completions(trace: str) -> list[str]:
    """The syscalls in the order they returned ("<... x resumed>" joined to its start)."""
    pending: dict[str, str] = {}
    done: list[str] = []
    for line in trace.splitlines():
        pid, _, rest = line.partition(" ")
        rest = rest.strip()
        if rest.endswith("<unfinished ...>"):
            pending[pid] = rest[: -len("<unfinished ...>")]
        elif rest.startswith("<..."):
            m = re.match(r"<\.\.\. \w+ resumed>(.*)", rest)
            done.append(pending.pop(pid, "") + (m.group(1) if m else rest))
        else:
            done.append(rest)
    return done


def _durable_order(calls: list[str], root: str, qid: str, marker: str) -> None:
    """Assert: message, envelope and tmp/<qid> fsync'd, renamed, incoming/ fsync'd — all
    before the first call containing ``marker``."""
    tmpd, inc = f"{root}/tmp/{qid}", f"{root}/incoming"

    def first(pred, what: str) -> int:
        for i, c in enumerate(calls):
            if pred(c):
                return i
        raise AssertionError(f"no {what} in the trace")

    msg = first(lambda c: c.startswith("fsync(") and f"<{tmpd}/message>" in c and "= 0" in c, "message fsync")
    envl = first(lambda c: c.startswith("fsync(") and f"<{tmpd}/envelope.json>" in c and "= 0" in c,
                 "envelope fsync")
    dirf = first(lambda c: c.startswith("fsync(") and f"<{tmpd}>" in c and "= 0" in c, "tmp dir fsync")
    ren = first(lambda c: c.startswith(f'rename("{tmpd}", "{inc}/{qid}")') and "= 0" in c, "rename")
    incf = next((i for i in range(ren + 1, len(calls))
                 if calls[i].startswith("fsync(") and f"<{inc}>" in calls[i] and "= 0" in calls[i]), -1)
    assert incf > 0, "no fsync of incoming/ after the rename"
    ack = first(lambda c: marker in c, marker)
    assert msg < dirf and envl < dirf < ren < incf < ack, (msg, envl, dirf, ren, incf, ack)


def test_commit_returns_after_message_envelope_and_dirs_are_fsynced(tmp_path: Path) -> None:
    root = str(tmp_path / "spool")
    trace = tmp_path / "trace"
    p = _strace([sys.executable, "-c", textwrap.dedent("""
        import os, sys, time
        from mta.queue import Envelope, RecipientState, Spool
        spool = Spool(sys.argv[1])
        m = spool.new_message(deferred=True)
        m.write(b"Subject: durable\\n\\nbody\\n")
        os.write(1, b"WRITTEN\\n")
        qid = m.commit(Envelope("s@x.example", [RecipientState("r@x.example")], time.time(), 0))
        os.write(1, ("COMMITTED " + qid + "\\n").encode())
    """), root], trace)
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 0
    qid = out.split("COMMITTED ")[1].strip()
    calls = _completions(trace.read_text())
    # nothing of the entry existed until commit: the mkdir comes after the data was written
    written = next(i for i, c in enumerate(calls) if "WRITTEN" in c)
    mk = next(i for i, c in enumerate(calls) if c.startswith(f'mkdir("{root}/tmp/{qid}"'))
    assert written < mk
    _durable_order(calls, root, qid, "COMMITTED")


def test_smtp_250_only_after_fsync(tmp_path: Path) -> None:
    """The real receiver (SmtpServer with a deferred entry) under strace: its 250 for the
    DATA is sent after the commit's fsyncs and rename returned."""
    root = str(tmp_path / "spool")
    trace = tmp_path / "trace"
    p = _strace([sys.executable, "-c", textwrap.dedent("""
        import asyncio, sys
        from mta.queue import Spool
        from mta.smtp.limits import ServerLimits
        from mta.smtp.server import SmtpServer
        from mta.smtp.simplepolicy import SimplePolicy
        async def main():
            srv = SmtpServer(hostname="mx.test", policy=SimplePolicy(), spool=Spool(sys.argv[1]),
                             limits=ServerLimits(greet_pause=0, idle_timeout=10, data_timeout=10))
            host, port = await srv.start("127.0.0.1", 0)
            print(port, flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)   # until EOF
            await srv.stop()
        asyncio.run(main())
    """), root], trace, stdin=subprocess.PIPE)
    try:
        port = int(p.stdout.readline())
        with smtplib.SMTP("127.0.0.1", port, timeout=20) as s:
            s.ehlo("client.example")
            s.mail("s@example.org")
            s.rcpt("r@example.net")
            code, text = s.data(b"Subject: over smtp\r\n\r\nbody\r\n")
        assert code == 250
        qid = text.decode().rsplit(" ", 1)[1]
        assert is_qid(qid)
    finally:
        p.stdin.close()           # the server stops at EOF
        p.wait(30)
    calls = _completions(trace.read_text())
    _durable_order(calls, root, qid, f"queued as {qid}")


_RECYCLE = textwrap.dedent("""
    import os, sys, time
    from mta.queue import Envelope, RecipientState, Spool
    spool = Spool(sys.argv[1])
    spool.shared_flush = sys.argv[2] == "shared"
    def put(text, rcpts):
        m = spool.new_message(deferred=True)
        m.write(text)
        return m.commit(Envelope("s@x.example", [RecipientState(r) for r in rcpts], time.time(), 0))
    first = put(b"Subject: one\\n\\nfirst body, the longer one\\n",
                [f"r{i}@x.example" for i in range(int(sys.argv[3]))])
    c = spool.claim(first)
    for r in c.envelope.recipients:
        r.mark_delivered()
    c.finish()
    if sys.argv[4]:                       # a recycled directory that lost a file
        (free,) = os.listdir(os.path.join(sys.argv[1], "free"))
        os.unlink(os.path.join(sys.argv[1], "free", free, sys.argv[4]))
    time.sleep(0.15)
    os.write(1, b"SECOND\\n")
    qid = put(b"Subject: two\\n\\nsecond\\n", ["r@x.example"])
    os.write(1, ("COMMITTED " + qid + "\\n").encode())
""")


def _recycled_commit(tmp_path: Path, mode: str, first_recipients: int = 1,
                     remove: str = "") -> tuple[list[str], str, str]:
    """Commit a message, deliver it, commit a second one into its recycled directory
    (from which the file ``remove`` was deleted meanwhile), all under strace; the second
    commit's system calls, the spool root and its qid."""
    root = str(tmp_path / "spool")
    trace = tmp_path / "trace"
    p = _strace([sys.executable, "-c", _RECYCLE, root, mode, str(first_recipients), remove], trace)
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 0, out
    qid = out.split("COMMITTED ")[1].strip()
    calls = _completions(trace.read_text())
    start = next(i for i, c in enumerate(calls) if "SECOND" in c)
    calls = calls[start:]
    tmpd = f"{root}/tmp/{qid}"
    assert any(c.startswith(f'rename("{root}/free/') and f'"{tmpd}")' in c for c in calls), "not recycled"
    assert not any(c.startswith(f'mkdir("{tmpd}"') for c in calls)
    d = Path(root) / "incoming" / qid
    assert (d / "message").read_bytes() == b"Subject: two\n\nsecond\n"
    assert Envelope.from_json((d / "envelope.json").read_bytes()).recipients[0].address == "r@x.example"
    assert (d / "envelope.json").stat().st_size % 512 == 0
    return calls, root, qid


def _index(calls: list[str], pred, what: str) -> int:
    for i, c in enumerate(calls):
        if pred(c):
            return i
    raise AssertionError(f"no {what} in the trace")


def test_a_recycled_directory_is_as_durable_with_fewer_syncs(tmp_path: Path) -> None:
    """The second message reuses the first one's directory (mta.queue.spool, "Recycling"):
    its files are rewritten in place; the envelope, padded to the same size, needs only
    fdatasync; the directory's entries exist already, so only incoming/ is fsync'd after
    the rename — still all before commit returns.  (A file system where one flush does
    not cover two files: Spool.shared_flush False.)"""
    calls, root, qid = _recycled_commit(tmp_path, "separate")
    tmpd, inc = f"{root}/tmp/{qid}", f"{root}/incoming"
    msg = _index(calls, lambda c: c.startswith("fsync(") and f"<{tmpd}/message>" in c and "= 0" in c,
                 "message fsync")
    envl = _index(calls, lambda c: c.startswith("fdatasync(") and f"<{tmpd}/envelope.json>" in c
                  and "= 0" in c, "envelope fdatasync")
    ren = _index(calls, lambda c: c.startswith(f'rename("{tmpd}", "{inc}/{qid}")') and "= 0" in c, "rename")
    incf = next(i for i in range(ren + 1, len(calls))
                if calls[i].startswith("fsync(") and f"<{inc}>" in calls[i] and "= 0" in calls[i])
    ack = _index(calls, lambda c: "COMMITTED" in c, "COMMITTED")
    assert msg < ren and envl < ren < incf < ack, (msg, envl, ren, incf, ack)
    assert not any("sync_file_range" in c for c in calls)


def test_a_recycled_envelope_is_made_durable_by_the_messages_flush(tmp_path: Path) -> None:
    """On ext4 (mta.queue.writeback) the envelope rewritten in place gets no
    fdatasync of its own: its writes are started and waited for (sync_file_range), and
    only then is the message fsync'd, whose cache flush makes both durable; then the
    rename and incoming/'s fsync, all before commit returns."""
    calls, root, qid = _recycled_commit(tmp_path, "shared")
    tmpd, inc = f"{root}/tmp/{qid}", f"{root}/incoming"
    env_write = _index(calls, lambda c: c.startswith("write(") and f"<{tmpd}/envelope.json>" in c,
                       "envelope write")
    env_wait = _index(calls, lambda c: c.startswith("sync_file_range(") and f"<{tmpd}/envelope.json>" in c
                      and "SYNC_FILE_RANGE_WAIT_AFTER" in c and "= 0" in c, "wait for the envelope's writes")
    msg = _index(calls, lambda c: c.startswith("fsync(") and f"<{tmpd}/message>" in c and "= 0" in c,
                 "message fsync")
    ren = _index(calls, lambda c: c.startswith(f'rename("{tmpd}", "{inc}/{qid}")') and "= 0" in c, "rename")
    incf = next(i for i in range(ren + 1, len(calls))
                if calls[i].startswith("fsync(") and f"<{inc}>" in calls[i] and "= 0" in calls[i])
    ack = _index(calls, lambda c: "COMMITTED" in c, "COMMITTED")
    assert env_write < env_wait < msg < ren < incf < ack, (env_write, env_wait, msg, ren, incf, ack)
    assert not any(c.startswith("fsync(") and f"<{tmpd}>" in c for c in calls)   # its entries exist
    assert not any(c.startswith(("fsync(", "fdatasync(")) and "envelope.json" in c for c in calls)


@pytest.mark.parametrize("mode", ["shared", "separate"])
@pytest.mark.parametrize("lost", ["envelope.json", "message"])
def test_a_recycled_directory_that_lost_a_file_gets_it_back_durably(tmp_path: Path, lost: str,
                                                                     mode: str) -> None:
    """A directory in free/ whose file something removed: the commit creates the file
    again (no 451 for the client) and, as for a new directory, fsyncs the directory so
    that the new entry survives a crash; all before the rename into incoming/."""
    calls, root, qid = _recycled_commit(tmp_path, mode, remove=lost)
    tmpd, inc = f"{root}/tmp/{qid}", f"{root}/incoming"
    made = _index(calls, lambda c: c.startswith("openat(") and f'"{tmpd}/{lost}"' in c and "O_CREAT|O_EXCL" in c
                  and "= -1" not in c, f"the {lost} made again")
    dirf = _index(calls, lambda c: c.startswith("fsync(") and f"<{tmpd}>" in c and "= 0" in c, "tmp dir fsync")
    ren = _index(calls, lambda c: c.startswith(f'rename("{tmpd}", "{inc}/{qid}")') and "= 0" in c, "rename")
    assert made < dirf < ren, (made, dirf, ren)


def test_a_recycled_envelope_that_changes_size_is_fsynced(tmp_path: Path) -> None:
    """An envelope whose padded size changes (the first message had 40 recipients) has a
    new size in its inode, which only its own fsync writes: no shortcut then."""
    calls, root, qid = _recycled_commit(tmp_path, "shared", first_recipients=40)
    tmpd = f"{root}/tmp/{qid}"
    msg = _index(calls, lambda c: c.startswith("fsync(") and f"<{tmpd}/message>" in c and "= 0" in c,
                 "message fsync")
    envl = _index(calls, lambda c: c.startswith("fsync(") and f"<{tmpd}/envelope.json>" in c and "= 0" in c,
                  "envelope fsync")
    assert msg < envl
    assert not any("sync_file_range" in c and "WAIT_AFTER" in c for c in calls)
