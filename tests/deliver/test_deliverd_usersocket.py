"""Tests for deliverd's per-user sockets: SOCKET.UID, made for a user's zygote, on which
the zygote's spare child accepts the user's clients itself (deliver.zygote, Zygote._take).

Checked: the socket's owner and mode, its place and its life (made with the zygote,
removed when the zygote expires, dies or the server stops); that clients take it (native
and Python); that the spare refuses anyone who is not exactly the zygote's identity in the
server's namespaces (root, other groups, another UTS namespace), and the client then falls
back to the main socket with the mail delivered exactly once; that rc edits are seen at
once and no recipe runs as root; that deliveries through it keep the zygote alive.

A real `postroom deliverd` runs as root (difftool.start_deliverd); deliveries are made as
the unprivileged TEST_USER through the native launcher; the server's --verbose log says
which process served what.
"""

from __future__ import annotations

import os
import pwd
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import difftool  # noqa: E402

from deliver.fastclient import user_socket_path  # noqa: E402

USER = pwd.getpwnam(difftool.TEST_USER)
MSG = b"From: a@example.org\nSubject: hello\n\nbody line\n"
HOUR_AGO = time.time() - 3600


@pytest.fixture(scope="module")
def server():
    with difftool.running_deliverd(max_children=8) as d:
        yield d


@pytest.fixture
def home():
    with difftool.reachable_home("pruser-test-") as h:
        yield h


def write_rc(home: Path, text: str, mtime: float | None = HOUR_AGO) -> Path:
    return difftool.write_user_rc(home, text, mtime=mtime)


def user_sock(server, uid: int = USER.pw_uid) -> Path:
    return Path(user_socket_path(str(server.socket), uid))


def log(server) -> str:
    return server.log.read_text(errors="replace")


def deliver(server, args: list[str], msg: bytes = MSG, *, prefix: list[str] = (), launcher=None,
            extra_groups=()) -> tuple[subprocess.CompletedProcess, int]:
    """One delivery as TEST_USER; (result, client pid)."""
    env = {"HOME": USER.pw_dir, "PATH": "/usr/bin:/bin", "LOGNAME": USER.pw_name, "TZ": "UTC"}
    p = subprocess.Popen([*prefix, str(launcher or server.launcher), "deliver", *args],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=env, cwd="/", user=None if prefix else USER.pw_uid,
                         group=None if prefix else USER.pw_gid,
                         extra_groups=None if prefix else list(extra_groups))
    out, err = p.communicate(msg, timeout=60)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err), p.pid


def how_served(server, client_pid: int) -> str:
    """"user socket" (a spare took it: it logs for itself, naming its zygote), "zygote"
    (handed over by deliverd), or "server" (a child of deliverd's own)."""
    text = log(server)
    if re.search(rf"DEBUG child \d+ serves pid {client_pid} uid \d+ \(zygote \d+\)", text):
        return "user socket"
    if re.search(rf"DEBUG zygote \d+ takes pid {client_pid} ", text):
        return "zygote"
    if re.search(rf"deliverd\[{server.proc.pid}\] DEBUG child \d+ serves pid {client_pid} ", text):
        return "server"
    raise AssertionError(f"pid {client_pid} not in the log")


def zygote_pids(server, uid: int = USER.pw_uid) -> list[int]:
    return [int(p) for p in re.findall(rf"INFO zygote (\d+) for uid {uid} gid", log(server))]


def warm(server, home: Path) -> Path:
    """An rc, and one delivery so that the user's zygote (and its socket) exist."""
    rc = write_rc(home, f"MAILDIR={home}\n:0:\ninbox\n")
    p, _ = deliver(server, [str(rc)])
    assert p.returncode == 0, p.stderr
    return rc


def test_the_socket_belongs_to_the_user(server, home: Path) -> None:
    warm(server, home)
    path = user_sock(server)
    st = os.lstat(path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert (st.st_uid, st.st_gid) == (USER.pw_uid, USER.pw_gid)
    assert path.parent == server.socket.parent
    top = os.stat(path.parent)
    assert top.st_uid == 0 and not top.st_mode & 0o022       # the user cannot replace it
    # the server's own socket is unchanged, and the path holds nothing from the mail
    assert stat.S_IMODE(os.lstat(server.socket).st_mode) == 0o666
    assert path.name == f"{server.socket.name}.{USER.pw_uid}"


def test_clients_take_the_user_socket(server, home: Path) -> None:
    """The native client and the Python one (postroom-python, deliver.fastclient)."""
    rc = warm(server, home)
    assert server.launcher.read_bytes()[:4] == b"\x7fELF"
    for launcher in (server.launcher, server.directory / "postroom-python"):
        p, pid = deliver(server, [str(rc)], launcher=launcher)
        assert p.returncode == 0, p.stderr
        assert how_served(server, pid) == "user socket"
    assert (home / "inbox").read_bytes().count(b"body line") == 3


_CONNECT = r"""
import os, socket, sys
sys.path.insert(0, sys.argv[2])
from deliver.fastclient import encode_request
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
s.connect(sys.argv[1])
cwd = os.open("/", os.O_PATH | os.O_DIRECTORY)
req = encode_request([sys.argv[3]], 0o022, {b"HOME": b"/"})
try:
    s.sendmsg([req], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                       b"".join(fd.to_bytes(4, sys.byteorder) for fd in (0, 1, 2, cwd)))])
except BrokenPipeError:
    pass    # the spare refused (and closed) before we sent: its "R" is still ours to read
sys.stdout.write(repr(s.recv(1)))
"""


@pytest.mark.parametrize("who", ["root", "nobody"])
def test_a_foreign_caller_on_the_user_socket_is_refused(server, home: Path, who: str) -> None:
    """Root may connect to any socket, and the user may have opened theirs to others
    (chmod 0666): the spare refuses whoever is not the user, before reading anything,
    and stays the one waiting for the user's next mail."""
    rc = warm(server, home)
    path = user_sock(server)
    other = pwd.getpwnam(who)
    os.chmod(path, 0o666)
    try:
        p = subprocess.run([sys.executable, "-c", _CONNECT, str(path), str(difftool.REPO), str(rc)],
                           capture_output=True, timeout=30, cwd="/", user=other.pw_uid,
                           group=other.pw_gid, extra_groups=[])
    finally:
        os.chmod(path, 0o600)
    assert p.stdout == b"b'R'", p.stderr
    assert re.search(rf"refused pid \d+ uid {other.pw_uid} on the user socket: uid {other.pw_uid} gid "
                     rf"{other.pw_gid}: not this zygote's", log(server))
    assert (home / "inbox").read_bytes().count(b"body line") == 1
    p, pid = deliver(server, [str(rc)])
    assert p.returncode == 0 and how_served(server, pid) == "user socket"
    assert (home / "inbox").read_bytes().count(b"body line") == 2


def test_other_groups_are_refused_and_fall_back(server, home: Path) -> None:
    """Same uid, another group set: the spare refuses, deliverd serves it (by a zygote of
    that identity), and the mail is delivered exactly once."""
    rc = warm(server, home)
    rc.write_text(f"MAILDIR={home}\n:0 wc\n| id -G > {home}/groups\n:0:\ninbox\n")
    os.utime(rc, (HOUR_AGO, HOUR_AGO))
    p, pid = deliver(server, [str(rc)], extra_groups=[100])
    assert p.returncode == 0, p.stderr
    assert how_served(server, pid) == "zygote"
    assert re.search(rf"refused pid {pid} uid {USER.pw_uid} on the user socket: other supplementary groups",
                     log(server))
    assert sorted((home / "groups").read_text().split()) == sorted([str(USER.pw_gid), "100"])
    assert (home / "inbox").read_bytes().count(b"body line") == 2


def test_another_namespace_is_refused_and_falls_back(server, home: Path) -> None:
    """A caller in its own UTS namespace (unshare -u, then the user's identity): the spare
    refuses it; deliverd serves it in a child that joins that namespace."""
    rc = warm(server, home)
    rc.write_text(f"MAILDIR={home}\n:0 wc\n| hostname > {home}/host\n:0:\ninbox\n")
    os.utime(rc, (HOUR_AGO, HOUR_AGO))
    prefix = ["unshare", "-u", "sh", "-c", 'hostname elsewhere.test && exec "$@"', "sh",
              "setpriv", f"--reuid={USER.pw_uid}", f"--regid={USER.pw_gid}", "--clear-groups"]
    p, _ = deliver(server, [str(rc)], prefix=prefix)
    assert p.returncode == 0, p.stderr
    assert (home / "host").read_text().strip() == "elsewhere.test"
    assert re.search(rf"refused pid \d+ uid {USER.pw_uid} on the user socket: caller in other namespaces",
                     log(server))
    assert (home / "inbox").read_bytes().count(b"body line") == 2


def test_nothing_runs_as_root(server, home: Path) -> None:
    rc = write_rc(home, f"MAILDIR={home}\n:0 wc\n| (id -u; id -g; id -G; grep -E '^Cap(Eff|Prm)' /proc/self/status) > {home}/ids\n:0:\ninbox\n")
    deliver(server, [str(rc)])
    p, pid = deliver(server, [str(rc)])
    assert p.returncode == 0, p.stderr
    assert how_served(server, pid) == "user socket"
    lines = (home / "ids").read_text().split("\n")
    assert lines[:3] == [str(USER.pw_uid), str(USER.pw_gid), str(USER.pw_gid)]
    assert all(line.split()[1] == "0000000000000000" for line in lines[3:5])
    # whatever waits on the socket is the user, with no capabilities
    for pid, fields in difftool._live_processes():
        if difftool._comm(pid) in (b"pr-spare", b"pr-zygote"):
            try:
                text = Path(f"/proc/{pid}/status").read_text()
            except FileNotFoundError:
                continue                 # it ended meanwhile
            if f"\nUid:\t{USER.pw_uid}\t" in text:
                assert re.search(r"^CapEff:\s*0+$", text, re.M) and re.search(r"^CapPrm:\s*0+$", text, re.M)
            else:
                assert not re.search(r"^Uid:\s*0\s", text, re.M), f"pid {pid} runs as root"


def test_rc_edits_are_seen_at_once(server, home: Path) -> None:
    rc = write_rc(home, f"MAILDIR={home}\n:0:\nbox-A\n")
    for _ in range(2):
        p, pid = deliver(server, [str(rc)])
        assert p.returncode == 0
    assert how_served(server, pid) == "user socket"
    with open(rc, "r+") as f:            # same size and inode, an old mtime
        f.write(f"MAILDIR={home}\n:0:\nbox-B\n")
    os.utime(rc, (HOUR_AGO + 60, HOUR_AGO + 60))
    p, pid = deliver(server, [str(rc)])
    assert p.returncode == 0 and how_served(server, pid) == "user socket"
    write_rc(home, f"MAILDIR={home}\n:0:\nbox-C\n", mtime=None)     # this very second
    p, pid = deliver(server, [str(rc)])
    assert p.returncode == 0 and how_served(server, pid) == "user socket"
    counts = {n: (home / n).read_bytes().count(b"body line") if (home / n).exists() else 0
              for n in ("box-A", "box-B", "box-C")}
    assert counts == {"box-A": 2, "box-B": 1, "box-C": 1}


def test_a_killed_spare_is_replaced_for_the_next_client(server, home: Path) -> None:
    rc = warm(server, home)
    z = zygote_pids(server)[-1]
    deadline = time.monotonic() + 10
    while True:
        spares = [pid for pid, fields in difftool._live_processes()
                  if int(fields[1]) == z and difftool._comm(pid) == b"pr-spare"]
        if spares or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert spares
    for pid in spares:
        os.kill(pid, signal.SIGKILL)
    time.sleep(0.3)
    p, pid = deliver(server, [str(rc)])
    assert p.returncode == 0, p.stderr
    assert how_served(server, pid) == "user socket"
    assert (home / "inbox").read_bytes().count(b"body line") == 2


def _wait_gone(path: Path, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while os.path.lexists(path):
        assert time.monotonic() < deadline, f"{path} still there"
        time.sleep(0.05)


def test_the_socket_goes_with_its_zygote() -> None:
    """Idle expiry, a killed zygote and the server's stop each remove the socket; the
    next mail is delivered through the main socket and makes a new one."""
    with difftool.running_deliverd(4, ["--zygote-idle", "1"]) as d, \
            difftool.reachable_home("pruser-idle-") as h:
        rc = warm(d, h)
        path = user_sock(d)
        assert path.exists()
        z1 = zygote_pids(d)[-1]
        _wait_gone(path)                                  # idle: retired
        assert f"zygote {z1} for uid {USER.pw_uid} retired: idle" in log(d)
        p, pid = deliver(d, [str(rc)])
        assert p.returncode == 0 and how_served(d, pid) == "zygote"
        assert path.exists()
        z2 = zygote_pids(d)[-1]
        assert z2 != z1
        os.kill(z2, signal.SIGKILL)                       # killed by its user
        _wait_gone(path)
        p, pid = deliver(d, [str(rc)])
        assert p.returncode == 0 and how_served(d, pid) == "zygote"
        assert path.exists()
        d.stop()                                          # the server stops
        assert not os.path.lexists(path)
        assert (h / "inbox").read_bytes().count(b"body line") == 3


def test_deliveries_through_the_socket_keep_the_zygote() -> None:
    """deliverd does not see these deliveries; the zygote's "in use" notes keep it from
    expiring while its user's mail keeps coming."""
    with difftool.running_deliverd(4, ["--zygote-idle", "2"]) as d, \
            difftool.reachable_home("pruser-keep-") as h:
        rc = warm(d, h)
        end = time.monotonic() + 5
        n = 1
        while time.monotonic() < end:
            p, pid = deliver(d, [str(rc)])
            assert p.returncode == 0 and how_served(d, pid) == "user socket"
            n += 1
            time.sleep(0.4)
        assert len(zygote_pids(d)) == 1 and "retired: idle" not in log(d)
        assert (h / "inbox").read_bytes().count(b"body line") == n
