"""Running recipe programs: pipes, filters, captures, ``?`` tests, backquotes, forwards.

What it does: starts ``argv`` with the mail on stdin and procmail's environment, in the
current directory (MAILDIR) and umask, with stderr going to the log; collects stdout
when asked (filters, captures) and discards it otherwise; kills the program with
SIGTERM after TIMEOUT seconds (procmail: ``Timeout, terminating``).

Why not subprocess.communicate(): it silently swallows EPIPE on stdin, and procmail
reports a program that does not read its input as ``Error while writing to`` (unless
the recipe has ``i``).  The small select loop below sees the write error.

Differences from procmail, safer by design: a program is always reaped before the next
recipe runs (procmail may leave it running when there is no ``w``); its exit status is
still only checked with ``w``/``W``.  A program that cannot be executed is retried as
``/bin/sh argv...`` exactly as procmail does, so the shell's error lands in the log.

Errors: none escape for an ordinary failure; the result says what happened.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Mapping, Sequence

CAPTURE_LIMIT = 64 * 1024 * 1024   # a runaway filter must not exhaust memory
_MAX_WAIT = 86400.0                # the longest single wait in the select loop, seconds


@dataclass(frozen=True, slots=True)
class RunResult:
    status: int | None        # exit status, negative signal number, None if not started
    output: bytes
    write_error: bool
    timed_out: bool
    overflow: bool = False
    fed: bool = False         # all of the input went in before the end or the timeout


def run(argv: Sequence[str], data: bytes, *, env: Mapping[bytes, bytes], stderr_fd: int,
        capture: bool, timeout: float | None, stdout_fd: int | None = None) -> RunResult:
    """Run argv to completion; never raises OSError for exec failures (status 127-ish
    from the /bin/sh retry instead)."""
    args = [os.fsencode(a) for a in argv]   # argv is for the os (deliver.osnames.for_os)
    # The mail goes into the pipe *before* the program starts, as much as the pipe
    # holds: procmail writes right after fork, so a small mail is always delivered to
    # the pipe even when the program exits without reading it.  Doing the same makes
    # "Error while writing to" depend on the mail's size, never on scheduling.
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    view = memoryview(data)
    try:
        while len(view):
            n = os.write(write_fd, view[:65536])
            view = view[n:]
    except BlockingIOError:
        pass
    try:
        try:
            proc = _start(args, read_fd, env, stderr_fd, capture, stdout_fd)
        except OSError:
            try:
                proc = _start([b"/bin/sh", *args], read_fd, env, stderr_fd, capture, stdout_fd)
            except OSError:
                os.close(write_fd)
                return RunResult(None, b"", True, False)
    finally:
        os.close(read_fd)
    return _communicate(proc, write_fd, view, capture, timeout)


def _start(args: list[bytes], stdin_fd: int, env: Mapping[bytes, bytes], stderr_fd: int,
           capture: bool, stdout_fd: int | None = None) -> subprocess.Popen[bytes]:
    stdout = subprocess.PIPE if capture else (subprocess.DEVNULL if stdout_fd is None else stdout_fd)
    return subprocess.Popen(
        args, stdin=stdin_fd,
        stdout=stdout,
        stderr=stderr_fd, env=dict(env), close_fds=True,
        restore_signals=True,
    )


def _communicate(proc: subprocess.Popen[bytes], write_fd: int, view: memoryview,
                 capture: bool, timeout: float | None) -> RunResult:
    deadline = None if not timeout else time.monotonic() + timeout
    chunks: list[bytes] = []
    total = 0
    write_error = False
    overflow = False
    sel = selectors.DefaultSelector()
    if len(view):
        sel.register(write_fd, selectors.EVENT_WRITE)
    else:
        os.close(write_fd)
        write_fd = -1
    if capture and proc.stdout is not None:
        sel.register(proc.stdout, selectors.EVENT_READ)
    timed_out = False
    try:
        while sel.get_map():
            # in slices: poll() takes at most ~24.8 days, and a TIMEOUT may be longer
            wait = None if deadline is None else min(_MAX_WAIT, max(0.0, deadline - time.monotonic()))
            ready = sel.select(wait)
            if not ready and deadline is not None and time.monotonic() >= deadline:
                timed_out = True
                break
            for key, _ in ready:
                if key.fileobj == write_fd:
                    try:
                        n = os.write(write_fd, view[:65536])
                        view = view[n:]
                    except BlockingIOError:
                        pass
                    except OSError:          # EPIPE: the program stopped reading
                        write_error = True
                        view = view[len(view):]
                    if not len(view):
                        sel.unregister(write_fd)
                        os.close(write_fd)
                        write_fd = -1
                else:
                    block = os.read(key.fileobj.fileno(), 65536)  # type: ignore[union-attr]
                    if not block:
                        sel.unregister(key.fileobj)
                        continue
                    total += len(block)
                    if total > CAPTURE_LIMIT:
                        overflow = True
                    else:
                        chunks.append(block)
        fed = write_fd < 0 and not write_error
        if timed_out:
            proc.send_signal(signal.SIGTERM)
        remaining = None if deadline is None or timed_out else max(0.1, deadline - time.monotonic())
        try:
            status = proc.wait(remaining)
        except subprocess.TimeoutExpired:
            timed_out = True
            proc.send_signal(signal.SIGTERM)
            status = proc.wait()
    finally:
        sel.close()
        if write_fd >= 0:
            os.close(write_fd)
        if proc.stdout is not None and not proc.stdout.closed:
            proc.stdout.close()
    return RunResult(status, b"".join(chunks), write_error, timed_out, overflow, fed)
