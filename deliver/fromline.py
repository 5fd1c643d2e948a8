"""deliver.fromline — the mbox From_ line, made and mended exactly as procmail 3.22 does.

``make_from_line(sender)`` gives ``From sender  Mon Jul  3 10:00:00 2023\\n``: two blanks and
ctime(3) in the local time zone (TZ applies).  ``prepare_message`` turns the bytes procmail
reads on stdin into the buffer it delivers (PROCMAIL-BEHAVIOUR 26, procmail's makeFrom()):

* no ``-f`` (``sender=None``) and not ``-d``: the input is kept byte for byte, leading empty
  lines and an existing From_ line included, and no From_ line is added;
* ``-f x``: leading empty lines are dropped and an existing From_ line is replaced by
  ``From x  <now>``; one is added when there is none;
* ``-f -`` (``refresh_date=True``): the address of an existing From_ line is kept and only its
  date refreshed; without one, ``From <invoker>  <now>`` is added;
* ``-d`` without ``-f`` (``delivery_mode=True``): an existing From_ line is kept, a missing
  one becomes ``From <invoker>  <now>``;
* a first line longer than LINEBUF that starts with ``From `` is dropped (procmail's
  "drop long From_ line") and a new one made;
* ``>From`` lines after the From_ line are ordinary header lines and are kept;
* ``-d`` run by a user procmail does not trust (``untrusted``: not root nor one of its
  TRUSTED_IDS): a From_ line that came from the input or from ``-f`` gets procmail's
  ``>From <invoker>  <now>`` after it, saying who really delivered the mail, and ``-o``
  replaces the From_ line by ``From <invoker>  <now>`` (without the mark).

Content-Length is rewritten as procmail's readmail() does (see deliver.mboxformat), because
procmail changes it in the one buffer every destination is written from.  Pure functions:
no I/O, no errors beyond TypeError for nonsense arguments.
"""

from __future__ import annotations

import os
import pwd
import time

from .mboxformat import rewrite_content_length

FROM_ = b"From "
DEFAULT_LINEBUF = 2048


def _text(value: str | bytes) -> bytes:
    """Command-line text as bytes: str is latin-1 (1:1 with the bytes procmail saw)."""
    return value if isinstance(value, bytes) else value.encode("latin-1")


def ctime_stamp(when: float | None = None) -> bytes:
    """ctime(3) without its newline: ``Mon Jul  3 10:00:00 2023`` in local time (TZ)."""
    return time.ctime(time.time() if when is None else when).encode("ascii")


def make_from_line(sender: str | bytes, when: float | None = None) -> bytes:
    """``From <sender>  <ctime>\\n`` — the two blanks are procmail's (from.c ctime2buf2)."""
    return FROM_ + _text(sender) + b"  " + ctime_stamp(when) + b"\n"


def _skip_blanks(line: bytes, i: int) -> int:
    while i < len(line) and line[i] in b" \t":
        i += 1
    return i


def find_timestamp(line: bytes) -> int:
    """Offset in a From_ line (newline included) where its address ends and the date begins.

    A faithful port of procmail's findtstamp(): look for ``hh:mm:ss`` from the end of the
    line backwards, then step back over the blanks in front of the date.  ``-f -`` keeps
    ``line[:offset]`` and appends a fresh date.
    """
    start = len(FROM_)
    end = len(line) - 25                       # ctime(3) is 24 characters plus "\n"

    def at(i: int) -> int:
        return line[i] if 0 <= i < len(line) else 0

    if at(start) == 0x20:
        start += 1
        if start == end:
            return start - 1
        if at(start) == 0x20:
            start += 1
            if start == end:
                return start - 1
    start = _skip_blanks(line, start)
    while start < len(line) and line[start] not in b" \t\n":
        start += 1                             # jump over the address
    if _skip_blanks(line, start) >= end:
        return start                           # too short for a timestamp: stop here
    while True:                                # search for the ":..:" of hh:mm:ss
        if at(end + 13) == 0x3A and at(end + 16) == 0x3A:
            break
        end -= 1
        if not end > start:
            break
    spc = False
    while True:                                # skip the blanks left of the date
        if not end > start:
            end -= 1
            break
        end -= 1
        if at(end) in (0x20, 0x09):
            spc = True
            continue
        if not spc:
            continue
        break
    return end + 1


# procmail's config.h TRUSTED_IDS: users whose -f and From_ lines -d takes as they are
TRUSTED_IDS = frozenset({"root", "daemon", "uucp", "mail", "x400", "network", "list",
                         "slist", "lists", "news"})


def invoker_name() -> str:
    """The login name of the real uid (procmail's invoker), or the uid itself."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def _default_invoker() -> bytes:
    return invoker_name().encode("latin-1")


def prepare_message(
    raw: bytes,
    *,
    sender: str | bytes | None,
    refresh_date: bool = False,
    when: float | None = None,
    delivery_mode: bool = False,
    invoker: str | bytes | None = None,
    linebuf: int = DEFAULT_LINEBUF,
    berkeley: bool = False,
    untrusted: str | bytes | None = None,
    override: bool = False,
) -> bytes:
    """The mail as procmail holds it after reading ``raw`` (see the module docstring).

    ``sender`` is ``-f``'s argument (``"-"`` is accepted as a synonym of refresh_date);
    ``invoker`` names the user for From_ lines procmail makes up itself (default: the
    login name of the real uid).  ``untrusted``: the invoker's name when ``-d`` was
    given by a user procmail does not trust (module docstring); ``override`` is ``-o``.
    """
    if untrusted is not None and override:
        sender, refresh_date, untrusted = untrusted, False, None
    marked = untrusted is not None and sender is not None
    if sender in ("-", b"-"):
        sender, refresh_date = None, True
    if sender is None and not refresh_date and not delivery_mode:
        return rewrite_content_length(raw, berkeley=berkeley)   # procmail does not even peek
    who = _text(sender) if sender is not None else _text(invoker) if invoker else _default_invoker()
    stamp = b"  " + ctime_stamp(when) + b"\n"
    n = len(raw)
    i = 0
    while i < n and raw[i] == 0x0A:            # leading empty lines are dropped
        i += 1
    keep = i                                   # offsets, not slices: a 50 MB mail is
    new_from = FROM_ + who + stamp             # copied once, by the join below
    if raw.startswith(FROM_, i):
        limit = linebuf - 2
        nl = raw.find(b"\n", i, i + limit if limit >= 0 else n + limit)
        if nl < 0:                              # "drop long From_ line"
            nl = raw.find(b"\n", i)
            keep = n if nl < 0 else nl + 1
        else:
            line, keep = raw[i : nl + 1], nl + 1
            if refresh_date:
                new_from = line[: find_timestamp(line)] + stamp
            elif sender is None:
                new_from = line                 # -d without -f: keep it verbatim
            marked = untrusted is not None
    if marked:
        assert untrusted is not None
        new_from += b">From " + _text(untrusted) + stamp
    data = b"".join((new_from, memoryview(raw)[keep:]))
    return rewrite_content_length(data, berkeley=berkeley)
