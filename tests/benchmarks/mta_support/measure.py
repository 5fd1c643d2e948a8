"""mta_support.measure — the benchmark's instruments: mailbox counter, CPU of a process
tree, smtp-source load, raw-socket latency.

DESCRIPTION
    MboxCounter    counts messages appended to an mbox by reading only the new bytes
                   (a message starts at "From " at offset 0 or after a blank line; the
                   writers quote body "From " lines, so the count is exact).
    TreeCpu        CPU seconds (utime+stime+cutime+cstime from /proc/PID/stat) of every
                   live descendant of this process except the excluded client pids.  A
                   daemon's dead children are counted through its cutime/cstime once it
                   reaped them; make_subreaper() makes daemons that double-fork
                   (Postfix's master) our children, so they stay in the tree.
    run_load       smtp-source -s SESSIONS -m MESSAGES -l SIZE (one connection per
                   message: smtp-source reuses a connection only with -d), timed from
                   its start to the last message in the mailbox.
    smtp_latency   one message over a raw socket (no Perl start-up as with swaks), timed
                   from connect() to the message being in the mailbox.

ERRORS
    BenchError for a load that does not complete in time or an SMTP reply that is not
    the expected one.
"""

from __future__ import annotations

import ctypes
import os
import socket
import subprocess
import time
from dataclasses import dataclass

__all__ = ["BenchError", "MboxCounter", "TreeCpu", "make_subreaper", "run_load", "smtp_latency",
           "LoadResult", "free_port"]

_TICK = os.sysconf("SC_CLK_TCK")
# O_NOATIME needs the file's owner or CAP_FOWNER: the benchmark runs as root.
_NOATIME = getattr(os, "O_NOATIME", 0) if os.geteuid() == 0 else 0
PR_SET_CHILD_SUBREAPER = 36   # prctl(2)


class BenchError(Exception):
    """A benchmark run could not be completed."""


def make_subreaper() -> None:
    """prctl(PR_SET_CHILD_SUBREAPER): orphaned descendants are re-parented to us."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise BenchError(f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(ctypes.get_errno())}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MboxCounter:
    """Messages in an mbox, counted incrementally (see the module docstring)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.offset = 0
        self.count = 0
        self._tail = b"\n\n"      # what precedes offset 0: a message may start there

    def poll(self) -> int:
        try:
            size = os.stat(self.path).st_size
        except FileNotFoundError:
            return self.count
        if size <= self.offset:
            return self.count
        # O_NOATIME: reading must not touch the access time.  procmail sleeps a second
        # before appending when the mbox's atime is not older than its mtime (so that a
        # mail reader still sees "new mail"): a polling reader would slow it to 1 msg/s.
        try:
            fd = os.open(self.path, os.O_RDONLY | _NOATIME)
        except FileNotFoundError:
            return self.count
        try:
            data = os.pread(fd, size - self.offset, self.offset)
        finally:
            os.close(fd)
        if data:
            # Only complete lines are examined, so a half-written "From " is not counted.
            cut = data.rfind(b"\n") + 1
            if cut == 0:
                return self.count
            chunk = self._tail + data[:cut]
            self.count += chunk.count(b"\n\nFrom ")
            self._tail = chunk[-2:]
            self.offset += cut
        return self.count

    def wait_for(self, n: int, timeout: float, interval: float = 0.002) -> float:
        """Poll until ``n`` messages are there; returns the monotonic time it happened."""
        deadline = time.monotonic() + timeout
        while self.poll() < n:
            if time.monotonic() > deadline:
                raise BenchError(f"{self.path}: {self.count} of {n} messages after {timeout:.0f} s")
            time.sleep(interval)
        return time.monotonic()


def _proc_table() -> dict[int, tuple[int, float]]:
    """pid -> (ppid, CPU seconds incl. reaped children) for every process we can read."""
    table: dict[int, tuple[int, float]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                raw = fh.read()
        except OSError:
            continue
        fields = raw[raw.rfind(b")") + 2:].split()
        # after "pid (comm) ": state ppid ... utime(14) stime(15) cutime(16) cstime(17)
        ppid = int(fields[1])
        cpu = sum(int(f) for f in fields[11:15]) / _TICK
        table[int(name)] = (ppid, cpu)
    return table


class TreeCpu:
    """CPU seconds of this process's descendants, minus excluded subtrees."""

    def __init__(self, exclude: set[int] | None = None) -> None:
        self.exclude = exclude if exclude is not None else set()

    def sample(self) -> float:
        table = _proc_table()
        children: dict[int, list[int]] = {}
        for pid, (ppid, _) in table.items():
            children.setdefault(ppid, []).append(pid)
        total = 0.0
        stack = list(children.get(os.getpid(), []))
        while stack:
            pid = stack.pop()
            if pid in self.exclude:
                continue
            total += table[pid][1]
            stack.extend(children.get(pid, []))
        return total


@dataclass(frozen=True)
class LoadResult:
    messages: int
    seconds: float
    cpu_seconds: float

    @property
    def rate(self) -> float:
        return self.messages / self.seconds

    @property
    def cpu_ms_per_message(self) -> float:
        return 1000 * self.cpu_seconds / self.messages


def run_load(port: int, mbox: MboxCounter, *, messages: int, sessions: int, size: int,
             sender: str, recipient: str, timeout: float = 600.0) -> LoadResult:
    """smtp-source against 127.0.0.1:port; wall time until the mailbox holds them all."""
    base = mbox.poll()
    cpu = TreeCpu()
    argv = ["smtp-source", "-s", str(sessions), "-m", str(messages), "-l", str(size),
            "-f", sender, "-t", recipient, f"127.0.0.1:{port}"]
    cpu_before = cpu.sample()
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    cpu.exclude.add(proc.pid)
    try:
        end = mbox.wait_for(base + messages, timeout)
        cpu_after = cpu.sample()
    finally:
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    if proc.returncode != 0:
        raise BenchError(f"smtp-source exited {proc.returncode}: {err.decode(errors='replace')[-500:]}")
    return LoadResult(messages, end - start, cpu_after - cpu_before)


def _expect(f, code: bytes) -> None:
    while True:
        line = f.readline()
        if not line:
            raise BenchError("connection closed by the server")
        if line[3:4] != b"-":
            break
    if not line.startswith(code):
        raise BenchError(f"expected {code.decode()}, got {line[:200]!r}")


def smtp_latency(port: int, mbox: MboxCounter, *, sender: str, recipient: str, size: int = 2048,
                 timeout: float = 30.0) -> float:
    """Seconds from connect() to one new message in the mailbox (raw socket client)."""
    token = os.urandom(8).hex()
    body = b"".join(b"latency probe line %04d %s\r\n" % (i, token.encode())
                    for i in range(max(1, size // 40)))
    message = (f"From: <{sender}>\r\nTo: <{recipient}>\r\nSubject: latency {token}\r\n"
               f"Message-ID: <{token}@bench.invalid>\r\n\r\n").encode() + body
    base = mbox.poll()
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        f = s.makefile("rb")
        _expect(f, b"220")
        s.sendall(b"EHLO bench.invalid\r\n")
        _expect(f, b"250")
        s.sendall(f"MAIL FROM:<{sender}>\r\n".encode())
        _expect(f, b"250")
        s.sendall(f"RCPT TO:<{recipient}>\r\n".encode())
        _expect(f, b"250")
        s.sendall(b"DATA\r\n")
        _expect(f, b"354")
        s.sendall(message + b".\r\n")
        _expect(f, b"250")
        s.sendall(b"QUIT\r\n")
        end = mbox.wait_for(base + 1, timeout, interval=0.0002)
    return end - start
