"""The search areas a condition is matched against (procmailrc(5), flags H and B).

What it does: ``search_area(message, header=..., body=...)`` returns the bytes procmail's
regex engine sees for a recipe:

  * header area (``H``, the default): from the From_ line, if any, through the empty
    line that ends the header - so it ends in ``\\n\\n`` (PROCMAIL-BEHAVIOUR 3);
  * body area (``B``): everything after that empty line;
  * both (``HB``): the whole mail.
A mail without ``\\n\\n`` is all header; ``\\r\\n\\r\\n`` is not a header end (item 33).
The empty line is found as procmail's readmail() finds it (rules.message.header_end):
after the mail's leading empty lines, and not past a NUL byte.

Whenever the header is part of the area, folded header fields are joined the way
procmail's concon(' ') does it: the newline in front of a continuation line (one that
starts with a blank or a tab) reads as a single space, and the continuation keeps its
own leading blanks (item 4: ``Subject: a\\n\\tb`` matches ``a \\tb``).  The Message
itself is never changed.

Guarantees: pure, linear in the size of the mail; raises nothing.
"""

from __future__ import annotations

from .message import Message, realstart


def join_folds(header: bytes) -> bytes:
    """The header with every newline before a continuation line (one starting with a
    blank or a tab) turned into a space.  Two plain replaces, no ``re`` import on the
    delivery path; the two patterns cannot overlap (a replacement has no newline)."""
    return header.replace(b"\n ", b"  ").replace(b"\n\t", b" \t")


def search_area(message: Message, *, header: bool, body: bool) -> bytes:
    """The text a condition is matched against: header area (From_ line through the
    empty line ending the header, with folded header lines joined as behaviour 4 says),
    body area, or both (HB = the whole mail)."""
    if header:
        end = message.header_end
        data = message.data
        head = data[:end]
        # The newline of the empty line ending the header is followed by the body: that
        # one is not a fold, so only look inside the header proper.  procmail's
        # readmail() marks folds from its realstart (leading empty lines are no folds)
        # with strchr(), which stops at a NUL: folds after one stay as they are.
        start = realstart(data)
        stop = len(head) - 1 if head.endswith(b"\n\n") else len(head)
        stop = max(stop, start)
        nul = data.find(b"\0", start, stop)
        if nul >= 0:
            stop = nul
        joined = head[:start] + join_folds(head[start:stop]) + head[stop:]
        return joined + data[end:] if body else joined
    if body:
        return message.body
    return b""
