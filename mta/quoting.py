"""mta.quoting — walking a string outside its double-quoted parts.

Why: RFC 5321 paths (``<"a>b"@host>``) and aliases(5) lines (``"|prog, #x"``) give
their delimiters meaning only outside double quotes, where a backslash escapes the next
character; the SMTP command parser and the map parser must agree on that reading.
"""

from __future__ import annotations

from collections.abc import Iterator

__all__ = ["unquoted"]


def unquoted(text: str) -> Iterator[tuple[int, str]]:
    """(index, character) of every character of ``text`` outside double quotes (the
    quotes themselves and what they enclose are skipped)."""
    quoted = escaped = False
    for i, c in enumerate(text):
        if escaped:
            escaped = False
        elif c == "\\" and quoted:
            escaped = True
        elif c == '"':
            quoted = not quoted
        elif not quoted:
            yield i, c
