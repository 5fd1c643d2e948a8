"""The real ``rules.effects.Effects``: what a recipe's actions do to the world.

What it does: keeps the log (LOGFILE or stderr), the umask, the held locks, and carries
out saves (deliver.folders), programs and forwards (deliver.programs), INCLUDERC loading
with procmail's ownership checks, and the delivery abstract, writing procmail's own log
lines (``Error while writing to``, ``Program failure (n) of``, ``Lock failure on``...) so
that existing log readers (mailstat, users' scripts) keep working.

Guarantees: no method raises for an ordinary failure; every failure is logged once and
reported in the result.  A folder that is already locked by the recipe's ``:0:`` is not
dotlocked a second time (that would deadlock on our own lock).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
from typing import Iterator, Mapping, Sequence

from rules.ast import RcFile
from rules.effects import Command, Part, ProgramResult, SaveResult
from rules import numvars

from . import programs
from .dirfolder import TEMP_SERIAL
from .errors import DeliveryError, LockError
from .folders import deliver_to_folders
from .groupcommit import GroupCommit
from .locking import DotLock, LockPolicy
from .mbox import UPDATE_MASK
from .mboxformat import header_end, program_bytes, rewrite_content_length, with_final_newline
from .osnames import for_os, internal

MAX_SUBJECT_SHOW = 78
MAX_FOLDER_SHOW = 60
TAB = 8
ABSTRACT_COLUMN = 72
_EX_IOERR, _EX_UNAVAILABLE = 74, 69    # sysexits.h, as procmail's children exit
_DELIVER_LOG = logging.getLogger("deliver")    # the bridge's logger, looked up once


# Linux's pipe capacity: a write of at most this much into a fresh pipe completes
# without waiting for the reader
_PIPE_CAPACITY = 65536


def _unsigned_seconds(value: int) -> int:
    """A count of seconds as procmail hands it to alarm() or sleep(): cast to an unsigned
    int, so 2**32 + 1 is one second and 2**32 none (TIMEOUT, LOCKSLEEP, SUSPEND)."""
    return value % 2**32 if value >= 2**32 else value


def _argv_for_os(argv: Sequence[str]) -> list[str]:
    return [for_os(a) for a in argv]


class _LogBridge(logging.Handler):
    """deliver/'s modules report through `logging` (Unable to treat as directory,
    Skipped, Forcing lock on ...); during a delivery those lines belong in the user's
    LOGFILE in procmail's form, so this handler forwards them there."""

    def __init__(self, effects: "RealEffects") -> None:
        super().__init__(logging.WARNING)
        self.effects = effects

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.effects.log(f"procmail: {record.getMessage()}\n")
        except Exception:  # noqa: BLE001 - logging must never break a delivery
            self.handleError(record)


class RealEffects:
    """Effects for a real delivery, run as the recipient (never as root: see agent)."""

    def __init__(self, *, stderr_fd: int = 2, uid: int | None = None,
                 rc_loader=None, berkeley: bool = False,
                 group: GroupCommit | None = None,
                 claims: dict[str, str] | None = None) -> None:
        self.berkeley = berkeley
        self.group = group               # a batch's deferred syncs (Agent.run_many)
        # the user's spool mailbox (os form, absolute) in delivery mode: appends to it
        # refuse a symlink, another owner or a hard-linked file (deliver.mbox spool checks)
        self.spool_mailbox: str | None = None
        # lock file -> a claim file kept between locks (deliver.locking): a batch's, or
        # a long-lived delivery process's (mta.localdelivery's pool workers)
        self._claims = group.claims if group is not None else claims
        self.vars: Mapping[str, str] = {}
        self.numbers: Mapping[str, int] = numvars.initial_numbers()
        self._stderr_fd = stderr_fd
        self._log_fd = stderr_fd
        self._log_opened = False
        self._umask = 0o077
        self._held: dict[str, DotLock] = {}
        self._global: tuple[str, DotLock] | None = None
        self._uid = os.geteuid() if uid is None else uid
        self._rc_loader = rc_loader
        self.last_size = 0
        self.last_status = 0    # $?: the exit status of the last program waited for
        self._policy_memo: tuple[tuple[str | None, ...], LockPolicy] | None = None
        # getcwd(2), asked once after each chdir: lock keys are absolute paths and a
        # locked delivery needs three of them.  Only this class changes the delivery's
        # cwd (programs run in children), so its chdir is where the answer goes stale.
        self._cwd: str | None = None
        os.umask(self._umask)
        self._bridge = _LogBridge(self)
        _DELIVER_LOG.addHandler(self._bridge)

    # ------------------------------------------------------------------ environment

    def environment(self, variables: Mapping[str, str], numbers: Mapping[str, int]) -> None:
        self.vars = variables
        self.numbers = numbers

    def _env(self) -> dict[bytes, bytes]:
        env = {k.encode("latin-1", "replace"): v.encode("latin-1", "replace")
               for k, v in self.vars.items() if k and "=" not in k}
        # procmail keeps PWD out of its variables ($PWD is empty in the rc) but programs
        # find it in their environment, following MAILDIR.
        with contextlib.suppress(OSError):
            env[b"PWD"] = os.fsencode(os.getcwd())
        return env

    def chdir(self, path: str) -> bool:
        self._cwd = None
        try:
            os.chdir(for_os(path))
        except OSError:
            self.log(f'procmail: Couldn\'t chdir to "{path}"\n')
            return False
        return True

    def _abspath(self, path: str) -> str:
        """os.path.abspath without a getcwd(2) per call (see ``_cwd``).  Of a name
        as the os functions take it (deliver.osnames.for_os), as is the answer."""
        if path.startswith("/"):
            return os.path.normpath(path)
        if self._cwd is None:
            self._cwd = os.getcwd()
        return os.path.normpath(os.path.join(self._cwd, path))

    def set_umask(self, mask: int) -> None:
        self._umask = mask
        os.umask(mask)

    @property
    def umask(self) -> int:
        return self._umask

    def set_logfile(self, path: str | None) -> None:
        """Switch the log to ``path``: None is stderr; "" (LOGFILE= or unset) is
        nowhere, as procmail's open of "" fails.  A log that cannot be opened leaves
        the current one in place, which gets the error line, as in procmail."""
        if path is None:
            self._close_log()
            return
        try:
            # a symlink is followed, as procmail does (LOGFILE=/dev/stderr, a log kept
            # elsewhere): the delivery runs as the user by now, never as root
            # as procmail's NORMperm: a new log gets the "new mail" bit of its mailboxes
            # when the umask lets it through (UMASK=022: 0645)
            fd = os.open(for_os(path) or os.devnull, os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                         0o666 | UPDATE_MASK)
        except OSError:
            self.log(f'procmail: Error while writing to "{path}"\n')
            return
        self._close_log()
        self._log_fd = fd
        self._log_opened = True

    def fork_log(self) -> object:
        saved = (self._log_fd, self._log_opened)
        if self._log_opened:
            self._log_fd = os.dup(self._log_fd)   # the clone's copy, closed by the clone
        return saved

    def join_log(self, saved: object) -> None:
        self._close_log()
        self._log_fd, self._log_opened = saved    # type: ignore[misc]

    def _close_log(self) -> None:
        if self._log_opened:
            os.close(self._log_fd)
            self._log_opened = False
        self._log_fd = self._stderr_fd

    @property
    def log_opened(self) -> bool:
        return self._log_opened

    def log(self, text: str) -> None:
        data = text.encode("latin-1", "replace")
        try:
            while data:
                n = os.write(self._log_fd, data)
                data = data[n:]
        except OSError:
            pass   # a full log disk must not stop a delivery

    def hostname(self) -> str:
        return socket.gethostname()

    def close(self) -> None:
        # the locks first, while their log lines ("Couldn't unlock") still reach LOGFILE
        self.global_lock(None)
        for lock in list(self._held.values()):
            lock.release()
        self._held.clear()
        _DELIVER_LOG.removeHandler(self._bridge)
        self._close_log()

    # ------------------------------------------------------------------ rc files

    def load_rcfile(self, path: str) -> RcFile | None:
        """INCLUDERC/SWITCHRC: opened without following a final symlink; refused when
        owned by someone other than the user or root, or writable by others."""
        shown, path = path, for_os(path)
        try:
            st = os.lstat(path)
        except OSError:
            self.log(f'procmail: Couldn\'t read "{shown}"\n')
            return None
        if stat.S_ISLNK(st.st_mode) or not (stat.S_ISREG(st.st_mode) or path == os.devnull):
            self.log(f'procmail: Couldn\'t read "{shown}"\n')
            return None
        if st.st_uid not in (self._uid, 0) or (st.st_mode & stat.S_IWOTH and path != os.devnull):
            self.log(f'procmail: Suspicious rcfile "{shown}"\n')
            return None
        if st.st_size == 0:
            # procmail looks at the size before it opens: an empty file is an empty rc
            # file whether or not it could be read
            return RcFile(shown, ())
        try:
            if self._rc_loader is not None:
                return self._rc_loader(path)
            from rules.cache import load_rc
            return load_rc(path)
        except OSError:
            self.log(f'procmail: Couldn\'t read "{shown}"\n')
            return None

    # ------------------------------------------------------------------ locks

    def _policy(self) -> LockPolicy:
        """The lock policy from the variables; rebuilt only when one of them changed
        (asked for on every save and lock, the variables rarely change in between)."""
        n = self.numbers
        raw = (self.vars.get("LOCKEXT", ".lock"), n["LOCKTIMEOUT"], n["LOCKSLEEP"], n["SUSPEND"])
        cached = self._policy_memo
        if cached is not None and cached[0] == raw:
            return cached[1]
        policy = LockPolicy(lockext=raw[0], locktimeout=raw[1], locksleep=_unsigned_seconds(raw[2]),
                            suspend=_unsigned_seconds(raw[3]))
        self._policy_memo = (raw, policy)
        return policy

    def _acquire(self, path: str) -> DotLock | None:
        """Take a procmail-compatible lock; None (after procmail's log line) on failure,
        and the delivery goes on unlocked as procmail's does."""
        name = for_os(path)
        key = self._abspath(name)              # also learns the cwd a relative name needs
        # procmail makes a lock file with a name from unique(), whose serial its Maildir
        # and directory folder names share: the next such name counts one more (_1)
        next(TEMP_SERIAL)
        lock = DotLock(name, self._policy(), claims=self._claims, key=key, cwd=self._cwd)
        try:
            lock.acquire()
        except LockError:
            self.log(f'procmail: Lock failure on "{path}"\n')
            return None
        return lock      # "Forcing lock on" reaches the log through _LogBridge

    @contextlib.contextmanager
    def lock(self, path: str) -> Iterator[bool]:
        key = self._abspath(for_os(path))
        if key in self._held or (self._global is not None and self._global[0] == path):
            # held already: as a recipe's, or as LOCKFILE by that very name (procmail's
            # strcmp(buf, globlock): "./x.lock" is not "x.lock" and waits for it)
            yield True
            return
        lock = self._acquire(path)
        if lock is None:
            yield False
            return
        self._held[key] = lock
        try:
            yield True
        finally:
            self._held.pop(key, None)
            lock.release()

    def global_lock(self, path: str | None) -> bool:
        if self._global is not None:
            self._global[1].release()
            self._global = None
        if not path:
            return True
        lock = self._acquire(path)
        if lock is None:
            return False
        self._global = (path, lock)
        return True

    def _is_locked(self, path: str) -> bool:
        if not self._held and self._global is None:
            return False                   # the usual case: no abspath (getcwd) needed
        key = self._abspath(for_os(path))
        if key in self._held:
            return True
        return self._global is not None and self._abspath(for_os(self._global[0])) == key

    # ------------------------------------------------------------------ actions

    def save(self, folders: Sequence[str], data: bytes, *, raw: bool,
             part: Part = None, mail: bytes | None = None, box: str | None = None) -> SaveResult:
        # /dev/null, however named, is deliver.folders' business: nothing is written
        lockext = self.vars.get("LOCKEXT", ".lock")
        already = bool(folders) and self._is_locked(folders[0] + lockext)
        box_lock = None
        if box == "DEFAULT" and self.vars.get("LOCKEXT", ""):
            def box_lock(name: str) -> contextlib.AbstractContextManager[bool]:
                return self.lock(internal(name) + lockext)
        names = [for_os(f) for f in folders]
        spool_checks = self.spool_mailbox is not None and bool(names) \
            and self._abspath(names[0]) == self.spool_mailbox
        try:
            result = deliver_to_folders(
                names, data, raw=raw, umask=self._umask, policy=self._policy(), spool_checks=spool_checks,
                msgprefix=for_os(self.vars.get("MSGPREFIX", "")), lock_mbox=not already,
                berkeley=self.berkeley, group=self.group, abspath=self._abspath,
                part=part, mail=mail, box=box is not None, box_lock=box_lock,
                linebuf=self.numbers["LINEBUF"])
        except DeliveryError as err:
            shown = internal(err.path) if err.path else folders[0]
            if err.log_head:       # empty: deliver.folders logged the failure already
                self.log(f'procmail: {err.log_head} "{shown}"\n')
            return SaveResult(False, internal(err.lastfolder),
                              keeps_lastfolder=err.keeps_lastfolder, overflow=err.overflow)
        self.last_size = result.size
        return SaveResult(True, " ".join(internal(n) for n in result.names), result.size)

    def _timeout(self) -> float | None:
        t = _unsigned_seconds(self.numbers["TIMEOUT"])
        return float(t) if t > 0 else None

    def _program_name(self, argv: Sequence[str], text: str) -> str:
        """How procmail names a program in its log: the line as written when it went
        through $SHELL, else the program's first word."""
        shell = len(argv) == 3 and argv[1] == self.vars.get("SHELLFLAGS", "-c") \
            and argv[0] == self.vars.get("SHELL", "/bin/sh")
        return text if shell else argv[0]

    def _log_timeout(self, command: Command) -> None:
        """A backquote, `?` program or TRAP killed at TIMEOUT, logged as procmail does."""
        self.log(f'procmail: Timeout, terminating "{self._program_name(command.argv, command.text)}"\n')

    def _run(self, command: Command, data: bytes, *, wait: bool, quiet: bool,
             ignore_write_error: bool, capture: bool, unpadded: int | None = None) -> ProgramResult:
        name = self._program_name(command.argv, command.text)
        res = programs.run(_argv_for_os(command.argv), data, env=self._env(), stderr_fd=self._log_fd,
                           capture=capture, timeout=self._timeout())
        if wait and res.status is not None:
            self.last_status = res.status
            if capture and res.status < 0:
                # a filter's (or capture's) $? is its sending child's exit status
                # (pipes.c pipthrough): that child exit()s with the -signal it saw
                self.last_status = res.status & 0xFF
        if res.status is None:
            self.log(f'procmail: Failed forking "{name}"\n')
            return ProgramResult(False)
        if capture and res.timed_out and wait:
            self.last_status = _EX_UNAVAILABLE   # the child's stermchild() after TIMEOUT
        if res.timed_out:
            # procmail's abstract then counts the mail as it stands, without the padding
            size = len(data) if res.fed or unpadded is None else unpadded
            return self._timed_out(name, res, size, wait=wait, quiet=quiet,
                                   ignore_write_error=ignore_write_error, capture=capture)
        if res.overflow:
            self.log(f'procmail: Exceeded output limit of "{name}"\n')
            return ProgramResult(False, res.status, b"")
        # procmail's abstract counts what it wrote: all of it, or up to the failed write;
        # a filter's or capture's mail is written by a forked child (pipthrough()), whose
        # dump() leaves the parent's count (lastdump) as it was
        if not capture:
            self.last_size = len(data) if not res.write_error or unpadded is None else unpadded
        failed_exit = wait and res.status != 0
        write_error = res.write_error and not ignore_write_error
        if write_error and failed_exit and len(data) <= _PIPE_CAPACITY:
            # A waited-for program that failed without reading all of a mail the pipe
            # could hold: procmail's write went into the pipe before the program
            # exited (a missing script dies too late to break it), so only the exit
            # status counts; whether ours was cut short is the race procmail won.
            write_error = False
        if write_error:
            # procmail's dump() failed: it says so first, whatever w or W say
            self.log(f'procmail: Error while writing to "{name}"\n')
            if capture:
                # a filter's sending child gives up at the write error (stermchild):
                # nobody waits for the program's status; $? is the child's EX_IOERR,
                # with w or without (the rescue makes procmail reap that child)
                self.last_status = _EX_IOERR
                return ProgramResult(False, res.status, res.output, write_error=True)
        if failed_exit:
            if not quiet:
                self.log(f'procmail: Program failure ({res.status}) of "{name}"\n')
            return ProgramResult(False, res.status, res.output, write_error=write_error)
        if write_error:
            return ProgramResult(False, res.status, res.output, write_error=True)
        return ProgramResult(True, res.status, res.output)

    def _timed_out(self, name: str, res: programs.RunResult, size: int, *, wait: bool,
                   quiet: bool, ignore_write_error: bool, capture: bool) -> ProgramResult:
        """A program killed at TIMEOUT, logged as procmail logs it.  A filter's or a
        capture's output is waited for, so its timeout is a failure (see below for what
        becomes of its output).  A
        pipe whose write the kill cut short says so (unless ``i`` ignores write errors).
        One not waited for (no w) whose write was not cut has delivered, as procmail,
        which never waits for it, counts it (postroom reaps it at TIMEOUT): the next
        recipe must not deliver the mail again.  A waited-for one fails, with procmail's
        ``Program failure`` line for the kill."""
        self.log(f'procmail: Timeout, terminating "{name}"\n')
        failed = ProgramResult(False, res.status, res.output)
        if capture:
            # TIMEOUT kills procmail's sending child while it still writes the mail, or
            # waits for the program (w, W): its stermchild() kills the program and
            # pumps the mail back (logged even under W), so the caller keeps the mail
            # (or value) it had.  A sender that wrote everything and did not wait is
            # gone: procmail lets the program run on and takes its whole output,
            # postroom kills it and takes what it printed by then
            return ProgramResult(False, res.status, res.output,
                                 timed_out=wait or not res.fed)
        cut = not res.fed and not ignore_write_error
        if cut:
            self.log(f'procmail: Error while writing to "{name}"\n')
        if not wait and not cut:
            self.last_size = size
            return ProgramResult(True, res.status, res.output)
        if wait and not quiet and res.status != 0:
            self.log(f'procmail: Program failure ({res.status}) of "{name}"\n')
        return failed

    def pipe(self, command: Command, data: bytes, *, wait: bool, quiet: bool,
             ignore_write_error: bool, capture: bool, raw: bool,
             part: Part = None) -> ProgramResult:
        # a part alone is fed as it stands: its Content-Length was set when the mail was read
        feed = data if raw else program_bytes(data, berkeley=self.berkeley or part is not None)
        if not capture:              # what a signal's abstract counts if the pipe never returns
            self.last_size = len(feed)
        return self._run(command, feed, wait=wait, quiet=quiet,
                         ignore_write_error=ignore_write_error, capture=capture,
                         unpadded=len(data))

    def filtered(self, data: bytes) -> bytes:
        return rewrite_content_length(data, berkeley=self.berkeley)

    def forward(self, command: Command, data: bytes, *, wait: bool, quiet: bool,
                ignore_write_error: bool, raw: bool, part: Part = None) -> ProgramResult:
        feed = data if raw else program_bytes(data, berkeley=self.berkeley or part is not None)
        return self._run(command, feed, wait=wait, quiet=quiet,
                         ignore_write_error=ignore_write_error, capture=False,
                         unpadded=len(data))

    def test_program(self, command: Command, data: bytes) -> int:
        # written as procmail's dump() writes any text to a program: ending in an empty
        # line (an area that does not gets a newline; an empty body is one newline)
        feed = with_final_newline(data)
        res = programs.run(_argv_for_os(command.argv), feed, env=self._env(),
                           stderr_fd=self._log_fd, capture=False, timeout=self._timeout())
        if res.timed_out:
            self._log_timeout(command)
        if res.status is not None:
            # procmail's conditions() feeds it with pipin(), whose dump() in the main
            # process sets the size a later abstract shows (lastdump)
            self.last_size = len(feed)
        self.last_status = 1 if res.status is None else res.status
        return self.last_status

    def run_trap(self, command: Command, data: bytes) -> int:
        """TRAP: the mail on stdin, its stdout and stderr appended to the log.  Killed at
        TIMEOUT like any program (procmail logs the same line but lets it run on)."""
        res = programs.run(_argv_for_os(command.argv), program_bytes(data, berkeley=self.berkeley),
                           env=self._env(), stderr_fd=self._log_fd, capture=False,
                           timeout=self._timeout(), stdout_fd=self._log_fd)
        if res.timed_out:
            self._log_timeout(command)
        return 1 if res.status is None else res.status

    def backquote(self, command: Command, data: bytes) -> str:
        res = programs.run(_argv_for_os(command.argv), program_bytes(data, berkeley=self.berkeley),
                           env=self._env(), stderr_fd=self._log_fd, capture=True,
                           timeout=self._timeout())
        if res.timed_out:
            # as after any captured program that failed: procmail keeps what it had read
            self._log_timeout(command)
            self.log("procmail: Rescue of unfiltered data succeeded\n")
        self.last_status = 1 if res.status is None else res.status
        return res.output.rstrip(b"\n").decode("latin-1")

    # ------------------------------------------------------------------ abstract

    def abstract_enabled(self, final: bool) -> bool:
        """LOGABSTRACT, read as a number (rules.envint: `all` is 2, `yes` 1, `no` 0):
        exactly 2 every delivering recipe is logged (a `c` copy too), above 0 the final
        delivery, 0 nothing; unset (or negative) the final delivery when a LOGFILE is
        open or VERBOSE is on (procmail's lgabstract)."""
        level = self.numbers["LOGABSTRACT"]
        if not final:
            return level == 2          # procmail.c: a c copy's abstract only at exactly 2
        if level > 0:
            return True
        # mailfold.c: (logopened || verbose) && lgabstract
        return level != 0 and (self._log_opened or self.numbers["VERBOSE"] != 0)

    def abstract(self, message: bytes, folder: str) -> None:
        if self.abstract_enabled(final=False):
            self.log(format_abstract(message, folder, self.last_size))


def format_abstract(message: bytes, folder: str, size: int, *, subject: bool = True) -> str:
    """procmail's logabstract(): From_ line, Subject (78 chars, tabs as blanks), then
    the folder padded with tabs to column 72 and the size right-aligned in 7.  Without
    ``subject`` the Subject line is left out, as procmail's abstract after a signal."""
    out: list[str] = []
    header = message[:header_end(message)]     # as procmail: up to its thebody
    start = 0
    if header.startswith(b"From "):
        nl = header.find(b"\n")
        line = header if nl < 0 else header[:nl]
        out.append(line.decode("latin-1").partition("\0")[0] + "\n")
        start = len(header) if nl < 0 else nl + 1
    shown = _subject_line(header, start) if subject else None
    if shown is not None:
        # procmail's lines are C strings: a NUL byte ends the text shown
        out.append(" " + _detab(shown.partition("\0")[0][:MAX_SUBJECT_SHOW]) + "\n")
    name = _detab(folder[:MAX_FOLDER_SHOW])
    line = "  Folder: " + name
    i = len(line) - len(line) % TAB
    tabs = 1
    i += TAB
    while i < ABSTRACT_COLUMN:
        tabs += 1
        i += TAB
    out.append(line + "\t" * tabs + f"{size:>7}\n")
    return "".join(out)


_DETAB = {c: " " for c in (9, 10, 11, 12, 13)}     # procmail blanks whitespace only


def _detab(text: str) -> str:
    """procmail's detab(): control characters (tab, CR, a program's newline) show as
    blanks, so one abstract stays one line per field."""
    return text.translate(_DETAB)


def _subject_line(header: bytes, start: int) -> str | None:
    """The first line from ``start`` on that begins with ``Subject:`` (any case), without
    its newline.  One lowered copy of the header and a find, not a loop over lines."""
    low = header.lower()
    if low.startswith(b"subject:", start):
        pos = start
    else:
        at = low.find(b"\nsubject:", start)
        if at < 0:
            return None
        pos = at + 1
    nl = header.find(b"\n", pos)
    return header[pos:len(header) if nl < 0 else nl].decode("latin-1")
