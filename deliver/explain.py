"""``postroom deliver --explain`` and ``postroom explain -u USER MESSAGE``: a dry run.

What it does: runs the *same* evaluator as a real delivery, against a recording Effects
that changes nothing (no folder written, no lock taken, no program started, no log
written), then prints, recipe by recipe: file:line, whether each condition matched
(with MATCH and running score for weighted ones), the action it would take, and where
the mail would end up.  procmail has nothing like it; VERBOSE=on is what users had.

What it cannot know: programs are not run, so ``?`` conditions count as failed (exit 1),
backquotes expand to nothing, filters leave the mail unchanged and captures are empty;
each such point is marked "(not run)" in the output.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import IO, Callable, Iterator, Mapping, Sequence

from rules.ast import RcFile
from rules.effects import Command, Part, ProgramResult, SaveResult
from rules.trace import RecipeTrace

from .agent import Agent, Invocation, Site, User


class RecordingEffects:
    """Effects that record instead of acting (Pigeonhole's sieve-test shape)."""

    def __init__(self, uid: int, rc_loader: Callable[[str], RcFile]) -> None:
        self.vars: Mapping[str, str] = {}
        self.events: list[str] = []
        self.uid = uid
        self._rc_loader = rc_loader
        self.last_size = 0
        self.umask = 0o077           # what deliver/ starts with; only recorded here
        self.last_status = 0         # $?: nothing is run

    def environment(self, variables: Mapping[str, str], numbers: Mapping[str, int]) -> None:
        self.vars = variables

    def chdir(self, path: str) -> bool:
        if os.path.isdir(path):
            os.chdir(path)
            return True
        self.events.append(f'MAILDIR: cannot chdir to "{path}"; MAILDIR keeps its value')
        return False

    def set_umask(self, mask: int) -> None:
        if mask != self.umask:
            self.events.append(f"UMASK would be {mask:03o}")
        self.umask = mask

    def set_logfile(self, path: str | None) -> None:
        self.events.append(f"LOGFILE would be {path!r}")

    def fork_log(self) -> object:
        return None

    def join_log(self, saved: object) -> None:
        pass

    def log(self, text: str) -> None:
        for line in text.rstrip("\n").split("\n"):
            if line:
                self.events.append(f"log: {line}")

    def hostname(self) -> str:
        import socket
        return socket.gethostname()

    def load_rcfile(self, path: str) -> RcFile | None:
        try:
            return self._rc_loader(path)
        except OSError:
            self.events.append(f'INCLUDERC/SWITCHRC: cannot read "{path}"')
            return None

    @contextlib.contextmanager
    def lock(self, path: str) -> Iterator[bool]:
        self.events.append(f'would lock "{path}"')
        yield True

    def global_lock(self, path: str | None) -> bool:
        self.events.append(f'LOCKFILE would be "{path}"')
        return True

    def save(self, folders: Sequence[str], data: bytes, *, raw: bool,
             part: Part = None, mail: bytes | None = None, box: str | None = None) -> SaveResult:
        lockext = self.vars.get("LOCKEXT", "")
        if box == "DEFAULT" and lockext and folders[0] != os.devnull and not folders[0].endswith("/") \
                and not os.path.isdir(folders[0]):
            self.events.append(f'would lock "{folders[0]}{lockext}"')
        self.events.append("would save to " + " ".join(folders) + f" ({len(data)} bytes)")
        self.last_size = len(data)
        return SaveResult(True, " ".join(folders), len(data))

    def pipe(self, command: Command, data: bytes, *, wait: bool, quiet: bool,
             ignore_write_error: bool, capture: bool, raw: bool,
             part: Part = None) -> ProgramResult:
        self.events.append(f"would run (not run): {command.text.strip()}")
        return ProgramResult(True, 0, data if capture else b"")

    def forward(self, command: Command, data: bytes, *, wait: bool, quiet: bool,
                ignore_write_error: bool, raw: bool, part: Part = None) -> ProgramResult:
        self.events.append(f"would forward (not run): {command.text}")
        return ProgramResult(True, 0)

    def test_program(self, command: Command, data: bytes) -> int:
        self.events.append(f"? program not run, counted as failed: {command.text.strip()}")
        return 1

    def run_trap(self, command: Command, data: bytes) -> int:
        self.events.append(f"TRAP not run: {command.text.strip()}")
        return 0

    def filtered(self, data: bytes) -> bytes:
        return data

    def backquote(self, command: Command, data: bytes) -> str:
        self.events.append(f"backquote not run (empty): {command.text.strip()}")
        return ""

    def abstract_enabled(self, final: bool) -> bool:
        return False

    def abstract(self, message: bytes, folder: str) -> None:
        return None

    def close(self) -> None:
        return None


def format_trace(trace: Sequence[RecipeTrace]) -> list[str]:
    lines: list[str] = []
    for rt in trace:
        head = f"{rt.span.path}:{rt.span.line}: recipe :0{rt.flags}"
        if not rt.chained:
            lines.append(f"{head}: skipped (A/a/E/e chaining)")
            continue
        lines.append(head)
        for ct in rt.conditions:
            if ct.matched is None:
                state = "not tested (an earlier condition failed)"
            else:
                state = "matched" if ct.matched else "no match"
            extra = ""
            if ct.matched_text is not None:
                extra += f", MATCH={ct.matched_text!r}"
            if ct.score is not None:
                extra += f", score {ct.score:g}"
            lines.append(f"  {ct.span.path}:{ct.span.line}: * {ct.text}: {state}{extra}")
        if rt.score is not None:
            lines.append(f"  total score {rt.score:g}")
        if rt.matched:
            verdict = rt.action or "action"
            if rt.delivered:
                verdict += " -> delivered, processing ends"
            lines.append(f"  => {verdict}")
        else:
            lines.append("  => conditions not met")
    return lines


def explain_delivery(inv: Invocation, raw: bytes, user: User, site: Site,
                     caller_env: dict[str, str], load_rc: Callable[[str], RcFile],
                     out: IO[str]) -> int:
    effects = RecordingEffects(user.uid, load_rc)
    agent = Agent(user, site, load_rc=load_rc, effects=effects)  # type: ignore[arg-type]
    agent.tracing = True
    outcome = agent.run(inv, raw, caller_env)
    for line in format_trace(outcome.trace):
        out.write(line + "\n")
    out.write("\nevents, in order:\n")
    for event in effects.events:
        out.write(f"  {event}\n")
    where = outcome.lastfolder if outcome.delivered else "nowhere (delivery would fail)"
    out.write(f"\nthe mail would end up in: {where}\nexit status would be: {int(outcome.status)}\n")
    return 0


def main(argv: Sequence[str]) -> int:
    """postroom explain -u USER MESSAGE [rcfile]"""
    import argparse
    from .identity import IdentityError, current_user, lookup_user
    from .settings import load_site
    parser = argparse.ArgumentParser(prog="postroom explain")
    parser.add_argument("-u", "--user", help="recipient (default: you)")
    parser.add_argument("-f", "--from", dest="sender", help="envelope sender")
    parser.add_argument("message", help="message file ('-' for stdin)")
    parser.add_argument("rcfile", nargs="*", help="rc files (default: the user's)")
    args = parser.parse_args(list(argv))
    try:
        user = lookup_user(args.user) if args.user else current_user()
    except IdentityError as err:
        sys.stderr.write(f"postroom explain: {err}\n")
        return int(err.code)
    raw = sys.stdin.buffer.read() if args.message == "-" else open(args.message, "rb").read()
    inv = Invocation(sender=args.sender, rcfiles=list(args.rcfile),
                     delivery_mode=not args.rcfile)
    from rules.cache import load_rc
    return explain_delivery(inv, raw, user, load_site(os.environ), dict(os.environ),
                            load_rc, sys.stdout)
