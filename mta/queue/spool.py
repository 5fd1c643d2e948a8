"""mta.queue.spool — the durable queue: one directory per message, moved between states.

Layout under the spool root (Postfix-style: the state of mail is visible with ``ls``)::

    tmp/<qid>/        being received, or being deleted; never read by the runner
    incoming/<qid>/   committed, waiting for its first (or an immediate) try
    active/<qid>/     claimed by a delivery in progress
    deferred/<qid>/   waiting for the ``next_try`` of some recipient
    hold/<qid>/       put aside by the administrator; never tried until released
    corrupt/<qid>/    an entry whose envelope could not be read
    free/<name>/      a delivered entry's directory kept for reuse (its files are
                      overwritten by the next message): not a message, never read

Each message directory holds ``message`` (the message as it will be delivered locally:
LF line endings, the receiver's Received: header first, no SMTP dot-stuffing) and
``envelope.json`` (mta.queue.envelope).  Moving the *directory* moves both at once, so a
message and its envelope can never be seen apart.

Guarantees
  * ``IncomingMessage.commit`` returns only after the message file, the envelope file and
    the message directory are durable (fsync'd; see "Recycling" for one flush that
    covers two files), the directory is renamed into incoming/ and incoming/ itself is
    fsync'd: a 250 sent after it can survive a crash at any moment.
    Before the rename the entry lives in tmp/ only, so a crash (or kill -9) while writing
    never leaves half a message in incoming/; ``recover`` removes such leftovers.
  * Exclusive claims: whoever holds ``flock(LOCK_EX)`` on a message's ``message`` file
    owns it.  ``claim`` locks first, then renames into active/; a second claimer, in any
    process, either cannot open it, cannot lock it, or finds it moved, and gets ``None``.
    The kernel drops the lock when its owner dies, so an unlocked entry in active/ is a
    stale claim; ``recover`` (run on start) puts it back into incoming/.
  * Envelope updates (``ClaimedMessage.save``) are atomic: tmp file + fsync + rename +
    directory fsync.
  * Removal after the last recipient is final is an atomic rename out of active/
    (into free/, or tmp/ and then deleted) that is not fsync'd (Postfix does not sync
    its queue-file unlinks either): a crash right after it may bring the entry back,
    which means one duplicate delivery, never a loss.
  * Recycling: a finished entry's directory goes to free/ (at most FREE_LIMIT of them)
    and the next received message takes it with one rename, truncating and rewriting
    its two files.  Creating three inodes per message and deleting them again was a
    fifth of the receiver's CPU on ext4 (its inode allocator steps over recently freed
    inodes one by one; tests/benchmarks/bench_mta.py).  A reused directory's entries
    are already durable, so its commit needs no fsync of the directory itself, and its
    envelope, rewritten in place at the same size, needs no cache flush of its own: its
    writes complete before the message's fsync, whose flush covers them
    (mta.queue.writeback; ext2/3/4 only, else the envelope is fsync'd).  Until
    it is reused, a free/ directory still holds the last message that went through it,
    as a deleted queue file's blocks would: the spool is the daemon's own (mode 0700).

Errors: ``QueueError`` (an ``OSError`` from the file system while committing, e.g.
ENOSPC or EFBIG), ``UnknownMessage``, ``QueueBusy`` (hold/delete of a claimed message),
``InvalidQueueId``.  A corrupt envelope found while scanning is moved to corrupt/ and
logged, never raised to the runner.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import shutil
import time
import zlib
from dataclasses import dataclass
from types import TracebackType
from typing import BinaryIO, Iterator

from .envelope import Envelope, RecipientState
from .errors import CorruptEnvelope, QueueBusy, QueueError, UnknownMessage
from .ids import check_qid, is_qid, new_qid
from .writeback import flush_covers_other_files, start_writeback, wait_writeback

log = logging.getLogger("mta.queue")

STATES = ("tmp", "incoming", "active", "deferred", "hold", "corrupt")
MESSAGE = "message"
ENVELOPE = "envelope.json"
_WRITE_BUFFER = 256 * 1024
FREE = "free"
FREE_LIMIT = 256          # recycled directories kept in free/; more are deleted


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file_synced(path: str, data: bytes, *, exclusive: bool, with_fd: int | None = None) -> bool:
    """Write ``data`` as the whole of ``path`` and make it durable, and the file
    ``with_fd`` too when given (it is fsync'd here); True when ``path`` was created (its
    directory entry is then for the caller to sync).  An existing file is
    overwritten in place and then cut to length rather than truncated first: its blocks
    are reused instead of freed and allocated again (a recycled directory's files).
    When its size does not change, fdatasync is enough (only the times changed in the
    inode), which saves the inode write: envelopes are padded (``_padded``) so that a
    recycled envelope file usually keeps its size.  With ``with_fd`` such a file gets no
    flush of its own: its writes are waited for, then ``with_fd``'s fsync flushes both
    (mta.queue.writeback; the caller passes ``with_fd`` only where that holds)."""
    fd, created = _open_for_rewrite(path, exclusive=exclusive)
    try:
        same_size = not created and os.fstat(fd).st_size == len(data)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if with_fd is not None:
            if same_size:
                start_writeback(fd)
                start_writeback(with_fd)      # both files' writes travel together
                wait_writeback(fd)
                os.fsync(with_fd)             # its flush comes after this file's writes completed
                return created
            os.fsync(with_fd)
        if same_size:
            os.fdatasync(fd)
            return created
        if not created:
            os.ftruncate(fd, len(data))
        os.fsync(fd)
        return created
    finally:
        os.close(fd)


def _open_for_rewrite(path: str, *, exclusive: bool) -> tuple[int, bool]:
    """``(fd, created)``: ``path`` opened for writing; a new file unless ``exclusive``
    is False and one exists (a recycled directory's file, which could only be missing
    if something else removed it)."""
    if not exclusive:
        try:
            return os.open(path, os.O_WRONLY), False
        except FileNotFoundError:
            pass
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), True


_ENVELOPE_BLOCK = 512


def _padded(envelope_json: bytes) -> bytes:
    """The envelope's JSON padded with spaces to a multiple of 512 bytes (JSON allows
    trailing whitespace): see ``_write_file_synced``."""
    short = -len(envelope_json) % _ENVELOPE_BLOCK
    return envelope_json[:-1] + b" " * short + b"\n" if short else envelope_json


def _remove_entry(path: str) -> None:
    """Delete a message directory: its two files and itself, falling back to rmtree for
    anything unexpected inside (shutil.rmtree's fd-safe walk costs a dozen syscalls)."""
    try:
        for name in (ENVELOPE, MESSAGE):
            try:
                os.unlink(os.path.join(path, name))
            except FileNotFoundError:
                pass
        os.rmdir(path)
    except OSError:
        shutil.rmtree(path, ignore_errors=True)


def read_file(path: str) -> bytes:
    """The whole of a queue file, read at the os level.  Why: Python's open().read()
    adds five system calls (fstat, the isatty ioctl, two lseeks, a second fstat) to a
    read that every delivery makes twice (envelope, message).  A queue file does not
    change once committed; if it did anyway, reading goes on to the end."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        parts = [os.read(fd, size + 1)]
        if len(parts[0]) != size:
            while chunk := os.read(fd, 1 << 20):
                parts.append(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)
    finally:
        os.close(fd)


def _try_lock(path: str) -> int | None:
    """Open ``path`` and take a non-blocking exclusive flock: the fd, or None if busy.

    Raises FileNotFoundError when the file is not there (the entry moved away).
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


@dataclass(frozen=True, slots=True)
class EnvelopeInfo:
    """One line of a queue listing (``mailq``)."""

    qid: str
    queue: str
    sender: str | None
    recipients: tuple[RecipientState, ...]
    size: int
    received_at: float | None
    next_due: float | None
    error: str | None = None


class IncomingMessage:
    """A message being received into tmp/: ``write`` bytes, then ``commit`` or ``abort``.

    Holds the flock on its file from creation to the end, so ``recover`` never mistakes
    a live writer for an abandoned one.  Usable as a context manager: leaving the block
    without ``commit`` aborts.

    ``deferred=True`` (the SMTP receiver's choice) chooses the queue id at once but
    creates tmp/<qid>/ only when the data outgrows the write buffer, or in ``commit``:
    a small message then costs the event loop no mkdir and no open, and all of its file
    system work happens in the thread that commits.  A queue id taken meanwhile by
    another message (same microsecond, same 24 random bits) is a QueueError.
    """

    def __init__(self, spool: Spool, *, deferred: bool = False) -> None:
        self._spool = spool
        self._file: BinaryIO | None = None
        self._pending: bytearray | None = None
        self._done = False
        self._created = False
        self._reused = False
        self._new_entry = False
        self.size = 0
        self.committed = False
        if deferred:
            self.qid = new_qid()
            self._dir = os.path.join(spool.dirs["tmp"], self.qid)
            self._pending = bytearray()
            return
        while True:
            self.qid = new_qid()
            self._dir = os.path.join(spool.dirs["tmp"], self.qid)
            try:
                self._make_dir()
                break
            except FileExistsError:  # pragma: no cover - 24 random bits and a clock apart
                continue
        self._open_file()

    def _make_dir(self) -> None:
        """tmp/<qid>/: a recycled directory from free/ when there is one, else mkdir."""
        self._reused = self._spool._take_free(self._dir)
        if not self._reused:
            os.mkdir(self._dir, 0o700)
        self._created = True
        # the directory's entries need an fsync of it: a new directory, or a recycled
        # one whose file had gone (created again, see _open_for_rewrite)
        self._new_entry = not self._reused

    def _open_file(self) -> None:
        # A recycled directory still holds the previous message: it is overwritten in
        # place and cut to length at commit (no new inode, its blocks reused).
        fd, created = _open_for_rewrite(os.path.join(self._dir, MESSAGE), exclusive=not self._reused)
        self._new_entry = self._new_entry or created
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._file = os.fdopen(fd, "wb", buffering=_WRITE_BUFFER)

    def _materialize(self) -> None:
        """Create tmp/<qid>/message (deferred mode) and write what was buffered."""
        assert self._pending is not None
        try:
            self._make_dir()
        except FileExistsError as exc:   # pragma: no cover - see the class docstring
            raise QueueError(f"{self.qid}: queue id already in use") from exc
        self._open_file()
        assert self._file is not None
        pending, self._pending = self._pending, None
        self._file.write(pending)

    def write(self, data: bytes) -> None:
        if self._done:
            raise QueueError(f"{self.qid}: write after commit/abort")
        try:
            if self._pending is not None:
                self._pending += data
                if len(self._pending) > _WRITE_BUFFER:
                    self._materialize()
            else:
                assert self._file is not None
                self._file.write(data)
        except OSError as exc:
            raise QueueError(f"{self.qid}: cannot write message: {exc}") from exc
        self.size += len(data)

    def commit(self, envelope: Envelope) -> str:
        """Make the message durable and visible in incoming/; return its queue id."""
        if self._done:
            raise QueueError(f"{self.qid}: commit after commit/abort")
        spool = self._spool
        try:
            if self._pending is not None:
                self._materialize()
            assert self._file is not None
            self._file.flush()
            fd = self._file.fileno()
            if self._reused:
                os.ftruncate(fd, self._file.tell())
            data = _padded(envelope.to_json())
            path = os.path.join(self._dir, ENVELOPE)
            one_flush = self._reused and spool.shared_flush
            if not one_flush:
                os.fsync(fd)
            if _write_file_synced(path, data, exclusive=not self._reused,
                                  with_fd=fd if one_flush else None):
                self._new_entry = True
            if self._new_entry:          # a new directory, or a file made again in one
                _fsync_dir(self._dir)
            os.rename(self._dir, os.path.join(spool.dirs["incoming"], self.qid))
            _fsync_dir(spool.dirs["incoming"])
        except OSError as exc:
            self.abort()
            raise QueueError(f"{self.qid}: cannot commit message: {exc}") from exc
        self.committed = True
        self._close()
        return self.qid

    def abort(self) -> None:
        """Throw the partial message away (it was never visible outside tmp/)."""
        self._close()
        if not self.committed and self._created:
            shutil.rmtree(self._dir, ignore_errors=True)

    def _close(self) -> None:
        self._done = True
        self._pending = None
        if self._file is not None:
            f, self._file = self._file, None
            try:
                f.close()
            except OSError:  # a failed flush of data we are discarding anyway
                pass

    def __enter__(self) -> IncomingMessage:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        if not self.committed:
            self.abort()


class ClaimedMessage:
    """A message claimed for delivery: in active/ and exclusively locked by this process.

    Update ``envelope`` (its RecipientState objects) as deliveries happen, ``save()``
    after each so a crash does not repeat finished work, and ``finish()`` at the end:
    the entry is deleted when every recipient is final, else put back into incoming/
    (some still pending) or deferred/.
    """

    def __init__(self, spool: Spool, qid: str, lock_fd: int, envelope: Envelope,
                 source: str = "incoming") -> None:
        self.spool = spool
        self.qid = qid
        # the state it was claimed from: incoming, deferred, or active (a dead owner's
        # claim taken over by Spool.take_stale_claims)
        self.source = source
        self.envelope = envelope
        self._fd: int | None = lock_fd
        self.dir = os.path.join(spool.dirs["active"], qid)

    @property
    def message_path(self) -> str:
        return os.path.join(self.dir, MESSAGE)

    def open_message(self) -> BinaryIO:
        return open(self.message_path, "rb")

    def save(self) -> None:
        """Write the envelope atomically (tmp + fsync + rename + directory fsync)."""
        self._check_owned()
        tmp = os.path.join(self.dir, ENVELOPE + ".tmp")
        try:
            _write_file_synced(tmp, _padded(self.envelope.to_json()), exclusive=False)
            os.rename(tmp, os.path.join(self.dir, ENVELOPE))
            _fsync_dir(self.dir)
        except OSError as exc:
            raise QueueError(f"{self.qid}: cannot save envelope: {exc}") from exc

    def finish(self) -> str:
        """Save and leave active/: returns ``"done"``, ``"incoming"`` or ``"deferred"``."""
        self._check_owned()
        if self.envelope.is_done and "unbounced" not in self.envelope.extra:
            # Atomic disappearance; the removal below may be cut short.  Not fsync'd, as
            # Postfix does not sync its queue-file unlink: a crash that forgets the rename
            # brings the entry back into active/, and ``recover`` makes that a duplicate
            # delivery, never a loss.
            if not self.spool._recycle(self.dir, self.qid):
                self._move_out("tmp", sync=False)
                _remove_entry(os.path.join(self.spool.dirs["tmp"], self.qid))
            self._unlock()
            log.debug("%s: removed", self.qid)
            return "done"
        self.save()
        # a bounce still to be queued (envelope.extra["unbounced"]) keeps a finished
        # message in incoming/, tried again at the next pass: never dropped unsent
        state = "incoming" if any(r.state == "pending" for r in self.envelope.recipients) \
            or self.envelope.is_done else "deferred"
        self._move_out(state)
        self._unlock()
        return state

    def hold(self) -> None:
        """Save and put the message on hold (the runner stops trying it)."""
        self._check_owned()
        self.save()
        self._move_out("hold")
        self._unlock()

    def _move_out(self, state: str, *, sync: bool = True) -> None:
        dst = self.spool.dirs[state]
        try:
            os.rename(self.dir, os.path.join(dst, self.qid))
            if sync:
                _fsync_dir(dst)
                _fsync_dir(self.spool.dirs["active"])
        except OSError as exc:
            raise QueueError(f"{self.qid}: cannot move to {state}/: {exc}") from exc

    def _check_owned(self) -> None:
        if self._fd is None:
            raise QueueError(f"{self.qid}: claim already finished")

    def _unlock(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> ClaimedMessage:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        # A failing stage preserves the entry (Mailman): whatever state was saved stays.
        if self._fd is not None:
            self.finish()


class Spool:
    """The queue directories under ``root``; see the module docstring for the contract."""

    def __init__(self, root: str, *, recover: bool = True) -> None:
        self.root = os.path.abspath(root)
        self.dirs = {s: os.path.join(self.root, s) for s in STATES}
        self.free_dir = os.path.join(self.root, FREE)
        for d in (*self.dirs.values(), self.free_dir):
            os.makedirs(d, mode=0o700, exist_ok=True)
        self._free_names: list[str] = []
        self._free_listed = 0.0
        self._free_share: tuple[int, int] | None = None
        # One cache flush per commit fewer where the file system allows it (commit)
        self.shared_flush = flush_covers_other_files(self.root)
        if recover:
            self.recover()

    def share_free(self, index: int, count: int) -> None:
        """This process is receiver ``index`` of ``count`` taking directories from
        free/: it takes only the names that fall to its index.  Why: receivers listing
        free/ at about the same time took the same names in the same order, and under
        load strace counted a rename failing for nearly every message received."""
        self._free_share = (index, count) if count > 1 else None

    # --- recycled directories (see "Recycling" in the module docstring) ---------------
    def _take_free(self, dst: str) -> bool:
        """Move a directory from free/ to ``dst``; False when there is none to take.

        free/ is listed when this process's list of names runs out (at most ten times
        a second while it is empty); a name another process took first is skipped.  A
        process that shares free/ with others of its kind (``share_free``) takes only its
        part of the names."""
        while True:
            if not self._free_names:
                now = time.monotonic()
                if now - self._free_listed < 0.1:
                    return False
                self._free_listed = now
                try:
                    names = os.listdir(self.free_dir)
                except OSError:
                    return False
                if self._free_share is not None:
                    index, count = self._free_share
                    names = [n for n in names if zlib.crc32(n.encode()) % count == index]
                self._free_names = names
                if not self._free_names:
                    return False
            name = self._free_names.pop()
            try:
                os.rename(os.path.join(self.free_dir, name), dst)
                return True
            except FileNotFoundError:
                continue
            except OSError:
                return False

    def _recycle(self, entry: str, name: str) -> bool:
        """Move a finished entry's directory to free/ unless enough are kept already
        (a directory's link count is 2 plus its subdirectories: one stat counts them).
        A file system that does not count a directory's links (btrfs says 1) recycles
        nothing, since free/ could not be bounded there."""
        try:
            links = os.stat(self.free_dir).st_nlink
            if links < 2 or links - 2 >= FREE_LIMIT:
                return False
            os.rename(entry, os.path.join(self.free_dir, name))
            return True
        except OSError:
            return False

    # --- receiving ------------------------------------------------------------------
    def new_message(self, *, deferred: bool = False) -> IncomingMessage:
        try:
            return IncomingMessage(self, deferred=deferred)
        except OSError as exc:
            raise QueueError(f"cannot create a queue file: {exc}") from exc

    # --- the runner's side ----------------------------------------------------------
    def claim(self, qid: str) -> ClaimedMessage | None:
        """Claim ``qid`` from incoming/ or deferred/; None if another claimer has it."""
        check_qid(qid)
        for state in ("incoming", "deferred"):
            src = os.path.join(self.dirs[state], qid)
            try:
                fd = _try_lock(os.path.join(src, MESSAGE))
            except FileNotFoundError:
                continue
            if fd is None:
                return None
            dst = os.path.join(self.dirs["active"], qid)
            try:
                os.rename(src, dst)
            except FileNotFoundError:  # moved by another claimer (or hold) meanwhile
                os.close(fd)
                return None
            try:
                env = self._read_envelope(dst)
            except CorruptEnvelope as exc:
                log.error("%s: corrupt envelope, moved to corrupt/: %s", qid, exc)
                os.rename(dst, os.path.join(self.dirs["corrupt"], qid))
                os.close(fd)
                return None
            return ClaimedMessage(self, qid, fd, env, state)
        return None

    def _stale_claims(self) -> Iterator[tuple[str, str, int]]:
        """``(qid, directory, locked fd)`` for each entry of active/ whose owner died
        (its lock was free, now it is ours); an entry without its message file goes to
        corrupt/.  The caller owns each fd."""
        for qid in self._qids("active"):
            d = os.path.join(self.dirs["active"], qid)
            try:
                fd = _try_lock(os.path.join(d, MESSAGE))
            except FileNotFoundError:
                if os.path.isdir(d):
                    self._to_corrupt(qid, "active", "message file missing")
                continue
            if fd is None:
                continue                  # a live claim
            if not os.path.isdir(d):      # its owner moved it out between listing and lock
                os.close(fd)
                continue
            yield qid, d, fd

    def take_stale_claims(self) -> list[ClaimedMessage]:
        """Claim, where they are, the entries of active/ whose owner died: the caller
        decides what the interrupted delivery means for them, where ``recover`` would
        only put them back into incoming/ to be tried again at once."""
        taken = []
        for qid, d, fd in self._stale_claims():
            try:
                env = self._read_envelope(d)
            except (CorruptEnvelope, FileNotFoundError) as exc:
                os.close(fd)
                self._to_corrupt(qid, "active", f"unreadable envelope of a stale claim: {exc}")
                continue
            taken.append(ClaimedMessage(self, qid, fd, env, "active"))
        return taken

    def scan_due(self, now: float) -> list[str]:
        """Queue ids worth claiming at ``now``: all of incoming/, due ones of deferred/."""
        due = self._qids("incoming")
        for qid in self._qids("deferred"):
            try:
                env = self._read_envelope(os.path.join(self.dirs["deferred"], qid))
            except FileNotFoundError:
                continue
            except CorruptEnvelope as exc:
                self._to_corrupt(qid, "deferred", exc)
                continue
            if env.due(now):
                due.append(qid)
        return due

    def recover(self, *, tmp_grace: float = 5.0) -> dict[str, int]:
        """Return stale claims to incoming/ and remove abandoned tmp/ entries.

        Safe to run at any time, from any process: only entries whose lock is free (their
        owner died) are touched; tmp/ entries must also be older than ``tmp_grace``
        seconds, covering the instant between a writer's mkdir and its flock.
        """
        counts = {"claims": 0, "tmp": 0}
        for qid, d, fd in self._stale_claims():
            try:
                os.rename(d, os.path.join(self.dirs["incoming"], qid))
                _fsync_dir(self.dirs["incoming"])
                counts["claims"] += 1
                log.warning("%s: stale claim recovered into incoming/", qid)
            except FileNotFoundError:
                pass
            finally:
                os.close(fd)
        now = time.time()
        for name in os.listdir(self.dirs["tmp"]):
            d = os.path.join(self.dirs["tmp"], name)
            try:
                st = os.lstat(d)
                # a recycled directory keeps its old mtime; the rename into tmp/ set ctime
                if now - max(st.st_mtime, st.st_ctime) < tmp_grace:
                    continue
                fd = _try_lock(os.path.join(d, MESSAGE))
            except FileNotFoundError:
                fd = -1  # no message file: never got past mkdir, or half deleted
            if fd is None:
                continue
            shutil.rmtree(d, ignore_errors=True)
            if fd >= 0:
                os.close(fd)
            counts["tmp"] += 1
        return counts

    # --- administration ---------------------------------------------------------------
    def locate(self, qid: str) -> str | None:
        """The state directory holding ``qid``, or None."""
        check_qid(qid)
        for state in STATES[1:]:
            if os.path.isdir(os.path.join(self.dirs[state], qid)):
                return state
        return None

    def read_envelope(self, qid: str) -> Envelope:
        state = self.locate(qid)
        if state is None:
            raise UnknownMessage(qid)
        return self._read_envelope(os.path.join(self.dirs[state], qid))

    def list(self) -> list[EnvelopeInfo]:
        out: list[EnvelopeInfo] = []
        for state in STATES[1:]:
            for qid in self._qids(state):
                d = os.path.join(self.dirs[state], qid)
                try:
                    env = self._read_envelope(d)
                except (CorruptEnvelope, FileNotFoundError) as exc:
                    out.append(EnvelopeInfo(qid, state, None, (), 0, None, None, str(exc)))
                    continue
                out.append(EnvelopeInfo(qid, state, env.sender, tuple(env.recipients), env.size,
                                        env.received_at, env.next_due()))
        return out

    def hold(self, qid: str) -> None:
        self._admin_move(qid, ("incoming", "deferred"), "hold")

    def release(self, qid: str) -> None:
        self._admin_move(qid, ("hold",), "incoming")

    def delete(self, qid: str) -> None:
        """Remove a message that is not being delivered (incoming, deferred, hold, corrupt)."""
        self._admin_move(qid, ("incoming", "deferred", "hold", "corrupt"), "tmp")
        shutil.rmtree(os.path.join(self.dirs["tmp"], qid), ignore_errors=True)
        log.info("%s: deleted by administrator", qid)

    # --- internals ----------------------------------------------------------------------
    def _qids(self, state: str) -> list[str]:
        try:
            return sorted(n for n in os.listdir(self.dirs[state]) if is_qid(n))
        except FileNotFoundError:
            return []

    @staticmethod
    def _read_envelope(d: str) -> Envelope:
        return Envelope.from_json(read_file(os.path.join(d, ENVELOPE)))

    def _admin_move(self, qid: str, sources: tuple[str, ...], dst_state: str) -> None:
        check_qid(qid)
        for state in sources:
            src = os.path.join(self.dirs[state], qid)
            if not os.path.isdir(src):
                continue
            try:
                fd = _try_lock(os.path.join(src, MESSAGE))
            except FileNotFoundError:
                fd = -1 if state == "corrupt" else None
                if fd is None:
                    continue
            if fd is None:
                raise QueueBusy(f"{qid}: being delivered")
            try:
                os.rename(src, os.path.join(self.dirs[dst_state], qid))
                _fsync_dir(self.dirs[dst_state])
                return
            except FileNotFoundError:
                continue
            except OSError as exc:
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    raise QueueError(f"{qid}: already present in {dst_state}/") from exc
                raise QueueError(f"{qid}: cannot move to {dst_state}/: {exc}") from exc
            finally:
                if fd >= 0:
                    os.close(fd)
        if os.path.isdir(os.path.join(self.dirs["active"], qid)):
            raise QueueBusy(f"{qid}: being delivered")
        raise UnknownMessage(qid)

    def _to_corrupt(self, qid: str, state: str, why: object) -> None:
        src = os.path.join(self.dirs[state], qid)
        try:
            fd = _try_lock(os.path.join(src, MESSAGE))
        except FileNotFoundError:
            fd = -1
        if fd is None:
            return
        try:
            os.rename(src, os.path.join(self.dirs["corrupt"], qid))
            log.error("%s: moved to corrupt/: %s", qid, why)
        except OSError:
            pass
        finally:
            if fd >= 0:
                os.close(fd)
