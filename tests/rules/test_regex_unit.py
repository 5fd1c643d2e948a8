"""Unit and property tests of rules.regex and rules.macros (the procmail comparison is in
test_regex_oracle.py): linear time on hostile patterns, MATCH and count semantics,
macros, errors, caching, lazy import, and hypothesis properties - random patterns either
compile or raise RegexError, and the dialect agrees with Python's ``re`` where the two
coincide."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rules.errors import RegexError
from rules.macros import FROM_DAEMON, FROM_MAILER, TO, TO_, expand_macros
from rules.regex import CompiledRegex, RegexMatch, compile_regex, padded

ROOT = Path(__file__).resolve().parents[2]


def found(pattern: str, text: bytes, **kw: bool) -> bool:
    return compile_regex(pattern, **kw).search(text) is not None


def match_text(pattern: str, text: bytes, **kw: bool) -> bytes | None:
    m = compile_regex(pattern, **kw).search(text)
    assert m is not None, pattern
    return m.match


# ------------------------------------------------------------------ linear time


def test_nested_quantifier_on_fifty_as_and_a_b_does_not_match() -> None:
    assert compile_regex("(a+)+$").search(b"a" * 50 + b"b") is None


def test_nested_quantifier_on_a_megabyte_body() -> None:
    rx = compile_regex("(a+)+$")
    assert rx.search(b"a" * 1_000_000 + b"b") is None
    assert rx.search(b"a" * 1_000_000) is not None  # the virtual newline at the end
    assert rx.search(b"b" * 1_000_000 + b"\n" + b"a" * 10 + b"\nx") is not None
    assert rx.count(b"ab" * 500_000, 10) == 0


def test_split_on_a_megabyte_body_returns_the_right_part() -> None:
    body = b"x" * 1_000_000 + b"\nSubject: found it\n"
    assert match_text("^Subject: \\/.*", body) == b"found it"


# ------------------------------------------------------------------ dialect


@pytest.mark.parametrize(("pattern", "text", "expected"), [
    ("hello", b"HeLLo", True),
    ("HELLO", b"hello", True),
    ("caf\xe9", b"CAF\xc9", False),           # folding is ASCII only (item 1)
    ("caf\xe9", b"caf\xe9", True),
    ("a{2}", b"aa", False),                   # braces are literal (item 5)
    ("a{2}", b"a{2}", True),
    ("one$Hello", b"one\nHello", True),       # $ and ^ are newlines (item 5)
    ("one^Hello", b"one\nHello", True),
    ("one$^Hello", b"one\nHello", False),
    ("one$^Hello", b"one\n\nHello", True),
    ("a.b", b"a\nb", False),
    ("a[^x]b", b"a\nb", False),
    ("\\<cat\\>", b"a cat.", True),            # \< \> consume a character
    ("\\<cat\\>", b"cat", True),               # ... or the virtual newlines
    ("\\<cat\\>", b"concat", False),
    ("x\\<\\>y", b"x y", False),              # two characters needed
    ("^^From", b"From x\n", True),
    ("^^rom", b"From x\n", False),
    ("x$^^", b"x\n", True),
    ("x^^", b"x\n", False),
    ("x^^", b"x", True),
    ("\\.", b"a", False),
    ("\\n", b"n", True),                      # \x is a literal x
    ("a**", b"a*", True),                     # an operator after an operator is literal
    ("a**", b"aaa", False),
    ("[z-a]", b"a", True),                    # a reversed range is its end character
    ("[z-a]", b"m", False),
    ("[]x]", b"]", True),
    ("[^]x]", b"]", False),
    ("[a-", b"-", True),                      # an unclosed class runs to the end
    ("", b"anything", True),                  # an empty regex is not even searched
])
def test_dialect(pattern: str, text: bytes, expected: bool) -> None:
    assert found(pattern, text) is expected


def test_case_distinction() -> None:
    assert not found("hello", b"HELLO", case_sensitive=True)
    assert found("[A-Z]ello", b"hello")
    assert not found("[A-Z]ello", b"hello", case_sensitive=True)
    assert not found("[^a]", b"A")           # a negated class folds too
    assert found("[^a]", b"A", case_sensitive=True)


# ------------------------------------------------------------------ \/ and MATCH


@pytest.mark.parametrize(("pattern", "text", "expected"), [
    ("H.*\\/o.*", b"Hello World", b"o World"),   # item 8
    ("x\\/", b"axb", b""),
    ("^Subject: \\/.*", b"Subject: Hi there\nX: y\n", b"Hi there"),
    ("there\\/$", b"there\nx", b"\n"),              # a $ at the end puts the newline in
    ("\\/$", b"abc", b""),                          # the virtual newline is cut off
    ("e\\/l+", b"Hello", b"ll"),                     # right part leftmost-longest
    ("^From: \\/[^ ]+", b"From: Andr\xe9 x\n", b"Andr\xe9"),
    ("SUBJECT: \\/.*", b"Subject: Mixed Case\n", b"Mixed Case"),  # original case kept
    ("a\\/|b", b"xab", b"b"),                       # \/ ends an alternative: runs on
])
def test_match_text(pattern: str, text: bytes, expected: bytes) -> None:
    assert match_text(pattern, text) == expected


def test_no_split_means_match_is_left_alone() -> None:
    assert compile_regex("Hello").search(b"Hello") == RegexMatch(None)
    assert compile_regex("a\\/b").search(b"xyz") is None


# ------------------------------------------------------------------ count


@pytest.mark.parametrize(("pattern", "text", "expected"), [
    ("a+", b"aaa", 3),             # earliest end: each a is a match
    ("a", b"banana", 3),
    ("x", b"banana", 0),
    ("^.*$", b"a\nb\nc\n", 4),     # the trailing virtual newline gives one more
    ("^", b"abc", None),           # empty match: +infinity (item 14)
    ("x*", b"abc", None),
    ("ab", b"ababab\nab", 4),
])
def test_count(pattern: str, text: bytes, expected: int | None) -> None:
    assert compile_regex(pattern).count(text, 1000) == expected


def test_count_series_tells_how_an_empty_match_ended_it() -> None:
    assert compile_regex("b|x*").count_series(b"abba", 100) == (1, True)   # empty at 0
    assert compile_regex("b").count_series(b"abba", 100) == (2, False)
    assert compile_regex("").count_series(b"abc", 100) == (1, True)
    assert compile_regex("a").count_series(b"aaa", 2) == (2, False)


def test_count_stops_at_limit() -> None:
    rx = compile_regex("a")
    assert rx.count(b"a" * 100, 7) == 7
    assert rx.count(b"a" * 100, 0) == 0


def test_count_on_a_large_body_is_exact() -> None:
    body = b"line\n" * 20_000
    assert compile_regex("^line$").count(body, 10**9) == 20_000
    assert compile_regex("i").count(body, 10**9) == 20_000


def test_operator_on_a_split_is_defined() -> None:
    # procmail loops forever on this one (an operator after \\/ breaks its program
    # layout); postroom applies the operator to the split and answers.
    m = compile_regex("[ab]\\/+\\>\\<b").search(b"a  b\n")
    assert m is not None and m.match == b"  b"


# ------------------------------------------------------------------ macros


def test_macro_texts_are_those_inside_procmail() -> None:
    binary = Path("/usr/bin/procmail")
    if not binary.exists():
        pytest.skip("procmail is not installed (make test-deps)")
    data = binary.read_bytes()
    for text in (FROM_DAEMON, FROM_MAILER, TO, TO_):
        assert text.encode() in data


def test_to_macro_matches_whole_addresses_only() -> None:
    header = b"From x\nTo: Bob <bob@x>, bob.smith@x\n\n"
    assert found("^TO_bob@x", header)
    assert not found("^TO_ob@x", header)
    assert found("^TO_smith@x", b"To: smith@x\n")
    assert not found("^TO_smith@x", b"To: bob.smith@x\n")
    assert found("^TObob", header)


def test_macro_expansion_rules() -> None:
    assert expand_macros("^TO_x") == (TO_ + "x", False)
    assert expand_macros("^TOx") == (TO + "x", False)
    assert expand_macros("a\\^TO_x") == ("a\\^TO_x", False)          # escaped
    assert expand_macros("^TO_x", quoted_start=True) == ("^TO_x", False)
    assert expand_macros("^FROM_DAEMON") == (FROM_DAEMON, True)
    assert expand_macros("^FROM_MAILER") == (FROM_MAILER, False)
    assert expand_macros("^TO_a|^TO_b") == (TO_ + "a|" + TO_ + "b", False)
    assert expand_macros("plain") == ("plain", False)


def test_from_daemon_ignores_case_distinction_but_to_obeys_it() -> None:
    daemon = b"From: MAILER-DAEMON@x.org\n\n"
    assert found("^FROM_DAEMON", daemon, case_sensitive=True)
    assert found("^FROM_DAEMON", b"FROM: MAILER-DAEMON@x.org\n\n", case_sensitive=True)
    assert not found("^FROM_MAILER", b"FROM: MAILER-DAEMON@x.org\n\n", case_sensitive=True)
    assert not found("^TO_ALICE", b"To: alice\n", case_sensitive=True)
    assert found("^TO_alice", b"To: alice\n", case_sensitive=True)


# ------------------------------------------------------------------ errors, cache, import


@pytest.mark.parametrize(("pattern", "text", "found"), [
    ("(a", b"xa", True), ("(a|b", b"b", True), ("((a)", b"a", True),
    ("a)", b"xa", True), ("a)zzz", b"a", True), (")(", b"anything", True),
    ("zzz(", b"zz", False), ("^TO_(x", b"To: y", False)])
def test_unbalanced_parentheses_are_read_as_regexp_c_reads_them(pattern: str, text: bytes,
                                                                found: bool) -> None:
    """An unclosed "(" is closed at the end, a stray ")" ends the pattern; the pattern
    is flagged invalid (procmail logs "Invalid regexp") but used."""
    rx = compile_regex(pattern)
    assert rx.invalid is not None
    assert (rx.search(text) is not None) is found


def test_well_formed_patterns_are_not_flagged() -> None:
    assert compile_regex("(a|b)c").invalid is None


def test_compiled_once() -> None:
    assert compile_regex("cached") is compile_regex("cached")
    assert compile_regex("cached") is not compile_regex("cached", case_sensitive=True)
    assert isinstance(compile_regex("x"), CompiledRegex)
    assert compile_regex("x").pattern == "x"


def test_import_does_not_load_re2() -> None:
    code = "import sys, rules.regex; print('re2' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------------ properties

_SETTINGS = settings(max_examples=150, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow])


@_SETTINGS
@given(st.text(alphabet="ab()|*+?.^$[]-\\/<>{}TO_\xe9 ", max_size=24),
       st.binary(max_size=40), st.booleans())
def test_random_patterns_compile_or_raise_regex_error(pattern: str, text: bytes,
                                                      case_sensitive: bool) -> None:
    try:
        rx = compile_regex(pattern, case_sensitive=case_sensitive)
    except RegexError:
        assert "(" in pattern or ")" in pattern  # only parentheses can be unbalanced
        return
    m = rx.search(text)
    assert m is None or m.match is None or isinstance(m.match, bytes)
    if m is not None and m.match:
        assert m.match in text
    n = rx.count(text, 50)
    assert n is None or 0 <= n <= 50


_ATOMS = st.sampled_from(["a", "b", "c", ".", "[ab]", "[^a]", "[a-c]", "(ab)", "()"])


def _regexes() -> st.SearchStrategy[str]:
    return st.recursive(
        _ATOMS,
        lambda inner: st.one_of(
            st.tuples(inner, inner).map(lambda t: t[0] + t[1]),
            st.tuples(inner, inner).map(lambda t: f"({t[0]}|{t[1]})"),
            inner.map(lambda x: f"({x})*"),
            inner.map(lambda x: f"({x})+"),
            inner.map(lambda x: f"({x})?"),
        ),
        max_leaves=6,
    )


@_SETTINGS
@given(_regexes(), st.text(alphabet="abcd", max_size=14))
def test_agrees_with_python_re_where_the_dialects_coincide(pattern: str, text: str) -> None:
    # No newline in the text and no ^ $ \< \> in the pattern: the two dialects agree.
    data = text.encode()
    ours = compile_regex(pattern, case_sensitive=True).search(data) is not None
    assert ours == (re.search(pattern, text) is not None)
    folded = compile_regex(pattern.upper(), case_sensitive=False).search(data) is not None
    assert folded == (re.search(pattern.upper(), text, re.IGNORECASE | re.ASCII) is not None)


@_SETTINGS
@given(_regexes(), _regexes(), st.text(alphabet="abcd", max_size=14))
def test_split_match_is_text_after_a_split(left: str, right: str, text: str) -> None:
    # MATCH need not be a match of the right part: regexp.c lets a loop that shares its
    # thread with a split inherit the split point (procmail: "(a)+\\/a" on "aaa" sets
    # MATCH to "aa"; the oracle table checks such cases).
    m = compile_regex(f"{left}\\/{right}", case_sensitive=True).search(text.encode())
    assert (m is not None) == (re.search(f"({left})({right})", text) is not None)
    if m is not None:
        assert m.match is not None
        assert m.match in text.encode()


_LEFT_PIECES = st.sampled_from(["a", "b", "x", ".", ".*", "[ab]", "[^a]", "(a|bb)", "a*",
                                "(ab)+", "b?", "^", "$", " ", ":", "<"])
_LEFT_ENDS = st.sampled_from(["a", "b", "<", ":", "[ab]", ".", "^", "$", "[^b]"])
_RUNS = st.sampled_from(["[a-c]", "[ab]", "a", "[a-z0-9-]", "[^ ]", "."])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_LEFT_PIECES, max_size=4).map("".join), _LEFT_ENDS, _RUNS,
       st.text(alphabet="abcx <:\n", max_size=30), st.booleans())
def test_a_split_before_a_run_gives_the_engines_match_without_it(left: str, end: str,
                                                                 run: str, text: str,
                                                                 case: bool) -> None:
    # CompiledRegex finds MATCH for ``L\/[c]+`` with RE2 (_split_run_shape); procmail's
    # engine (_run_nfa, itself checked against procmail by the oracle table) must agree.
    pattern = f"{left}{end}\\/{run}+"
    try:
        rx = compile_regex(pattern, case_sensitive=case)
    except RegexError:
        return
    assert (rx._split_run is None) == ("^^" in pattern)   # ^^ is left to the engine
    if rx._split_run is None:
        return
    buf = padded(text.encode())
    a0 = rx._first(buf, 0)
    if a0 is None:
        return
    assert rx._split_run_span(buf, a0) == rx._nfa_span(buf, a0)


@_SETTINGS
@given(_regexes(), st.text(alphabet="abcd\n", max_size=14), st.booleans())
def test_a_series_of_one_term_is_counted_as_the_full_search_counts_it(pattern: str, text: str,
                                                                     case: bool) -> None:
    # ``w^0`` conditions count at most one match (rules.evaluator._weighted_matches);
    # CompiledRegex._first_term answers that without finding where the match ends.
    for p in (pattern, "^" + pattern, pattern + "$", "()", "x*", "^", "$"):
        rx = compile_regex(p, case_sensitive=case)
        if not rx._fast_count or rx._empty:
            continue
        data = text.encode()
        buf = padded(data)
        assert rx._first_term(buf) == rx.count_series(data, 1, buf, matches=[])
