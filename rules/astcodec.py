"""Encode an ``RcFile`` as JSON-safe data and back (the on-disk cache format).

What it does: ``encode_rc`` turns the AST into nested dicts/lists of str, int, float,
bool and None, tagged with ``FORMAT`` and ``VERSION``; ``decode_rc`` rebuilds it.
Spans and diagnostics are kept.  This is a data format, never pickle: decoding can only
ever build AST nodes, whatever the input.

Errors: ``decode_rc`` raises ``AstCodecError`` (a ``RulesError``) for anything that is
not exactly what ``encode_rc`` writes: wrong version, unknown tag, wrong type.
"""

from __future__ import annotations

from typing import Any

from .ast import (Assignment, Block, Condition, Diagnostic, ExpandTest, Flag, Folder,
                  Forward, Item, LockSpec, Pipe, ProgramTest, RcFile, Recipe, RegexTest,
                  SizeTest, Skipped, Span, VarTest, Weight)
from .errors import RulesError

__all__ = ["encode_rc", "decode_rc", "AstCodecError", "FORMAT", "VERSION"]

FORMAT = "postroom-rc-ast"
VERSION = 12         # 2: SizeTest.text; 3: Block.end; 4: a bare "|" refused (the parse changed:
                     # a cached AST of an older parser must not be used); 5: Condition.width;
                     # 6: f on a VAR=| capture warned; 7: E and a dropped beside e;
                     # 8: a c block's lock kept, not warned; 9: Pipe.width;
                     # 10: "NAME = |" captures into NAME without its last letter;
                     # 11: every word after a lock name is Skipped;
                     # 12: ProgramTest.area, ExpandTest.area (``VAR ?? ?``, ``VAR ?? $``)


class AstCodecError(RulesError):
    """The data is not an encoded RcFile of this VERSION."""


def _span(s: Span) -> list:
    return [s.path, s.line, s.col]


def _test(t) -> dict:
    match t:
        case RegexTest(pattern=p):
            return {"t": "regex", "pattern": p}
        case VarTest(name=n, pattern=p):
            return {"t": "var", "name": n, "pattern": p}
        case ProgramTest(command=c, area=a):
            return {"t": "program", "command": c, "area": a}
        case SizeTest(op=op, limit=lim, area=a, text=x):
            return {"t": "size", "op": op, "limit": lim, "area": a, "text": x}
        case ExpandTest(text=x, area=a):
            return {"t": "expand", "text": x, "area": a}
    raise AstCodecError(f"unknown test {t!r}")


def _action(a) -> dict:
    match a:
        case Folder(text=t):
            return {"t": "folder", "text": t, "span": _span(a.span)}
        case Pipe(command=c, capture=cap):
            return {"t": "pipe", "command": c, "capture": cap, "span": _span(a.span),
                    "width": a.width}
        case Forward(text=t):
            return {"t": "forward", "text": t, "span": _span(a.span)}
        case Block(items=its, end=end):
            return {"t": "block", "items": [_item(i) for i in its], "span": _span(a.span),
                    "end": None if end is None else _span(end)}
    raise AstCodecError(f"unknown action {a!r}")


def _item(it: Item) -> dict:
    match it:
        case Assignment(name=n, value=v):
            return {"t": "assign", "name": n, "value": v, "span": _span(it.span)}
        case Skipped(text=t):
            return {"t": "skipped", "text": t, "span": _span(it.span)}
        case Recipe():
            return {
                "t": "recipe",
                "flags": sorted(f.value for f in it.flags),
                "lock": None if it.lock is None else {"name": it.lock.name},
                "conditions": [{
                    "test": _test(c.test), "negate": c.negate,
                    "weight": None if c.weight is None else [c.weight.weight,
                                                             c.weight.exponent],
                    "span": _span(c.span), "width": c.width} for c in it.conditions],
                "action": _action(it.action),
                "span": _span(it.span),
            }
    raise AstCodecError(f"unknown item {it!r}")


def encode_rc(rc: RcFile) -> dict:
    return {
        "format": FORMAT, "version": VERSION, "path": rc.path,
        "items": [_item(i) for i in rc.items],
        "diagnostics": [{"span": _span(d.span), "severity": d.severity,
                         "message": d.message} for d in rc.diagnostics],
    }


# ------------------------------------------------------------------ decoding


def _get(d: Any, key: str, *types: type) -> Any:
    if not isinstance(d, dict) or key not in d:
        raise AstCodecError(f"missing {key!r}")
    v = d[key]
    if types and not (isinstance(v, types) and not (isinstance(v, bool)
                                                    and bool not in types)):
        raise AstCodecError(f"{key!r} has the wrong type")
    return v


def _str_or_none(d: Any, key: str) -> str | None:
    v = _get(d, key)
    if v is not None and not isinstance(v, str):
        raise AstCodecError(f"{key!r} must be a string or null")
    return v


def _dspan(v: Any) -> Span:
    if not (isinstance(v, list) and len(v) == 3 and isinstance(v[0], str)
            and all(isinstance(x, int) and not isinstance(x, bool) for x in v[1:])):
        raise AstCodecError("bad span")
    return Span(v[0], v[1], v[2])


def _num(v: Any) -> float:
    # a weight may be inf or nan (glibc's strtod reads them: rules.condparse); json
    # writes them as Infinity / NaN and reads them back
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise AstCodecError("bad number")
    return float(v)


def _dtest(d: Any):
    t = _get(d, "t", str)
    if t == "regex":
        return RegexTest(_get(d, "pattern", str))
    if t == "var":
        return VarTest(_get(d, "name", str), _get(d, "pattern", str))
    if t == "program":
        return ProgramTest(_get(d, "command", str), _str_or_none(d, "area"))
    if t == "size":
        op = _get(d, "op", str)
        if op not in ("<", ">"):
            raise AstCodecError("bad size operator")
        return SizeTest(op, _get(d, "limit", int), _str_or_none(d, "area"), _str_or_none(d, "text"))
    if t == "expand":
        return ExpandTest(_get(d, "text", str), _str_or_none(d, "area"))
    raise AstCodecError(f"unknown test tag {t!r}")


def _daction(d: Any, depth: int):
    t = _get(d, "t", str)
    sp = _dspan(_get(d, "span"))
    if t == "folder":
        return Folder(_get(d, "text", str), sp)
    if t == "forward":
        return Forward(_get(d, "text", str), sp)
    if t == "pipe":
        return Pipe(_get(d, "command", str), _str_or_none(d, "capture"), sp, _get(d, "width", int))
    if t == "block":
        end = _get(d, "end")
        return Block(tuple(_ditem(i, depth + 1) for i in _get(d, "items", list)), sp,
                     None if end is None else _dspan(end))
    raise AstCodecError(f"unknown action tag {t!r}")


def _ditem(d: Any, depth: int = 0) -> Item:
    if depth > 200:
        raise AstCodecError("blocks nested too deeply")
    t = _get(d, "t", str)
    sp = _dspan(_get(d, "span"))
    if t == "assign":
        return Assignment(_get(d, "name", str), _str_or_none(d, "value"), sp)
    if t == "skipped":
        return Skipped(_get(d, "text", str), sp)
    if t == "recipe":
        try:
            flags = frozenset(Flag(f) for f in _get(d, "flags", list))
        except (ValueError, TypeError) as e:
            raise AstCodecError("bad flag") from e
        lock_d = _get(d, "lock")
        if lock_d is None:
            lock = None
        else:
            lock = LockSpec(_str_or_none(lock_d, "name"))
        conds = []
        for c in _get(d, "conditions", list):
            w = _get(c, "weight")
            if w is None:
                weight = None
            elif isinstance(w, list) and len(w) == 2:
                weight = Weight(_num(w[0]), _num(w[1]))
            else:
                raise AstCodecError("bad weight")
            conds.append(Condition(_dtest(_get(c, "test")), _get(c, "negate", bool),
                                   weight, _dspan(_get(c, "span")), _get(c, "width", int)))
        return Recipe(flags, lock, tuple(conds), _daction(_get(d, "action"), depth), sp)
    raise AstCodecError(f"unknown item tag {t!r}")


def decode_rc(data: dict) -> RcFile:
    if _get(data, "format", str) != FORMAT or _get(data, "version", int) != VERSION:
        raise AstCodecError("not a postroom rc AST of this version")
    diags = []
    for x in _get(data, "diagnostics", list):
        sev = _get(x, "severity", str)
        if sev not in ("error", "warning"):
            raise AstCodecError("bad severity")
        diags.append(Diagnostic(_dspan(_get(x, "span")), sev, _get(x, "message", str)))
    return RcFile(path=_get(data, "path", str),
                  items=tuple(_ditem(i) for i in _get(data, "items", list)),
                  diagnostics=tuple(diags))
