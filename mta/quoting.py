"""mta.quoting — walking a string outside its double-quoted parts.

Why: RFC 5321 paths (``<"a>b"@host>``) and aliases(5) lines (``"|prog, #x"``) give
their delimiters meaning only outside double quotes, where a backslash escapes the next
character; the SMTP command parser and the map parser must agree on that reading.
"""

from __future__ import annotations

from collections.abc import Iterator

__all__ = ["leading_quoted", "unquoted"]


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


def leading_quoted(text: str) -> tuple[str, str] | None:
    """The quoted string that starts ``text``, its backslash escapes resolved, and what
    follows its closing quote; None when ``text`` does not start with a quote or the
    quote is never closed."""
    if not text.startswith('"'):
        return None
    out: list[str] = []
    escaped = False
    for i, c in enumerate(text[1:], start=1):
        if escaped:
            out.append(c)
            escaped = False
        elif c == "\\":
            escaped = True
        elif c == '"':
            return "".join(out), text[i + 1:]
        else:
            out.append(c)
    return None
