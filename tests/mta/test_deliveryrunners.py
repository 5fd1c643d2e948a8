"""mta.deliveryrunners: the pipe records the receivers and the queue runner write, and
the delivery runners read, for real; RecordWriter.close writing its backlog; a delivery
runner leaving when orphaned although no pipe reached EOF.

The daemon-level behaviour (delivery runners taking mail straight from the receivers, a
runner killed mid-delivery replaced and its message deferred, SIGHUP reaching them, a
dead queue runner stopping them) is tested through `postroom serve` in test_pool.py,
test_serve.py and test_serve_processes.py, which run in this mode.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import select
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from mta.deliveryrunners import RECORD_SIZE, RecordWriter, parse_record, record
from mta.queue.ids import new_qid

F_SETPIPE_SZ = 1031
qids = st.from_regex(r"\A[0-9A-F]{19}\Z")


@given(qids, st.booleans())
def test_a_record_is_twenty_bytes_and_reads_back(qid: str, force: bool) -> None:
    data = record(qid, force)
    assert len(data) == RECORD_SIZE and parse_record(data) == (qid, force)


@given(st.binary(min_size=RECORD_SIZE, max_size=RECORD_SIZE))
def test_anything_else_is_no_record(data: bytes) -> None:
    job = parse_record(data)
    assert job is None or record(*job) == data


def test_a_short_or_long_read_is_no_record() -> None:
    data = record(new_qid())
    assert parse_record(data[:-1]) is None and parse_record(data + b"\n") is None
    assert parse_record(b"../../etc/passwd...\n") is None


def _writer(fd: int, tag: int, n: int) -> None:
    """A receiver: ``n`` ids in bursts, never yielding inside a burst, so that what the
    full pipe cannot take piles up and goes out later in big flushes."""
    async def main() -> None:
        w = RecordWriter(asyncio.get_running_loop(), fd)
        for burst in range(0, n, 250):
            for i in range(burst, min(n, burst + 250)):
                w.notify(f"{tag:06X}{i:013X}", force=bool(i % 3 == 0))
            await asyncio.sleep(0)
        while w.pending:
            await asyncio.sleep(0.001)
        w.close()
    asyncio.run(main())


def _reader(fd: int, out: str) -> None:
    """A delivery runner's loop: select, then one record per non-blocking read."""
    os.set_blocking(fd, False)
    got = []
    while True:
        select.select([fd], [], [])
        try:
            data = os.read(fd, RECORD_SIZE)
        except BlockingIOError:
            continue
        if not data:
            break
        got.append(data)
    with open(out, "wb") as fh:
        fh.write(b"".join(got))


def _fork(body) -> int:
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            body()
            code = 0
        finally:
            os._exit(code)
    return pid


def test_two_writers_three_readers_each_record_whole_and_once(tmp_path) -> None:
    """A pipe cut down to one page, so that the writers' pending records pile up far
    beyond PIPE_BUF: their flushes must still be atomic and whole records, or records
    tear (a partial write, or two writers' bytes inside one record) and reads lose
    alignment.  (It fails with writes of the whole pending buffer: checked.)"""
    r, w = os.pipe()
    fcntl.fcntl(w, F_SETPIPE_SZ, 4096)
    n = 3000
    readers = [_fork(lambda i=i: (os.close(w), _reader(r, str(tmp_path / f"r{i}")))) for i in range(3)]
    writers = [_fork(lambda t=t: (os.close(r), _writer(w, t, n))) for t in (1, 2)]
    os.close(r)
    os.close(w)
    for pid in writers + readers:
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    records = []
    per_reader = []
    for i in range(3):
        data = (tmp_path / f"r{i}").read_bytes()
        assert len(data) % RECORD_SIZE == 0
        chunk = [data[k:k + RECORD_SIZE] for k in range(0, len(data), RECORD_SIZE)]
        per_reader.append(len(chunk))
        records += chunk
    jobs = [parse_record(x) for x in records]
    assert None not in jobs
    expected = {(f"{t:06X}{i:013X}", i % 3 == 0) for t in (1, 2) for i in range(n)}
    counts = Counter(jobs)
    assert set(counts) == expected and max(counts.values()) == 1
    assert sum(per_reader) == 2 * n


def test_close_writes_the_whole_backlog_before_the_eof(tmp_path) -> None:
    """Records that the pipe could not take yet (no reader, one page) are written by
    close(), blocking, in order, before the readers see EOF: a stopping receiver must
    not drop the ids of mail it acknowledged."""
    r, w = os.pipe()
    fcntl.fcntl(w, F_SETPIPE_SZ, 4096)
    loop = asyncio.new_event_loop()
    try:
        writer = RecordWriter(loop, w)
        sent = [new_qid() for _ in range(1000)]          # 20 KB: five pipes full
        for i, qid in enumerate(sent):
            writer.notify(qid, force=i % 7 == 0)
        assert len(writer.pending) > 4096                # a backlog waiting in memory
        reader = _fork(lambda: (os.close(w), _reader(r, str(tmp_path / "got"))))
        os.close(r)
        writer.close()
        assert writer.fd == -1
    finally:
        loop.close()
    assert os.waitstatus_to_exitcode(os.waitpid(reader, 0)[1]) == 0
    data = (tmp_path / "got").read_bytes()
    got = [parse_record(data[k:k + RECORD_SIZE]) for k in range(0, len(data), RECORD_SIZE)]
    assert got == [(qid, i % 7 == 0) for i, qid in enumerate(sent)]


ORPHAN_HELPER = r"""
import ctypes, os, signal, sys, time
from mta.config import Config, install_samples
from mta.deliveryrunners import _delivery_runner, record
from mta.forking import fork_process
from mta.queue.ids import new_qid

ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)       # PR_SET_CHILD_SUBREAPER: orphans come here
config = Config.embedded_default(sys.argv[1])
install_samples(config)
work_r, work_w = os.pipe()
sched_r, sched_w = os.pipe()                  # this process keeps the writing end open
told_r, told_w = os.pipe()
queue_runner = os.fork()
if queue_runner == 0:                         # a stand-in for the queue runner
    me = os.getpid()
    dr = fork_process("delivery runner",
                      lambda: _delivery_runner(config, work_r, sched_r, None, me))
    os.write(told_w, b"%d\n" % dr)
    signal.pause()
    os._exit(0)
dr = int(os.read(told_r, 64))

def exited(within):
    # The delivery runner's exit status once it is this process's child (orphaned);
    # before that, -1 if it ended (a zombie of its queue runner); None: still running.
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            pid, status = os.waitpid(dr, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
        except ChildProcessError:
            with open(f"/proc/{dr}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return -1
        time.sleep(0.02)
    return None

# Control: with its queue runner alive, a record (for mail that is not there) is
# handled and the delivery runner waits for the next one.
os.write(work_w, record(new_qid()))
early = exited(1.0)
os.kill(queue_runner, signal.SIGKILL)
if early is not None:
    sys.exit(3)
os.waitpid(queue_runner, 0)                   # now orphaned; both pipes still open
os.write(work_w, record(new_qid()))
code = exited(10.0)
if code is None:
    os.kill(dr, signal.SIGKILL)
    sys.exit(4)
sys.exit(10 + code)
"""


def test_an_orphaned_delivery_runner_exits_though_no_pipe_reached_eof(tmp_path) -> None:
    """A delivery runner must not outlive its queue runner even while another process
    still holds the schedule pipe's writing end (a runner forked a moment earlier
    inherits it): at its next record it sees that it was orphaned and exits 0."""
    import subprocess
    import sys
    p = subprocess.run([sys.executable, "-c", ORPHAN_HELPER, str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 10, (p.returncode, p.stderr[-2000:])


def test_a_waiting_message_is_retried_later_and_later_while_it_waits() -> None:
    import time as _time
    from mta import deliveryrunners as dr
    w = dr._Waiting()
    assert w.timeout() is None and w.due() == []
    delays = []
    for _ in range(8):
        w.add("Q")
        delays.append(round(w.timeout() or 0.0, 2))
        w._when["Q"] = _time.monotonic() - 1          # pretend the time came
        assert w.due() == ["Q"] and w.due() == []
    assert delays == [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    w.done("Q")                                       # delivered: the next wait starts over
    w.add("Q")
    assert round(w.timeout() or 0.0, 2) == 0.25
    w.done("Q")                   # delivered through a record while its retry was scheduled
    assert w.timeout() is None and "Q" not in w._when   # no pointless retry left behind
