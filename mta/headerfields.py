"""mta.headerfields — reading the header fields of a queued message (LF line ends).

Why one module: the receiver (mta.smtp.dataread), the delivery's header
(mta.deliveryheader) and ``postroom sendmail`` must agree on what a header field line is
and remove fields the same way.

``FIELD_NAME`` is a field's name (group 1) and its colon, blanks allowed before the
colon (RFC 5322 4.5 obs-syntax, as Postfix reads it); ``remove_fields`` drops named
fields with their continuation lines.  Pure functions.
"""

from __future__ import annotations

import re

__all__ = ["FIELD_NAME", "FIELD", "remove_fields"]

FIELD_NAME = rb"([!-9;-~]+)[ \t]*:"
FIELD = re.compile(FIELD_NAME)


def remove_fields(head: bytes, names: tuple[bytes, ...]) -> bytes:
    """The lines of ``head`` without the fields called ``names`` (lower case) and
    their continuation lines (lines starting with a blank that follow them).  Lines end
    at LF only (a CR is a byte of the line, as deliver/ reads it); a last line without
    one keeps having none."""
    kept: list[bytes] = []
    dropping = False
    lines = [line + b"\n" for line in head.split(b"\n")]
    lines[-1] = lines[-1][:-1]
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            if not dropping:
                kept.append(line)
            continue
        field = FIELD.match(line)
        dropping = field is not None and field.group(1).lower() in names
        if not dropping:
            kept.append(line)
    return b"".join(kept)
