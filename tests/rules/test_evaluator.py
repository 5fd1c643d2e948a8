"""The evaluator against a recording Effects: chaining, scoring, blocks, clones,
includes, HOST, SWITCHRC, captures and filters.  (Byte-level agreement with procmail is
tests/deliver/test_differential.py's job; here the control flow is pinned down.)"""

from __future__ import annotations

import contextlib
from typing import Iterator, Mapping, Sequence

import pytest

from rules.ast import RcFile
from rules.effects import Command, Part, ProgramResult, SaveResult
from rules.evaluator import End, Evaluator
from rules.message import Message
from rules.parser import parse_rc

MAIL = (b"From sender@example.org  Mon Jul  3 10:00:00 2023\n"
        b"From: Alice <alice@example.org>\nSubject: hello world\nTo: bob@example.com\n\n"
        b"line one\nline two mentions money money money\n")


class Recorder:
    def __init__(self, rcfiles: Mapping[str, str] | None = None, *,
                 fail: Sequence[str] = (), programs: Mapping[str, tuple[int, bytes]] | None = None,
                 host: str = "here") -> None:
        self.vars: Mapping[str, str] = {}
        self.saved: list[tuple[str, ...]] = []
        self.ran: list[str] = []
        self.logged: list[str] = []
        self.rcfiles = dict(rcfiles or {})
        self.fail = set(fail)
        self.programs = dict(programs or {})
        self.host = host
        self.umask = 0o077
        self.last_status = 0

    def environment(self, variables: Mapping[str, str], numbers: Mapping[str, int]) -> None:
        self.vars = variables

    def chdir(self, path: str) -> bool:
        return path != "/nonexistent"

    def set_umask(self, mask: int) -> None:
        self.umask = mask

    def set_logfile(self, path: str | None) -> None:
        self.logfile = path

    def fork_log(self) -> object:
        return getattr(self, "logfile", None)

    def join_log(self, saved: object) -> None:
        self.logfile = saved

    def log(self, text: str) -> None:
        self.logged.append(text)

    def hostname(self) -> str:
        return self.host

    def load_rcfile(self, path: str) -> RcFile | None:
        if path not in self.rcfiles:
            self.log(f'procmail: Couldn\'t read "{path}"\n')
            return None
        return parse_rc(self.rcfiles[path], path)

    @contextlib.contextmanager
    def lock(self, path: str) -> Iterator[bool]:
        self.ran.append(f"lock {path}")
        yield True

    def global_lock(self, path: str | None) -> bool:
        self.ran.append(f"LOCKFILE {path}")
        return True

    def save(self, folders: Sequence[str], data: bytes, *, raw: bool,
             part: Part = None, mail: bytes | None = None, box: str | None = None) -> SaveResult:
        if folders[0] in self.fail:
            return SaveResult(False)
        self.saved.append(tuple(folders))
        return SaveResult(True, " ".join(folders), len(data))

    def _prog(self, command: Command) -> tuple[int, bytes]:
        key = command.text.strip()
        self.ran.append(key)
        return self.programs.get(key, (0, b""))

    def pipe(self, command: Command, data: bytes, *, wait: bool, quiet: bool,
             ignore_write_error: bool, capture: bool, raw: bool,
             part: Part = None) -> ProgramResult:
        status, out = self._prog(command)
        ok = status == 0 or not wait
        return ProgramResult(ok, status, out)

    def forward(self, command: Command, data: bytes, *, wait: bool, quiet: bool,
                ignore_write_error: bool, raw: bool, part: Part = None) -> ProgramResult:
        self.ran.append("forward " + " ".join(command.argv))
        return ProgramResult(True, 0)

    def test_program(self, command: Command, data: bytes) -> int:
        return self._prog(command)[0]

    def filtered(self, data: bytes) -> bytes:
        return data

    def backquote(self, command: Command, data: bytes) -> str:
        return self._prog(command)[1].rstrip(b"\n").decode("latin-1")

    def abstract(self, message: bytes, folder: str) -> None:
        self.logged.append(f"abstract {folder}")


def run(rc_text: str, effects: Recorder | None = None, mail: bytes = MAIL,
        variables: dict[str, str] | None = None):
    eff = effects or Recorder()
    env = {"SHELL": "/bin/sh", "SHELLFLAGS": "-c", "SHELLMETAS": "&|<>~;?*[", "LOCKEXT": ".lock",
           "SENDMAIL": "/usr/sbin/sendmail", "SENDMAILFLAGS": "-oi", "LINEBUF": "2048"}
    env.update(variables or {})
    ev = Evaluator(eff, env, Message(mail))
    result = ev.run_rcfile(parse_rc(rc_text, "rc"))
    return result, eff, ev


def test_first_matching_delivering_recipe_ends_processing():
    result, eff, _ = run(":0\n* ^Subject:.*hello\ninbox\n:0\nother\n")
    assert result.end is End.DELIVERED
    assert eff.saved == [("inbox",)]


def test_falls_off_the_end_when_nothing_matches():
    result, eff, _ = run(":0\n* ^Subject: nothing\ninbox\n")
    assert result.end is End.FELL_OFF and eff.saved == []


def test_copy_flag_continues():
    result, eff, _ = run(":0 c\ncopy\n:0\nfinal\n")
    assert eff.saved == [("copy",), ("final",)] and result.end is End.DELIVERED


@pytest.mark.parametrize("rc, expected", [
    # A: only when the last recipe without A/a matched
    (":0 c\n* hello\nfirst\n:0 A c\nsecond\n", [("first",), ("second",)]),
    (":0 c\n* nomatch\nfirst\n:0 A c\nsecond\n", []),
    # a: ... and that recipe's action succeeded
    (":0 c\n* hello\nbroken\n:0 a c\nsecond\n", []),
    # E: only when the preceding recipe did not match; chains like elif
    (":0 c\n* nomatch\nfirst\n:0 E c\nelse1\n:0 E c\nelse2\n", [("else1",)]),
    (":0 c\n* hello\nfirst\n:0 E c\nelse1\n", [("first",)]),
    # e: only when the preceding recipe matched and its action failed
    (":0 c\n* hello\nbroken\n:0 e c\nrescue\n", [("rescue",)]),
    (":0 c\n* hello\nfine\n:0 e c\nrescue\n", [("fine",)]),
])
def test_chaining_flags(rc, expected):
    _, eff, _ = run(rc, Recorder(fail=["broken"]))
    assert eff.saved == expected


def test_weighted_scoring_and_dollar_equals():
    # "money" three times with 2^1: 2+2+2 = 6; then -1^0 for ^From: total 5
    rc = ":0 B\n* 2^1 money\n* -1^0 ^line\nscored$=\n"
    _, eff, ev = run(rc)
    assert eff.saved == [("scored5",)]
    assert ev.lastscore == 5


def test_dollar_zero_is_the_programs_name_and_dollar_underscore_the_rc_file():
    """procmail: $0 is its own argv[0] (/usr/bin/procmail when run so), not the rc file,
    which is $_ (checked against the real procmail in tests/rules/test_expand_oracle.py)."""
    _, eff, ev = run("X=$0\nY=$_\n")
    assert (ev.vars["X"], ev.vars["Y"]) == ("procmail", "rc")
    eff = Recorder()
    ev = Evaluator(eff, {"LINEBUF": "2048"}, Message(MAIL), argv0="postroom deliver")
    ev.run_rcfile(parse_rc("X=$0\n", "rc"))
    assert ev.vars["X"] == "postroom deliver"


def test_score_must_be_positive():
    _, eff, ev = run(":0\n* -1^0 hello\nnever\n")
    assert eff.saved == [] and ev.lastscore == -1


def test_score_converging_series_and_infinity():
    # x = 0.5 on an empty-matching regex: w + w/2 + ... = 2w
    _, _, ev = run(":0 c\n* 1^0.5 ^\nx\n")
    assert ev.lastscore >= 1
    _, _, ev = run(":0 c\n* 1^1 ^\nx\n")
    assert ev.lastscore == 2147483647


def test_match_extraction_and_lastfolder():
    _, eff, ev = run(":0\n* ^Subject: \\/.*\nbox.$MATCH\n")
    assert ev.vars["MATCH"] == "hello world"
    assert eff.saved == [("box.hello", "world")]   # unquoted expansion splits (item 16)


def test_block_restores_chaining_state_and_delivers_inside():
    rc = ":0\n* hello\n{\n  :0 c\n  * nomatch\n  inner\n}\n:0 A\nafter\n"
    _, eff, _ = run(rc)
    assert eff.saved == [("after",)]


def test_copy_block_runs_a_clone_that_continues_with_the_rest():
    finished: list[End] = []
    eff = Recorder()
    env = {"SHELLMETAS": "&|<>~;?*[", "LOCKEXT": ".lock", "LINEBUF": "2048"}
    ev = Evaluator(eff, env, Message(MAIL), on_clone_end=lambda clone, end: finished.append(end))
    rc = parse_rc(":0 c\n{\n  :0 c\n  inblock\n}\n:0\nrest\n", "rc")
    result = ev.run_rcfile(rc)
    # the clone: inblock (copy), then the rest of the file -> rest; the parent: rest
    assert eff.saved == [("inblock",), ("rest",), ("rest",)]
    assert finished == [End.DELIVERED] and result.end is End.DELIVERED


def test_includerc_runs_in_place_and_depth_is_bounded():
    eff = Recorder({"inc": "X=from-include\n", "loop": "INCLUDERC=loop\n"})
    _, eff, ev = run("INCLUDERC=inc\n:0\nbox$X\n", eff)
    assert eff.saved == [("boxfrom-include",)]
    _, eff2, _ = run("INCLUDERC=loop\n:0\ndone\n", Recorder({"loop": "INCLUDERC=loop\n"}))
    assert eff2.saved == [("done",)]
    assert any("Too deeply nested" in line for line in eff2.logged)


def test_switchrc_replaces_the_rest_of_the_file():
    eff = Recorder({"other": ":0\nswitched\n"})
    _, eff, _ = run("SWITCHRC=other\n:0\nnot-here\n", eff)
    assert eff.saved == [("switched",)]


def test_missing_includerc_is_logged_and_processing_continues():
    _, eff, _ = run("INCLUDERC=missing\n:0\nbox\n")
    assert eff.saved == [("box",)] and any("Couldn't read" in l for l in eff.logged)


def test_host_mismatch_ends_the_rcfile():
    result, eff, _ = run("HOST=elsewhere\n:0\nbox\n")
    assert result.end is End.HOST and eff.saved == []


def test_capture_and_filter():
    eff = Recorder(programs={"echo hi": (0, b"captured\n"),
                             "sed s/hello/bye/": (0, MAIL.replace(b"hello", b"bye"))})
    _, eff, ev = run(":0\nV=| echo hi\n:0 f\n| sed s/hello/bye/\n:0\n* bye\nbox.$V\n", eff)
    assert ev.vars["V"] == "captured"
    assert eff.saved == [("box.captured",)]
    assert b"bye world" in ev.message.data


def test_failed_waited_filter_leaves_the_mail_unchanged():
    eff = Recorder(programs={"false": (1, b"")})
    _, eff, ev = run(":0 fw\n| false\n:0\n* hello\nbox\n", eff)
    assert ev.message.data == MAIL and eff.saved == [("box",)]


def test_forward_runs_sendmail_with_flags():
    _, eff, _ = run(":0\n! bob@example.com carol@example.com\n")
    assert "forward /usr/sbin/sendmail -oi bob@example.com carol@example.com" in eff.ran


def test_program_condition_and_negation():
    eff = Recorder(programs={"test-true": (0, b""), "test-false": (1, b"")})
    _, eff, _ = run(":0 c\n* ? test-true\nyes\n:0 c\n* ! ? test-false\nalso\n:0\n* ? test-false\nno\n", eff)
    assert eff.saved == [("yes",), ("also",)]


def test_size_conditions():
    size = len(MAIL)
    _, eff, _ = run(f":0 c\n* < {size + 1}\nsmall\n:0 c\n* > {size}\nbig\n")
    assert eff.saved == [("small",)]


def test_dollar_condition_reparses_after_expansion():
    _, eff, _ = run("NEG=!\n:0\n* $ $NEG nomatch\nbox\n")
    assert eff.saved == [("box",)]


def test_invalid_regex_is_logged_and_matches_with_what_was_read():
    _, eff, _ = run(":0\n* ^Subject(\nbox\n")
    assert eff.saved == [("box",)]
    assert any("Invalid regexp" in l for l in eff.logged)
    _, eff, _ = run(":0\n* zzz(\nbox\n")
    assert ("box",) not in eff.saved
    assert any("Invalid regexp" in l for l in eff.logged)


def test_implicit_lock_names():
    _, eff, _ = run(":0:\nmbox\n")
    assert "lock mbox.lock" in eff.ran
    _, eff, _ = run(":0:\n| cat >> some.log\n")
    assert "lock some.log.lock" in eff.ran


def test_linebuf_overflow_fails_the_assignment():
    """procmail's readparse() fails: the assignment is not made (X unset stays unset,
    an old value stays), and PROCMAIL_OVERFLOW says so."""
    _, eff, ev = run("LINEBUF=128\nX=" + "a" * 300 + "\n")
    assert "X" not in ev.vars and ev.vars["PROCMAIL_OVERFLOW"] == "yes"
    _, eff, ev = run("X=old\nLINEBUF=128\nX=" + "a" * 300 + "\n")
    assert ev.vars["X"] == "old"


def test_tracing_off_changes_nothing_but_the_trace():
    """A real delivery evaluates without a trace (only --explain reads it): the same
    actions, variables, scores and chaining, and no records."""
    rc = ("X=1\n:0 c\n* ^Subject:\\/.*\n{ :0\n * 2^1 hello\n * -1^0 nothing\n scored\n}\n"
          ":0 E\nelse\n:0 c\n* !^From:.*nobody\nnot-nobody\n:0 A\nchained\n"
          ":0 B\n* body\nbodybox\n")
    outcomes = []
    for tracing in (True, False):
        eff = Recorder()
        env = {"SHELL": "/bin/sh", "SHELLFLAGS": "-c", "SHELLMETAS": "&|<>~;?*[", "LOCKEXT": ".lock",
               "SENDMAIL": "/usr/sbin/sendmail", "SENDMAILFLAGS": "-oi", "LINEBUF": "2048"}
        ev = Evaluator(eff, env, Message(MAIL), tracing=tracing)
        result = ev.run_rcfile(parse_rc(rc, "rc"))
        outcomes.append((result.end, eff.saved, eff.logged, dict(ev.vars), ev.lastscore, len(result.trace)))
    traced, untraced = outcomes
    assert traced[:5] == untraced[:5]
    assert traced[5] > 0 and untraced[5] == 0


def test_syntax_problems_inside_a_skipped_block_are_not_logged():
    """procmail skips a block it does not enter by counting braces: nothing inside is
    read, so nothing inside is reported; a c block's clone reports them once."""
    skipped = ":0\n* nomatch\n{\n:0\n* > 10 words\nfoo\n}\n:0\ninbox\n"
    _, eff, _ = run(skipped)
    assert not [t for t in eff.logged if "Skipped" in t]
    entered = skipped.replace("nomatch", "hello")
    _, eff, _ = run(entered)
    assert [t for t in eff.logged if "Skipped" in t] == ['procmail: Skipped "words"\n']
    clone = ":0 c\n{\n:0\n* > 10 words\nfoo\n}\n:0\ninbox\n"
    _, eff, _ = run(clone)
    assert [t for t in eff.logged if "Skipped" in t] == ['procmail: Skipped "words"\n']
    assert eff.saved == [("foo",), ("inbox",)]
