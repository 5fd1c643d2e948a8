"""`postroom serve` as two processes (receiver + queue runner), with real signals.

The daemon runs as a real subprocess on 127.0.0.1 (tests/mta/test_serve.py's Daemon);
the process tree is read from /proc (``/proc/PID/task/TID/children``), so the tests see
exactly what an administrator sees with ``ps --forest``:

    receiver (the pid in DATA/run/postroom.pid, the SMTP sessions)
      └─ queue runner (forked at start, fed queue ids over a pipe)
           └─ delivery pool workers (mta.localdelivery mode ``pool``)

Covered: both processes exist; SIGKILL of the runner stops the daemon with 75 and the
mail it had acknowledged is delivered after a restart; SIGHUP is passed on to the
runner (an aliases change that the maps' own stat check cannot see takes effect);
SIGTERM lets the delivery in flight finish and both processes exit 0; --single-process
still works end to end.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from test_serve import PY, Daemon, wait_for


# --------------------------------------------------------------------------- /proc helpers

def children(pid: int) -> list[int]:
    """Direct child processes of ``pid`` (every thread's children list)."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return []
    for tid in tasks:
        try:
            out += [int(p) for p in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
        except FileNotFoundError:
            continue
    return sorted(set(out))


def descendants(pid: int) -> list[int]:
    out: list[int] = []
    todo = children(pid)
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children(p)
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except FileNotFoundError:
        return ""


def ppid(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))


def uses_uvloop(pid: int) -> bool:
    return "/uvloop/loop." in Path(f"/proc/{pid}/maps").read_text()


def hanging(marker: Path) -> list[int]:
    """Processes whose command line names ``marker`` (the shells of hanging recipes)."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if str(marker).encode() in Path(f"/proc/{name}/cmdline").read_bytes():
                    found.append(int(name))
            except OSError:
                pass
    return found


def alive(pid: int) -> bool:
    """Running (a zombie waiting for an absent reaper counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def kill_all(pids: list[int]) -> None:
    """SIGKILL processes these tests made (by pid; already gone is fine)."""
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def slow_worker(runner: int, what: str = "sleep") -> tuple[int, list[int]]:
    """The pool worker (a child of ``runner``) that runs ``what`` right now, and the
    processes under it."""
    for worker in children(runner):
        below = descendants(worker)
        if any(what in cmdline(p) for p in below):
            return worker, below
    raise LookupError(what)


# --------------------------------------------------------------------------- the daemon

class ProcDaemon(Daemon):
    """test_serve's Daemon, started with extra `postroom serve` options."""

    def start(self, *options: str) -> "ProcDaemon":   # type: ignore[override]
        mark = self.log_text().count("postroom serve ready")
        self.proc = subprocess.Popen([PY, "-m", "mta.cli", "serve", "--config", str(self.config),
                                      "--no-stderr", *options], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        wait_for(lambda: self.log_text().count("postroom serve ready") > mark or self.proc.poll() is not None,
                 20, "the daemon to start")
        assert self.proc.poll() is None, self.proc.stderr.read().decode() if self.proc.stderr else ""
        return self

    def runner(self) -> int:
        """The queue runner's pid: the receiver's child that the log names as such (the
        others are receiver processes)."""
        assert self.proc is not None
        kids = children(self.proc.pid)
        named = [int(m) for m in re.findall(r"queue runner started, delivery=\S+, pid (\d+)", self.log_text())]
        assert named and named[-1] in kids, (named, [cmdline(k) for k in kids])
        return named[-1]

    def receivers(self) -> list[int]:
        """The other receiver processes: the main receiver's children but the runner."""
        runner = self.runner()
        return [k for k in children(self.proc.pid) if k != runner]

    def wait(self, timeout: float = 30) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.stderr:
                self.proc.stderr.close()
            self.proc = None


@pytest.fixture
def pdaemon(tmp_path: Path):
    made: list[ProcDaemon] = []
    strays: list[int] = []

    def make(**kw) -> ProcDaemon:
        root = tmp_path / f"d{len(made)}"
        root.mkdir()
        d = ProcDaemon(root, **kw)
        made.append(d)
        return d

    make.strays = strays          # type: ignore[attr-defined]
    yield make
    for d in made:
        if d.proc is not None:
            tree = descendants(d.proc.pid)
            d.proc.kill()
            d.proc.wait()
            kill_all(tree)
    kill_all(strays)


def rewrite_same_stamp(path: Path, text: str) -> None:
    """Replace ``path``'s contents in place keeping inode, size and mtime_ns: the maps'
    own change detection (mta.maps.mapfile: dev, inode, size, mtime_ns) cannot see it,
    only a reload (SIGHUP) can."""
    st = path.stat()
    data = text.encode()
    assert len(data) == st.st_size
    with open(path, "r+b") as f:
        f.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = path.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (st.st_ino, st.st_size, st.st_mtime_ns)


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return True
    except OSError:
        return False


# --------------------------------------------------------------------------- tests

def test_two_processes_and_sighup_reaches_the_runner(pdaemon) -> None:
    d = pdaemon(users={"alice": "", "carol": ""}, aliases="list: alice\n").start()
    receiver = d.proc.pid
    assert (d.root / "var" / "run" / "postroom.pid").read_text().strip() == str(receiver)
    runner = d.runner()
    assert ppid(runner) == receiver and "mta.cli serve" in cmdline(runner)
    # delivery auto without dropping privileges: three delivery runners under the runner
    workers = children(runner)
    assert len(workers) == 3 and all(ppid(w) == runner for w in workers)
    assert f"in runner process {runner}" in d.log_text()
    # the receivers run on uvloop (mta.eventloop); the queue runner and its delivery
    # runners on asyncio's own loop
    assert uses_uvloop(receiver)
    assert not any(uses_uvloop(p) for p in (runner, *workers))

    assert d.send(["list@example.com"], "one") == {}
    assert d.wait_subjects(d.inbox("alice"), 1) == ["one"]
    # an edit the maps cannot notice by themselves: still alice without a reload ...
    rewrite_same_stamp(d.root / "aliases", "list: carol\n")
    assert d.send(["list@example.com"], "two") == {}
    assert d.wait_subjects(d.inbox("alice"), 2) == ["one", "two"]
    # ... and carol after SIGHUP to the receiver, which passes it on to the runner
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "maps reloaded" in d.log_text(), what="reload")
    time.sleep(0.2)   # the runner's handler runs on its own loop
    assert d.send(["list@example.com"], "three") == {}
    assert d.wait_subjects(d.inbox("carol"), 1) == ["three"]
    assert d.subjects(d.inbox("alice")) == ["one", "two"]
    assert d.runner() == runner and children(runner) == workers   # nothing restarted
    assert d.stop() == 0


def test_runner_killed_exits_75_and_acknowledged_mail_is_delivered_after_restart(pdaemon) -> None:
    d = pdaemon(users={"alice": "", "bob": ""}).start()
    runner = d.runner()
    workers = children(runner)               # its delivery runners
    assert len(workers) == 3
    for pid in (runner, *workers):           # a hung delivery side: the receiver still says 250
        os.kill(pid, signal.SIGSTOP)
    try:
        assert d.send(["alice@example.com"], "acked 1") == {}
        assert d.send(["bob@example.com", "alice@example.com"], "acked 2") == {}
    finally:
        os.kill(runner, signal.SIGKILL)
        # gone for good: its delivery runners orphaned (a zombie leader may still have
        # threads exiting, holding its pipes open)
        wait_for(lambda: all(ppid(w) != runner for w in workers), 10, "the runner to die")
        for pid in workers:                  # they see the runner gone and exit, delivering nothing
            os.kill(pid, signal.SIGCONT)
    assert d.wait(15) == 75
    assert "exited unexpectedly" in d.log_text()
    wait_for(lambda: not any(alive(p) for p in [runner, *workers]), 10, "the old processes to go")
    assert not listening(d.port)
    assert d.subjects(d.inbox("alice")) == [] and d.subjects(d.inbox("bob")) == []
    out = d.cli("mailq").stdout
    assert "(2 requests)" in out, out

    d.start()
    assert sorted(d.wait_subjects(d.inbox("alice"), 2)) == ["acked 1", "acked 2"]
    assert d.wait_subjects(d.inbox("bob"), 1) == ["acked 2"]
    wait_for(lambda: d.cli("mailq").stdout == "Mail queue is empty\n", what="empty queue")
    assert d.stop() == 0


def test_sigterm_finishes_the_delivery_in_flight_then_both_exit_0(pdaemon) -> None:
    d = pdaemon(users={"alice": ":0 wc\n| (cat >/dev/null; sleep 2)\n"}).start()
    runner = d.runner()
    workers = children(runner)
    assert d.send(["alice@example.com"], "in flight") == {}
    worker, below = wait_for(lambda: _try_slow_worker(runner), 10, "the slow delivery")
    pdaemon.strays.extend(below)
    t0 = time.monotonic()
    d.proc.send_signal(signal.SIGTERM)
    assert d.wait(30) == 0
    # it waited for the recipe (sleep 2) and the mailbox write, not killed them
    assert time.monotonic() - t0 > 1.0
    assert d.subjects(d.inbox("alice")) == ["in flight"]
    assert d.cli("mailq").stdout == "Mail queue is empty\n"
    assert not alive(runner)
    wait_for(lambda: not any(alive(p) for p in workers), 10, "the pool workers to exit")
    log = d.log_text()
    assert log.count("queue runner stopped") == 1 and "stat=Sent" in log
    # the runner's last words come before the receiver's
    assert log.index("queue runner stopped") < log.rindex("stopped\n")


def test_a_user_with_slow_recipes_cannot_hold_every_delivery_runner(pdaemon, tmp_path) -> None:
    """Three messages for a user whose recipe hangs occupy two of the three delivery
    runners; the third waits for a slot (mta.userslots) without holding a runner, so
    mail for another user is delivered meanwhile.  Without the bound the three runners
    all hang in the recipe and the other user's mail waits for them (checked)."""
    release = tmp_path / "release"
    hang = f":0 wc\n| cat >/dev/null; while [ ! -e {release} ]; do sleep 0.05; done\n"
    d = pdaemon(users={"slow": hang, "fast": ""}).start()
    runner = d.runner()
    try:
        for i in range(3):
            assert d.send(["slow@example.com"], f"slow {i}") == {}
        wait_for(lambda: len(hanging(release)) >= 2, 10, "two recipes to hang")
        time.sleep(0.5)                        # the third message reaches a runner too
        assert d.send(["fast@example.com"], "fast") == {}
        assert d.wait_subjects(d.inbox("fast"), 1, timeout=10) == ["fast"]
        assert d.subjects(d.inbox("slow")) == [] and len(hanging(release)) == 2
        waits = [line for line in d.log_text().splitlines() if "Waiting for a delivery slot" in line]
        assert len(waits) == 1, waits          # logged once, however often it was retried
    finally:
        release.touch()
    assert sorted(d.wait_subjects(d.inbox("slow"), 3)) == ["slow 0", "slow 1", "slow 2"]
    assert "Deferred" not in d.log_text()     # a wait is no failed attempt
    wait_for(lambda: d.cli("mailq").stdout == "Mail queue is empty\n", what="empty queue")
    assert len(children(runner)) == 3         # nothing died on the way
    assert d.stop() == 0


def test_a_bounce_queued_by_a_waiting_messages_retry_is_delivered_at_once(pdaemon, tmp_path) -> None:
    """A message that waited for a user's slot fails when retried: the bounce its retry
    queues is delivered by that runner right away, not when the next record arrives or
    the queue runner's next scan (a minute here) finds it.  (It waited for the scan
    before the fix: checked.)"""
    release = tmp_path / "release"
    rc = (f":0 wc\n* ^Subject: hang\n| cat >/dev/null; while [ ! -e {release} ]; do sleep 0.05; done\n\n"
          ":0\n* ^Subject: fail\n{\n  EXITCODE=67\n  :0\n  /dev/null\n}\n")
    d = pdaemon(users={"slow": rc, "fast": ""}, queue='initial = "10m"\n').start()
    try:
        for i in range(2):
            assert d.send(["slow@example.com"], f"hang {i}", sender="fast@example.com") == {}
        wait_for(lambda: len(hanging(release)) >= 2, 10, "two recipes to hang")
        assert d.send(["slow@example.com"], "fail", sender="fast@example.com") == {}
        wait_for(lambda: "Waiting for a delivery slot" in d.log_text(), 10, "the third to wait")
    finally:
        release.touch()
    assert d.wait_subjects(d.inbox("fast"), 1, timeout=10) == ["Returned mail: see transcript for details"]
    assert sorted(d.wait_subjects(d.inbox("slow"), 2)) == ["hang 0", "hang 1"]
    assert d.stop() == 0


def _try_slow_worker(runner: int):
    try:
        return slow_worker(runner)
    except LookupError:
        return None


def test_single_process_end_to_end(pdaemon) -> None:
    d = pdaemon(users={"alice": "MAILDIR=$HOME\n:0:\n* ^Subject:.*urgent\nurgent\n", "carol": ""},
                aliases="list: alice\n").start("--single-process")
    receiver = d.proc.pid
    # no runner process: the receiver's children are the pool's workers themselves
    workers = children(receiver)
    assert len(workers) == 3 and all(children(w) == [] for w in workers)
    log = d.log_text()
    assert "delivery=pool" in log and "in runner process" not in log
    assert d.send(["alice@example.com"], "urgent: a") == {}
    assert d.send(["list@example.com"], "b") == {}
    assert d.wait_subjects(d.home("alice") / "urgent", 1) == ["urgent: a"]
    assert d.wait_subjects(d.inbox("alice"), 1) == ["b"]
    rewrite_same_stamp(d.root / "aliases", "list: carol\n")
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "maps reloaded" in d.log_text(), what="reload")
    assert d.send(["list@example.com"], "c") == {}
    assert d.wait_subjects(d.inbox("carol"), 1) == ["c"]
    assert children(receiver) == workers
    assert d.stop() == 0
    assert not any(alive(p) for p in workers)


def test_split_daemon_with_inprocess_delivery_reads_the_receivers_records_itself(pdaemon) -> None:
    """Without pool delivery there are no delivery runners: the queue runner reads the
    receivers' pipe and delivers, from both receivers, and stops at the pipe's EOF."""
    d = pdaemon(users={"alice": "", "bob": ""}).start("--delivery", "inprocess")
    runner = d.runner()
    assert children(runner) == [] and "delivery=inprocess" in d.log_text()
    jobs = [(f"{u}@example.com", f"{u} {i}") for i in range(5) for u in ("alice", "bob")]
    for to, subject in jobs:               # one connection each: both receivers take some
        assert d.send([to], subject) == {}
    for user in ("alice", "bob"):
        assert sorted(d.wait_subjects(d.inbox(user), 5)) == [f"{user} {i}" for i in range(5)]
    assert "malformed record" not in d.log_text()
    assert d.stop() == 0
    assert not alive(runner)


# --------------------------------------------------------------------------- receivers

def _banner(port: int) -> tuple[socket.socket, bytes]:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    return s, s.recv(200)


def _free_slot(port: int) -> bool:
    s, banner = _banner(port)
    with s:
        if banner.startswith(b"220 "):
            s.sendall(b"QUIT\r\n")
            s.recv(100)
            return True
    return False


def test_receiver_processes_share_the_listener_and_one_connection_limit(pdaemon) -> None:
    d = pdaemon(users={"alice": ""}, smtp="processes = 3\n", limits="max_connections = 4\n").start()
    runner = d.runner()
    receivers = d.receivers()
    assert len(receivers) == 2 and all("mta.cli serve" in cmdline(p) for p in receivers)
    assert len(children(runner)) == 3      # the pool stays under the one runner
    # max_connections bounds all receivers together (mta.smtp.sessioncount): four
    # sessions are served wherever the kernel hands them, the fifth is refused ...
    held = [_banner(d.port) for _ in range(4)]
    try:
        assert all(b.startswith(b"220 ") for _, b in held), [b for _, b in held]
        extra, banner = _banner(d.port)
        extra.close()
        assert banner.startswith(b"421 4.3.2"), banner
        # ... and a freed slot is usable again
        held.pop()[0].close()
        # (the closed session's slot is published when the receiver sees it end)
        wait_for(lambda: _free_slot(d.port), 10, "a freed connection slot to be reused")
    finally:
        for s, _ in held:
            s.close()
    # the receivers free the slots once they see those clients go
    wait_for(lambda: _free_slot(d.port), 10, "the held sessions to end")
    # mail from every receiver reaches the one runner; the log shows who received it
    for i in range(12):
        assert d.send(["alice@example.com"], f"m{i}") == {}
    assert sorted(d.wait_subjects(d.inbox("alice"), 12)) == sorted(f"m{i}" for i in range(12))
    pids = set(re.findall(r"mta\.smtp\[(\d+)\]: \w+: from=<", d.log_text()))
    assert pids <= {str(p) for p in [d.proc.pid, *receivers]} and pids
    assert d.stop() == 0
    assert not any(alive(p) for p in [runner, *receivers])


def test_main_receiver_killed_takes_the_whole_daemon_down(pdaemon) -> None:
    """SIGKILL of the pid in postroom.pid: the other receivers see their lifeline pipe
    close, the runner then sees its queue pipe close; nothing is left listening and a
    new daemon starts on the same port."""
    d = pdaemon(users={"alice": ""}, smtp="processes = 2\n").start()
    runner = d.runner()
    receivers = d.receivers()
    workers = children(runner)
    assert len(receivers) == 1
    assert d.send(["alice@example.com"], "before") == {}
    assert d.wait_subjects(d.inbox("alice"), 1) == ["before"]
    d.proc.kill()
    d.proc.wait()
    d.proc = None
    wait_for(lambda: not any(alive(p) for p in [runner, *receivers, *workers]), 15,
             "the receivers, the runner and its workers to exit")
    assert not listening(d.port)
    d.start()
    assert d.send(["alice@example.com"], "after") == {}
    assert d.wait_subjects(d.inbox("alice"), 2) == ["before", "after"]
    assert d.stop() == 0


def test_an_extra_receiver_dying_stops_the_daemon_with_75(pdaemon) -> None:
    d = pdaemon(users={"alice": ""}, smtp="processes = 2\n").start()
    runner = d.runner()
    (receiver,) = d.receivers()
    os.kill(receiver, signal.SIGKILL)
    assert d.wait(15) == 75
    assert f"the receiver process {receiver} exited unexpectedly" in d.log_text()
    wait_for(lambda: not alive(runner), 10, "the runner to exit")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_every_process_at_once_is_a_clean_stop(pdaemon, sig) -> None:
    """systemd's default KillMode signals every process of the service together, and a
    terminal's Ctrl-C reaches the whole process group: whichever process hears it first,
    the daemon stops cleanly (0), not as if a child had died (75)."""
    d = pdaemon(users={"alice": ""}, smtp="processes = 3\n").start()
    assert d.send(["alice@example.com"], "before the signal") == {}
    assert d.wait_subjects(d.inbox("alice"), 1) == ["before the signal"]
    tree = [d.proc.pid, *descendants(d.proc.pid)]
    assert len(tree) == 1 + 2 + 1 + 3        # main, two receivers, runner, three workers
    for p in reversed(tree):                 # children first: the worst order
        os.kill(p, sig)
    assert d.wait(30) == 0
    wait_for(lambda: not any(alive(p) for p in tree), 10, "every process to exit")
    assert "exited unexpectedly" not in d.log_text()


def test_bind_waits_for_an_address_still_held_then_gives_up() -> None:
    """After the main receiver died, its other receivers hold the listening socket until
    they see their lifeline close: a restart retries the bind (as sendmail does), and an
    address that stays taken is still an error."""
    import threading

    from mta.config import Listener
    from mta.serve import _listen
    from test_serve import free_port

    port = free_port()
    holder = socket.create_server(("127.0.0.1", port))
    released = threading.Event()

    def release() -> None:
        holder.close()
        released.set()

    threading.Timer(0.5, release).start()
    sock = _listen(Listener("127.0.0.1", port), retry_for=10)
    assert released.is_set()           # it waited for the address, it did not steal it
    sock.close()
    with socket.create_server(("127.0.0.1", port)):
        t0 = time.monotonic()
        with pytest.raises(OSError):
            _listen(Listener("127.0.0.1", port), retry_for=0.3)
        assert time.monotonic() - t0 >= 0.3
