"""The boundary between the recipe language and the world: the ``Effects`` protocol.

rules/ decides *what* a recipe does (which folders, which program line, which bytes of
the mail, which lock file name); an ``Effects`` implementation decides *how*: deliver/
supplies the real one (files, locks, subprocesses, privileges), ``--explain`` a
recording one that changes nothing.  Both run the same evaluator, so a dry run shows
exactly what a delivery would do (Dovecot Pigeonhole's sieve-test shape).

Contract for implementations:
  * Methods never raise for an ordinary failure (unwritable folder, failing program):
    they return a result with ``ok=False`` and log procmail's error line themselves.
  * Strings are latin-1-decoded bytes (see rules.message); mail is bytes.
  * ``log`` writes procmail-style lines to the current LOGFILE (or stderr).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Literal, Mapping, Protocol, Sequence

from .ast import RcFile


Part = Literal["header", "body", None]
"""What a recipe feeds when not the whole mail (h or b alone); None is the whole mail."""

@dataclass(frozen=True, slots=True)
class SaveResult:
    ok: bool
    # what LASTFOLDER becomes (all folder names, space-separated); after a failure, when
    # not empty, what procmail leaves in it instead of the action's names
    lastfolder: str = ""
    size: int = 0          # bytes written, for the log abstract
    # after a failure: procmail named no file yet (a Maildir, MH or directory temp
    # file), so LASTFOLDER keeps the value it had before the action
    keeps_lastfolder: bool = False
    # after a failure: the folder's name did not fit LINEBUF ("Exceeded LINEBUF" was
    # logged); the caller sets PROCMAIL_OVERFLOW
    overflow: bool = False


@dataclass(frozen=True, slots=True)
class ProgramResult:
    ok: bool                     # started, fed, and (when waited for) exited 0
    exit_status: int | None = None   # None when not waited for; negative = killed by signal
    output: bytes = b""          # captured stdout (filters, captures, backquotes)
    write_error: bool = False    # the program stopped reading (reported: not ignored by i)
    timed_out: bool = False      # killed at TIMEOUT before its input was all in: rescue


@dataclass(frozen=True, slots=True)
class Command:
    """A program to start: ``argv`` is exact (already expanded or ``$SHELL -c line``).
    ``text`` is the action as procmail logs it (abstract "Folder:" field)."""

    argv: tuple[str, ...]
    text: str


class Effects(Protocol):
    last_status: int
    """``$?``: the exit status of the last program waited for (a ``w`` pipe or filter,
    a backquote, a ``?`` condition); 0 before any."""

    # -- environment --------------------------------------------------------
    def environment(self, variables: Mapping[str, str], numbers: Mapping[str, int]) -> None:
        """Called before any program runs: the variables to export (procmail exports all)
        and procmail's numeric variables as it holds them (rules.numvars: TIMEOUT,
        LOCKTIMEOUT, LOGABSTRACT, ...), both live."""

    def chdir(self, path: str) -> bool:
        """MAILDIR assignment; False (after logging ``Couldn't chdir``) leaves it unchanged."""

    def set_umask(self, mask: int) -> None: ...

    @property
    def umask(self) -> int:
        """The umask files are created with now (a ``c`` clone's UMASK is undone)."""

    def set_logfile(self, path: str | None) -> None:
        """LOGFILE assignment; empty means the log is dropped (procmail's open of ""
        fails), None means back to stderr (what the log is before any LOGFILE)."""

    def fork_log(self) -> object:
        """Before a ``c`` block's clone runs: the parent's log, kept open for it to come
        back to (the clone writes to the same file until it switches LOGFILE, as
        procmail's forked child does)."""

    def join_log(self, saved: object) -> None:
        """After the clone: its log is closed and the parent's (``fork_log``) is the
        log again, the same open file even if it was renamed or MAILDIR moved meanwhile."""

    def log(self, text: str) -> None:
        """Write text to the log as is (LOG= and procmail's own messages)."""

    def hostname(self) -> str: ...

    def load_rcfile(self, path: str) -> RcFile | None:
        """INCLUDERC/SWITCHRC: read, check ownership and mode, parse (cached).  None when
        it cannot or must not be read (the implementation logs why)."""

    # -- locking ------------------------------------------------------------
    def lock(self, path: str) -> AbstractContextManager[bool]:
        """A procmail-compatible lock file; yields False when locking failed (procmail
        logs ``Lock failure`` and goes on unlocked)."""

    def global_lock(self, path: str | None) -> bool:
        """LOCKFILE assignment: release the previous global lock, take the new one.
        False when ``path`` was given and its lock could not be taken (procmail then
        unsets LOCKFILE)."""

    # -- actions ------------------------------------------------------------
    def save(self, folders: Sequence[str], data: bytes, *, raw: bool,
             part: Part = None, mail: bytes | None = None, box: str | None = None) -> SaveResult:
        """Write to one or more folders; ``data`` is what the recipe feeds (h/b).
        ``box``: "DEFAULT" or "ORGMAIL" when the mail falls off the end of the rc files
        into that variable's folder, which procmail writes by the name as given: a
        Maildir/MH/directory name there that cannot be used as one is not appended to as
        an mbox, and $DEFAULT is locked ($DEFAULT$LOCKEXT, suffix dropped) only when it
        is an mbox.
        ``part``: "header" or "body" when the recipe feeds one part alone, which
        procmail writes as that part of its buffer stands (its Content-Length was set
        when the mail was read; a body keeps a first line starting with "From " even in
        a Maildir).  ``mail``: the whole mail when ``part`` is "body" (its
        Content-Length decides which of the body's "From " lines an mbox escapes).
        Recipe locks are taken by the evaluator through ``lock`` around this call."""

    def pipe(self, command: Command, data: bytes, *, wait: bool, quiet: bool,
             ignore_write_error: bool, capture: bool, raw: bool,
             part: Part = None) -> ProgramResult:
        """Run a program with data on stdin (``part`` as for ``save``).  capture=True
        returns its stdout (filters, VAR=| captures); otherwise stdout is discarded and
        stderr goes to the log."""

    def filtered(self, data: bytes) -> bytes:
        """The mail as procmail holds it after a filter replaced (part of) it: read
        again, so its Content-Length is set to the new body's length, as when the mail
        was first read."""

    def forward(self, command: Command, data: bytes, *, wait: bool, quiet: bool,
                ignore_write_error: bool, raw: bool, part: Part = None) -> ProgramResult:
        """``! addresses``: run $SENDMAIL with what the recipe feeds (from the start of
        the mail, without its From_ line; ``part`` as for ``save``)."""

    def abstract(self, message: bytes, folder: str) -> None:
        """Log the abstract of a copy's delivery (From_ line, Subject, Folder, the size
        of the write just done) when LOGABSTRACT=all; the implementation reads
        LOGABSTRACT and LOGFILE itself."""

    def test_program(self, command: Command, data: bytes) -> int:
        """``* ? program``: its exit status (negative for a signal)."""

    def backquote(self, command: Command, data: bytes) -> str:
        """Command substitution: stdout with every trailing newline removed."""
