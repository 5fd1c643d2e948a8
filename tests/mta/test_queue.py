"""The durable spool with real faults: killed writers, killed claimers, rival processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mta.queue import (ClaimedMessage, CorruptEnvelope, Envelope, QueueBusy, QueueError,
                       RecipientState, Spool, UnknownMessage)
from mta.queue.errors import InvalidQueueId

ROOT = str(Path(__file__).parents[2])


def env(*rcpts: str, sender: str = "s@example.org") -> Envelope:
    return Envelope(sender=sender, recipients=[RecipientState(r) for r in rcpts or ("r@example.net",)],
                    received_at=time.time(), size=0)


def put(spool: Spool, data: bytes = b"Subject: t\n\nbody\n", *rcpts: str) -> str:
    m = spool.new_message()
    m.write(data)
    return m.commit(env(*rcpts))


def listing(spool: Spool, state: str) -> list[str]:
    return sorted(os.listdir(spool.dirs[state]))


def run_child(code: str, *args: str, **kw) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True, **kw)


# --- commit ------------------------------------------------------------------------------

def test_commit_is_visible_whole(tmp_path):
    spool = Spool(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["active", "corrupt", "deferred", "free", "hold", "incoming", "tmp"]
    m = spool.new_message()
    m.write(b"Subject: t\n\n")
    assert listing(spool, "incoming") == [] and listing(spool, "tmp") == [m.qid]
    m.write(b"body\n")
    qid = m.commit(env("a@x.example", "b@x.example"))
    assert listing(spool, "incoming") == [qid] and listing(spool, "tmp") == []
    d = Path(spool.dirs["incoming"]) / qid
    assert (d / "message").read_bytes() == b"Subject: t\n\nbody\n"
    e = Envelope.from_json((d / "envelope.json").read_bytes())
    assert [r.address for r in e.recipients] == ["a@x.example", "b@x.example"]
    assert all(r.state == "pending" and r.attempts == 0 for r in e.recipients)
    assert spool.scan_due(time.time()) == [qid]


def test_abort_and_context_manager_leave_nothing(tmp_path):
    spool = Spool(str(tmp_path))
    with pytest.raises(RuntimeError):
        with spool.new_message() as m:
            m.write(b"partial")
            raise RuntimeError("client vanished")
    spool.new_message().abort()
    assert listing(spool, "tmp") == [] and listing(spool, "incoming") == []


def test_killed_writer_leaves_no_half_message(tmp_path):
    child = run_child("""
        import sys, time
        from mta.queue import Spool
        m = Spool(sys.argv[1]).new_message()
        m.write(b"Subject: half\\n\\n" + b"x" * 100000)
        m._file.flush()
        print("writing", flush=True)
        while True:
            m.write(b"y" * 4096); time.sleep(0.001)
    """, str(tmp_path))
    assert child.stdout.readline() == "writing\n"
    time.sleep(0.1)
    child.send_signal(signal.SIGKILL)
    child.wait()
    spool = Spool(str(tmp_path), recover=False)
    assert listing(spool, "incoming") == [] and len(listing(spool, "tmp")) == 1
    assert spool.scan_due(time.time()) == []
    assert spool.recover(tmp_grace=0) == {"claims": 0, "tmp": 1}
    assert listing(spool, "tmp") == []


def test_live_writer_is_not_recovered(tmp_path):
    spool = Spool(str(tmp_path))
    m = spool.new_message()
    m.write(b"x")
    assert Spool(str(tmp_path), recover=False).recover(tmp_grace=0) == {"claims": 0, "tmp": 0}
    qid = m.commit(env())
    assert listing(spool, "incoming") == [qid]


def test_file_size_limit_fault_becomes_queue_error(tmp_path):
    child = run_child("""
        import resource, signal, sys
        from mta.queue import Spool, QueueError
        from mta.queue.envelope import Envelope, RecipientState
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (50000, 50000))
        try:
            with Spool(sys.argv[1]).new_message() as m:
                for _ in range(100):
                    m.write(b"z" * 4096)
                m.commit(Envelope("a@b.example", [RecipientState("c@d.example")], 0.0))
        except QueueError as exc:
            print("QueueError", exc)
    """, str(tmp_path))
    out, _ = child.communicate(timeout=30)
    assert out.startswith("QueueError") and "File too large" in out
    spool = Spool(str(tmp_path))
    assert listing(spool, "incoming") == [] and listing(spool, "tmp") == []


# --- claims ------------------------------------------------------------------------------

def test_claim_is_exclusive_and_finish_routes_by_state(tmp_path):
    spool = Spool(str(tmp_path))
    qid = put(spool, b"m\n", "a@x.example", "b@x.example", "c@x.example")
    c = spool.claim(qid)
    assert isinstance(c, ClaimedMessage) and listing(spool, "active") == [qid]
    assert spool.claim(qid) is None and Spool(str(tmp_path)).claim(qid) is None
    assert c.open_message().read() == b"m\n"
    with pytest.raises(QueueBusy):
        spool.hold(qid)
    with pytest.raises(QueueBusy):
        spool.delete(qid)
    a, b, _ = c.envelope.recipients
    a.mark_delivered()
    b.mark_failed("550 5.1.1 unknown")
    c.save()
    saved = Envelope.from_json((Path(c.dir) / "envelope.json").read_bytes())
    assert [r.state for r in saved.recipients] == ["delivered", "failed", "pending"]
    assert not (Path(c.dir) / "envelope.json.tmp").exists()
    assert c.finish() == "incoming"          # c is still pending
    c = spool.claim(qid)
    c.envelope.recipients[2].mark_deferred("451 4.3.0 try later", time.time() + 3600)
    assert c.finish() == "deferred" and listing(spool, "deferred") == [qid]
    assert spool.scan_due(time.time()) == []
    assert spool.scan_due(time.time() + 3601) == [qid]
    c = spool.claim(qid)
    assert c.envelope.recipients[2].attempts == 1 and c.envelope.recipients[2].last_error.startswith("451")
    c.envelope.recipients[2].mark_delivered()
    assert c.finish() == "done"
    assert all(listing(spool, s) == [] for s in ("incoming", "active", "deferred", "tmp"))


def _deliver_all(spool: Spool, qid: str) -> None:
    c = spool.claim(qid)
    for r in c.envelope.recipients:
        r.mark_delivered()
    assert c.finish() == "done"


def test_finished_directories_are_recycled_and_fully_rewritten(tmp_path, monkeypatch):
    spool = Spool(str(tmp_path))
    long_body = b"Subject: long\n\n" + b"x" * 10000 + b"\n"
    first = put(spool, long_body, "a@x.example", "b@x.example", "c@x.example")
    inode = os.stat(os.path.join(spool.dirs["incoming"], first)).st_ino
    _deliver_all(spool, first)
    assert os.listdir(spool.free_dir) == [first]        # kept, not deleted
    time.sleep(0.11)                                     # past the listing rate limit
    second = put(spool, b"Subject: short\n\nhi\n", "d@x.example")
    d = os.path.join(spool.dirs["incoming"], second)
    assert os.stat(d).st_ino == inode and os.listdir(spool.free_dir) == []
    # nothing of the longer message or its three-recipient envelope is left behind
    assert Path(d, "message").read_bytes() == b"Subject: short\n\nhi\n"
    e = Envelope.from_json(Path(d, "envelope.json").read_bytes())
    assert [r.address for r in e.recipients] == ["d@x.example"]
    assert sorted(os.listdir(d)) == ["envelope.json", "message"]
    c = spool.claim(second)
    assert c.open_message().read() == b"Subject: short\n\nhi\n"
    c.envelope.recipients[0].mark_delivered()
    c.finish()
    # another Spool object (another process) takes what this one recycled
    other = Spool(str(tmp_path), recover=False)
    third = put(other, b"m3\n")
    assert os.stat(os.path.join(spool.dirs["incoming"], third)).st_ino == inode
    # free/ is bounded: beyond FREE_LIMIT a finished entry is deleted
    monkeypatch.setattr("mta.queue.spool.FREE_LIMIT", 0)
    _deliver_all(other, third)
    assert os.listdir(spool.free_dir) == [] and all(
        listing(spool, s) == [] for s in ("incoming", "active", "deferred", "tmp"))


def test_receivers_sharing_free_take_disjoint_parts_of_it(tmp_path):
    """share_free: receivers listing free/ together take disjoint sets of names, and
    between them every recycled directory is used."""
    spool = Spool(str(tmp_path))
    # All queued before any is delivered: a message queued after a delivery may reuse
    # its directory (once the rate-limited listing of free/ sees it), which made the
    # count below depend on how fast the loop ran.
    for qid in [put(spool) for _ in range(40)]:
        _deliver_all(spool, qid)
    recycled = set(os.listdir(spool.free_dir))
    assert len(recycled) == 40
    receivers = [Spool(str(tmp_path), recover=False) for _ in range(3)]
    for index, r in enumerate(receivers):
        r.share_free(index, len(receivers))
    taken: list[set[str]] = [set() for _ in receivers]
    for index, r in enumerate(receivers):
        while True:
            before = set(os.listdir(r.free_dir))
            if not r._take_free(os.path.join(r.dirs["tmp"], f"t{index}-{len(taken[index])}")):
                break
            (name,) = before - set(os.listdir(r.free_dir))
            taken[index].add(name)
    assert all(taken), taken                           # each had its share
    assert sum(len(t) for t in taken) == 40 and set().union(*taken) == recycled
    assert os.listdir(spool.free_dir) == []
    # a single receiver (count 1) takes everything, as an unshared spool does
    alone = Spool(str(tmp_path), recover=False)
    alone.share_free(0, 1)
    _deliver_all(spool, put(spool))
    assert alone._take_free(os.path.join(alone.dirs["tmp"], "alone"))


def test_a_recycled_directory_just_taken_is_not_recovered(tmp_path):
    """Between taking a directory from free/ and locking its message file a writer holds
    no lock; its old mtime must not make ``recover`` think it abandoned (ctime is new)."""
    spool = Spool(str(tmp_path))
    _deliver_all(spool, put(spool))
    old = time.time() - 3600
    (name,) = os.listdir(spool.free_dir)
    os.utime(os.path.join(spool.free_dir, name), (old, old))
    taken = os.path.join(spool.dirs["tmp"], "X" + name)
    time.sleep(0.11)                                     # past the listing rate limit
    assert spool._take_free(taken)                       # the rename, no lock yet
    assert os.stat(taken).st_mtime < time.time() - 3000
    assert Spool(str(tmp_path)).recover(tmp_grace=5.0)["tmp"] == 0
    assert os.path.isdir(taken)
    assert Spool(str(tmp_path)).recover(tmp_grace=0.0)["tmp"] == 1    # really abandoned
    assert not os.path.exists(taken)


CLAIMER = """
    import os, sys, time
    from mta.queue import Spool
    spool = Spool(sys.argv[1], recover=False)
    log = os.open(sys.argv[2], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    for _ in range(3):
        for qid in spool.scan_due(time.time()):
            c = spool.claim(qid)
            if c is None:
                continue
            os.write(log, f"{os.getpid()} {qid}\\n".encode())
            time.sleep(0.005)
            for r in c.envelope.recipients:
                r.mark_delivered()
            c.finish()
"""


def test_claims_are_exclusive_across_processes(tmp_path):
    spool = Spool(str(tmp_path / "q"))
    qids = {put(spool) for _ in range(30)}
    log = tmp_path / "claims.log"
    children = [run_child(CLAIMER, str(tmp_path / "q"), str(log)) for _ in range(4)]
    for ch in children:
        ch.wait(timeout=30)
        assert ch.returncode == 0
    claims = [line.split() for line in log.read_text().splitlines()]
    assert sorted(q for _, q in claims) == sorted(qids)      # each exactly once
    assert all(listing(spool, s) == [] for s in ("incoming", "active", "tmp"))


def test_stale_claim_of_a_killed_process_is_recovered(tmp_path):
    spool = Spool(str(tmp_path))
    qid = put(spool, b"m\n", "a@x.example")
    child = run_child("""
        import sys, time
        from mta.queue import Spool
        c = Spool(sys.argv[1]).claim(sys.argv[2])
        print("claimed" if c else "none", flush=True)
        time.sleep(60)
    """, str(tmp_path), qid)
    assert child.stdout.readline() == "claimed\n"
    # A live claim is left alone by recovery, and cannot be claimed again.
    assert Spool(str(tmp_path)).recover() == {"claims": 0, "tmp": 0}
    assert listing(spool, "active") == [qid] and spool.claim(qid) is None
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    again = Spool(str(tmp_path))                  # recovery runs on start
    assert listing(again, "active") == [] and listing(again, "incoming") == [qid]
    c = again.claim(qid)
    assert c is not None and c.open_message().read() == b"m\n"


def test_take_stale_claims_takes_a_dead_claimers_entry_where_it_is(tmp_path):
    """What the queue runner does when a delivery runner died (mta.deliveryrunners):
    the dead one's claim is taken over in active/; live claims, this process's own
    included, are left alone."""
    spool = Spool(str(tmp_path))
    dead_q, live_q, own_q = (put(spool, b"%d\n" % i, "a@x.example") for i in range(3))
    own = spool.claim(own_q)
    claimers = []
    for qid in (dead_q, live_q):
        child = run_child("""
            import sys, time
            from mta.queue import Spool
            c = Spool(sys.argv[1], recover=False).claim(sys.argv[2])
            print("claimed" if c else "none", flush=True)
            time.sleep(60)
        """, str(tmp_path), qid)
        assert child.stdout.readline() == "claimed\n"
        claimers.append(child)
    try:
        assert spool.take_stale_claims() == []
        os.kill(claimers[0].pid, signal.SIGKILL)
        claimers[0].wait()
        (taken,) = spool.take_stale_claims()
        assert (taken.qid, taken.source) == (dead_q, "active")
        assert taken.open_message().read() == b"0\n"
        assert spool.take_stale_claims() == []        # ours now: a live claim
        taken.envelope.recipients[0].mark_deferred("delivery process died", time.time() + 60)
        assert taken.finish() == "deferred"
        assert listing(spool, "active") == sorted([live_q, own_q])
        assert listing(spool, "deferred") == [dead_q]
    finally:
        for child in claimers:
            child.kill()
            child.wait()
        assert own is not None
        own.finish()


def test_a_stale_claim_with_a_broken_envelope_goes_to_corrupt(tmp_path):
    spool = Spool(str(tmp_path))
    qid = put(spool, b"m\n", "a@x.example")
    child = run_child("""
        import sys, time
        from mta.queue import Spool
        c = Spool(sys.argv[1], recover=False).claim(sys.argv[2])
        print("claimed" if c else "none", flush=True)
        time.sleep(60)
    """, str(tmp_path), qid)
    assert child.stdout.readline() == "claimed\n"
    (Path(spool.dirs["active"]) / qid / "envelope.json").write_text("{not json")
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert spool.take_stale_claims() == []
    assert listing(spool, "active") == [] and listing(spool, "corrupt") == [qid]


# --- administration and corruption ---------------------------------------------------------

def test_hold_release_delete_and_listing(tmp_path):
    spool = Spool(str(tmp_path))
    q1, q2 = put(spool), put(spool, b"x\n", "z@x.example")
    spool.hold(q1)
    assert listing(spool, "hold") == [q1] and spool.scan_due(time.time()) == [q2]
    assert spool.claim(q1) is None
    info = {i.qid: i for i in spool.list()}
    assert info[q1].queue == "hold" and info[q2].recipients[0].address == "z@x.example"
    spool.release(q1)
    assert spool.scan_due(time.time()) == sorted([q1, q2])
    spool.delete(q2)
    assert spool.locate(q2) is None and listing(spool, "tmp") == []
    with pytest.raises(UnknownMessage):
        spool.delete(q2)
    with pytest.raises(InvalidQueueId):
        spool.hold("../../etc")


def test_corrupt_envelope_is_put_aside(tmp_path):
    spool = Spool(str(tmp_path))
    qid = put(spool)
    c = spool.claim(qid)
    c.envelope.recipients[0].mark_deferred("later", 0.0)
    c.finish()
    (Path(spool.dirs["deferred"]) / qid / "envelope.json").write_bytes(b'{"version": 1, "sender": 3')
    assert spool.scan_due(time.time()) == []
    assert listing(spool, "corrupt") == [qid]
    assert [i.error is not None for i in spool.list()] == [True]
    spool.delete(qid)
    assert listing(spool, "corrupt") == []


@pytest.mark.parametrize("raw", [b"", b"[]", b"{}", b'{"version": 1}', b"\xff",
                                 b'{"version": 1, "sender": "a", "recipients": [], "received_at": 0}',
                                 b'{"version": 1, "sender": "a", "received_at": 0, '
                                 b'"recipients": [{"address": "b", "state": "lost"}]}'])
def test_bad_envelopes_raise_corrupt(raw):
    with pytest.raises(CorruptEnvelope):
        Envelope.from_json(raw)


_text = st.text(max_size=20)
_rcpt = st.builds(RecipientState, address=_text,
                  state=st.sampled_from(["pending", "delivered", "deferred", "failed"]),
                  attempts=st.integers(0, 50), next_try=st.none() | st.floats(0, 2e9),
                  last_error=st.none() | _text, orcpt=st.none() | _text, notify=st.none() | _text)


@settings(max_examples=100, deadline=None)
@given(st.builds(Envelope, sender=_text, recipients=st.lists(_rcpt, min_size=1, max_size=4),
                 received_at=st.floats(0, 2e9), size=st.integers(0, 2**40),
                 client_ip=st.none() | _text, helo=st.none() | _text, smtputf8=st.booleans(),
                 message_id=st.none() | _text, extra=st.dictionaries(_text, _text, max_size=2)))
def test_envelope_json_roundtrip(e):
    from mta.queue.spool import _padded
    raw = e.to_json()
    assert Envelope.from_json(raw) == e
    padded = _padded(raw)            # as committed: whole 512-byte blocks, same envelope
    assert len(padded) % 512 == 0 and padded.startswith(raw[:-1]) and padded.endswith(b"\n")
    assert Envelope.from_json(padded) == e


def test_write_after_commit_is_an_error(tmp_path):
    spool = Spool(str(tmp_path))
    m = spool.new_message()
    m.commit(env())
    with pytest.raises(QueueError):
        m.write(b"late")


def test_no_recycling_where_directory_links_are_not_counted(tmp_path, monkeypatch):
    """btrfs reports one link for every directory: free/ could not be bounded by its
    link count there, so finished entries are deleted as before."""
    spool = Spool(str(tmp_path))
    real_stat = os.stat

    class OneLink:
        def __init__(self, st):
            self._st = st

        def __getattr__(self, name):
            return 1 if name == "st_nlink" else getattr(self._st, name)

    def fake_stat(path, *a, **kw):
        st = real_stat(path, *a, **kw)
        return OneLink(st) if os.fspath(path) == spool.free_dir else st

    monkeypatch.setattr("mta.queue.spool.os.stat", fake_stat)
    _deliver_all(spool, put(spool))
    assert os.listdir(spool.free_dir) == [] and listing(spool, "tmp") == []


@settings(max_examples=40, deadline=None)
@given(data=st.binary(max_size=5000), told=st.integers(min_value=-3, max_value=3))
def test_read_file_returns_the_whole_file_whatever_fstat_said(tmp_path_factory, data, told):
    """read_file reads size+1 bytes after one fstat; a size that is wrong (a file that
    grew or shrank in between, simulated here) still gives every byte."""
    from mta.queue import spool as spool_mod
    path = tmp_path_factory.mktemp("rf") / "f"
    path.write_bytes(data)
    assert spool_mod.read_file(str(path)) == data
    real = os.fstat

    class Lying:
        def __init__(self, st):
            self.st_size = max(st.st_size + told, 0)
    try:
        spool_mod.os.fstat = lambda fd: Lying(real(fd))   # type: ignore[assignment]
        assert spool_mod.read_file(str(path)) == data
    finally:
        spool_mod.os.fstat = real                         # type: ignore[assignment]


def test_read_file_of_a_large_file(tmp_path):
    from mta.queue.spool import read_file
    data = os.urandom(3 << 20)
    (tmp_path / "big").write_bytes(data)
    assert read_file(str(tmp_path / "big")) == data
