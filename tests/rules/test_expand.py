"""Unit and property tests of rules.expand (the live comparison with procmail is in
test_expand_oracle.py)."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rules.errors import ExpansionError
from rules.expand import (
    _VALUE,
    _WORDS,
    DEFAULT_SHELLMETAS,
    _Reader,
    expand_quoted,
    expand_value,
    expand_words,
    has_shell_metas,
    regex_quote,
)

VARS = {"X": "a  b", "E": "", "T": "t", "1": "one", "2": "two  words", "#": "2", "-": "lf x"}


class Recorder:
    """A lookup and a backquote that remember what they were asked."""

    def __init__(self, values: dict[str, str] | None = None, output: str = "out") -> None:
        self.values = VARS if values is None else values
        self.output = output
        self.names: list[str] = []
        self.commands: list[str] = []

    def lookup(self, name: str) -> str | None:
        self.names.append(name)
        return self.values.get(name)

    def backquote(self, cmd: str) -> str:
        self.commands.append(cmd)
        return self.output


def value(raw: str, rec: Recorder | None = None) -> str:
    rec = rec or Recorder()
    return expand_value(raw, rec.lookup, rec.backquote)


def words(raw: str, positional: tuple[str, ...] = (), rec: Recorder | None = None) -> list[str]:
    rec = rec or Recorder()
    return expand_words(raw, rec.lookup, rec.backquote, positional)


def quoted(raw: str, rec: Recorder | None = None) -> str:
    rec = rec or Recorder()
    return expand_quoted(raw, rec.lookup, rec.backquote)


# ------------------------------------------------------------------------ regex_quote


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("", "()"),
        ("abc", "()abc"),
        ("a.b", "()a\\.b"),
        ("(|)*?+.^$[\\", "()" + "".join("\\" + c for c in "(|)*?+.^$[\\")),
        ("]{}-/", "()]{}-/"),  # procmail leaves these alone
        ("*x", "()\\*x"),
    ],
)
def test_regex_quote(raw: str, expected: str) -> None:
    assert regex_quote(raw) == expected


def test_dollar_backslash_is_never_split_and_uses_regex_quote() -> None:
    assert words("$\\X y") == ["()a  b", "y"]
    assert value("$\\X") == regex_quote("a  b")
    assert quoted("$\\T") == "()t"


# ------------------------------------------------------------------------ shell metas


@pytest.mark.parametrize(
    ("line", "metas", "expected"),
    [
        ("prog a b", "&|<>~;?*[", False),
        ("prog > out", "&|<>~;?*[", True),
        ("prog a*", "&|<>~;?*[", True),
        ("prog a*", "", False),
        ("prog ~x", "~", True),
    ],
)
def test_has_shell_metas(line: str, metas: str, expected: bool) -> None:
    assert has_shell_metas(line, metas) is expected


# ------------------------------------------------------------------------ values


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("", ""),
        ("   x", "x"),          # leading blanks skipped
        ("x y", "x"),           # an unquoted blank ends the value (behaviour 15)
        ("x\ny", "x"),
        ('"x y"z', "x yz"),
        ("a\\\nb", "ab"),       # backslash-newline joins
        ("$X", "a  b"),         # no splitting in values
        ("${U:-a}", "a"),
        ("${E:-a}", "a"),
        ("${E-a}", ""),
        ("$$", ""),             # the lookup has no "$"
        ("$#x", "2x"),
        ("$-", "lf x"),
        ("$12", "one2"),
        ("$@", "@"),
        ('"$@"', ""),
        ("'a\"b'", 'a"b'),
        ("#c", ""),
        ("a#c", "a#c"),
        ("}", "}"),
        ("${U:-a}}", "a}"),
        ('"abc', "abc"),        # unterminated quote: procmail logs Unexpected EOL, keeps it
    ],
)
def test_value(raw: str, expected: str) -> None:
    assert value(raw) == expected


def test_unterminated_quote_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="rules.expand"):
        assert value("'abc") == "abc"
    assert "Unexpected EOL" in caplog.text


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        ("${", ""),
        ("${X", "X"),
        ("${X:", "X"),
        ("${X:x}", "X"),
        ("${X%y}", "X"),
        ("${1a}", "1a"),
        ("${12}", "12"),
        ("a ${X", None),        # value mode stops at the blank: no error
    ],
)
def test_bad_substitution(raw: str, name: str | None) -> None:
    if name is None:
        assert value(raw) == "a"
        return
    with pytest.raises(ExpansionError) as info:
        value(raw)
    assert info.value.text == name
    assert str(info.value) == f'Bad substitution of "{name}"'


@pytest.mark.parametrize("raw", ["${X:-abc", "${X-a", '"${U+a"', "${U-${X-b", "${E:+a"])
def test_unterminated_unused_default_word_raises(raw: str) -> None:
    """procmail accepts it silently but its reader is left skipping (see the oracle test)."""
    with pytest.raises(ExpansionError):
        value(raw)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("${U:-a", "a"), ('"${X+a"', 'a"'), ("${U-${X-b}", "a  b"), ("${U-x${T}", "xt")],
)
def test_unterminated_used_default_word_runs_to_the_end(raw: str, expected: str) -> None:
    """As in procmail: the word is used and simply runs to the end of the text."""
    assert value(raw) == expected


# ------------------------------------------------------------------------ words


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("", [""]),
        ("   ", [""]),
        ("$U", [""]),
        ("a $U", ["a"]),
        ("a  b\tc ", ["a", "b", "c"]),
        ("$X", ["a", "b"]),
        ('"$X"', ["a  b"]),
        ("x$X'y'", ["xa", "by"]),
        ("${U-d e}z", ["d", "ez"]),
        ("${X-d e}z", ["a", "bz"]),
        ('${U:-"d e"}', ["d e"]),
        ('"${U:-"d e"}"', ['"d e"']),
        ("a #b c", ["a"]),
        ("a\nb", ["a"]),
        ("'a\nb'", ["a\nb"]),
        ("\\# b\\#", ["#", "b\\#"]),
        ("$-", ["lf", "x"]),
    ],
)
def test_words(raw: str, expected: list[str]) -> None:
    assert words(raw) == expected


@pytest.mark.parametrize(
    ("raw", "positional", "expected"),
    [
        ('p "$@"', ("a", "b c"), ["p", "a", "b c"]),
        ('p "$@"', (), ["p", ""]),
        ('p x"$@" y', ("a",), ["p", "a", "y"]),
        ('p "$@"x', ("a",), ["p", "x"]),
        ('p "$@" "$@"', ("a",), ["p", "", "a"]),       # only the last one counts
        ('p "$@" "-$@-"', ("a",), ["p", "", "--"]),   # ... even if it is not a word of its own
        ('p "$@"$U', ("a",), ["p", "a"]),
        ('p "$@"$X', ("a",), ["p", "a", "b"]),
        ('p "${U:-$@}"', ("a",), ["p", "a"]),
        ('p "${X:-$@}"', ("a",), ["p", "a  b"]),      # no marker inside an unused word
    ],
)
def test_all_args(raw: str, positional: tuple[str, ...], expected: list[str]) -> None:
    assert words(raw, positional) == expected


# ------------------------------------------------------------------------ quoted


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("^Subject: $T", "^Subject: t"),
        (" lead", " lead"),
        ('"$X" y', "a  b y"),
        ("x\" #c", "x "),
        ("a\\\n   b\\\n\tc", "abc"),   # squeezed like procmail's continuation lines
        ("a\n   b", "a\nb"),
        ("\\$X \\a", "$X \\a"),
        ('${U:-"p q"}', '"p q"'),
        ("$1 \"$@\" $#", "one @ 2"),
    ],
)
def test_quoted(raw: str, expected: str) -> None:
    assert quoted(raw) == expected


# ------------------------------------------------------------------------ backquotes


def test_backquote_gets_command_after_backslash_processing() -> None:
    rec = Recorder()
    value("`a \\` b \\$ \\\\ \\x \\\" c`", rec)
    assert rec.commands == ['a ` b $ \\ \\x \\" c']
    rec = Recorder()
    value('"`a \\" b`"', rec)
    assert rec.commands == ['a " b']


def test_backquote_output_splitting() -> None:
    rec = Recorder(output="p  q")
    assert words("x`c`y", rec=rec) == ["xp", "qy"]
    assert words('"`c`"', rec=Recorder(output="p  q")) == ["p  q"]
    assert value("`c`", Recorder(output="p  q")) == "p  q"
    assert words("a `c` b", rec=Recorder(output="")) == ["a", "b"]


def test_double_quote_ends_an_unterminated_backquote() -> None:
    """... and closes the double quote only when the command has SHELLMETAS (procmail
    re-reads other commands with a nested reader that forgets the quote)."""
    rec = Recorder(output="o")
    assert value('"`cmd;" x', rec) == "o"
    assert rec.commands == ["cmd;"]
    assert value('"`cmd" x', Recorder(output="o")) == "o x"
    assert value('"`cmd;" x', Recorder(output="o"), ) == "o"
    assert expand_value('"`cmd;" x', VARS.get, lambda c: "o", shellmetas="") == "o x"
    assert expand_value('"`cmd" x', VARS.get, lambda c: "o", shellmetas="") == "o x"


def test_unused_default_neither_looks_up_nor_runs() -> None:
    rec = Recorder()
    assert value("${X:-$T`cmd`}", rec) == "a  b"
    assert rec.commands == []
    assert rec.names == ["X"]
    rec = Recorder()
    assert value("${U:-$T`cmd`}", rec) == "tout"
    assert rec.commands == ["cmd"]


def test_positional_lookup_uses_the_first_digit() -> None:
    rec = Recorder()
    assert value("$\\12", rec) == "()one"
    assert rec.names == ["1"]


# ------------------------------------------------------------------------ properties

SPECIAL = st.sampled_from(list("$\"'`\\{}:-+#@ \t\n_=?") + ["${", "${X", "$\\", "\"$@\""])
NAMES = st.sampled_from(["X", "E", "U", "T", "1", "2", "ab", "_"])
RAW = st.lists(st.one_of(SPECIAL, NAMES, st.text(max_size=3)), max_size=25).map("".join)
LOOKUPS = st.dictionaries(NAMES, st.text(max_size=8), max_size=6)
PLAIN = st.text(st.characters(blacklist_characters="$\"'`\\\n", codec="latin-1"), max_size=40)


@settings(max_examples=300, deadline=None)
@given(raw=RAW, values=LOOKUPS, output=st.text(max_size=6))
def test_any_text_expands_or_raises_expansion_error(
    raw: str, values: dict[str, str], output: str
) -> None:
    rec = Recorder(values, output)
    for call in (
        lambda: value(raw, rec),
        lambda: quoted(raw, rec),
        lambda: words(raw, ("p1", "p 2"), rec),
    ):
        try:
            result = call()
        except ExpansionError:
            continue
        assert isinstance(result, (str, list))


@settings(max_examples=200, deadline=None)
@given(raw=PLAIN)
def test_plain_text_is_identity(raw: str) -> None:
    """Without $, quotes, backquotes, backslashes (and newlines, which end a line)."""
    assert quoted(raw) == raw
    expected_words = [w for w in raw.replace("\t", " ").split(" ") if w]
    if not any(w.startswith("#") for w in expected_words):
        assert words(raw) == (expected_words or [""])
        if " " not in raw and "\t" not in raw:
            assert value(raw) == raw


@settings(max_examples=200, deadline=None)
@given(text=st.text(st.characters(codec="latin-1"), max_size=30))
def test_double_quoting_round_trips(text: str) -> None:
    escaped = "".join("\\" + c if c in '"\\$`' else c for c in text)
    assert value(f'"{escaped}"') == text
    assert words(f'"{escaped}"') == [text]
    if "'" not in text:
        assert value(f"'{text}'") == text


@settings(max_examples=200, deadline=None)
@given(val=st.text(st.characters(codec="latin-1"), max_size=20))
def test_variable_splitting(val: str) -> None:
    rec = Recorder({"V": val})
    assert value("$V", rec) == val
    assert words('"$V"', rec=rec) == [val]
    pieces = val.replace("\t", " ").replace("\n", " ").split(" ")
    assert words("a $V", rec=rec) == ["a"] + [p for p in pieces if p]


SIMPLE_PIECES = st.sampled_from(["$", "$X", "$E", "$U", "$ab", "$T9_", "$1", "$_", "$$", "${X}",
                                  "/", ".", "-", "x", "_", "9", "#", "}", " ", "\t"])
SIMPLE_RAW = st.lists(SIMPLE_PIECES, max_size=12).map("".join)
SIMPLE_VALUES = st.dictionaries(st.sampled_from(["X", "E", "ab", "T9_"]),
                                st.text(st.sampled_from("a b\t\n$x"), max_size=6), max_size=4)


def _by_the_reader(raw: str, mode: int, rec: Recorder) -> str | list[str]:
    reader = _Reader(raw, mode, rec.lookup, rec.backquote, DEFAULT_SHELLMETAS)
    reader.run()
    return reader.text() if mode == _VALUE else reader.words


@settings(max_examples=500, deadline=None)
@given(raw=SIMPLE_RAW, values=SIMPLE_VALUES)
def test_name_substitution_fast_path_agrees_with_the_reader(raw: str, values: dict[str, str]) -> None:
    """expand_value / expand_words skip the reader for plain ``$NAME`` text: same result."""
    rec = Recorder(values)
    assert value(raw, rec) == _by_the_reader(raw, _VALUE, rec)
    assert words(raw, rec=rec) == _by_the_reader(raw, _WORDS, rec)


def test_name_substitution_fast_path_reads_letters_only() -> None:
    rec = Recorder({"MAILDIR": "/m", "MATCH": "dev", "M": "no"})
    assert value("$MAILDIR/inbox", rec) == "/m/inbox"
    assert words("lists.$MATCH", rec=rec) == ["lists.dev"]
    assert words("lists.$MATCH.x$UNSET", rec=rec) == ["lists.dev.x"]
    assert value("a$$b", Recorder({"$": "42"})) == "a42b"       # the reader's $$
    assert words("$X", rec=Recorder({"X": "a b"})) == ["a", "b"]  # split by the reader


@pytest.mark.parametrize(
    ("raw", "values", "output", "expected"),
    [
        ("box#1 other", {}, "", ["box"]),            # after the name, # starts a comment
        ("d1#x/ d2/", {}, "", ["d1"]),
        ("_b1#x", {}, "", ["_b1"]),
        ("box\\#x", {}, "", ["box#x"]),             # \# at a word's start is a plain #
        ("box$A", {"A": " x"}, "", ["boxx"]),        # the value's blank ends no word
        ("box$A", {"A": "x y"}, "", ["boxx", "y"]),
        ("box`c`", {}, " y", ["boxy"]),
        ("box=#x", {}, "", ["box="]),
        ("box.x#y", {}, "", ["box.x#y"]),            # not right after the name: literal
        ("1box#x", {}, "", ["1box#x"]),              # a name never starts with a digit
        ("box #x", {}, "", ["box"]),
        ("$A#x", {"A": "box"}, "", ["box#x"]),
        ('"box"#x', {}, "", ["box#x"]),
    ],
)
def test_folder_lines_restart_after_a_leading_name(
    raw: str, values: dict[str, str], output: str, expected: list[str]
) -> None:
    """procmail reads a folder line as a possible NAME= first (gobenv), then from where
    the name ended as at a word's start (differential cases folder-after-name-*)."""
    rec = Recorder(values, output)
    assert expand_words(raw, rec.lookup, rec.backquote, folder=True) == expected


@settings(max_examples=300, deadline=None)
@given(raw=RAW, values=LOOKUPS, output=st.text(max_size=6))
def test_folder_lines_differ_only_after_a_leading_name(
    raw: str, values: dict[str, str], output: str
) -> None:
    """A folder line that does not start with a name followed directly by something other
    than a blank reads exactly as any other action line."""
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_"
    if raw[:1] and raw[0] in letters:
        after_name = raw.lstrip(letters + "0123456789")
        if after_name and after_name[0] not in " \t\n":
            return
    rec = Recorder(values, output)
    outcomes = []
    for folder in (False, True):
        try:
            outcomes.append(expand_words(raw, rec.lookup, rec.backquote, folder=folder))
        except ExpansionError as err:
            outcomes.append(str(err))
    assert outcomes[0] == outcomes[1]


def test_import_is_cheap() -> None:
    """rules.expand is on the delivery hot path: importing it loads neither pyparsing nor
    re2 (checked in a fresh interpreter without site, so nothing is preloaded)."""
    root = str(Path(__file__).resolve().parents[2])
    probe = (
        f"import sys; sys.path.insert(0, {root!r}); import rules.expand; "
        "print(sorted({'pyparsing', 're2', 'rules.parser', 'rules.regex'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-S", "-c", probe], capture_output=True, text=True,
                         check=True).stdout
    assert out == "[]\n"
