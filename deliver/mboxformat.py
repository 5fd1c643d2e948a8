"""deliver.mboxformat — the bytes procmail writes for one message, per destination kind.

``mbox_bytes(message, raw=False)`` is what procmail appends to a plain file (PROCMAIL-BEHAVIOUR
27-29, procmail's readmail()/getchunk()/dump()):

* every line that begins exactly with ``From `` gets one ``>`` — in the header (not the first
  line) and in the body; ``>From``, `` From``, ``From:`` and ``FROM `` are left alone; the
  search stops at the first NUL byte (procmail uses strstr), separately in header and body;
* a ``Content-Length:`` header field is rewritten in place to the real body length,
  right-aligned in the field's original width (``Content-Length: 5`` may become
  ``Content-Length:39``; a value that does not fit leaves the field as 9s), and the body
  part it covers is not escaped;
* a message that does not end with an empty line gets one ``\\n`` — a message without any
  final newline gets exactly one, so the next From_ line follows without a blank line.

With ``raw=True`` (the ``r`` flag) neither escaping nor the final newline is applied.  The
Content-Length rewrite is *not* an mbox matter in procmail: it edits the one buffer that
every destination is written from, even with ``r``.  So ``rewrite_content_length`` is applied
by every function here (it is idempotent) and by deliver.fromline.prepare_message.

``program_bytes`` is the same without escaping: pipes, forwards, MH and directory folders.
``maildir_bytes`` drops the From_ line and its ``>`` continuation lines and adds nothing.

CRLF input is not special (``\\r\\n\\r\\n`` does not end the header); 8-bit bytes pass
unchanged.  Pure functions, no errors.
"""

from __future__ import annotations

from rules.message import header_end, skip_from_line  # noqa: F401 - re-exported for deliver/
from rules.message import realstart as _realstart

_FROM_NL = b"\nFrom "
_CL = b"content-length:"
_NUM_SIZE = 27   # procmail's charNUM(num, long): at most 26 digits are written in the field


def _find_content_length(data: bytes, stop: int) -> int:
    """End offset of the first ``Content-Length:`` (any case) that starts a line and lies
    wholly before ``stop``; -1 when none.  ASCII case-folding as re.IGNORECASE does on
    bytes, on a lowered copy of the header only (a regex with a look-behind tried at every
    offset cost tens of microseconds per call)."""
    head = data[:stop].lower()
    if head.startswith(_CL):
        return len(_CL)
    at = head.find(b"\n" + _CL)
    return -1 if at < 0 else at + 1 + len(_CL)


def _content_length(data: bytes, body: int, berkeley: bool = False) -> tuple[bytes, int | None]:
    """(data with Content-Length rewritten, bytes of body it covers) or (data, None).
    ``berkeley`` (procmail -Y): Content-Length means nothing, as in traditional mboxes."""
    start = -1 if berkeley else _find_content_length(data, body)
    if start < 0:
        return data, None
    end = start
    while end < len(data) and data[end] not in (0x0A, 0x00):
        end += 1
    width = end - start
    places = min(width, _NUM_SIZE - 1)
    cntlen = len(data) - body
    if len(data) > 1 and data[-2] == 0x0A:     # procmail's "no phantom '\n'?" quirk
        cntlen -= 1
    cntlen = max(cntlen, 0)
    digits = str(cntlen)
    if len(digits) <= places:
        field, covered = digits.rjust(places).encode("ascii"), cntlen
    else:
        field, covered = b"9" * places, int("9" * places) if places else 0
    field += b" " * (width - places)
    view = memoryview(data)        # one copy of a 50 MB mail, not three (slices, then +)
    return b"".join((view[:start], field, view[end:])), covered


def rewrite_content_length(data: bytes, *, berkeley: bool = False) -> bytes:
    """The message with its Content-Length value set to the real body length (28)."""
    return _content_length(data, header_end(data), berkeley)[0]


def _escape_points(data: bytes, start: int, stop: int) -> list[int]:
    """Offsets of the newlines in ``\\nFrom `` lying wholly in [start, stop) before any NUL."""
    nul = data.find(b"\0", start, stop)
    if nul >= 0:
        stop = nul
    # Search for "\nF" and check the rest: a needle ending in a blank is slow to find
    # (blanks are everywhere in text: 20 against 9 us over a 14 KB mail, measured).
    points = []
    last = stop - len(_FROM_NL)
    pos = data.find(b"\nF", start, stop)
    while 0 <= pos <= last:
        if data.startswith(b"rom ", pos + 2):
            points.append(pos)
        pos = data.find(b"\nF", pos + 2, stop)
    return points


def with_final_newline(data: bytes) -> bytes:
    """Rule 29: end with an empty line; no final newline at all gets exactly one."""
    return data if data.endswith(b"\n\n") else data + b"\n"


def mbox_bytes(message: bytes, *, raw: bool, berkeley: bool = False) -> bytes:
    """What procmail appends to an mbox for ``message`` (escaping, Content-Length, newline)."""
    body = header_end(message)
    data, covered = _content_length(message, body, berkeley)
    if raw:
        return data
    restbody = body + covered if covered is not None else max(body - 1, 0)
    points = _escape_points(data, _realstart(data), body) + _escape_points(data, restbody, len(data))
    return _escaped(data, points)


def _escaped(data: bytes, points: list[int]) -> bytes:
    """``data`` with ">" after each newline in ``points`` and procmail's final newline
    when it does not end with an empty line (it looks at the *unescaped* last two
    bytes; escaping never changes them)."""
    newline = not data.endswith(b"\n\n")
    if not points and not newline:
        return data
    # One copy of the mail at most: views into it, the ">" and the final newline are
    # joined once (a 50 MB mail must not be copied for escaping and again for the "\n").
    view = memoryview(data)
    parts: list[bytes | memoryview] = []
    prev = 0
    for p in points:
        parts.append(view[prev : p + 1])
        parts.append(b">")
        prev = p + 1
    parts.append(view[prev:])
    if newline:
        parts.append(b"\n")
    return b"".join(parts)


def mbox_body_bytes(body: bytes, mail: bytes, *, raw: bool, berkeley: bool = False) -> bytes:
    """What procmail appends to an mbox for the body alone (a ``b`` recipe): its one
    scan for "From " lines runs over the body from its first byte, past the part the
    mail's Content-Length covers, up to a NUL (getchunk(): the body's own first line
    has no newline before it in that scan); the final-newline rule as for a whole mail."""
    if raw:
        return body
    start = 0
    if not berkeley:
        covered = _content_length(mail, header_end(mail))[1]
        if covered is not None:
            start = covered
    return _escaped(body, _escape_points(body, start, len(body)))


def program_bytes(message: bytes, *, berkeley: bool = False) -> bytes:
    """What a pipe, forward, MH or directory folder receives: rule 29, no escaping."""
    return with_final_newline(rewrite_content_length(message, berkeley=berkeley))


def maildir_bytes(message: bytes, *, berkeley: bool = False) -> bytes:
    """What a Maildir file holds: no From_ line, nothing added (30)."""
    return skip_from_line(rewrite_content_length(message, berkeley=berkeley))
