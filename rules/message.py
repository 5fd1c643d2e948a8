"""The mail as the recipe language sees it.

procmail holds one buffer: the From_ line (if any), the header, the empty line, the body.
The header is everything up to and including the first empty line (``\\n\\n``); a mail
with no ``\\n\\n`` is all header (procmail does not treat ``\\r\\n\\r\\n`` as a header end,
PROCMAIL-BEHAVIOUR 33).  Bytes, never str: mail is 8-bit and must be written back
unchanged.

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
        end = self.data.find(b"\n\n")
        return len(self.data) if end < 0 else end + 2

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
