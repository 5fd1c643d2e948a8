"""mta.maps: line parsers (hypothesis), file:line diagnostics, reload-on-change, faults."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from mta.maps import Aliases, LocalHostNames, MapUnavailable, RelayDomains, SystemUsers, UsersFile, Virtusertable
from mta.maps.aliases import Alias, format_alias, parse_alias_line, read_include
from mta.maps.mapfile import Diagnostic, Line, logical_lines, read_lines
from mta.maps.targets import (
    AddressTarget,
    ErrorTarget,
    FileTarget,
    IncludeTarget,
    MailboxTarget,
    ProgramTarget,
    format_target,
    parse_error_spec,
    parse_target,
    split_targets,
)
from mta.maps.users import User, format_passwd_line, parse_passwd_line
from mta.maps.virtusertable import VirtEntry, parse_virtuser_line
from mta.newaliases import main as newaliases
from mta.reply import Reply

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
# Lines made of the characters that matter to these formats, plus anything else.
LINE_TEXT = st.lists(st.sampled_from(list(':,@"|/\\#% \t+*.-_0123456789abcXYZ') + ["é", "\x00", "error:", ":include:", "5.1.1:550 "]), max_size=30).map("".join) | st.text(max_size=30)


# --------------------------------------------------------------------------- mapfile


def test_a_comment_after_the_targets_costs_no_member(tmp_path: Path) -> None:
    # "bob # the boss" was one bad target that lost the whole alias; a comment at the
    # end of a continued line must not swallow the next line's members
    inc = tmp_path / "team.list"
    inc.write_text("judy # trailing\nkim\n")
    f = tmp_path / "aliases"
    f.write_text(f'inl: bob # the boss\nlst: alice, # comment\n  carol\nteam: :include:{inc}\n'
                 f'prog: "|/bin/cat #x", dave # c\n')
    a = Aliases(f)
    assert list(a.problems) == []
    assert [str(t) for t in a.lookup("inl").targets] == ["bob"]
    assert [str(t) for t in a.lookup("lst").targets] == ["alice", "carol"]
    assert len(a.lookup("prog").targets) == 2
    targets, diags = read_include(inc)
    assert [str(t) for t in targets] == ["judy", "kim"] and list(diags) == []


def test_read_lines_numbers_and_skips_comments() -> None:
    # an indented "#" line is a comment too (Postfix aliases(5)): inside a continued
    # list it drops out and the list goes on after it
    data = b"# c\n\nalpha: x,\r\n  # bob has left\n  z\n#x\nbeta: y\n"
    lines = list(read_lines("f", data))
    assert [(l.number, l.text) for l in lines] == [(3, "alpha: x,"), (5, "  z"), (7, "beta: y")]
    joined = list(logical_lines(lines))
    assert [(l.number, l.text) for l in joined] == [(3, "alpha: x, z"), (7, "beta: y")]


def test_diagnostic_format() -> None:
    assert str(Diagnostic("aliases", 7, "bad")) == "aliases:7: error: bad"
    assert str(Line("a", 2, "x").warning("w")) == "a:2: warning: w"


# --------------------------------------------------------------------------- parsers never raise


@SETTINGS
@given(LINE_TEXT, st.integers(min_value=1, max_value=10**6))
def test_alias_line_parser_total(text: str, number: int) -> None:
    alias, diags = parse_alias_line(Line("aliases", number, text), Path("/etc/postroom"))
    assert alias is not None or diags
    assert all(d.line == number and d.path == "aliases" for d in diags)
    if alias is not None:
        assert alias.targets and alias.name == alias.name.lower()


@SETTINGS
@given(LINE_TEXT, st.integers(min_value=1, max_value=10**6))
def test_virtuser_line_parser_total(text: str, number: int) -> None:
    parsed = parse_virtuser_line(Line("virtusertable", number, text))
    assert isinstance(parsed, (VirtEntry, Diagnostic))
    if isinstance(parsed, Diagnostic):
        assert parsed.line == number and str(parsed).startswith(f"virtusertable:{number}: error: ")


@SETTINGS
@given(LINE_TEXT, st.integers(min_value=1, max_value=10**6))
def test_passwd_line_parser_total(text: str, number: int) -> None:
    parsed = parse_passwd_line(Line("users", number, text), Path("/var/x"))
    assert isinstance(parsed, (User, Diagnostic))
    if isinstance(parsed, Diagnostic):
        assert parsed.line == number


@SETTINGS
@given(st.lists(LINE_TEXT, max_size=8))
def test_whole_files_load_with_diagnostics_only(tmp_path: Path, lines: list[str]) -> None:
    data = "\n".join(lines).encode("utf-8", "surrogateescape")
    for cls in (Aliases, Virtusertable, RelayDomains):
        p = tmp_path / cls.__name__
        p.write_bytes(data)
        m = cls(p)
        _ = m.data
        for d in m.problems:
            assert 1 <= d.line <= data.count(b"\n") + 1
    u = tmp_path / "users"
    u.write_bytes(data)
    UsersFile(u, tmp_path).lookup("x")
    LocalHostNames(u, "h.example").lookup("x")


# --------------------------------------------------------------------------- round trips

LOCAL = st.from_regex(r"[a-z0-9][a-z0-9._+-]{0,10}[a-z0-9]", fullmatch=True).filter(lambda s: ".." not in s)
DOMAIN = st.from_regex(r"[a-z0-9]{1,8}(\.[a-z0-9]{1,8}){0,2}", fullmatch=True)
TARGET = st.one_of(
    st.builds(AddressTarget, LOCAL, st.none() | DOMAIN),
    st.builds(MailboxTarget, LOCAL),
    st.builds(FileTarget, st.from_regex(r"/[a-z0-9/ ._-]{0,20}[a-z0-9]", fullmatch=True)),
    st.builds(ProgramTarget, st.from_regex(r"[a-z/][a-z0-9/ ,._|>-]{0,20}[a-z0-9]", fullmatch=True)),
    st.builds(IncludeTarget, st.from_regex(r"/[a-z0-9/._-]{0,20}[a-z0-9]", fullmatch=True).map(Path)),
    st.sampled_from(["5.1.1:550 Gone", "nouser", "4.2.1:450 busy, later", "553 no"]).map(
        lambda spec: ErrorTarget(parse_error_spec(spec), spec)),  # type: ignore[arg-type]
)


@SETTINGS
@given(LOCAL, st.lists(TARGET, min_size=1, max_size=5))
def test_alias_round_trip(name: str, targets: list) -> None:
    alias = Alias(name, tuple(targets), 4)
    parsed, diags = parse_alias_line(Line("aliases", 4, format_alias(alias)))
    assert diags == [] and parsed == alias


@SETTINGS
@given(st.from_regex(r"[a-z_][a-z0-9_.-]{0,10}", fullmatch=True), st.integers(0, 65534), st.integers(0, 65534), st.from_regex(r"[A-Za-z ,]{0,10}", fullmatch=True),
       st.from_regex(r"[a-z]{1,6}(/[a-z]{1,6}){0,2}", fullmatch=True))
def test_passwd_round_trip(name: str, uid: int, gid: int, gecos: str, home: str) -> None:
    base = Path("/srv/var")
    user = User(name, uid, gid, gecos, base / home, "/bin/sh")
    line = format_passwd_line(user, base)
    assert parse_passwd_line(Line("users", 1, line), base) == user


# --------------------------------------------------------------------------- targets


@pytest.mark.parametrize(
    "spec, code, enhanced, text",
    [
        ("5.1.1:550 User unknown", 550, "5.1.1", "User unknown"),
        ("5.7.0:553 Address invalid", 553, "5.7.0", "Address invalid"),
        ("5.1.1 gone", 550, "5.1.1", "gone"),
        ("4.2.1 busy", 450, "4.2.1", "busy"),
        ("553 no", 553, "5.0.0", "no"),
        ("nouser", 550, "5.1.1", "User unknown"),
        ("NOHOST no such host", 550, "5.1.2", "no such host"),
        ("tempfail", 451, "4.3.0", "Temporary failure"),
        # the codes written again at the start of the text (cf/README's own example)
        ("nouser 550 No such user here", 550, "5.1.1", "No such user here"),
        ("550 5.1.1 text", 550, "5.1.1", "text"),
        ("nouser 450 not the class", 550, "5.1.1", "450 not the class"),
    ],
)
def test_error_specs(spec: str, code: int, enhanced: str, text: str) -> None:
    assert parse_error_spec(spec) == Reply(code, enhanced, text)


@pytest.mark.parametrize("spec", ["5.1.1:450 x", "250 ok", "bogus", "", "9.9.9 x", "5.1.1:55 x"])
def test_bad_error_specs(spec: str) -> None:
    assert isinstance(parse_error_spec(spec), str)


def test_targets() -> None:
    base = Path("/etc/postroom")
    assert parse_target('"|/usr/bin/vacation, -a x"') == ProgramTarget("/usr/bin/vacation, -a x")
    assert parse_target("|cat") == ProgramTarget("cat")
    assert parse_target("/var/log/mail.copy") == FileTarget("/var/log/mail.copy")
    assert parse_target(":include:lists/staff", base) == IncludeTarget(base / "lists/staff")
    assert parse_target(":include:lists/staff") == ":include: path must be absolute: lists/staff"
    assert parse_target("\\bob") == MailboxTarget("bob")
    assert parse_target("Bob@Example.ORG") == AddressTarget("Bob", "example.org")
    assert parse_target('"a b"@x.example') == AddressTarget('"a b"', "x.example")
    assert isinstance(parse_target("a..b"), str)
    assert split_targets('a, "|x, y", b') == ["a", '"|x, y"', "b"]
    assert format_target(ProgramTarget("x, y")) == '"|x, y"'


# --------------------------------------------------------------------------- maps over files


def test_aliases_bad_lines_skipped_rest_works(tmp_path: Path) -> None:
    p = tmp_path / "aliases"
    p.write_text(
        "# comment\n"
        "Staff: alice, bob,\n"
        "\tcarol@example.org\n"
        "broken line\n"
        "bad: a..b, good\n"
        "empty:\n"
        "staff: dave\n"
        "bin: error:9.9.9 nope\n"
        "prog: \"|/bin/cat, -u\"\n"
    )
    a = Aliases(p)
    assert a.diagnostics == [
        "aliases:4: error: missing \":\" after alias name 'broken line'",
        "aliases:5: error: alias bad: bad local part 'a..b'",
        "aliases:6: error: alias empty has no targets",
        "aliases:7: warning: duplicate alias name staff (first at line 2); this one wins",
        "aliases:8: error: alias bin: bad error code in error:9.9.9 nope",
    ]
    assert a.lookup("STAFF").targets == (AddressTarget("dave", None),)
    assert a.lookup("bad").targets == (AddressTarget("good", None),)
    assert a.lookup("prog").targets == (ProgramTarget("/bin/cat, -u"),)
    assert a.lookup("empty") is None and a.lookup("bin") is None


def test_include_file(tmp_path: Path) -> None:
    p = tmp_path / "list"
    p.write_text("# members\nalice, bob@example.org\n\n\"|/bin/true\"\nbad..x\n")
    targets, diags = read_include(p)
    assert targets == (AddressTarget("alice", None), AddressTarget("bob", "example.org"), ProgramTarget("/bin/true"))
    assert [str(d) for d in diags] == [f"{p}:5: error: bad local part 'bad..x'"]
    with pytest.raises(MapUnavailable):
        read_include(tmp_path / "missing")


def test_virtusertable_plus_wildcards_as_cf_readme(tmp_path: Path) -> None:
    # cf/README: "+" after the "+" matches a non-empty detail only, "*" an empty one too
    p = tmp_path / "virtusertable"
    p.write_text("X++@vd.test  dave%3@pr.test\n+*@vd.test  %1%3@pr.test\n"
                 "++@vd.test  plus%3@pr.test\n@vd.test  carol@pr.test\n")
    vt = Virtusertable(p)
    assert vt.diagnostics == []
    assert vt.lookup("x+tag", "vd.test").target == AddressTarget("dave+tag", "pr.test")
    assert vt.lookup("x+", "vd.test").target == AddressTarget("x+", "pr.test")         # +*, not X++
    assert vt.lookup("kim+tag", "vd.test").target == AddressTarget("plus+tag", "pr.test")  # ++ first
    assert vt.lookup("kim+", "vd.test").target == AddressTarget("kim+", "pr.test")
    assert vt.lookup("kim", "vd.test").target == AddressTarget("carol", "pr.test")


def test_virtusertable_lookup_order_and_substitution(tmp_path: Path) -> None:
    p = tmp_path / "virtusertable"
    p.write_text(
        "info@Example.NET   alice\n"
        "bob+*@example.net  bob-lists\n"
        "@example.net       %1%3@example.com\n"
        "@example.org       error:nouser\n"
        "x@example.com      |/bin/prog\n"
        "nokey\n"
        "info@example.net   duplicate\n"
        "a@b@        c\n"
    )
    vt = Virtusertable(p)
    assert vt.diagnostics == [
        "virtusertable:5: error: value of x@example.com must be a user, an address or error:..., not '|/bin/prog'",
        "virtusertable:6: error: expected a key and a value, found 'nokey'",
        "virtusertable:7: warning: duplicate key info@example.net (first at line 1); first kept",
        "virtusertable:8: error: key 'a@b@': empty domain",
    ]
    assert vt.lookup("INFO", "example.net").target == AddressTarget("alice", None)
    assert vt.lookup("bob+x", "example.net").target == AddressTarget("bob-lists", None)
    hit = vt.lookup("Carol+tag", "EXAMPLE.net")
    assert hit.key == "@example.net" and hit.target == AddressTarget("Carol+tag", "example.com")
    assert vt.lookup("carol", "example.net").target == AddressTarget("carol", "example.com")
    assert vt.lookup("z", "example.org").target == ErrorTarget(Reply(550, "5.1.1", "User unknown"), "nouser")
    assert vt.lookup("z", "example.com") is None
    assert vt.domains() == {"example.net", "example.org"}


def test_users_file(tmp_path: Path) -> None:
    p = tmp_path / "users"
    p.write_text("demo:x:1000:1000:Demo:home/demo:/bin/sh\nabs:x:1:1::/srv/abs:/bin/sh\nshort:x:1\nbad:x:a:1::h:/bin/sh\n"
                 "demo:x:5:5::other:/bin/sh\n")
    u = UsersFile(p, tmp_path / "var")
    assert u.lookup("Demo").home == tmp_path / "var" / "home" / "demo"
    assert u.lookup("demo").uid == 1000  # first entry kept, like getpwnam
    assert u.lookup("abs").home == Path("/srv/abs")
    assert u.lookup("short") is None and u.lookup("bad") is None
    assert [d.split(": error: ")[0] if ": error: " in d else d for d in u.diagnostics] == [
        "users:3", "users:4", "users:5: warning: duplicate user demo, first entry kept"]


def test_system_users() -> None:
    root = SystemUsers().lookup("ROOT")
    assert root is not None and root.uid == 0 and root.home == Path(pwd.getpwnam("root").pw_dir)
    assert SystemUsers().lookup("no-such-user-here") is None
    assert SystemUsers().lookup("a\0b") is None


def test_local_host_names(tmp_path: Path) -> None:
    p = tmp_path / "local-host-names"
    p.write_text("Example.COM. www.example.com\nbad_dom@in ok.example\n[192.0.2.1]\n")
    lh = LocalHostNames(p, "MX.example.net")
    assert lh.diagnostics == ["local-host-names:2: error: bad domain 'bad_dom@in'"]
    for d in ("example.com", "EXAMPLE.com.", "ok.example", "mx.example.net", "localhost", "[192.0.2.1]"):
        assert lh.lookup(d), d
    assert not lh.lookup("sub.example.com") and not lh.lookup("evil..com")
    assert LocalHostNames(None, "h.example").lookup("h.example")
    for literal in ("[127.0.0.1]", "[IPv6:::1]", "[ipv6:0:0:0:0:0:0:0:1]"):   # this host, always
        assert LocalHostNames(None, "h.example").lookup(literal), literal
    assert not LocalHostNames(None, "h.example").lookup("[127.0.0.2]")


def test_relay_domains_cover_subdomains(tmp_path: Path) -> None:
    p = tmp_path / "relay-domains"
    p.write_text("example.org\n[192.0.2.7]\n")
    r = RelayDomains(p)
    assert r.lookup("example.org") and r.lookup("mx.Example.ORG") and r.lookup("[192.0.2.7]")
    assert not r.lookup("badexample.org") and not r.lookup("org")


# --------------------------------------------------------------------------- reload and faults


def test_reload_on_change(tmp_path: Path) -> None:
    p = tmp_path / "aliases"
    p.write_text("a: x\n")
    m = Aliases(p)
    assert m.lookup("a").targets == (AddressTarget("x", None),) and m.loads == 1
    assert m.lookup("a") and m.loads == 1  # unchanged: one stat, no reparse
    p.write_text("a: yy\nb: z\n")  # in-place edit
    assert m.lookup("a").targets == (AddressTarget("yy", None),) and m.loads == 2
    new = tmp_path / "aliases.new"
    new.write_text("c: w\n")
    os.replace(new, p)  # atomic replacement: a new inode
    assert m.lookup("a") is None and m.lookup("c") is not None and m.loads == 3
    st = p.stat()
    p.write_text("c: v\n")  # same size, same inode: mtime decides
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert m.lookup("c").targets == (AddressTarget("v", None),)
    assert m.refresh() is False


def test_unavailable_is_not_not_found(tmp_path: Path) -> None:
    p = tmp_path / "aliases"
    m = Aliases(p)
    with pytest.raises(MapUnavailable):
        m.lookup("a")  # missing
    p.mkdir()  # a directory cannot be read: EISDIR
    with pytest.raises(MapUnavailable) as exc:
        m.lookup("a")
    assert str(p) in str(exc.value)
    p.rmdir()
    p.write_text("a: b\n")
    assert m.lookup("a") is not None
    p.unlink()
    with pytest.raises(MapUnavailable):  # a map that disappears is not silently empty
        m.lookup("a")


# --------------------------------------------------------------------------- newaliases


def test_newaliases(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "aliases"
    (tmp_path / "staff.list").write_text("alice\nbob\n")
    good.write_text("postmaster: root\nstaff: :include:staff.list\n")
    assert newaliases([str(good)]) == 0
    out = capsys.readouterr()
    assert out.err == "" and "2 aliases" in out.out

    good.write_text("postmaster: root\nstaff: :include:missing.list\noops\nx: y\nx: z\n")
    assert newaliases([str(good)]) == 65
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"{good}:3: error: missing \":\" after alias name 'oops'"
    assert err[1].startswith(f"{good}:5: warning: duplicate alias name x")
    assert err[2].startswith(f"{good}:2: error: alias staff: cannot read :include: {tmp_path / 'missing.list'}")

    good.write_text("x: y\nx: z\n")  # warnings only
    assert newaliases([str(good)]) == 0
    assert newaliases([str(tmp_path / "nope")]) == 66
    toml = tmp_path / "postroom.toml"
    toml.write_text("[maps]\naliases = 'aliases'\n")
    assert newaliases(["-c", str(toml)]) == 0
    toml.write_text("[maps]\nalias = 'aliases'\n")
    assert newaliases(["-c", str(toml)]) == 78
    assert newaliases(["--bogus"]) == 64


def test_newaliases_command_says_each_problem_once(tmp_path: Path) -> None:
    # the map's own log lines (for the daemon's log) must not repeat the report
    bad = tmp_path / "aliases"
    bad.write_text("oops\nx: y\nx: z\n")
    res = subprocess.run([sys.executable, "-m", "mta.cli", "newaliases", str(bad)],
                         capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2])
    assert res.returncode == 65
    assert res.stderr.splitlines() == [f"{bad}:1: error: missing \":\" after alias name 'oops'",
                                       f"{bad}:3: warning: duplicate alias name x (first at line 2); this one wins"]
