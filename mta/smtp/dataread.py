"""mta.smtp.dataread — bounded line reading and streaming DATA (RFC 5321 4.1.1.4, 4.5.2).

``LineBuffer`` splits what a connection received into command lines of bounded length,
so a client cannot make the server buffer an endless line (the session's deadlines keep
it from holding a connection open by dripping one byte at a time).

``DataReceiver`` turns the DATA byte stream into message bytes without ever holding more
than one read chunk plus one text line: it removes dot-stuffing, converts CRLF to LF (the
queue's format), counts the size and the Received: headers, notes the Message-ID, and
stops writing (but keeps reading) once a limit is exceeded, so the error reply is sent at
the end of DATA as RFC 5321 requires.

Smuggling guarantee (CVE-2023-51764 and friends): the only end of data is
``<CRLF>.<CRLF>`` — a line that is exactly ``.`` CR LF, following a line that ended in
CR LF (or the 354 reply).  ``\\n.\\n``, ``\\r.\\n``, ``\\n.\\r\\n``, ``\\r\\n.\\n`` are message
content.  A bare LF ends a content *line* (Postfix's smtpd_forbid_bare_newline=normalize),
so the stored message has only LF line ends and a downstream SMTP hop re-encodes it with
CRLF and dot-stuffing; a bare CR stays inside its line.

Errors: ``LineTooLong`` is returned (not raised) for an over-long command line, which has
been consumed up to its LF.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from .. import reply as R
from ..headerfields import FIELD
from ..reply import Reply

_RECEIVED = re.compile(rb"^received[ \t]*:", re.IGNORECASE)
_MESSAGE_ID = re.compile(rb"^message-id[ \t]*:[ \t]*(.*?)[ \t]*\r?\n?$", re.IGNORECASE | re.DOTALL)


class LineTooLong:
    """Sentinel result of ``LineBuffer.next_line`` for a line over the limit (consumed)."""

    def __repr__(self) -> str:
        return "LINE_TOO_LONG"


LINE_TOO_LONG = LineTooLong()


class LineBuffer:
    """Bounded command-line splitter over the bytes a connection has received so far.

    ``feed`` appends what arrived; ``next_line`` hands out one line including its LF, or
    LINE_TOO_LONG once for a line over ``max_len`` (consumed up to its LF without being
    buffered: a client cannot make the server hold an endless line), or None when no
    complete line is buffered yet."""

    def __init__(self, max_len: int) -> None:
        self._buf = bytearray()
        self._max_len = max_len
        self._skipping = False            # discarding an over-long line up to its LF
        self._too_long = False            # the buffer's first line stands for such a line

    def feed(self, data: bytes) -> None:
        if self._skipping:
            nl = data.find(b"\n")
            if nl < 0:
                return
            self._skipping, self._too_long = False, True
            self._buf += b"\n"           # the buffer was empty: a one-byte stand-in line
            data = data[nl + 1:]
        self._buf += data

    def next_line(self) -> bytes | LineTooLong | None:
        nl = self._buf.find(b"\n")
        if nl < 0:
            if len(self._buf) > self._max_len:
                self._skipping = True
                self._buf.clear()
            return None
        line = bytes(self._buf[:nl + 1])
        del self._buf[:nl + 1]
        if self._too_long or len(line) > self._max_len:
            self._too_long = False
            return LINE_TOO_LONG
        return line

    def pending(self) -> bool:
        """Whether anything arrived beyond the lines handed out."""
        return bool(self._buf) or self._skipping

    def take(self) -> bytes:
        """Everything buffered (the start of DATA's content)."""
        data = bytes(self._buf)
        self._buf.clear()
        return data

    def push_back(self, data: bytes) -> None:
        """Bytes that followed the end of DATA: the next commands (pipelining)."""
        self._buf[0:0] = data


class DataReceiver:
    """Incremental DATA decoder; ``feed`` chunks until it returns the end offset.

    ``sink`` receives message bytes (LF line ends, unstuffed) while no limit has been hit.
    After the end, ``error`` is None or the Reply to send; ``size`` counts octets as
    transmitted after unstuffing (CRLF = 2, RFC 1870's measure).
    """

    def __init__(self, sink: Callable[[bytes], None], *, max_size: int, max_text_line: int,
                 max_received: int, add_if_missing: dict[bytes, bytes] | None = None) -> None:
        self._sink = sink
        self._max_size = max_size
        self._max_line = max_text_line
        self._max_received = max_received
        self._partial = b""
        self._skipping = False       # inside an over-long line, discarding to its LF
        self._skip_last = b""        # last byte seen while skipping (was it CR?)
        self._prev_crlf = True       # the previous line ended in CRLF (354 counts as one)
        self._in_headers = True
        self._first_line = True
        self.size = 0
        self.received_count = 0
        self.message_id: str | None = None
        # lower-case field name -> its whole line, put at the end of the header when the
        # message has no such field (Date:, From:, Message-ID: of a local client's mail)
        self._add = dict(add_if_missing or {})
        self.bare_lf = 0
        self.error: Reply | None = None
        self.done = False

    def _fail(self, reply: Reply) -> None:
        if self.error is None:
            self.error = reply

    def feed(self, data: bytes) -> int | None:
        """Consume ``data``; return the offset just past ``.CRLF`` when DATA ended."""
        if self.done:
            raise RuntimeError("DATA already ended")
        base = len(self._partial)
        buf = self._partial + data if self._partial else data
        self._partial = b""
        pos = 0
        if self._skipping:
            nl = buf.find(b"\n")
            if nl < 0:
                self._skip_last = buf[-1:] or self._skip_last
                return None
            before = buf[nl - 1:nl] if nl > 0 else self._skip_last
            self._prev_crlf = before == b"\r"
            self._skipping = False
            pos = nl + 1
        out: list[bytes] = []
        end = self._lines(buf, pos, out)
        if out and self.error is None:
            self._sink(b"".join(out))
        if end is not None:
            self.done = True
            return end - base
        return None

    def _lines(self, buf: bytes, pos: int, out: list[bytes]) -> int | None:
        n = len(buf)
        while pos < n:
            # Fast path for the body: a run of complete lines with no line starting with
            # "." and none too long needs no per-line work (C-speed scans only).
            if not self._in_headers and buf[pos:pos + 1] != b".":
                last = buf.rfind(b"\n", pos)
                if last < 0:
                    break
                # up to the first line that starts with "." (stuffing, or the end of
                # DATA), which the per-line path below then takes
                dot = buf.find(b"\n.", pos, last)
                if dot >= 0:
                    last = dot
                region = buf[pos:last + 1]
                if not _has_long_line(region, self._max_line):
                    self._account(len(region))
                    if self.error is None:
                        crlf = region.count(b"\r\n")
                        self.bare_lf += region.count(b"\n") - crlf
                        out.append(region.replace(b"\r\n", b"\n") if crlf else region)
                    self._prev_crlf = region.endswith(b"\r\n")
                    pos = last + 1
                    continue
            nl = buf.find(b"\n", pos)
            if nl < 0:
                break
            line = buf[pos:nl + 1]
            pos = nl + 1
            if line == b".\r\n" and self._prev_crlf:
                if self._in_headers:       # all of it was header
                    self._end_of_header(out)
                return pos
            self._line(line, out)
        rest = buf[pos:]
        if len(rest) >= self._max_line:     # no LF yet and already too long
            self._fail(R.TEXT_LINE_TOO_LONG)
            self._skipping, self._skip_last = True, rest[-1:]
        else:
            self._partial = rest
        return None

    def _line(self, line: bytes, out: list[bytes]) -> None:
        self._prev_crlf = line.endswith(b"\r\n")
        if len(line) > self._max_line:
            self._fail(R.TEXT_LINE_TOO_LONG)
        if line[:1] == b"." and line != b".\n" and line != b".\r\n":
            # RFC 5321 4.5.2 transparency: "a period and other characters" loses the
            # period; a lone period that does not end the data (after a bare LF, or
            # ended by one: no smuggling) is kept as it came
            line = line[1:]
        self._account(len(line))
        if self._prev_crlf:
            line = line[:-2] + b"\n"
        else:
            self.bare_lf += 1
        if self._in_headers:
            # a field or a continuation line: anything else ends the header (Postfix's
            # cleanup; mta.deliveryheader puts the blank line there)
            field = FIELD.match(line)
            first, self._first_line = self._first_line, False
            if first and line.startswith(b"From "):
                pass          # an mbox From_ line: X-Mailbox-Line: at delivery, a field
            elif field is None and line[:1] not in (b" ", b"\t"):
                self._end_of_header(out)           # an empty line, or one that is no field
            elif field is not None:
                if self._add:
                    self._add.pop(field.group(1).lower(), None)
                if _RECEIVED.match(line):
                    self.received_count += 1
                    if self.received_count > self._max_received:
                        self._fail(R.LOOP)
                elif self.message_id is None:
                    m = _MESSAGE_ID.match(line)
                    if m:
                        self.message_id = m.group(1).decode("utf-8", "replace")
        if self.error is None:
            out.append(line)

    def _end_of_header(self, out: list[bytes]) -> None:
        """The header ends before the line in hand: the fields still missing go here."""
        self._in_headers = False
        if not self._add:
            return
        if b"message-id" in self._add and self.message_id is None:
            m = _MESSAGE_ID.match(self._add[b"message-id"])
            self.message_id = m.group(1).decode("utf-8", "replace") if m else None
        if self.error is None:
            out.append(b"".join(self._add.values()))
        self._add = {}

    def _account(self, n: int) -> None:
        self.size += n
        if self.size > self._max_size:
            self._fail(R.MESSAGE_TOO_BIG)


def _has_long_line(region: bytes, max_line: int) -> bool:
    """Whether some line of ``region`` (complete lines) is longer than ``max_line``."""
    if len(region) <= max_line:
        return False
    # split + map(len) runs in C; a regex like [^\n]{1000} rescans every start position.
    return max(map(len, region.split(b"\n"))) + 1 > max_line
