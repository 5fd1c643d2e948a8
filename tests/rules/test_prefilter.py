"""rules.prefilter: an RE2::Set over an rc file's header conditions must rule out
exactly the conditions that a search one by one would not find, and the evaluator must
reach the same outcome with it as without it."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rules import prefilter
from rules.areas import search_area
from rules.errors import RegexError
from rules.ast import RegexTest
from rules.evaluator import Evaluator
from rules.message import Message
from rules.parser import parse_rc
from rules.regex import compile_regex, padded

from regex_cases import CASES, MESSAGES
from test_evaluator import Recorder

_SETTINGS = settings(max_examples=200, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow])


def _header_buf(mail: bytes) -> bytes:
    return padded(search_area(Message(mail), header=True, body=False))


def _agrees(patterns: list[tuple[str, bool]], mail: bytes) -> None:
    """A Set of ``patterns`` (pattern, case sensitive) finds in the header of ``mail``
    exactly those that compile_regex's search finds there."""
    compiled = []
    for pattern, case in patterns:
        try:
            rx = compile_regex(pattern, case_sensitive=case)
        except RegexError:
            continue
        if rx.re2_pattern is not None and rx.invalid is None:
            compiled.append(rx)
    if not compiled:
        return
    area_set = prefilter.AreaSet([rx.re2_pattern for rx in compiled])
    buf = _header_buf(mail)
    found = area_set.matching(buf)
    assert found is not prefilter.UNKNOWN
    text = search_area(Message(mail), header=True, body=False)
    for index, rx in enumerate(compiled, start=1):
        assert (index in found) == (rx.search(text, buf) is not None), rx.pattern


@pytest.mark.parametrize("msg", sorted(MESSAGES))
def test_a_set_of_the_oracle_table_patterns_agrees_with_each_search(msg: str) -> None:
    # The table whose answers tests/rules/test_regex_oracle.py checks against procmail:
    # every pattern, with and without case distinction, in one Set per message.
    patterns = sorted({p for p, _m, _f in CASES})
    _agrees([(p, case) for p in patterns for case in (False, True)], MESSAGES[msg])


_PIECES = st.sampled_from(["a", "b", "^", "$", "^^", ".", ".*", "[ab]", "[^a]", "(a|b)",
                           "x", "Subject:", "To:", " ", "\\<", "\\>", "(a)*", "b+", "c?",
                           "\\/"])


@_SETTINGS
@given(st.lists(st.lists(_PIECES, min_size=1, max_size=6).map("".join), min_size=1,
                max_size=8),
       st.lists(st.sampled_from([b"Subject: ab", b"To: ba x", b"X-a: b", b"aaa", b"",
                                 b"b a b", b" continued"]), max_size=6),
       st.booleans())
def test_random_patterns_in_a_set_agree_with_each_search(patterns: list[str],
                                                          lines: list[bytes],
                                                          case: bool) -> None:
    mail = b"From a@b  Mon Jul  3 10:00:00 2023\n" + b"".join(l + b"\n" for l in lines) + b"\nbody\n"
    _agrees([(p, case) for p in patterns], mail)


# ------------------------------------------------------------------ the evaluator

_RC = """
:0:
* ^Subject:.*lottery
spam
:0
* ^From:.*alice
* ^Subject:.*\\/world
{ SEEN=$MATCH }
:0 D:
* ^subject
lower
:0 c
* ! ^X-Nope
copied
:0
* 5^0 ^To:.*bob
* -3^1 ^Nope
{ SCORE=$= }
:0:
* ^From:.*nobody
* ^Subject
never
:0 B:
* money
body
"""


def _run(mail: bytes, rc: str, *, tracing: bool = False, sets: bool = True):
    """Run ``rc`` on ``mail``, with its Set built first (``sets``) or without one (a
    first run in a process: rules.prefilter.seen builds it on the second)."""
    eff = Recorder()
    env = {"SHELL": "/bin/sh", "SHELLFLAGS": "-c", "LOCKEXT": ".lock", "LINEBUF": "2048"}
    ev = Evaluator(eff, env, Message(mail), tracing=tracing)
    rcfile = parse_rc(rc, "rc")
    if sets:
        prefilter.register(rcfile)
        assert any(e[0] is rcfile.items[0].conditions[0] for e in prefilter._ENTRIES.values())
    result = ev.run_rcfile(rcfile)
    return result.end, eff.saved, eff.ran, {k: v for k, v in env.items()}, ev.lastscore


_MAIL = (b"From sender@example.org  Mon Jul  3 10:00:00 2023\n"
         b"From: Alice <alice@example.org>\nSubject: hello world\nTo: bob@example.com\n\n"
         b"line one\nline two mentions money\n")


def test_the_evaluator_reaches_the_same_outcome_with_and_without_the_sets() -> None:
    with_sets = _run(_MAIL, _RC)
    assert with_sets[3]["SEEN"] == "world" and with_sets[3]["SCORE"] == "5"
    assert ("copied",) in with_sets[1] and ("body",) in with_sets[1]
    assert _run(_MAIL, _RC, sets=False) == with_sets


def test_a_set_that_cannot_answer_leaves_every_condition_to_its_search(monkeypatch) -> None:
    expected = _run(_MAIL, _RC, sets=False)
    monkeypatch.setattr(prefilter.AreaSet, "matching", lambda self, buf: prefilter.UNKNOWN)
    assert _run(_MAIL, _RC) == expected


def test_the_set_is_built_on_an_rc_files_second_run_in_a_process() -> None:
    rcfile = parse_rc(_RC, "rc")
    first = rcfile.items[0].conditions[0]
    env = {"SHELL": "/bin/sh", "LOCKEXT": ".lock", "LINEBUF": "2048"}
    Evaluator(Recorder(), dict(env), Message(_MAIL), tracing=False).run_rcfile(rcfile)
    assert prefilter.entry_for(first, False) is None          # one delivery pays nothing
    Evaluator(Recorder(), dict(env), Message(_MAIL), tracing=False).run_rcfile(rcfile)
    assert prefilter.entry_for(first, False) is not None


def test_an_empty_answer_is_taken_for_a_failure() -> None:
    # RE2::Set answers "no match" and "out of memory" alike: the member that matches
    # everything is what tells them apart.
    area_set = prefilter.AreaSet([b"zzz"])
    assert area_set.matching(b"\nabc\n") == frozenset({0})
    area_set._set = type("Failing", (), {"Match": lambda self, buf: []})()
    assert area_set.matching(b"\nabc\n") is prefilter.UNKNOWN


def test_a_filter_that_rewrites_the_header_is_searched_afresh() -> None:
    # the Set's answer belongs to one header: after an f filter replaced it, the next
    # conditions are answered from the new header
    rc = ":0 fhw\n* ^Subject: hello\n| rewrite\n:0:\n* ^Subject: rewritten\nnew\n"
    eff = Recorder(programs={"rewrite": (0, b"Subject: rewritten\n\n")})
    env = {"SHELL": "/bin/sh", "SHELLFLAGS": "-c", "LOCKEXT": ".lock", "LINEBUF": "2048"}
    rcfile = parse_rc(rc, "rc")
    prefilter.register(rcfile)
    Evaluator(eff, env, Message(_MAIL), tracing=False).run_rcfile(rcfile)
    assert eff.saved == [("new",)]


@_SETTINGS
@given(st.lists(st.tuples(st.sampled_from(["", "!", "2^1 ", "-1^0 "]),
                          st.sampled_from(["^Subject:.*hello", "^To:.*nobody", "^From:",
                                           "world$", "^X-None", "\\/hello"])),
                min_size=1, max_size=3),
       st.sampled_from(["", "A", "E", "c", "D"]),
       st.integers(min_value=1, max_value=4))
def test_random_recipes_reach_the_same_outcome_without_the_sets(conds, flags, n) -> None:
    lines = "".join(f"* {prefix}{pattern}\n" for prefix, pattern in conds)
    rc = "".join(f":0 {flags}\n{lines}{{ HITS=$HITS{i} LAST=$= }}\nAFTER{i}=$=\n"
                 for i in range(n))
    rc += ":0:\n* ^Subject\nend\n"
    assert _run(_MAIL, rc) == _run(_MAIL, rc, sets=False)


def _sharing(rc_text: str, pattern: str):
    """``rc_text`` with one condition object, of ``pattern``, in every recipe but the
    last (the registry is keyed by condition object; a decoder that shared equal nodes
    would do this)."""
    import dataclasses
    rcfile = parse_rc(rc_text, "rc")
    *recipes, last = rcfile.items
    shared = dataclasses.replace(recipes[0].conditions[0], test=RegexTest(pattern))
    items = tuple(dataclasses.replace(r, conditions=(shared,)) for r in recipes) + (last,)
    return dataclasses.replace(rcfile, items=items), shared


def _saved(rcfile) -> list[tuple[str, ...]]:
    eff = Recorder()
    env = {"SHELL": "/bin/sh", "LOCKEXT": ".lock", "LINEBUF": "2048"}
    Evaluator(eff, env, Message(_MAIL), tracing=False).run_rcfile(rcfile)
    return eff.saved


def test_a_condition_shared_with_a_body_recipe_is_searched_in_the_body() -> None:
    # "mentions" is in the body only: the header Set rules it out of the header, and the
    # body recipe holding the same condition object must still find it
    rcfile, shared = _sharing(":0 c\n* x\nheader\n:0 B\n* x\nbody\n:0:\nend\n", "mentions")
    prefilter.register(rcfile)
    assert prefilter.entry_for(shared, False) is not None
    assert _saved(rcfile) == [("body",)]


def test_a_condition_shared_by_recipes_with_and_without_d_is_searched_as_each_says() -> None:
    # "HELLO" is in the header as "hello": without D it matches, with D it does not.  The
    # Set holds the condition as its last header recipe (D) compiled it.
    rcfile, shared = _sharing(":0 c\n* x\nnocase\n:0 Dc\n* x\ncase\n:0:\nend\n", "HELLO")
    prefilter.register(rcfile)
    assert prefilter.entry_for(shared, True) is not None
    assert prefilter.entry_for(shared, False) is None
    assert _saved(rcfile) == [("nocase",), ("end",)]
