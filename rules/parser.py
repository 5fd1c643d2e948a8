"""Parse a procmailrc into an ``RcFile`` (procmailrc(5), procmailex(5), procmailsc(5)).

What it does: runs the pyparsing grammar of rules.grammar over the whole rc text.
The grammar reads it the way procmail 3.22's main loop does (src/procmail.c
``mainloop``, src/misc.c ``conditions``), statement by statement:

  * blank lines and ``#`` comment lines are skipped;
  * ``:N flags :lock`` starts a recipe: conditions (``*`` lines; with a legacy ``:N``
    count the next N lines are conditions even without ``*``), then one action line:
    ``! addresses``, ``| program``, ``VAR=| program``, ``{`` + blank (a nested block,
    items until the matching ``}``), or anything else as a folder;
  * ``}`` closes the innermost block;
  * anything else is sh-style assignments (``A = x``, ``X=1 Y=2``, a bare ``NAME``
    unsets it, a word that is not a name is ``Skipped`` with the rest of its line).
    ``INCLUDERC`` and ``SWITCHRC`` are assignments like any other: the evaluator
    reads the named file when it runs them, as procmail does.

The grammar yields a flat sequence of items, diagnostics and block open/close tokens
in reading order; this module folds it into nested ``Block`` nodes with a stack (as
procmail keeps a nesting count), so any nesting depth parses without recursion.

Values, folder names, forward addresses and lock names are kept *as written* (quotes
and ``$`` references stay; the evaluator expands them at run time).  Program lines
are read like procmail's getlline(): a backslash-newline stays in the text, a
continuation line holding only ``\\`` becomes a plain newline (behaviour 18).

This module and rules.grammar are the only ones that import pyparsing, so loading a
cached AST (rules.cache) never pays for it.

What it guarantees: ``parse_rc`` never raises for syntax problems.  A recipe procmail
would not run (``Missing action``, ``Incomplete recipe``, a condition that cannot be
parsed) is left out of ``items``; every problem is a ``Diagnostic`` naming
file:line:col and what was expected; everything else still parses (behaviour 45).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .ast import Block, Diagnostic, Item, RcFile, Recipe, Span
from .grammar import (RC_FILE, BlockClose, BlockOpen, ParseContext, missing_brace,
                      parsing_context, unexpected_brace)

__all__ = ["parse_rc"]


@dataclass
class _Frame:
    """One open block: the recipe that opened it and the items read so far."""

    opener: BlockOpen | None
    items: list[Item] = field(default_factory=list)


def _close(frame: _Frame, parent: _Frame, end: Span | None) -> None:
    op = frame.opener
    assert op is not None
    if op.keep:
        block = Block(tuple(frame.items), op.block_span, end)
        parent.items.append(Recipe(op.flags, op.lock, op.conditions, block, op.span))


def _fold(tokens: list, ctx: ParseContext) -> tuple[list[Item], list[Diagnostic]]:
    """Nest the flat token sequence: a BlockOpen opens a frame, a BlockClose closes
    the innermost one (or is unexpected at the top), the end of the file closes what
    is still open with ``Missing closing brace``, innermost first."""
    stack = [_Frame(None)]
    diags: list[Diagnostic] = []
    for tok in tokens:
        if isinstance(tok, Diagnostic):
            diags.append(tok)
        elif isinstance(tok, BlockOpen):
            stack.append(_Frame(tok))
        elif isinstance(tok, BlockClose):
            if len(stack) > 1:
                frame = stack.pop()
                _close(frame, stack[-1], ctx.span(tok.pos))
            else:
                diags.append(unexpected_brace(ctx, tok.pos))
        else:
            stack[-1].items.append(tok)
    while len(stack) > 1:
        frame = stack.pop()
        assert frame.opener is not None
        diags.append(missing_brace(ctx, frame.opener.block_span))
        _close(frame, stack[-1], None)
    return stack[0].items, diags


def parse_rc(text: str, path: str) -> RcFile:
    """Parse rc text (latin-1-decoded).  Never raises for syntax problems: a bad
    recipe is dropped from ``items`` and reported in ``diagnostics``."""
    with parsing_context(text, path) as ctx:
        tokens = RC_FILE.parse_string(text).as_list()
        items, diags = _fold(tokens, ctx)
    return RcFile(path=path, items=tuple(items), diagnostics=tuple(diags))
