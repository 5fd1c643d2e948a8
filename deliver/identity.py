"""Becoming the recipient: user lookup, spool mailbox preparation, dropping root.

Why: user recipes and the programs they start must never run as root (procmail and
Postfix local(8) both switch to the recipient first).  When started as root, the agent
prepares the recipient's spool mailbox *as root* (create it owned by the user, mode
0600, never following a symlink), then drops groups, gid and uid irrevocably, and only
then opens any rc file.

Errors: ``IdentityError`` (unknown user -> EX_NOUSER 67, a spool file that is a symlink
or owned by someone else -> EX_TEMPFAIL 75, so the mail stays queued), mapped in deliver.cli.
"""

from __future__ import annotations

import os
import pwd
import stat

from . import spoolgroup
from .agent import User
from .exitcodes import ExitCode


class IdentityError(Exception):
    def __init__(self, message: str, code: ExitCode) -> None:
        super().__init__(message)
        self.code = code


def lookup_user(name: str) -> User:
    """The passwd entry of ``name``; as procmail's auth_finduser(), a name that is not
    found is tried again cut at its "@" and in ASCII lower case ("-d Bob@example.org"
    finds bob), and an unknown user is reported by that second form."""
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        name = "".join(chr(ord(c) + 32) if "A" <= c <= "Z" else c
                       for c in name.partition("@")[0])
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            raise IdentityError(f'Unknown user "{name}"', ExitCode.NOUSER) from None
    return User(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir, pw.pw_shell or "/bin/sh")


def current_user() -> User:
    uid = os.getuid()
    try:
        pw = pwd.getpwuid(uid)
    except KeyError:
        return User(str(uid), uid, os.getgid(), "/", "/bin/sh")
    return User(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir, pw.pw_shell or "/bin/sh")


def prepare_spool_mailbox(user: User, spool_dir: str) -> None:
    """As root: make sure /var/mail/USER exists as a regular file owned by the user.
    A symlink or a file owned by another user is the classic LDA attack: refuse.  A
    setuid (or setgid) mailbox is SysV's forwarding mailbox, which procmail bounces."""
    path = os.path.join(spool_dir, user.name)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        # in a spool its group may write (Debian's root:mail 2775) the mailbox gets that
        # group and mode 0660, as procmail makes it (screenmailbox(): keepgid and the
        # group-writable umask), so that tools of the mail group reach it; else 0600
        group = spoolgroup.mail_group(spool_dir)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            return prepare_spool_mailbox(user, spool_dir)
        except OSError:
            return   # unwritable spool: the delivery itself reports it
        try:
            os.fchown(fd, user.uid, user.gid if group is None else group)
            if group is not None:
                os.fchmod(fd, 0o660)
        finally:
            os.close(fd)
        return
    if st.st_mode & stat.S_ISUID or (st.st_mode & stat.S_ISGID and not stat.S_ISDIR(st.st_mode)):
        # the SysV convention of a mailbox that forwards: procmail bounces before any
        # rc file runs (screenmailbox()), and so do we
        raise IdentityError("Autoforwarding mailbox found", ExitCode.NOUSER)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISREG(st.st_mode):
        # Temporary, not a bounce: the mail stays queued while an admin looks at what
        # is probably an attack, and nothing is written through the link.
        raise IdentityError(f'Refusing spool mailbox "{path}": not a regular file', ExitCode.TEMPFAIL)
    if st.st_uid != user.uid:
        raise IdentityError(f'Refusing spool mailbox "{path}": owned by uid {st.st_uid}', ExitCode.TEMPFAIL)
    if st.st_nlink != 1:
        # a hard link to a file of the user's (~/.bashrc): mail would be written into it
        # (procmail's screenmailbox() takes nlink != 1 for bogus too)
        raise IdentityError(f'Refusing spool mailbox "{path}": it has several hard links', ExitCode.TEMPFAIL)


def drop_privileges(user: User, spool_dir: str | None = None) -> None:
    """Irrevocably become the user (supplementary groups first, uid last).

    ``spool_dir``: when it is group-writable (Debian's /var/mail is root:mail 2775), its
    group is kept as the *saved* gid only, the way procmail is setgid mail: the agent
    raises it just around creating and removing dot-lock files
    (``deliver.spoolgroup.spool_group``).
    exec() resets the saved gid to the effective one, so no program a recipe starts
    can ever regain the group.
    """
    if os.geteuid() != 0:
        if os.geteuid() != user.uid:
            raise IdentityError(f'Insufficient privileges to deliver to "{user.name}"', ExitCode.NOPERM)
        return
    os.initgroups(user.name, user.gid) if _has_passwd(user) else os.setgroups([user.gid])
    saved_gid = user.gid
    if spool_dir is not None:
        saved_gid = spoolgroup.mail_group(spool_dir) or user.gid
    os.setresgid(user.gid, user.gid, saved_gid)
    os.setresuid(user.uid, user.uid, user.uid)
    spoolgroup.forget()
    # the group is for the spool mailbox's own lock only (procmail's defdeflock: the
    # mailbox and the default LOCKEXT)
    spoolgroup.allow(os.path.join(spool_dir, user.name) + ".lock" if saved_gid != user.gid else None)
    if os.geteuid() == 0 or os.getuid() == 0 or 0 in os.getresuid():
        raise IdentityError("could not drop root privileges", ExitCode.NOPERM)


def _has_passwd(user: User) -> bool:
    try:
        return pwd.getpwnam(user.name).pw_uid == user.uid
    except KeyError:
        return False
