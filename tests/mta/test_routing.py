"""mta.routing: the stage tuple, expansion semantics, owner-LIST, loops, :include:, faults."""

from __future__ import annotations

from pathlib import Path

import pytest

from mta import reply as R
from mta.config import load_config
from mta.maps import Maps
from mta.reply import Reply
from mta.routing import (
    MAX_DEPTH,
    Defer,
    Discard,
    DomainClass,
    ErrorDest,
    FileDest,
    LocalMailbox,
    ProgramDest,
    Reject,
    RemoteDest,
    Router,
)

USERS = "alice:x:1001:1001::home/alice:/bin/sh\nbob:x:1002:1002::home/bob:/bin/sh\nroot:x:0:0::/root:/bin/sh\n"


def make_router(tmp_path: Path, aliases: str = "", virtusertable: str = "", users: str = USERS,
                local_host_names: str = "example.com\n") -> Router:
    files = {"aliases": aliases, "virtusertable": virtusertable, "users": users, "local-host-names": local_host_names}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "postroom.toml").write_text(
        '[server]\nhostname = "mx.example.com"\n'
        '[maps]\nlocal_host_names = "local-host-names"\nvirtusertable = "virtusertable"\n'
        'aliases = "aliases"\nusers = "users"\n')
    config = load_config(tmp_path / "postroom.toml")
    return Router(config, Maps.from_config(config))


def dests(router: Router, address: str) -> tuple:
    return router.resolve(address).destinations


def test_stage_order_is_data(tmp_path: Path) -> None:
    r = make_router(tmp_path)
    assert Router.STAGES == ("local-host-names", "virtusertable", "aliases", "users", "local-or-remote")
    assert tuple(s.name for s in r.stages) == Router.STAGES
    res = r.resolve("alice@example.com")
    assert [(t.stage, t.input, t.output) for t in res.trace] == [
        ("local-host-names", "alice@example.com", "local"),
        ("virtusertable", "alice@example.com", "no match"),
        ("aliases", "alice@example.com", "no match"),
        ("users", "alice@example.com", "mailbox:alice"),
    ]
    res = r.resolve("x@remote.example")
    assert res.destinations == (RemoteDest("x@remote.example"),) and res.domain_class == DomainClass.REMOTE
    assert [t.stage for t in res.trace] == list(Router.STAGES)


def test_users_case_and_detail(tmp_path: Path) -> None:
    r = make_router(tmp_path)
    assert dests(r, "ALICE@Example.Com.") == (LocalMailbox("alice"),)
    assert dests(r, "alice+lists@mx.example.com") == (LocalMailbox("alice", "lists"),)
    assert dests(r, "<bob@localhost>") == (LocalMailbox("bob"),)
    # the detail reaches the rules as $1, made safe as Postfix makes $EXTENSION: a "/"
    # drops it (the mail still goes to the user), case is folded, and bytes outside
    # command_expansion_filter become "_"
    assert dests(r, "alice+Lists@example.com") == (LocalMailbox("alice", "lists"),)
    assert dests(r, '"alice+../x"@example.com') == (LocalMailbox("alice"),)
    assert dests(r, '"alice+/etc/passwd"@example.com') == (LocalMailbox("alice"),)
    assert dests(r, '"alice+a;b`c$d e"@example.com') == (LocalMailbox("alice", "a_b_c_d_e"),)
    assert dests(r, "alice+café@example.com") == (LocalMailbox("alice", "caf__"),)
    assert dests(r, "alice+@example.com") == (LocalMailbox("alice", ""),)
    with pytest.raises(Reject) as exc:
        r.resolve("carol@example.com")
    assert exc.value.reply == R.USER_UNKNOWN
    with pytest.raises(Reject) as exc:
        r.resolve("a..b@example.com")
    assert exc.value.reply.enhanced == "5.1.3"


def test_alias_targets_of_every_kind(tmp_path: Path) -> None:
    r = make_router(tmp_path, aliases=(
        "All: alice, Bob, /var/log/all.mbox, \"|/usr/bin/archive --list all\", carol@remote.example,\n"
        "  /dev/null, \\alice, error:5.1.1:550 no such member\n"))
    assert dests(r, "all@example.com") == (
        LocalMailbox("alice"), LocalMailbox("bob"), FileDest("/var/log/all.mbox"),
        ProgramDest("/usr/bin/archive --list all"), RemoteDest("carol@remote.example"), Discard(),
        ErrorDest(Reply(550, "5.1.1", "no such member")))


def test_self_reference_is_the_mailbox(tmp_path: Path) -> None:
    r = make_router(tmp_path, aliases="alice: alice, alice@remote.example\nbob: bob@example.com, /tmp/copy\n")
    assert dests(r, "alice") == (LocalMailbox("alice"), RemoteDest("alice@remote.example"))
    assert dests(r, "bob") == (LocalMailbox("bob"), FileDest("/tmp/copy"))


def test_loops_are_rejected(tmp_path: Path) -> None:
    r = make_router(tmp_path, aliases="a: b\nb: c\nc: a\nok: alice\n",
                    virtusertable="x@example.net y@example.net\ny@example.net x@example.net\n")
    for address in ("a", "b@example.com", "x@example.net"):
        with pytest.raises(Reject) as exc:
            r.resolve(address)
        assert exc.value.reply.code == 554 and exc.value.reply.enhanced == "5.4.6"
    with pytest.raises(Reject, match="a -> b -> c -> a"):
        r.resolve("a")
    assert dests(r, "ok") == (LocalMailbox("alice"),)  # the rest of the map still works


def test_a_cycle_with_other_members_delivers_them(tmp_path: Path) -> None:
    # sendmail and Postfix: the cycle ends where it comes back (a duplicate); the other
    # members of the lists are delivered, once; a cycle with nothing else is a loop
    inc = tmp_path / "self.list"
    inc.write_text(f"alice\n:include:{inc}\n")
    r = make_router(tmp_path, aliases=(f"loopc: loopd, alice\nloopd: loopc, bob\n"
                                       f"selfinc: :include:{inc}\nonly: :include:{tmp_path / 'only.list'}\n"))
    (tmp_path / "only.list").write_text(f":include:{tmp_path / 'only.list'}\n")
    assert dests(r, "loopc") == (LocalMailbox("bob"), LocalMailbox("alice"))
    assert dests(r, "selfinc") == (LocalMailbox("alice"),)
    with pytest.raises(Reject, match="includes itself") as exc:
        r.resolve("only")
    assert exc.value.reply.code == 554 and exc.value.reply.enhanced == "5.4.6"


def test_quoted_alias_names_and_quoted_local_parts(tmp_path: Path) -> None:
    # Postfix aliases(5): quote a name with blanks, "#", ":" or "@"; a quoted local part
    # names what it quotes ("alice" is alice, RFC 5321 4.1.2)
    r = make_router(tmp_path, aliases='"quoted name": alice\n"a:b": bob\n')
    assert dests(r, '"quoted name"@example.com') == (LocalMailbox("alice"),)
    assert dests(r, '"a:b"') == (LocalMailbox("bob"),)
    assert dests(r, '"alice"@example.com') == (LocalMailbox("alice"),)
    assert dests(r, '"al\\ice"@example.com') == (LocalMailbox("alice"),)    # escapes resolved


def test_depth_limit(tmp_path: Path) -> None:
    chain = "".join(f"l{i}: l{i + 1}\n" for i in range(MAX_DEPTH + 2)) + f"l{MAX_DEPTH + 2}: alice\n"
    r = make_router(tmp_path, aliases=chain + "short: l5\n")
    with pytest.raises(Reject, match="deeper than"):
        r.resolve("l0")
    assert dests(r, "short") == (LocalMailbox("alice"),)


def test_duplicates_suppressed(tmp_path: Path) -> None:
    r = make_router(tmp_path, aliases="x: alice, y, z\ny: alice, bob\nz: bob, alice\n")
    assert dests(r, "x") == (LocalMailbox("alice"), LocalMailbox("bob"))


def test_owner_list_becomes_envelope_sender(tmp_path: Path) -> None:
    r = make_router(tmp_path, aliases=(
        "staff: alice, inner, carol@remote.example\nowner-staff: alice\n"
        "inner: bob, dave@remote.example\nowner-inner: bob\n"
        "plain: alice\n"))
    res = r.resolve("staff@example.com")
    assert res.envelope_sender_override == "owner-staff@mx.example.com"
    assert res.owners[RemoteDest("carol@remote.example")] == "owner-staff@mx.example.com"
    assert res.owners[RemoteDest("dave@remote.example")] == "owner-inner@mx.example.com"  # innermost wins
    assert r.resolve("plain").envelope_sender_override is None
    assert r.resolve("inner").envelope_sender_override == "owner-inner@mx.example.com"
    # expanding owner-staff itself does not make owner-owner-staff
    assert r.resolve("owner-staff").envelope_sender_override is None


def test_include_files(tmp_path: Path) -> None:
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "staff").write_text("# staff\nalice, bob\n\ncarol@remote.example\n:include:more\n")
    (tmp_path / "lists" / "more").write_text("dave@remote.example\n")
    (tmp_path / "lists" / "self").write_text(":include:self\n")
    r = make_router(tmp_path, aliases=(
        "staff: :include:lists/staff\nselfish: :include:lists/self\nlost: :include:lists/missing\n"))
    assert dests(r, "staff") == (LocalMailbox("alice"), LocalMailbox("bob"), RemoteDest("carol@remote.example"),
                                 RemoteDest("dave@remote.example"))
    with pytest.raises(Reject, match="includes itself"):
        r.resolve("selfish")
    with pytest.raises(Defer) as exc:
        r.resolve("lost")
    assert exc.value.reply.code == 451


def test_virtusertable_routes_through_all_stages(tmp_path: Path) -> None:
    r = make_router(tmp_path,
                    aliases="team: alice, bob\n",
                    virtusertable=("info@example.net team\nfwd@example.net someone@remote.example\n"
                                   "@example.org %1@example.com\nold@example.net error:nouser gone\n"
                                   "me@example.com alice@example.net\nalice@example.net bob\n"))
    assert dests(r, "info@example.net") == (LocalMailbox("alice"), LocalMailbox("bob"))
    assert dests(r, "fwd@example.net") == (RemoteDest("someone@remote.example"),)
    assert dests(r, "alice@example.org") == (LocalMailbox("alice"),)
    assert dests(r, "me@example.com") == (LocalMailbox("bob"),)  # local domain rewritten first
    assert r.resolve("info@example.net").domain_class == DomainClass.VIRTUAL
    with pytest.raises(Reject, match="gone"):
        r.resolve("old@example.net")
    with pytest.raises(Reject, match="virtual user table"):
        r.resolve("nobody@example.net")


def test_alias_to_virtual_address(tmp_path: Path) -> None:
    r = make_router(tmp_path, aliases="sales: info@example.net\n", virtusertable="info@example.net bob\n")
    assert dests(r, "sales") == (LocalMailbox("bob"),)


def test_mixed_list_keeps_good_members(tmp_path: Path) -> None:
    r = make_router(tmp_path, aliases="mixed: alice, ghost\n")
    assert dests(r, "mixed") == (LocalMailbox("alice"), ErrorDest(R.USER_UNKNOWN, "ghost"))  # the member, for its bounce


def test_postmaster_fallback(tmp_path: Path) -> None:
    r = make_router(tmp_path)
    assert dests(r, "PostMaster") == (LocalMailbox("root"),)
    r = make_router(tmp_path, users="alice:x:1:1::h:/bin/sh\n")
    with pytest.raises(Defer):
        r.resolve("postmaster")


def test_unavailable_maps_defer(tmp_path: Path) -> None:
    r = make_router(tmp_path, aliases="a: alice\n")
    (tmp_path / "aliases").unlink()
    (tmp_path / "aliases").mkdir()
    with pytest.raises(Defer) as exc:
        r.resolve("nobody@example.com")
    assert exc.value.reply.code == 451 and exc.value.reply.enhanced == "4.3.0"
    (tmp_path / "local-host-names").unlink()
    with pytest.raises(Defer):
        r.classify("example.com")
    assert r.classify("mx.example.com") == DomainClass.LOCAL  # the host name needs no map
    assert r.classify(None) == DomainClass.LOCAL


def test_changes_take_effect_without_restart(tmp_path: Path) -> None:
    r = make_router(tmp_path, aliases="sales: alice\n")
    assert dests(r, "sales") == (LocalMailbox("alice"),)
    (tmp_path / "aliases").write_text("sales: bob, alice\n")
    assert dests(r, "sales") == (LocalMailbox("bob"), LocalMailbox("alice"))
    (tmp_path / "local-host-names").write_text("example.com\nexample.io\n")
    assert dests(r, "alice@example.io") == (LocalMailbox("alice"),)


def test_bad_map_lines_skipped(tmp_path: Path) -> None:
    r = make_router(tmp_path, aliases="broken\nsales: alice\n", users="junk\n" + USERS)
    assert dests(r, "sales") == (LocalMailbox("alice"),)
    assert sorted(r.maps.diagnostics()) == [
        "aliases:1: error: missing \":\" after alias name 'broken'",
        "users:1: error: expected 7 colon-separated fields (name:x:uid:gid:gecos:home:shell), found 1",
    ]
