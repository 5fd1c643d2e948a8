"""Typed errors of the recipe language.

Every error that points into an rc file carries its ``Span`` so the message reads
``file:line:col: what was expected`` like a compiler's; deliver/ maps these to procmail's
log lines and exit codes in one place (deliver.exitcodes).
"""

from __future__ import annotations

from .ast import Span


class RulesError(Exception):
    """Base of every error raised by rules/."""


class RcSyntaxError(RulesError):
    """The rc text cannot be parsed at ``span``."""

    def __init__(self, span: Span, message: str) -> None:
        super().__init__(f"{span}: {message}")
        self.span = span
        self.message = message


class RegexError(RulesError):
    """A pattern is not valid in procmail's egrep dialect or cannot be translated to RE2.

    procmail logs ``Invalid regexp`` and counts such a condition as matched; postroom
    reports it at load time with the span of its condition (see README, differences).
    """

    def __init__(self, pattern: str, reason: str, span: Span | None = None) -> None:
        where = f"{span}: " if span else ""
        super().__init__(f'{where}invalid regexp "{pattern}": {reason}')
        self.pattern = pattern
        self.reason = reason
        self.span = span


class ExpansionError(RulesError):
    """A ``$`` substitution is malformed (procmail: ``Bad substitution of "..."``)."""

    def __init__(self, text: str) -> None:
        super().__init__(f'Bad substitution of "{text}"')
        self.text = text
