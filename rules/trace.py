"""What the evaluator did, recipe by recipe: the data behind ``postroom deliver --explain``
and the per-message trace.  Plain records, returned rather than logged, so a dry run
and a real run produce the same structure.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .ast import Span


@dataclass(slots=True)
class ConditionTrace:
    span: Span
    text: str                 # the condition as evaluated (after `$` expansion)
    matched: bool | None      # None: not evaluated (an earlier condition failed)
    matched_text: str | None = None   # MATCH, when the regex has \/
    score: float | None = None        # running total, for weighted conditions


@dataclass(slots=True)
class RecipeTrace:
    span: Span
    flags: str
    chained: bool             # False when A/a/E/e made it skip without testing
    matched: bool = False
    conditions: list[ConditionTrace] = field(default_factory=list)
    action: str = ""          # what the action would do, in words
    succeeded: bool | None = None
    delivered: bool = False   # this recipe ended processing
    score: float | None = None
