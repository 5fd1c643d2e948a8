"""deliver.groupcommit — deferred durability for a batch of deliveries (Agent.run_many).

A single delivery makes every write durable before it returns: the mbox append is
fsync'd before its lock is released, a Maildir file is fsync'd in ``tmp/`` before it is
linked into ``new/`` and ``new/`` is fsync'd after (deliver.mbox, deliver.maildir).  On a
virtual disk each fsync costs a journal commit; for a batch of messages delivered in one
process ``GroupCommit`` replaces the per-message syncs by one sync of each touched file
system at the end of the batch ("group commit", as databases do):

* an mbox append is written under its locks as usual, but not fsync'd; the file is
  remembered (an open descriptor) for the commit;
* a Maildir message is written to ``tmp/<unique>`` and not fsync'd; its link to
  ``new/<unique>`` (the name LASTFOLDER shows) is made only at the commit, *after* the
  data is durable, so the Maildir rule "a reader never sees a partial file" holds across
  a crash too;
* ``commit()``: one syncfs(2) per touched file system (data of every file written),
  then the pending Maildir links, then one more syncfs(2) for their directory entries.
  Where syncfs is unavailable every file is fsync'd, then every ``new/`` directory;
* lock claim files (deliver.locking) are kept for the whole batch (``claims``) instead of
  being created and removed for every lock: creating an inode is the dearest system call
  of a delivery.  ``close()`` removes them;
* a Maildir found whole (folder, new/, cur/, tmp/) is remembered (``maildirs``) and not
  checked again in the batch (deliver.folders); one that lost a part since is made
  whole again at the failed delivery, which is then tried once more.

The guarantee (README, "Batch delivery"): a message is durable when its result is
returned, and not before; ``Agent.run_many`` returns results only after ``commit()``.
A message whose deferred work failed (a sync error, a Maildir link that could not be
made) is reported as a temporary failure (75), so the queue retries it: a crash or a
failed sync before the commit can duplicate mail that was partly written, never lose
mail that was reported delivered.  What differs from single delivery: an mbox append
is not yet on disk when its lock is released, and a Maildir message appears in
``new/`` only at the end of the batch.

Raises nothing itself: failures are collected per message (``commit()`` returns the
indexes of the messages that failed).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

_syncfs: Callable[[int], int] | None | bool = False     # False: not looked up yet


def _load_syncfs() -> Callable[[int], int] | None:
    """libc's syncfs(2) through ctypes (Linux >= 2.6.39; since 5.8 it reports
    write-back errors of the file system).  None where there is none."""
    global _syncfs
    if _syncfs is False:
        try:
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            fn = libc.syncfs
            fn.argtypes = [ctypes.c_int]
            fn.restype = ctypes.c_int

            def call(fd: int) -> int:
                return 0 if fn(fd) == 0 else ctypes.get_errno() or errno.EIO
            _syncfs = call
        except (OSError, AttributeError):
            _syncfs = None
    return _syncfs  # type: ignore[return-value]


@dataclass(slots=True)
class _Pending:
    """A Maildir message written to tmp/ whose link into new/ waits for the commit."""

    tmp: str
    dest: str
    dev: int
    message: int


@dataclass
class GroupCommit:
    """The deferred work of one batch; see the module docstring."""

    claims: dict[str, str] = field(default_factory=dict)     # lock file -> our claim file
    maildirs: set[str] = field(default_factory=set)          # checked whole (deliver.folders)
    _files: dict[tuple[int, int], int] = field(default_factory=dict)   # (dev, ino) -> fd
    _touched: dict[tuple[int, int], set[int]] = field(default_factory=dict)
    _pending: list[_Pending] = field(default_factory=list)
    _message: int = 0

    def begin(self, index: int) -> None:
        """Deferred work from now on belongs to message ``index``."""
        self._message = index

    def wrote(self, fd: int, st: os.stat_result | None = None) -> None:
        """The open file ``fd`` was written and not fsync'd: keep a descriptor for the
        commit (one per file, whatever the number of appends)."""
        st = st or os.fstat(fd)
        key = (st.st_dev, st.st_ino)
        if key not in self._files:
            self._files[key] = os.dup(fd)
        self._touched.setdefault(key, set()).add(self._message)

    def link_later(self, tmp: str, dest: str, dev: int) -> None:
        """Link ``tmp`` (on device ``dev``) to ``dest`` and remove ``tmp`` at the commit,
        after its data is durable."""
        self._pending.append(_Pending(tmp, dest, dev, self._message))

    # ------------------------------------------------------------------ commit

    def commit(self) -> set[int]:
        """Make the batch durable; the indexes of the messages that are not."""
        failed: set[int] = set()
        sync = _load_syncfs()
        opened: list[int] = []
        try:
            # 1. the data of every file written (mboxes, Maildir tmp files)
            if sync:
                devices = {dev: fd for (dev, _ino), fd in self._files.items()}
                for p in self._pending:
                    if p.dev not in devices:
                        fd = _open(p.tmp, os.O_RDONLY)
                        if fd >= 0:
                            opened.append(fd)
                            devices[p.dev] = fd
                bad = self._sync_devices(devices, sync)
                for key, touched in self._touched.items():
                    if key[0] in bad:
                        failed |= touched
                failed.update(p.message for p in self._pending if p.dev in bad)
            else:
                for key, fd in self._files.items():
                    if _fsync(fd):
                        failed |= self._touched[key]
                for p in self._pending:
                    fd = _open(p.tmp, os.O_RDONLY)
                    if fd < 0 or _fsync(fd):
                        failed.add(p.message)
                    if fd >= 0:
                        os.close(fd)
            # 2. the Maildir links, then their directory entries
            linked: dict[str, list[int]] = {}
            for p in self._pending:
                if p.message not in failed:
                    try:
                        os.link(p.tmp, p.dest)
                        linked.setdefault(os.path.dirname(p.dest), []).append(p.message)
                    except OSError as exc:
                        log.error('group commit: cannot link "%s": %s', p.dest, exc.strerror)
                        failed.add(p.message)
                _unlink(p.tmp)
            dir_devs: dict[int, int] = {}
            dir_of: dict[str, int] = {}
            for d in linked:
                fd = _open(d, os.O_RDONLY | os.O_DIRECTORY)
                if fd < 0:
                    failed.update(linked[d])
                    continue
                opened.append(fd)
                if sync:
                    dev = os.fstat(fd).st_dev
                    dir_devs.setdefault(dev, fd)
                    dir_of[d] = dev
                elif _fsync(fd):
                    failed.update(linked[d])
            if sync:
                bad = self._sync_devices(dir_devs, sync)
                for d, dev in dir_of.items():
                    if dev in bad:
                        failed.update(linked[d])
        finally:
            for fd in opened:
                os.close(fd)
            self._pending.clear()
            self._close_files()
        return failed

    @staticmethod
    def _sync_devices(devices: dict[int, int], sync: Callable[[int], int]) -> set[int]:
        bad = set()
        for dev, fd in devices.items():
            err = sync(fd)
            if err:
                log.error("group commit: syncfs failed (%s)", os.strerror(err))
                bad.add(dev)
        return bad

    def _close_files(self) -> None:
        for fd in self._files.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._files.clear()
        self._touched.clear()

    def close(self) -> None:
        """Remove the kept claim files and drop anything not committed (its tmp files
        are removed: those messages were never reported delivered)."""
        for p in self._pending:
            _unlink(p.tmp)
        self._pending.clear()
        self._close_files()
        for claim in self.claims.values():
            _unlink(claim)
        self.claims.clear()


def _open(path: str, flags: int) -> int:
    try:
        return os.open(path, flags)
    except OSError as exc:
        log.error('group commit: cannot open "%s": %s', path, exc.strerror)
        return -1


def _fsync(fd: int) -> int:
    try:
        os.fsync(fd)
    except OSError as exc:
        return exc.errno or errno.EIO
    return 0


def _unlink(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
