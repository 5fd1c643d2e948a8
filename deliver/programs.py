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

import errno
import os
import selectors
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Mapping, Sequence

CAPTURE_LIMIT = 64 * 1024 * 1024   # a runaway filter must not exhaust memory


@dataclass(frozen=True, slots=True)
class RunResult:
    status: int | None        # exit status, negative signal number, None if not started
    output: bytes
    write_error: bool
    timed_out: bool
    overflow: bool = False


def run(argv: Sequence[str], data: bytes, *, env: Mapping[bytes, bytes], stderr_fd: int,
        capture: bool, timeout: float | None, stdout_fd: int | None = None) -> RunResult:
    """Run argv to completion; never raises OSError for exec failures (status 127-ish
    from the /bin/sh retry instead)."""
    args = [a.encode("latin-1", "replace") for a in argv]
    try:
        proc = _start(args, env, stderr_fd, capture, stdout_fd)
    except OSError:
        try:
            proc = _start([b"/bin/sh", *args], env, stderr_fd, capture, stdout_fd)
        except OSError:
            return RunResult(None, b"", True, False)
    return _communicate(proc, data, capture, timeout)


def _start(args: list[bytes], env: Mapping[bytes, bytes], stderr_fd: int,
           capture: bool, stdout_fd: int | None = None) -> subprocess.Popen[bytes]:
    stdout = subprocess.PIPE if capture else (subprocess.DEVNULL if stdout_fd is None else stdout_fd)
    return subprocess.Popen(
        args, stdin=subprocess.PIPE,
        stdout=stdout,
        stderr=stderr_fd, env=dict(env), close_fds=True,
        restore_signals=True,
    )


def _communicate(proc: subprocess.Popen[bytes], data: bytes, capture: bool,
                 timeout: float | None) -> RunResult:
    deadline = None if not timeout else time.monotonic() + timeout
    chunks: list[bytes] = []
    total = 0
    write_error = False
    overflow = False
    view = memoryview(data)
    sel = selectors.DefaultSelector()
    assert proc.stdin is not None
    if data:
        os.set_blocking(proc.stdin.fileno(), False)
        sel.register(proc.stdin, selectors.EVENT_WRITE)
    else:
        proc.stdin.close()
    if capture and proc.stdout is not None:
        sel.register(proc.stdout, selectors.EVENT_READ)
    timed_out = False
    try:
        while sel.get_map():
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready = sel.select(wait)
            if not ready and deadline is not None and time.monotonic() >= deadline:
                timed_out = True
                break
            for key, _ in ready:
                if key.fileobj is proc.stdin:
                    try:
                        n = os.write(proc.stdin.fileno(), view[:65536])
                        view = view[n:]
                    except BrokenPipeError:
                        write_error = True
                        view = view[len(view):]
                    except OSError as err:
                        if err.errno != errno.EAGAIN:
                            write_error = True
                            view = view[len(view):]
                    if not len(view):
                        sel.unregister(proc.stdin)
                        proc.stdin.close()
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
        for stream in (proc.stdin, proc.stdout):
            if stream is not None and not stream.closed:
                stream.close()
    return RunResult(status, b"".join(chunks), write_error, timed_out, overflow)
