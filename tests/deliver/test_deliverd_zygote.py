"""Tests for deliverd's per-user zygotes (deliver.zygote): reuse, rc warmth and its
invalidation, credentials (never root), idle expiry, and what happens when a zygote dies.

A real `postroom deliverd` runs as root on a temp socket; deliveries are made as the
unprivileged TEST_USER through the launcher (difftool.start_deliverd), from this test's
own namespaces, so they take the zygote path.  The server's --verbose log says which
process served what.
"""

from __future__ import annotations

import os
import pwd
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import difftool  # noqa: E402

USER = pwd.getpwnam(difftool.TEST_USER)
MSG = b"From: a@example.org\nSubject: hello\n\nbody line\n"
HOUR_AGO = time.time() - 3600


@pytest.fixture(scope="module")
def server():
    with difftool.running_deliverd(max_children=8) as d:
        yield d


@pytest.fixture
def home():
    with difftool.reachable_home("przygote-test-") as h:
        yield h


def write_rc(home: Path, text: str, name: str = "rc", mtime: float | None = HOUR_AGO) -> Path:
    return difftool.write_user_rc(home, text, name, mtime)


def deliver(server, args: list[str], msg: bytes = MSG, *, extra_groups=(), socket_path=None,
            user=USER, timeout: float = 30) -> subprocess.CompletedProcess:
    env = {"HOME": user.pw_dir, "PATH": "/usr/bin:/bin", "LOGNAME": user.pw_name, "TZ": "UTC"}
    if socket_path is not None:
        env["POSTROOM_DELIVERD"] = socket_path
    return subprocess.run([str(server.launcher), "deliver", *args], input=msg, capture_output=True,
                          env=env, cwd="/", user=user.pw_uid, group=user.pw_gid,
                          extra_groups=list(extra_groups), timeout=timeout)


def log(server) -> str:
    return server.log.read_text(errors="replace")


def zygotes(server) -> dict[int, int]:
    """zygote pid -> uid, from the log."""
    return {int(p): int(u) for p, u in re.findall(r"zygote (\d+) for uid (\d+) gid", log(server))}


def server_of(server, client_pid: int) -> tuple[int, int]:
    """(pid of the process that logged it, pid of the delivery child) for a client.

    A zygote logs the line after its fork, so a loaded machine can finish the delivery
    (and the client) before the line is written: it is waited for, a few seconds."""
    pattern = r"deliverd\[(\d+)\] DEBUG child (\d+) serves pid " + str(client_pid) + " "
    deadline = time.monotonic() + 5
    while not (m := re.findall(pattern, log(server))) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert m, f"no child served pid {client_pid}"
    by, child = int(m[-1][0]), int(m[-1][1])
    if by == child:      # a spare on the per-user socket logs for itself, naming its zygote
        by = int(re.findall(r"DEBUG child %d serves pid %d uid \d+ \(zygote (\d+)\)" % (child, client_pid),
                            log(server))[-1])
    return by, child


def deliver_tracked(server, args: list[str], msg: bytes = MSG, **kw):
    """As deliver(), returning (result, logging pid, child pid)."""
    env = {"HOME": USER.pw_dir, "PATH": "/usr/bin:/bin", "LOGNAME": USER.pw_name, "TZ": "UTC"}
    p = subprocess.Popen([str(server.launcher), "deliver", *args], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd="/",
                         user=USER.pw_uid, group=USER.pw_gid, extra_groups=list(kw.get("extra_groups", ())))
    out, err = p.communicate(msg, timeout=30)
    by, child = server_of(server, p.pid)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err), by, child


def status_ids(pid: int) -> dict[str, list[int]]:
    text = Path(f"/proc/{pid}/status").read_text()
    out = {}
    for key in ("Uid", "Gid", "Groups", "CapEff", "CapPrm"):
        m = re.search(rf"^{key}:[ \t]*(.*)$", text, re.M)
        out[key] = [int(x, 16) if key.startswith("Cap") else int(x) for x in m.group(1).split()]
    return out


def test_one_zygote_serves_a_user_and_children_are_fresh(server, home: Path) -> None:
    rc = write_rc(home, f"MAILDIR={home}\n:0:\ninbox\n")
    seen = []
    for _ in range(4):
        p, by, child = deliver_tracked(server, [str(rc)])
        assert p.returncode == 0, p.stderr
        seen.append((by, child))
    zpids = {by for by, _ in seen}
    assert len(zpids) == 1 and zpids <= set(zygotes(server))    # one zygote ...
    assert by != server.proc.pid
    assert len({child for _, child in seen}) == 4               # ... one child per mail
    assert (home / "inbox").read_bytes().count(b"body line") == 4


def test_nothing_runs_as_root(server, home: Path) -> None:
    rc = write_rc(home, f"MAILDIR={home}\n:0 wc\n| (id -u; id -g; id -G; grep -E '^Cap(Eff|Prm)' /proc/self/status) > {home}/ids\n:0:\ninbox\n")
    p, by, _ = deliver_tracked(server, [str(rc)])
    assert p.returncode == 0, p.stderr
    lines = (home / "ids").read_text().split("\n")
    assert lines[:3] == [str(USER.pw_uid), str(USER.pw_gid), str(USER.pw_gid)]
    assert all(line.split()[1] == "0000000000000000" for line in lines[3:5])
    # the zygote and its waiting spare: the caller's identity, no capabilities
    ids = status_ids(by)
    assert ids["Uid"] == [USER.pw_uid] * 4 and ids["Gid"] == [USER.pw_gid] * 4
    assert ids["Groups"] == [] and ids["CapEff"] == [0] and ids["CapPrm"] == [0]   # the caller had none
    deadline = time.monotonic() + 10     # the next spare is forked once the client is done
    while True:
        spares = [pid for pid, fields in difftool._live_processes()
                  if int(fields[1]) == by and difftool._comm(pid) == b"pr-spare"]
        if spares or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert spares
    for pid in spares:
        assert status_ids(pid)["Uid"] == [USER.pw_uid] * 4


def test_other_groups_get_their_own_zygote(server, home: Path) -> None:
    """The children have the caller's exact groups: a caller with an extra group is
    served by another zygote, whose children have that group too."""
    rc = write_rc(home, f"MAILDIR={home}\n:0 wc\n| id -G > {home}/groups\n:0:\ninbox\n")
    p1, z1, _ = deliver_tracked(server, [str(rc)])
    g1 = (home / "groups").read_text().split()
    p2, z2, _ = deliver_tracked(server, [str(rc)], extra_groups=[100])
    g2 = (home / "groups").read_text().split()
    assert p1.returncode == p2.returncode == 0
    assert z1 != z2 and {z1, z2} <= set(zygotes(server))
    assert g1 == [str(USER.pw_gid)]
    assert sorted(g2) == sorted([str(USER.pw_gid), "100"])


def test_rc_edits_are_seen_at_once(server, home: Path) -> None:
    """The zygote preloads the rc; an edit in place with the same size and inode, a
    replacement by rename, and an edit this very second are each delivered by the new
    text on the next mail."""
    rc = write_rc(home, f"MAILDIR={home}\n:0:\nbox-A\n")
    ino = rc.stat().st_ino
    for _ in range(2):
        assert deliver(server, [str(rc)]).returncode == 0
    assert re.search(r"preloaded .*" + re.escape(str(rc)), log(server))
    # same size, same inode, another (old) mtime
    with open(rc, "r+") as f:
        f.write(f"MAILDIR={home}\n:0:\nbox-B\n")
    os.utime(rc, (HOUR_AGO + 60, HOUR_AGO + 60))
    assert rc.stat().st_ino == ino
    assert deliver(server, [str(rc)]).returncode == 0
    assert deliver(server, [str(rc)]).returncode == 0
    # replaced by rename: a new inode
    new = write_rc(home, f"MAILDIR={home}\n:0:\nbox-C\n", "rc.new")
    os.rename(new, rc)
    assert deliver(server, [str(rc)]).returncode == 0
    # edited just now (not yet settled: the child reads it itself)
    write_rc(home, f"MAILDIR={home}\n:0:\nbox-D\n", mtime=None)
    assert deliver(server, [str(rc)]).returncode == 0
    counts = {name: (home / name).read_bytes().count(b"body line") for name in ("box-A", "box-B", "box-C", "box-D")}
    assert counts == {"box-A": 2, "box-B": 2, "box-C": 1, "box-D": 1}


def test_unsafe_rc_is_refused_as_directly(server, home: Path) -> None:
    rc = write_rc(home, f"MAILDIR={home}\n:0:\ninbox\n")
    os.chmod(rc, 0o666)
    via = deliver(server, [str(rc)])
    direct = deliver(server, [str(rc)], socket_path="")
    assert via.returncode == direct.returncode
    assert b"Suspicious rcfile" in via.stderr and via.stderr == direct.stderr
    assert not (home / "inbox").exists()
    assert not re.search(r"preloaded .*" + re.escape(str(rc)) + r"$", log(server), re.M)


def test_concurrent_deliveries_through_one_zygote(server, home: Path) -> None:
    rc = write_rc(home, f"MAILDIR={home}\n:0:\ninbox\n")
    env = {"HOME": USER.pw_dir, "PATH": "/usr/bin:/bin", "TZ": "UTC"}
    procs = [subprocess.Popen([str(server.launcher), "deliver", str(rc)], stdin=subprocess.PIPE,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd="/",
                              user=USER.pw_uid, group=USER.pw_gid, extra_groups=[]) for _ in range(12)]
    for i, p in enumerate(procs):
        p.stdin.write(MSG.replace(b"hello", b"hello %d" % i))
        p.stdin.close()
    assert [p.wait(60) for p in procs] == [0] * 12
    text = (home / "inbox").read_bytes()
    assert sorted(int(n) for n in re.findall(rb"Subject: hello (\d+)", text)) == list(range(12))


def test_a_killed_zygote_costs_nothing(server, home: Path) -> None:
    rc = write_rc(home, f"MAILDIR={home}\n:0:\ninbox\n")
    p, zpid, _ = deliver_tracked(server, [str(rc)])
    assert p.returncode == 0
    os.kill(zpid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while f"zygote {zpid} for uid {USER.pw_uid} ended" not in log(server):
        assert time.monotonic() < deadline, "the server did not notice"
        time.sleep(0.05)
    p, by, _ = deliver_tracked(server, [str(rc)])
    assert p.returncode == 0, p.stderr
    assert by != zpid
    assert (home / "inbox").read_bytes().count(b"body line") == 2
    server.wait_idle(10)


def test_root_callers_get_a_child_of_the_server(server, home: Path) -> None:
    """Root is never served by a zygote (a zygote never has root to give)."""
    rc = write_rc(home, f"MAILDIR={home}\n:0:\ninbox\n")
    os.chown(rc, 0, 0)
    env = {"HOME": "/root", "PATH": "/usr/bin:/bin", "TZ": "UTC"}
    p = subprocess.run([str(server.launcher), "deliver", str(rc)], input=MSG, capture_output=True,
                       env=env, cwd="/")
    assert p.returncode == 77 and b"refusing to run recipes as root" in p.stderr
    by, _ = server_of(server, p.args and _last_client_pid(server))
    assert by == server.proc.pid


def _last_client_pid(server) -> int:
    return int(re.findall(r"child \d+ serves pid (\d+) ", log(server))[-1])


def test_idle_zygotes_expire() -> None:
    with difftool.running_deliverd(4, ["--zygote-idle", "1"]) as d, \
            difftool.reachable_home("przygote-idle-") as h:
        rc = write_rc(h, f"MAILDIR={h}\n:0:\ninbox\n")
        p, z1, _ = deliver_tracked(d, [str(rc)])
        assert p.returncode == 0
        deadline = time.monotonic() + 15
        while os.path.exists(f"/proc/{z1}") and difftool._comm(z1) == b"pr-zygote":
            assert time.monotonic() < deadline, "the idle zygote did not exit"
            time.sleep(0.1)
        assert f"zygote {z1} for uid {USER.pw_uid} retired: idle" in log(d)
        p, z2, _ = deliver_tracked(d, [str(rc)])
        assert p.returncode == 0 and z2 != z1
        assert (h / "inbox").read_bytes().count(b"body line") == 2


def test_prefault_stops_for_a_waiting_client() -> None:
    """A spare copies its memory only while nobody waits: a readable fd (a client on
    the per-user socket, a job) stops the copy at once."""
    from deliver.zygote import prefault
    r, w = os.pipe()
    try:
        assert prefault([r]) > 0                 # nothing waiting: it copies
        os.write(w, b"x")
        assert prefault([r]) == 0                # a client waits: not a byte
    finally:
        os.close(r)
        os.close(w)


def test_the_warmer_builds_the_header_set_its_children_inherit(tmp_path: Path) -> None:
    # In process (no server): what a zygote does before it forks.  The rc file's header
    # Set (rules.prefilter) is built here, so no forked delivery builds its own.
    from deliver.zygote import RcWarmer
    from rules import prefilter
    from rules.cache import load_rc
    rc = tmp_path / "rc"
    rc.write_text(f"MAILDIR={tmp_path}\n:0:\n* ^Subject: warm\nwarm\n")
    os.utime(rc, (HOUR_AGO, HOUR_AGO))
    assert RcWarmer().learn([str(rc)], {"PATH": "/usr/bin:/bin"}) == [str(rc)]
    first = load_rc(str(rc)).items[1].conditions[0]
    assert prefilter.entry_for(first, False) is not None
