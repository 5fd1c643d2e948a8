"""Differential tests: `postroom deliver` against the real procmail, one test per case folder.

Each folder under tests/deliver/cases/ is run twice in fresh isolated homes - once with
/usr/bin/procmail, once with `.venv/bin/postroom deliver` - and everything both left behind
(files, modes, bytes, exit statuses, stderr) must agree after normalising what legitimately
varies (see difftool.py for the folder conventions and the normalisations).

POSTROOM_DIFF_VIA_DELIVERD=1 runs the postroom side through `postroom deliverd` (started as
root for this module, see difftool "VIA DELIVERD"): the server's children must behave
byte for byte like direct runs.

POSTROOM_DIFF_AGAINST=procmail runs procmail on both sides: every case must then pass, which
proves the normalisation sound.  The self-check tests below prove the other direction: a
result that differs by one byte, one mode bit, one exit status is reported.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))
import difftool  # noqa: E402

CASES = difftool.case_names()


@pytest.fixture(scope="module", autouse=True)
def via_deliverd():
    """With POSTROOM_DIFF_VIA_DELIVERD=1, a server for the whole module."""
    if not difftool.via_deliverd_requested():
        yield None
        return
    server = difftool.start_deliverd()
    difftool.DELIVERD = server
    try:
        yield server
    finally:
        difftool.DELIVERD = None
        server.stop()


@pytest.fixture(scope="module")
def test_user_can_run_venv() -> None:
    """The venv interpreter must be executable by the unprivileged test user (a venv built
    from a python under /root is not); fail loudly rather than skip."""
    venv_python = (difftool.VENV_BIN / "python").resolve()
    check = ("import os, sys\n"
             "bad = [p for p in sys.argv[1:] if not os.access(p, os.X_OK)]\n"
             "print(' '.join(bad)); sys.exit(1 if bad else 0)\n")
    paths = [str(venv_python), str(difftool.REPO), str(difftool.VENV_BIN)]
    proc = subprocess.run(["/usr/bin/python3", "-c", check, *paths], user=difftool.TEST_USER,
                          group=difftool.TEST_USER, extra_groups=[], env={"PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, cwd="/")
    assert proc.returncode == 0, (
        f"user {difftool.TEST_USER} cannot execute/enter {proc.stdout.strip() or proc.stderr}: "
        "rebuild the venv from /usr/bin/python3 (make venv) so the differential tests can run "
        "`postroom deliver` as that user")


class OracleAhead:
    """procmail's side of the selected cases, run a few cases ahead in background threads.

    Why: procmail sleeps a second after its first write to an mbox whose access and
    modification times are equal (the NFS atime trick of its mailfold.c), which every
    mbox it creates is, so most cases spent most of their time waiting for procmail's
    sleep.  The sleeps of several cases now overlap, and each test waits only for its own
    case's result, which is usually there already.  Each run is the same isolated run
    as before (its own namespace, home and spool); only its start is earlier.
    """

    def __init__(self, names: list[str], workers: int = 4, ahead: int = 8) -> None:
        self._names = names
        self._index = {n: i for i, n in enumerate(names)}
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="oracle")
        self._futures: dict[str, Future[difftool.SideResult]] = {}
        self._submitted = 0
        self._ahead = ahead

    @staticmethod
    def _run(name: str) -> difftool.SideResult:
        return difftool.run_case(difftool.load_case(difftool.CASES_DIR / name),
                                 difftool.procmail_command())

    def start(self, name: str) -> Future[difftool.SideResult]:
        """procmail's side of case ``name``, queued with the next few cases' if it was not."""
        i = self._index.get(name)
        if i is not None:
            while self._submitted < min(i + 1 + self._ahead, len(self._names)):
                queued = self._names[self._submitted]
                self._futures[queued] = self._pool.submit(self._run, queued)
                self._submitted += 1
        future = self._futures.pop(name, None)
        return future if future is not None else self._pool.submit(self._run, name)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(scope="module")
def oracle(request: pytest.FixtureRequest) -> Iterator[OracleAhead]:
    """The module's OracleAhead, queued in the order the selected test_case items run."""
    names = [item.callspec.params["name"] for item in request.session.items
             if getattr(item, "originalname", None) == "test_case"
             and item.module is request.module]
    ahead = OracleAhead(names)
    try:
        yield ahead
    finally:
        ahead.close()


@pytest.mark.parametrize("name", CASES)
def test_case(name: str, test_user_can_run_venv: None, oracle: OracleAhead) -> None:
    case = difftool.load_case(difftool.CASES_DIR / name)
    command = difftool.postroom_command()
    assert command[0] == difftool.PROCMAIL or os.access(command[0], os.X_OK), (
        f"{command[0]} is not installed yet (pip install -e . provides the postroom script)")
    served = difftool.DELIVERD.served() if difftool.DELIVERD is not None else 0
    procmail_side = oracle.start(name)
    b = difftool.run_case(case, command)
    a = procmail_side.result()
    problems = difftool.compare(a, b, case.unordered)
    if difftool.DELIVERD is not None:
        # Proof that the server did every delivery, not the client's in-process fallback.
        assert difftool.DELIVERD.served() - served == len(case.messages), \
            difftool.DELIVERD.log.read_text()[-3000:]
    readme = (case.path / "README").read_text().strip() if (case.path / "README").exists() else ""
    # A deliberate, documented difference (README "Differences from procmail") is named in
    # the case's `postroom-differs` file.  It is an expected failure only while the
    # outputs really differ: a marker that no longer matches reality fails the test.
    differs = case.path / "postroom-differs"
    if differs.exists() and command[0] != difftool.PROCMAIL:
        reason = differs.read_text().strip()
        assert problems, f"case {name} is marked postroom-differs but now agrees: remove the marker"
        pytest.xfail(f"deliberate difference: {reason}")
    assert not problems, (f"case {name}: {readme}\n" + "\n\n".join(problems)
                          + "\n\nprocmail side:\n" + difftool.describe(a))


# ---------------------------------------------------------------------------------------
# Self-checks: the harness agrees with itself and does see differences.


def _procmail_twice(name: str, **kw) -> tuple[difftool.SideResult, difftool.SideResult]:
    case = difftool.load_case(difftool.CASES_DIR / name)
    with ThreadPoolExecutor(max_workers=2) as pool:
        fa = pool.submit(difftool.run_case, case, difftool.procmail_command())
        fb = pool.submit(difftool.run_case, case, difftool.procmail_command(), **kw)
        return fa.result(), fb.result()


def test_selfcheck_procmail_agrees_with_itself() -> None:
    """Maildir names, inode names, dates and pids all vary between these two runs."""
    a, b = _procmail_twice("selfcheck-varying-names")
    assert a.tree != b.tree  # raw results do differ ...
    assert difftool.compare(a, b) == []  # ... and normalise to the same


def test_selfcheck_extra_byte_is_detected() -> None:
    a, b = _procmail_twice("mbox-basic",
                           message_hook=lambda i, m: m.replace(b"Hi Bob,", b"Hi Bob!,"))
    problems = difftool.compare(a, b)
    inbox = [p for p in problems if p.startswith("home/inbox: contents differ")]
    assert inbox, problems
    assert "-Hi Bob,\n" in inbox[0] and "+Hi Bob!,\n" in inbox[0]
    # the abstract's byte count differs too
    assert any(p.startswith("home/log: contents differ") for p in problems)


def test_selfcheck_mode_owner_status_stderr_and_extra_file_are_detected() -> None:
    a, _ = _procmail_twice("mbox-basic")
    inbox = a.tree["home/inbox"]
    variants = {
        "mode": dataclasses.replace(a, tree={**a.tree, "home/inbox": dataclasses.replace(
            inbox, mode=inbox.mode | 0o001)}),
        "exit status": dataclasses.replace(a, runs=(dataclasses.replace(a.runs[0], status=75),)),
        "stderr differs": dataclasses.replace(
            a, runs=(dataclasses.replace(a.runs[0], stderr=b"procmail: oops\n"),)),
        "made only by postroom": dataclasses.replace(a, tree={**a.tree, "home/extra": inbox}),
        "made only by procmail": dataclasses.replace(
            a, tree={k: v for k, v in a.tree.items() if k != "home/inbox"}),
        "owner uid": dataclasses.replace(a, tree={**a.tree, "home/inbox": dataclasses.replace(
            inbox, owner=0)}),
    }
    for word, b in variants.items():
        problems = difftool.compare(a, b)
        assert len(problems) == 1 and word in problems[0], (word, problems)


# ---------------------------------------------------------------------------------------
# The normalisation functions on their own.


def test_ctime_utc() -> None:
    assert difftool.ctime_utc(0) == b"Thu Jan  1 00:00:00 1970"
    assert difftool.ctime_utc(1688378400) == b"Mon Jul  3 10:00:00 2023"


def test_normalise_dates_only_inside_window() -> None:
    now = 1795361366
    text = (b"From a  " + difftool.ctime_utc(now + 1) + b"\nFrom b  "
            + difftool.ctime_utc(now - 100) + b"\n")
    out = difftool.normalise_dates(text, now, now)
    assert out == b"From a  <date>\nFrom b  " + difftool.ctime_utc(now - 100) + b"\n"


def test_normalise_unique_times_only_inside_window() -> None:
    now = 1795361366
    text = (f'"md/tmp/{now + 1}.77_0.vm" "md/tmp/{now - 100}.77_0.vm" '
            f'"{now}.txt" "{now}.77.vm"').encode()
    out = difftool.normalise_unique_times(text, now, now)
    assert out == (f'"md/tmp/<time>.77_0.vm" "md/tmp/{now - 100}.77_0.vm" '
                   f'"{now}.txt" "{now}.77.vm"').encode()


def test_maildir_key() -> None:
    assert difftool.maildir_key("1795361366.7033_1.vm") == (1795361366, 1, 7033)
    assert difftool.maildir_key("1795361366.7033_1.host.example.org") == (1795361366, 1, 7033)
    assert difftool.maildir_key("msg.4MMI") is None
    assert difftool.maildir_key("17") is None


def test_inode_name_matches_observed_procmail_names() -> None:
    # observed: inode 2147128 -> msg.4MMI; digits 62/63 -> '-' / '_' (msg.-DMI, msg._QMI)
    assert difftool.inode_name(2147128) == "4MMI"
    assert difftool.inode_name(62) == "-"
    assert difftool.inode_name(63 + 16 * 64) == "_Q"
    assert difftool.inode_name(0) == "A"


def test_normalise_abstract_padding_only_after_placeholders() -> None:
    log = (b"  Folder: md/new/<maildir-1>\t\t\t\t    177\n"
           b"  Folder: inbox\t\t\t\t\t\t\t\t    229\n")
    assert difftool.normalise_abstract_padding(log) == (
        b"  Folder: md/new/<maildir-1> <pad> 177\n"
        b"  Folder: inbox\t\t\t\t\t\t\t\t    229\n")


def test_normalise_pids() -> None:
    out = difftool.normalise_pids(b"procmail: [123] x\npid=4567 not 45678 or 14567\n", [4567])
    assert out == b"procmail: [<pid>] x\npid=<pid> not 45678 or 14567\n"


def test_input_numbers_hold_every_number_of_the_case_files(tmp_path: Path) -> None:
    (tmp_path / "msg").write_bytes(b"Date: Mon, 3 Jul 2023 10:00:00 +0000\n\nx\n")
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "f").write_bytes(b"id 77\n")
    case = difftool.load_case(tmp_path)
    assert {b"3", b"2023", b"10", b"00", b"0000", b"77"} == difftool.input_numbers(case)


def _side(paths: dict[str, difftool.Entry], runs: list[tuple[str, ...]]) -> difftool.SideResult:
    return difftool.SideResult(
        command=("x",), tree=paths, workdir="/tmp/prdiff-x",
        runs=tuple(difftool.Run(0, b"", 1, 0.0, 0.0, r) for r in runs))


def test_skip_pids_past_moves_the_next_pid_clear_of_the_input() -> None:
    taken = frozenset(str(n).encode() for n in range(0, 2000))
    difftool.skip_pids_past(taken)
    pid = subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True).stdout.strip()
    assert pid.encode() not in taken and int(pid) >= 2000


def test_lost_write_race_only_for_a_program_and_a_small_mail(tmp_path: Path) -> None:
    (tmp_path / "msg").write_bytes(b"Subject: x\n\nbody\n")
    (tmp_path / "rc").write_bytes(b"LOGFILE=log\n:0 w\n| exit 1\n:0\nbox\n")
    case = difftool.load_case(tmp_path)
    program = b'procmail: Error while writing to " exit 1"\n'
    folder = b'procmail: Error while writing to "box"\n'

    def side(logged: bytes) -> difftool.SideResult:
        log = difftool.Entry("file", 0o600, logged, 3)
        return _side({"home/log": log}, [("home/log",)])

    assert difftool.lost_write_race(case, side(program))
    # a program run without the shell is named by its first word
    (tmp_path / "rc").write_bytes(b"LOGFILE=log\n:0\n| /bin/true $@ x\n")
    named = b'procmail: Error while writing to "/bin/true"\n'
    assert difftool.lost_write_race(difftool.load_case(tmp_path), side(named))
    assert not difftool.lost_write_race(case, side(folder))
    assert not difftool.lost_write_race(case, side(b""))
    (tmp_path / "msg").write_bytes(b"Subject: x\n\n" + b"y" * 5000 + b"\n")
    assert not difftool.lost_write_race(difftool.load_case(tmp_path), side(program))


def test_name_map_orders_maildir_names_by_delivery_and_run() -> None:
    f = difftool.Entry("file", 0o600, b"x", 5)
    tree = {"home/md/new/100.9_1.vm": f, "home/md/new/100.9_0.vm": f,
            "home/md/new/99.3_0.vm": f}
    side = _side(tree, [("home/md/new/100.9_1.vm", "home/md/new/100.9_0.vm"),
                        ("home/md/new/99.3_0.vm",)])
    m = difftool.name_map(side)
    assert m == {"100.9_0.vm": "<maildir-1>", "100.9_1.vm": "<maildir-2>",
                 "99.3_0.vm": "<maildir-3>"}
    assert difftool.rename_path("home/md/new/99.3_0.vm", m) == "home/md/new/<maildir-3>"
    assert difftool.apply_names(b"Folder: md/new/100.9_1.vm", m) == b"Folder: md/new/<maildir-2>"


def test_name_map_inode_names_need_the_real_inode() -> None:
    tree = {"home/d/msg.4MMI": difftool.Entry("file", 0o600, b"a", 2147128),
            "home/d/msg.4MMJ": difftool.Entry("file", 0o600, b"a", 2147128 + 1)}
    m = difftool.name_map(_side(tree, [tuple(tree)]))
    assert m == {"msg.4MMI": "msg.<inode-1>"}


def test_insert_sendmail() -> None:
    ins = difftool.insert_sendmail
    assert ins(["-f", "a@b", "./rc"], "S") == ["-f", "a@b", "SENDMAIL=S", "./rc"]
    assert ins(["-fa@b", "-t", "./rc", "X=1"], "S") == ["-fa@b", "-t", "SENDMAIL=S", "./rc", "X=1"]
    assert ins(["-tf", "a@b", "-m", "./rc", "1"], "S") == ["-tf", "a@b", "-m", "SENDMAIL=S",
                                                           "./rc", "1"]
    assert ins(["-a", "x", "-p"], "S") == ["-a", "x", "-p", "SENDMAIL=S"]
    assert ins(["-r", "a@b", "./rc"], "S") == ["-r", "a@b", "SENDMAIL=S", "./rc"]
    assert ins(["-d", "u"], "S") == ["-d", "u"]
    assert ins(["-f"], "S") == ["-f"]
    assert ins(["-t", "-a"], "S") == ["-t", "-a"]
    assert ins(["SENDMAIL=/x", "./rc"], "S") == ["SENDMAIL=/x", "./rc"]


@settings(max_examples=60, deadline=None)
@given(opts=st.lists(st.sampled_from(["-t", "-p", "-o", "-Y", "-m", "-ft", ["-f", "x"],
                                      ["-a", "-y"], ["-r", "x"], "-fx", "-ax"]), max_size=5),
       rest=st.lists(st.sampled_from(["./rc", "A=1", "-", "arg"]), max_size=3))
def test_insert_sendmail_lands_after_the_options(opts: list, rest: list[str]) -> None:
    flat = [w for o in opts for w in (o if isinstance(o, list) else [o])]
    out = difftool.insert_sendmail(flat + rest, "S")
    assert out == flat + ["SENDMAIL=S"] + rest
