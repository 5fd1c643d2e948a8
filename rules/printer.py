"""Print an ``RcFile`` back as procmailrc text, and dump it for golden files.

What it does: ``format_rc`` lays out items one per line (two blanks of indent per block
level, flags in procmail's documentation order HBDAaEehbfcwWir), choosing for every
condition the spelling that ``rules.condparse`` reads back unchanged (a leading
backslash when a regex would otherwise look like ``!``, ``$``, ``?``, ``<``, ``>``, a
weight or ``NAME ??``, behaviour 6).  ``dump_ast`` writes a stable, readable tree with
``line:col`` spans for tests/rules/golden/*.ast.

What it guarantees: for every ``rc`` the parser produces, ``parse_rc(format_rc(rc),
p).items == rc.items`` (spans excluded).  Texts the parser can never produce (a
multi-line regex, a folder starting with ``|``) may not survive; ``format_rc`` raises
``ValueError`` for the one case it detects that cannot be printed at all (a ``Skipped``
name word that is not followed by another skipped word).
"""

from __future__ import annotations

from decimal import Decimal

from .ast import (Assignment, Block, Condition, ExpandTest, Flag, Folder, Forward, Item,
                  Pipe, ProgramTest, RcFile, Recipe, RegexTest, SizeTest, Skipped, Span,
                  VarTest)
from .condparse import is_name_char, is_name_start, parse_condition
from .errors import RcSyntaxError

__all__ = ["format_rc", "dump_ast", "format_number", "FLAG_ORDER"]

FLAG_ORDER = "HBDAaEehbfcwWir"
_INDENT = "  "
_NOSPAN = Span("<printer>", 0, 0)


def format_number(x: float) -> str:
    """A decimal without exponent that procmail's stod() reads back as ``x``."""
    if x == int(x) and abs(x) < 1e16:
        return str(int(x))
    return format(Decimal(repr(x)), "f")


def _flags(flags: frozenset[Flag]) -> str:
    letters = {f.value for f in flags}
    return "".join(c for c in FLAG_ORDER if c in letters)


def _multiline(text: str) -> str:
    """Invert getlline(): a newline after a backslash is a kept continuation; any other
    newline came from a continuation line holding only a backslash."""
    out: list[str] = []
    for i, c in enumerate(text):
        if c == "\n" and not (i > 0 and text[i - 1] == "\\"):
            out.append("\\\n")
        else:
            out.append(c)
    return "".join(out)


def _regex_text(pattern: str, area: str | None) -> str:
    """The pattern, with a leading backslash if it would otherwise be read as
    something else (behaviour 6)."""
    try:
        plain = parse_condition(pattern, _NOSPAN) if pattern == pattern.strip(" \t") \
            else None
    except RcSyntaxError:
        plain = None
    expect = RegexTest(pattern)
    if plain is not None and plain.test == expect and not plain.negate \
            and plain.weight is None:
        return pattern
    return "\\" + pattern


def format_condition(cond: Condition) -> str:
    parts: list[str] = []
    if cond.weight is not None:
        parts.append(f"{format_number(cond.weight.weight)}^"
                     f"{format_number(cond.weight.exponent)} ")
    if cond.negate:
        parts.append("! ")
    t = cond.test
    match t:
        case RegexTest(pattern=p):
            parts.append(_regex_text(p, None))
        case VarTest(name=n, pattern=p):
            parts.append(f"{n} ?? {_regex_text(p, n)}")
        case ProgramTest(command=c, area=area):
            parts.append((f"{area} ?? " if area else "") + "? " + _multiline(c))
        case SizeTest(op=op, limit=lim, area=area):
            parts.append((f"{area} ?? " if area else "") + f"{op} {lim}")
        case ExpandTest(text=x, area=area):
            parts.append((f"{area} ?? " if area else "") + "$" + x)
        case _:
            raise ValueError(f"unknown test {t!r}")
    return "* " + "".join(parts)


def _item_lines(item: Item, depth: int, out: list[str], nxt: Item | None,
                last_top: bool) -> None:
    ind = _INDENT * depth
    match item:
        case Assignment(name=n, value=v):
            out.append(f"{ind}{n}\n" if v is None else f"{ind}{n}={v}\n")
        case Skipped(text=t):
            if t and is_name_start(t[0]):
                if isinstance(nxt, Skipped) and nxt.text and not is_name_char(
                        nxt.text[0]) and nxt.text[0] not in " \t=\n#:}":
                    out.append(ind + t)  # joined with the next skipped word
                    return
                if last_top:
                    out.append(ind + t)  # a bare word at EOF is skipped
                    return
                raise ValueError(f"cannot print Skipped({t!r}) here")
            if out and not out[-1].endswith("\n"):
                out.append(t + "\n")
            else:
                out.append(ind + t + "\n")
        case Recipe():
            head = f"{ind}:0{_flags(item.flags)}"
            if item.lock is not None:
                head += ":" + (item.lock.name or "")
            out.append(head + "\n")
            for c in item.conditions:
                out.append(ind + format_condition(c) + "\n")
            a = item.action
            match a:
                case Folder(text=t):
                    out.append(f"{ind}{t}\n")
                case Forward(text=t):
                    out.append(f"{ind}! {t}\n" if t else f"{ind}!\n")
                case Pipe(command=c, capture=cap):
                    # the empty name (procmail's reading of "X =|") has one spelling
                    pre = "|" if cap is None else f"{cap}=|" if cap else "_ =|"
                    out.append(f"{ind}{pre}{_multiline(c)}\n")
                case Block(items=its):
                    out.append(f"{ind}{{\n")
                    _items(its, depth + 1, out, top=False)
                    out.append(f"{ind}}}\n")
                case _:
                    raise ValueError(f"unknown action {a!r}")
        case _:
            raise ValueError(f"unknown item {item!r}")


def _items(items: tuple[Item, ...], depth: int, out: list[str], top: bool) -> None:
    for i, it in enumerate(items):
        nxt = items[i + 1] if i + 1 < len(items) else None
        _item_lines(it, depth, out, nxt, top and nxt is None)


def format_rc(rc: RcFile) -> str:
    """The rc as text that parses back to the same items."""
    out: list[str] = []
    _items(rc.items, 0, out, top=True)
    return "".join(out)


# ------------------------------------------------------------------ golden dump


def _sp(span: Span) -> str:
    return f"{span.line}:{span.col}"


def _dump_test(c: Condition) -> str:
    t = c.test
    w = "" if c.weight is None else \
        f" weight={format_number(c.weight.weight)}^{format_number(c.weight.exponent)}"
    neg = " negate" if c.negate else ""
    match t:
        case RegexTest(pattern=p):
            body = f"Regex {p!r}"
        case VarTest(name=n, pattern=p):
            body = f"Var {n} {p!r}"
        case ProgramTest(command=cmd, area=area):
            body = f"Program {cmd!r}" + (f" area={area}" if area else "")
        case SizeTest(op=op, limit=lim, area=area):
            body = f"Size {op} {lim}" + (f" area={area}" if area else "")
        case ExpandTest(text=x, area=area):
            body = f"Expand {x!r}" + (f" area={area}" if area else "")
        case _:
            body = repr(t)
    return f"Condition {body}{neg}{w}"


def _dump_items(items: tuple[Item, ...], depth: int, out: list[str]) -> None:
    ind = _INDENT * depth
    for it in items:
        match it:
            case Assignment(name=n, value=v):
                val = "(unset)" if v is None else repr(v)
                out.append(f"{ind}{_sp(it.span)} Assignment {n} = {val}")
            case Skipped(text=t):
                out.append(f"{ind}{_sp(it.span)} Skipped {t!r}")
            case Recipe():
                lock = "none" if it.lock is None else (
                    "implicit" if it.lock.name is None else repr(it.lock.name))
                out.append(f"{ind}{_sp(it.span)} Recipe flags={_flags(it.flags) or '-'}"
                           f" lock={lock}")
                for c in it.conditions:
                    out.append(f"{ind}{_INDENT}{_sp(c.span)} {_dump_test(c)}")
                a = it.action
                match a:
                    case Folder(text=t):
                        out.append(f"{ind}{_INDENT}{_sp(a.span)} Folder {t!r}")
                    case Forward(text=t):
                        out.append(f"{ind}{_INDENT}{_sp(a.span)} Forward {t!r}")
                    case Pipe(command=c, capture=cap):
                        extra = "" if cap is None else f" capture={cap}" if cap else " capture=''"
                        out.append(f"{ind}{_INDENT}{_sp(a.span)} Pipe {c!r}{extra}")
                    case Block(items=its):
                        out.append(f"{ind}{_INDENT}{_sp(a.span)} Block")
                        _dump_items(its, depth + 2, out)


def dump_ast(rc: RcFile) -> str:
    """A stable, line-oriented dump (spans as line:col) for golden files."""
    out = [f"RcFile {rc.path}"]
    _dump_items(rc.items, 1, out)
    if rc.diagnostics:
        out.append("diagnostics:")
        for d in rc.diagnostics:
            out.append(f"{_INDENT}{_sp(d.span)} {d.severity}: {d.message}")
    return "\n".join(out) + "\n"
