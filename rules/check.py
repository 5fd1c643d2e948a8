"""``postroom check RCFILE...``: lint procmailrc files like a compiler.

What it reports, as ``file:line:col: error|warning: message``:
  errors   - syntax problems the parser found (recipes procmail would skip or mangle:
             unknown flags, missing actions, stray braces), regexes that are invalid in
             procmail's dialect (procmail would silently treat them as matching);
  warnings - recipes that can never run (after an unconditional delivering recipe at the
             same level), A/a/E/e with no preceding recipe to chain to, mbox deliveries
             without a lock (postroom locks anyway; procmail does not), variables used
             but never set anywhere and not preset by procmail.

Exit status: 0 when there are no errors (warnings alone do not fail), 1 when any file
has an error, 66 (EX_NOINPUT) when a file cannot be read.  INCLUDERC files named by a
literal path are not followed: lint them by naming them too.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from typing import Iterable, Sequence

from .ast import (Assignment, Block, Condition, ExpandTest, Flag, Folder, Forward,
                  Item, Pipe, RcFile, Recipe, RegexTest, Skipped, Span, VarTest)
from .errors import RegexError

# Variables procmail presets or reads from its environment (procmailrc(5)), and the
# ones the rc language itself defines; a reference to these is never "unset".
PRESET = frozenset("""
HOME LOGNAME USER SHELL PATH SHELLMETAS SHELLFLAGS ORGMAIL MAILDIR DEFAULT MSGPREFIX
SENDMAIL SENDMAILFLAGS HOST COMSAT PROCMAIL_VERSION LOCKEXT LINEBUF TZ PWD LOGFILE LOG
LOGABSTRACT VERBOSE UMASK LOCKFILE LOCKSLEEP LOCKTIMEOUT TIMEOUT TRAP EXITCODE DELIVERED
LASTFOLDER MATCH INCLUDERC SWITCHRC NORESRETRY SUSPEND DROPPRIVS SHIFT PROCMAIL_OVERFLOW
TMPDIR LANG
""".split())

_VAR_REF = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)|([A-Za-z_][A-Za-z0-9_]*))")
_CHAIN_FLAGS = (Flag.CHAIN_MATCHED, Flag.CHAIN_SUCCEEDED, Flag.ELSE, Flag.ON_ERROR)


@dataclass(frozen=True, slots=True)
class Finding:
    span: Span
    severity: str
    message: str

    def __str__(self) -> str:
        return f"{self.span}: {self.severity}: {self.message}"


def check_rc(rc: RcFile) -> list[Finding]:
    """Every finding for one parsed file, in source order."""
    findings = [Finding(d.span, d.severity, d.message) for d in rc.diagnostics]
    assigned = _assigned_names(rc.items)
    _check_items(rc.items, findings, assigned)
    findings.sort(key=lambda f: (f.span.line, f.span.col))
    return findings


def _assigned_names(items: Iterable[Item]) -> set[str]:
    names: set[str] = set()
    for item in items:
        match item:
            case Assignment(name=name):
                names.add(name)
            case Recipe(action=Block(items=inner)):
                names |= _assigned_names(inner)
            case Recipe(action=Pipe(capture=str() as var)):
                names.add(var)
    return names


def _is_delivering(recipe: Recipe) -> bool:
    if Flag.COPY in recipe.flags:
        return False
    match recipe.action:
        case Block():
            return False
        case Pipe(capture=None):
            return Flag.FILTER not in recipe.flags
        case Pipe():
            return False
    return True


def _check_items(items: Sequence[Item], findings: list[Finding], assigned: set[str]) -> None:
    ended_at: Span | None = None
    seen_recipe = False
    for item in items:
        if ended_at is not None and not isinstance(item, Skipped):
            findings.append(Finding(item.span, "warning",
                                    f"never runs: the recipe at line {ended_at.line} always "
                                    "delivers and ends processing"))
            ended_at = None   # one warning per dead stretch
        match item:
            case Assignment(value=value) if value is not None:
                _check_refs(value, item.span, findings, assigned)
            case Recipe():
                _check_recipe(item, findings, assigned, seen_recipe)
                seen_recipe = True
                if not item.conditions and _is_delivering(item) and not (
                        set(item.flags) & set(_CHAIN_FLAGS)):
                    ended_at = item.span


def _check_recipe(recipe: Recipe, findings: list[Finding], assigned: set[str],
                  has_previous: bool) -> None:
    chain = [f.value for f in _CHAIN_FLAGS if f in recipe.flags]
    if chain and not has_previous:
        findings.append(Finding(recipe.span, "warning",
                                f"flag {''.join(chain)} chains to a preceding recipe, "
                                "but there is none at this level"))
    case_sensitive = Flag.CASE in recipe.flags
    for cond in recipe.conditions:
        _check_condition(cond, case_sensitive, findings, assigned)
    action = recipe.action
    match action:
        case Folder(text=text):
            _check_refs(text, action.span, findings, assigned)
            if recipe.lock is None and not text.rstrip().endswith(("/", "/.")) \
                    and text.strip() not in ("/dev/null",) and " " not in text.strip():
                findings.append(Finding(action.span, "warning",
                                        f"mbox delivery to {text.strip()} without a lock: "
                                        "write ':0:' (postroom locks anyway, procmail does not)"))
        case Forward(text=text):
            _check_refs(text, action.span, findings, assigned)
        case Pipe(command=command):
            _check_refs(command, action.span, findings, assigned)
        case Block(items=inner):
            _check_items(inner, findings, assigned)
    if recipe.lock is not None and recipe.lock.name:
        _check_refs(recipe.lock.name, recipe.span, findings, assigned)


def _check_condition(cond: Condition, case_sensitive: bool, findings: list[Finding],
                     assigned: set[str]) -> None:
    test = cond.test
    match test:
        case RegexTest(pattern=pattern) | VarTest(pattern=pattern):
            from .regex import compile_regex
            try:
                rx = compile_regex(pattern, case_sensitive=case_sensitive)
            except RegexError as err:
                findings.append(Finding(cond.span, "error",
                                        f'invalid regexp "{pattern}": {err.reason} '
                                        "(procmail would treat this condition as matching)"))
            else:
                if rx.invalid is not None:
                    findings.append(Finding(cond.span, "error",
                                            f'invalid regexp "{pattern}": {rx.invalid} (procmail '
                                            "logs it and matches with the part it could read)"))
            if isinstance(test, VarTest) and test.name not in ("H", "B", "HB", "BH"):
                _check_name(test.name, cond.span, findings, assigned)
        case ExpandTest(text=text):
            _check_refs(text, cond.span, findings, assigned)


def _check_refs(text: str, span: Span, findings: list[Finding], assigned: set[str]) -> None:
    for m in _VAR_REF.finditer(text):
        _check_name(m.group(1) or m.group(2), span, findings, assigned)


def _check_name(name: str, span: Span, findings: list[Finding], assigned: set[str]) -> None:
    if name in assigned or name in PRESET:
        return
    findings.append(Finding(span, "warning", f"variable {name} is used but never set"))


def main(argv: Sequence[str]) -> int:
    if not argv:
        sys.stderr.write("usage: postroom check RCFILE...\n")
        return 64
    from .parser import parse_rc
    status = 0
    for path in argv:
        try:
            with open(path, "rb") as fh:
                text = fh.read().decode("latin-1")
        except OSError as err:
            sys.stderr.write(f"{path}: error: cannot read: {err.strerror}\n")
            status = max(status, 66)
            continue
        findings = check_rc(parse_rc(text, path))
        for finding in findings:
            sys.stdout.write(f"{finding}\n")
        if any(f.severity == "error" for f in findings):
            status = max(status, 1)
    return status
