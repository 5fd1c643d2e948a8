"""Load an rc file through an on-disk cache of its parsed AST.

What it does: ``load_rc(path)`` reads the rc file and returns its ``RcFile``.  The AST
is cached as JSON (rules.astcodec) under a key made of the file's realpath, size,
mtime_ns, inode, the SHA-256 of its text and the codec version, so an edit (even one
that puts the mtime back), a replacement or a new postroom format is a miss.  On a hit neither rules.parser nor pyparsing is imported: delivery
pays for the grammar only when an rc changed.

What it guarantees (a cache must never make a delivery run something the rc does not
say): the cache is a data format, never pickle; it is used only from a directory that
is a real directory (not a symlink) owned by the effective uid and not writable by
group or other, and only from files opened with O_NOFOLLOW that are regular, owned by
the euid and mode 0600.  Anything else - a foreign or loose directory, a foreign file,
corrupt JSON, a key mismatch - is a miss; an untrusted directory is not written to
either, an untrusted or corrupt file in a trusted directory is replaced atomically.
Failure to write the cache is logged and otherwise ignored.

Default directory: ``$XDG_CACHE_HOME/postroom/rc`` or ``~/.cache/postroom/rc``,
created 0700.

Errors: ``OSError`` when the rc file itself cannot be opened or read.
"""

from __future__ import annotations

import json
import logging
import os
import stat

try:                       # the builtin module: hashlib would load OpenSSL (~3 ms a process)
    from _sha256 import sha256
except ImportError:        # pragma: no cover - other Python builds
    from hashlib import sha256

from .ast import RcFile
from .astcodec import VERSION, AstCodecError, decode_rc, encode_rc

__all__ = ["load_rc", "default_cache_dir", "cache_path"]

log = logging.getLogger(__name__)


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(
        os.path.expanduser("~"), ".cache")
    return os.path.join(base, "postroom", "rc")


def _key(real: str, st: os.stat_result, data: bytes) -> dict:
    # the text's own digest: a file rewritten in place with its size and mtime put back
    # (cp -p, touch -r) must not run the rules it had before
    return {"realpath": real, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "inode": st.st_ino, "dev": st.st_dev, "sha256": sha256(data).hexdigest(),
            "version": VERSION}


def cache_path(cache_dir: str, key: dict) -> str:
    digest = sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return os.path.join(cache_dir, digest + ".json")


def _trusted_dir(cache_dir: str, create: bool) -> bool:
    """True if cache_dir is a real directory owned by us, not group/other-writable."""
    if create:
        try:
            os.makedirs(cache_dir, mode=0o700, exist_ok=True)
        except OSError as e:
            log.debug("cannot create rc cache %s: %s", cache_dir, e)
            return False
    try:
        st = os.lstat(cache_dir)
    except OSError:
        return False
    ok = (stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid()
          and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH))
    if not ok:
        log.warning("ignoring rc cache directory %s: not a private directory of uid %d",
                    cache_dir, os.geteuid())
    return ok


def _read_cache(path: str, key: dict) -> RcFile | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not (stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid()
                and stat.S_IMODE(st.st_mode) == 0o600):
            log.warning("ignoring rc cache file %s: not a private file", path)
            return None
        with os.fdopen(fd, "rb", closefd=False) as f:
            raw = f.read()
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        data = json.loads(raw)
        if not isinstance(data, dict) or data.get("key") != key:
            return None
        return decode_rc(data["ast"])
    except (ValueError, KeyError, TypeError, RecursionError, AstCodecError):
        log.info("rc cache file %s is corrupt; reparsing", path)
        return None


def _write_cache(cache_dir: str, path: str, key: dict, rc: RcFile) -> None:
    import tempfile        # only on a miss: it imports random, hashlib, shutil
    try:
        payload = json.dumps({"key": key, "ast": encode_rc(rc)},
                             separators=(",", ":")).encode()
        fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=".tmp-", suffix=".json")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(payload)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
    except (OSError, ValueError, RecursionError) as e:
        log.debug("cannot write rc cache %s: %s", path, e)


_MEMO: dict[tuple, RcFile] = {}
_MEMO_MAX = 256


def _memo_key(path: str, st: os.stat_result) -> tuple:
    return (path, os.geteuid(), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino,
            st.st_dev, st.st_mode, st.st_uid, VERSION)


def load_rc(path: str, *, cache_dir: str | None = None) -> RcFile:
    """Read and parse ``path`` (latin-1), through the cache.  Raises OSError if the rc
    file cannot be read.

    Within one process (the library API delivering many mails, the MTA's delivery
    workers) an rc file whose key is unchanged is not decoded again: the AST is immutable,
    so the object loaded earlier for the same file identity and effective uid is reused
    (only with the default cache directory: an explicit ``cache_dir`` always consults it)."""
    if cache_dir is None:
        # One stat(2) re-validates a memo entry.  The memo needs no realpath (an lstat per
        # path component): the file's identity and times name the contents, and the AST
        # depends only on those and on ``path`` (rc.path).  The ctime, mode and owner in
        # the key make a chmod or chown since the last successful read a miss, so a file
        # that became unreadable is opened (and refused) as on a first read.
        try:
            st = os.stat(path)
        except OSError:
            st = None
        if st is not None:
            rc = _MEMO.get(_memo_key(path, st))
            if rc is not None:
                return rc
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        memo_key = _memo_key(path, st)
        data = f.read()
        key = _key(os.path.realpath(path), st, data)
    rc = _load(path, data, key, cache_dir)
    if cache_dir is not None:
        return rc
    if len(_MEMO) >= _MEMO_MAX:
        _MEMO.clear()
    _MEMO[memo_key] = rc
    return rc


def _load(path: str, data: bytes, key: dict, cache_dir: str | None) -> RcFile:
    given = cache_dir is not None
    cdir = cache_dir if given else default_cache_dir()
    trusted = _trusted_dir(cdir, create=not given)
    cpath = cache_path(cdir, key) if trusted else ""
    if trusted:
        rc = _read_cache(cpath, key)
        if rc is not None and rc.path == path:
            return rc
    from .parser import parse_rc  # imports pyparsing: only on a miss
    rc = parse_rc(data.decode("latin-1"), path)
    if trusted:
        _write_cache(cdir, cpath, key, rc)
    return rc
