"""RCPT policy without a socket: tests/mta/policy/<case>.in run through mta.policy.drive.

Each case has <case>.toml (a real postroom.toml whose maps are the small files next to
it) and <case>.ref, the expected output line for line.  Set POSTROOM_UPDATE_REF=1 to
rewrite the .ref files after a deliberate change (then review the diff).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from mta import reply as R
from mta.config import load_config
from mta.maps import Maps
from mta.policy import RecipientPolicy, drive, format_verdict
from mta.routing import Router
from mta.verdict import Accept, Reject, TempFail

CASES = Path(__file__).parent / "policy"


def policy_for(toml: Path) -> RecipientPolicy:
    config = load_config(toml)
    return RecipientPolicy(Router(config, Maps.from_config(config)))


@pytest.mark.parametrize("case", sorted(p.stem for p in CASES.glob("*.in")))
def test_policy_case(case: str) -> None:
    policy = policy_for(CASES / f"{case}.toml")
    got = list(drive(policy, (CASES / f"{case}.in").read_text().splitlines()))
    ref = CASES / f"{case}.ref"
    if os.environ.get("POSTROOM_UPDATE_REF"):
        ref.write_text("\n".join(got) + "\n")
    assert got == ref.read_text().splitlines()


def test_cases_exist() -> None:
    assert len(list(CASES.glob("*.in"))) >= 2
    for case in CASES.glob("*.in"):
        assert case.with_suffix(".ref").exists(), case


def test_map_made_unreadable_then_fixed(tmp_path: Path) -> None:
    """A real fault: the aliases file is replaced by a directory, then restored."""
    for name in ("basic.users", "basic.aliases", "basic.local-host-names", "basic.virtusertable"):
        shutil.copy(CASES / name, tmp_path / name)
    (tmp_path / "postroom.toml").write_text((CASES / "basic.toml").read_text())
    policy = policy_for(tmp_path / "postroom.toml")
    assert policy.check_rcpt("192.0.2.1", "h", "a@b.example", "team@example.com") == Accept()
    (tmp_path / "basic.aliases").rename(tmp_path / "saved")
    (tmp_path / "basic.aliases").mkdir()
    verdict = policy.check_rcpt("192.0.2.1", "h", "a@b.example", "team@example.com")
    assert isinstance(verdict, TempFail) and verdict.reply.code == 451 and verdict.reply.enhanced == "4.3.0"
    # an unknown user is not "unknown" while the map is unreadable
    assert isinstance(policy.check_rcpt("192.0.2.1", "h", "", "nobody@example.com"), TempFail)
    (tmp_path / "basic.aliases").rmdir()
    (tmp_path / "saved").rename(tmp_path / "basic.aliases")
    assert policy.check_rcpt("192.0.2.1", "h", "a@b.example", "team@example.com") == Accept()
    assert policy.check_rcpt("192.0.2.1", "h", "", "nobody@example.com") == Reject(R.USER_UNKNOWN)


def test_trivial_checks_accept() -> None:
    policy = policy_for(CASES / "basic.toml")
    assert policy.check_connect("192.0.2.1") == Accept()
    assert policy.check_helo("192.0.2.1", "x") == Accept()
    assert policy.check_mail("192.0.2.1", "x", "", {}) == Accept()


def test_relay_denied_reply() -> None:
    verdict = policy_for(CASES / "basic.toml").check_rcpt("192.0.2.1", "h", "a@example.com", "x@example.invalid")
    assert verdict == Reject(R.RELAY_DENIED)
    assert format_verdict(verdict) == "reject 550 5.7.1 Relaying denied"


def test_driver_unknown_command() -> None:
    out = list(drive(policy_for(CASES / "basic.toml"), ["frobnicate x", "rcpt alice@example.com"]))
    assert out == ["frobnicate x: error: unknown command 'frobnicate'", "rcpt alice@example.com: accept"]
