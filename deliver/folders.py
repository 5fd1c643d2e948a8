"""deliver.folders — deliver one message to the folders of one action line, as procmail does.

``folder_kind(name)`` classifies a name by procmail's rules (PROCMAIL-BEHAVIOUR 30):
``x/`` Maildir, ``x/.`` MH, an existing directory without a slash a plain directory folder
(``msg.*`` files), anything else an mbox.

``deliver_to_folders(names, message)`` writes the message (the buffer from
deliver.fromline.prepare_message) to the first folder in that folder's format and, when there
are several names (31), hard-links that one file into the others, so a Maildir reached by a
link may hold a From_ line.  With several names every one must be (or be made into) a
directory: a later name that is a regular file is reported ``Unable to treat as directory``
and skipped; when the *first* is an mbox the others are all ``Skipped``.  A Maildir or MH
name that exists as a regular file is appended to as an mbox (32); a Maildir directory
whose new/, cur/ or tmp/ cannot be made is given up instead (the part named, the folder
Skipped, no fallback to an mbox).  Every mbox append is
locked (dot-lock + fcntl: deliver.mbox); ``lock_mbox=False`` (the caller holds the
dot-lock) leaves out the dot-lock, never the fcntl lock.  When the umask leaves
o+x allowed, every message file and mbox written gets o+x (20), and so does a directory
folder whose own mode lacks it (see _mark_new_mail for which directory).

Formats: mbox = mboxformat.mbox_bytes (escaping, final newline, unless ``raw``); MH and
directory = program_bytes (``raw``: nothing added); Maildir = maildir_bytes (no From_ line).

With ``group`` (deliver.groupcommit, Agent.run_many) the fsyncs of an mbox append and of a
Maildir message are left to the batch's commit; a Maildir reached together with other
names is still synced at once.

Returns a FolderResult: the names LASTFOLDER shows (``md/new/<file>``, ``mh/7``, ``dir/msg.X``,
``box``), the bytes written and the first folder's kind.  Raises MailboxError (temporary=True
for ENOSPC, EDQUOT, EFBIG, EIO and lock timeouts; nothing partial is left behind).
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rules.effects import Part

from . import dirfolder, maildir, mh
from .errors import MailboxError
from .groupcommit import GroupCommit
from .locking import LockPolicy
from .mbox import UPDATE_MASK, append_mbox
from .mboxformat import (maildir_bytes, mbox_body_bytes, mbox_bytes, program_bytes, rewrite_content_length,
                         skip_from_line)

log = logging.getLogger(__name__)

MBOX, MAILDIR, MH, DIR = "mbox", "maildir", "mh", "dir"


@dataclass(frozen=True)
class FolderResult:
    names: tuple[str, ...]      # what LASTFOLDER shows, space-separated by the caller
    size: int                   # bytes written (procmail's LOGABSTRACT count)
    kind: str                   # the first folder's kind: mbox, maildir, mh or dir
    skipped: tuple[str, ...] = ()   # names procmail logs as "Skipped"


def _split(name: str) -> tuple[str, str]:
    """(kind by syntax, directory or file path) — before looking at the file system.
    As procmail's folderparse(): the type is read off the end, then any further slashes
    before it go too (``md///`` is the Maildir ``md``); a name of two characters is a
    Maildir only as ``x/`` (``/.`` is a file name)."""
    n = len(name)
    if n == 2:
        return (MAILDIR, name[:1]) if name.endswith("/") else ("", name)
    if n > 2 and name.endswith("/."):
        kind, end = MH, n - 2
    elif n > 2 and name.endswith("/"):
        kind, end = MAILDIR, n - 1
    else:
        return "", name
    while end > 1 and name[end - 1] == "/":
        end -= 1
    return kind, name[:end]


def folder_kind(name: str) -> str:
    """procmail's foldertype(): maildir, mh, dir (existing directory) or mbox."""
    kind, path = _split(name)
    if kind:
        return kind
    return DIR if os.path.isdir(path) else MBOX


def _prepare(kind: str, path: str, umask: int, forcedir: bool) -> bool:
    """Make ``path`` usable as a folder of ``kind``; False: "Unable to treat as directory"."""
    if kind == MAILDIR:
        return maildir.ensure_maildir(path, umask)
    return maildir.ensure_dir(path, umask) if (kind == MH or forcedir) else os.path.isdir(path)


def _ready(kind: str, path: str, umask: int, group: GroupCommit | None,
           abspath: Callable[[str], str]) -> bool:
    """``_prepare`` for the first name of an action line.  In a batch a Maildir is
    checked once (four stat(2) calls, the most of any part of a delivery after the
    writes): ``group.maildirs`` remembers the ones found whole, by absolute path."""
    if kind != MAILDIR or group is None:
        return _prepare(kind, path, umask, forcedir=False)
    key = abspath(path)
    if key in group.maildirs:
        return True
    if not _prepare(kind, path, umask, forcedir=False):
        return False
    group.maildirs.add(key)
    return True


def _store_maildir(path: str, data: bytes, umask: int, hostname: str | None,
                   group: GroupCommit | None, batch: GroupCommit | None,
                   abspath: Callable[[str], str]) -> str:
    """deliver_maildir; in a batch, a Maildir taken for whole earlier that lost a part
    since is made whole as at its first delivery and tried once more."""
    try:
        return maildir.deliver_maildir(path, data, umask=umask, hostname=hostname, group=batch,
                                       abspath=abspath)
    except MailboxError:
        key = abspath(path)
        if group is None or key not in group.maildirs:
            raise
        group.maildirs.discard(key)
        if not _prepare(MAILDIR, path, umask, forcedir=False):
            raise
        return maildir.deliver_maildir(path, data, umask=umask, hostname=hostname, group=batch,
                                       abspath=abspath)


def _broken_maildir_part(kind: str, path: str) -> str | None:
    """For a Maildir that _prepare could not make whole while ``path`` is a directory:
    the first of its new/, cur/, tmp/ (procmail's mkmaildir() order) that is not one."""
    if kind != MAILDIR or not os.path.isdir(path):
        return None
    for sub in maildir.SUBDIRS:
        part = os.path.join(path, sub)
        if not os.path.isdir(part):
            return part
    return None


def _mark_new_mail(folder: str, target: str, umask: int) -> None:
    """procmail's "new mail" bit on a directory folder (writefolder(), mailfold.c).

    When neither the folder directory's mode nor the umask has o+x (UPDATE_MASK),
    procmail chmods ``target`` to that directory's mode plus o+x once the message is
    stored: the directory itself for an MH or plain directory folder, but ``tmp/`` of a
    Maildir written first and ``new/`` of one reached by a link (what its buffer names at
    that point), each with the Maildir's own mode.  With the default UMASK (077) there is
    nothing to do and no stat(2) is spent."""
    if umask & UPDATE_MASK:
        return
    try:
        mode = os.stat(folder).st_mode
        if not mode & UPDATE_MASK:
            os.chmod(target, stat.S_IMODE(mode) | UPDATE_MASK)
    except OSError:
        pass          # procmail does not look at chmod's result either


def deliver_to_folders(
    names: Sequence[str],
    message: bytes,
    *,
    raw: bool = False,
    umask: int = 0o077,
    policy: LockPolicy = LockPolicy(),
    msgprefix: str = "msg.",
    lock_mbox: bool = True,
    hostname: str | None = None,
    spool_checks: bool = False,
    berkeley: bool = False,
    group: GroupCommit | None = None,
    abspath: Callable[[str], str] = os.path.abspath,
    part: Part = None,
    mail: bytes | None = None,
    box: bool = False,
    box_lock: Callable[[str], contextlib.AbstractContextManager[object]] | None = None,
    linebuf: int | None = None,
) -> FolderResult:
    """Deliver ``message`` to ``names`` (one action line); see the module docstring.
    ``abspath``: the caller's os.path.abspath (RealEffects knows its cwd: no getcwd).
    ``part``: "header" or "body" when ``message`` is one part alone (an ``h`` or ``b``
    recipe), written as that part of procmail's buffer stands: its Content-Length was
    set when the mail was read (a header alone has no body to count, a body's lines
    are no header fields), and a body keeps a first line starting with "From " even in
    a Maildir.

    ``box``: the one name is $DEFAULT or $ORGMAIL at the end of the rc files, which
    procmail's writefolder() opens by the name as given (its ``boxname``) where a
    recipe's folder is opened by the name without its Maildir/MH suffix: a ``f/``,
    ``f/.`` or ``f//`` that cannot be used as a directory fails ("f/" cannot be opened
    as a file) instead of being appended to as the mbox ``f``.  ``box_lock``: for
    $DEFAULT, the lock procmail takes on it when, and only when, it is written as an
    mbox (given the name without its suffix; the caller adds LOCKEXT).

    ``linebuf``: procmail's LINEBUF.  A Maildir, MH or directory folder whose name
    leaves no room in procmail's buffer for a unique file name (foldertype()'s
    ft_TOOLONG) is not written: "Exceeded LINEBUF", and the caller sets
    PROCMAIL_OVERFLOW (the error's ``overflow``)."""
    if not names:
        raise MailboxError("no folder given")
    # Content-Length is left as it stands under -Y, and in a part alone (set at reading)
    keep_length = berkeley or part is not None
    first, others = names[0], list(names[1:])
    kind, path = _split(first)
    suffixed = bool(kind)
    if not kind:
        kind = DIR if os.path.isdir(path) else MBOX
    if kind != MBOX and linebuf is not None and _too_long(kind, path, linebuf):
        raise _exceeded_linebuf(path, None)
    if suffixed and not _ready(kind, path, umask, group, abspath):
        broken = _broken_maildir_part(kind, path)
        if broken is not None:
            # procmail's foldertype(): a Maildir directory whose new/, cur/ or tmp/
            # cannot be made is given up (to_CANTCREATE), not taken for an mbox: the
            # part is named, the folder Skipped, the other names dropped unsaid, and
            # nothing more is logged for the failed recipe; LASTFOLDER stays
            log.warning('Unable to treat as directory "%s"', broken)
            log.warning('Skipped "%s"', path)
            err = MailboxError(f'Unable to treat as directory "{broken}"', path=path)
            err.log_head = ""
            err.keeps_lastfolder = True
            raise err
        log.warning('Unable to treat as directory "%s"', path)
        kind = MBOX                        # rule 32: append to that file as an mbox
        if box:
            with box_lock(path) if box_lock is not None else contextlib.nullcontext():
                err = MailboxError(f'Error while writing to "{path}"', path=path)
            err.lastfolder = first         # procmail's LASTFOLDER keeps the suffix
            raise err

    if kind == MBOX:
        locked = box_lock is not None and path != os.devnull
        with box_lock(path) if locked else contextlib.nullcontext():
            return _to_mbox(first, path, others, message, raw=raw, umask=umask, policy=policy,
                            lock_mbox=lock_mbox, spool_checks=spool_checks, berkeley=berkeley,
                            keep_length=keep_length, group=group, part=part, mail=mail)
    if kind == MAILDIR:
        data = (message if part == "body" else skip_from_line(message) if part
                else maildir_bytes(message, berkeley=berkeley))
        try:
            stored = _store_maildir(path, data, umask, hostname, group, None if others else group,
                                    abspath)
        except MailboxError as exc:
            exc.keeps_lastfolder = True    # procmail names the folder only once it is stored
            raise
    else:
        data = (rewrite_content_length(message, berkeley=keep_length) if raw
                else program_bytes(message, berkeley=keep_length))
        try:
            if kind == MH:
                stored = mh.deliver_mh(path, data, umask=umask)
            else:
                stored = dirfolder.deliver_dir(path, data, umask=umask, msgprefix=msgprefix)
        except MailboxError as exc:
            if exc.temp_file or exc.link_failure:
                # procmail's writefolder(): nothing was named yet; its log line shows
                # the folder as its buffer holds it then ("mh/.", "dir/")
                exc.log_head = "Couldn't create or rename temp file"
                exc.path = first if kind == MH else path + "/"
                exc.keeps_lastfolder = True
            raise
    _mark_new_mail(path, os.path.join(path, "tmp") if kind == MAILDIR else path, umask)
    shown = [stored]
    skipped: list[str] = []
    ino = os.stat(stored).st_ino if others else 0     # only the links below need it
    for name in others:
        okind, opath = _split(name)
        okind = okind or DIR
        if linebuf is not None and _too_long(okind, opath, linebuf):
            # procmail's writefolder() gives up there (its exlb): the folders stored so
            # far keep the mail, the recipe fails, LASTFOLDER names what was stored
            raise _exceeded_linebuf(opath, " ".join(shown))
        if not _prepare(okind, opath, umask, forcedir=True):
            log.warning('Unable to treat as directory "%s"', _broken_maildir_part(okind, opath) or opath)
            log.warning('Skipped "%s"', opath)
            skipped.append(opath)
            continue
        try:
            if okind == MAILDIR:
                linked = maildir.link_into_maildir(stored, opath, hostname=hostname)
            elif okind == MH:
                linked = mh.link_into_mh(stored, opath)
            else:
                linked = dirfolder.link_into_dir(stored, opath, ino, msgprefix)
        except MailboxError as exc:
            # procmail: "Couldn't make link to", without the reason; not fatal
            log.warning('Couldn\'t make link to "%s"', exc.path)
            continue
        finally:      # procmail's dirfile() says -1 whether or not the link was made
            _mark_new_mail(opath, os.path.join(opath, "new") if okind == MAILDIR else opath, umask)
        shown.append(linked)
    return FolderResult(tuple(shown), len(data), kind, tuple(skipped))


_UNIQ_NAME_LEN = 30       # procmail's UNIQnamelen: room for a Maildir/MH/msg.XXXX name
_MAILDIR_PART_LEN = 4     # MAILDIRLEN: "/new", "/tmp"


def _exceeded_linebuf(path: str, stored: str | None) -> MailboxError:
    """procmail's exlb: "Exceeded LINEBUF" logged here, PROCMAIL_OVERFLOW for the caller;
    LASTFOLDER names what was ``stored`` before (None: nothing, it keeps its value)."""
    log.warning("Exceeded LINEBUF")
    err = MailboxError(f'Exceeded LINEBUF with "{path}"', path=path)
    err.log_head = ""
    err.overflow = True
    if stored is None:
        err.keeps_lastfolder = True
    else:
        err.lastfolder = stored
    return err


def _too_long(kind: str, path: str, linebuf: int) -> bool:
    """procmail's foldertype() length check (ft_TOOLONG) for a directory folder."""
    extra = _MAILDIR_PART_LEN if kind == MAILDIR else 0
    return len(os.fsencode(path)) + _UNIQ_NAME_LEN + 1 + extra > linebuf


def _to_mbox(first: str, path: str, others: list[str], message: bytes, *, raw: bool, umask: int,
             policy: LockPolicy, lock_mbox: bool, spool_checks: bool, berkeley: bool,
             keep_length: bool, group: GroupCommit | None, part: Part,
             mail: bytes | None) -> FolderResult:
    """The first name as an mbox (``path``, ``first`` as written); the others skipped."""
    skipped = tuple(others)
    if " ".join(skipped):   # one line for the rest, its words joined (procmail's
        log.warning('Skipped "%s"', " ".join(skipped))    # concatenate); "" says nothing
    if path == os.devnull:
        # reached through "/dev/null//" or as the first of several names: procmail
        # writes nothing there and counts the mail as it stands (its rawnonl)
        return FolderResult((path,), len(message), MBOX, skipped)
    if part == "body" and mail is not None:
        data = mbox_body_bytes(message, mail, raw=raw, berkeley=berkeley)
    else:
        data = mbox_bytes(message, raw=raw, berkeley=keep_length)
    try:
        size = append_mbox(path, data, policy=policy, umask=umask, lock=lock_mbox,
                           spool_checks=spool_checks, group=group)
    except MailboxError as exc:
        if path != first or others:
            # a Maildir or MH name taken as an mbox: procmail's LASTFOLDER is left
            # holding the name without its suffix, the file it tried; of several
            # names only the first, the one it tried
            exc.lastfolder = path
        raise
    return FolderResult((path,), size, MBOX, skipped)
