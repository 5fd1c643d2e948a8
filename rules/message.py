"""The mail as the recipe language sees it.

procmail holds one buffer: the From_ line (if any), the header, the empty line, the body.
The header is everything up to and including the first empty line (``\\n\\n``); a mail
with no ``\\n\\n`` is all header (procmail does not treat ``\\r\\n\\r\\n`` as a header end,
PROCMAIL-BEHAVIOUR 33).  The empty line is looked for as procmail's readmail() looks:
after the mail's leading empty lines, and not past a NUL byte (``header_end``).  Bytes,
never str: mail is 8-bit and must be written back unchanged.

Immutable: a filter (``f``) produces a new Message rather than editing this one.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Message:
    data: bytes

    @property
    def header_end(self) -> int:
        """Offset just past the empty line that ends the header (len(data) if none)."""
        return header_end(self.data)

    @property
    def header(self) -> bytes:
        """From_ line and header fields, ending with the empty line when there is one."""
        return self.data[: self.header_end]

    @property
    def body(self) -> bytes:
        return self.data[self.header_end :]

    @property
    def from_line(self) -> bytes | None:
        """The leading ``From `` line including its newline, or None."""
        if not self.data.startswith(b"From "):
            return None
        nl = self.data.find(b"\n")
        return self.data if nl < 0 else self.data[: nl + 1]

    def __len__(self) -> int:
        return len(self.data)


def realstart(data: bytes) -> int:
    """One past the first byte that is not a newline (procmail's realstart: its loop
    steps over that byte too)."""
    i = 0
    while i < len(data):
        c = data[i]
        i += 1
        if c != 0x0A:
            break
    return i


def header_end(data: bytes) -> int:
    """Offset just past the empty line that ends the header (len(data) if none), found
    as procmail's readmail() finds it: the search starts after the mail's leading empty
    lines (a mail that starts with blank lines still has its header), and a NUL byte
    before the empty line makes the whole mail header (procmail looks with strchr(),
    which stops there).  Every reader of the header agrees on this one offset: the
    conditions' areas, h and b, the mbox escaping and the log's abstract."""
    pos = realstart(data)
    nl = data.find(b"\n\n", pos)
    if nl < 0 or data.find(b"\0", pos, nl) >= 0:     # the NUL looked for in the header only
        return len(data)
    return nl + 2


def skip_from_line(data: bytes) -> bytes:
    """``data`` without its leading From_ line and the ``>From`` lines right after it
    (procmail's skipFrom_): forwards and Maildir files must not carry the envelope line,
    which "confuses some mailers"."""
    if not data.startswith(b"From "):
        return data
    pos = 0
    while True:
        nl = data.find(b"\n", pos)
        if nl < 0:
            return b""
        pos = nl + 1
        if pos >= len(data) or data[pos] != 0x3E:   # '>'
            return data[pos:]
