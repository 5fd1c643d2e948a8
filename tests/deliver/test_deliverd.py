"""Tests for the warm delivery server (deliver.deliverd) and its client (deliver.fastclient).

A real `postroom deliverd` runs as root on a temp socket for the module; deliveries are
made as the unprivileged TEST_USER through a launcher built like `make venv`'s, and each
result is compared with a direct, in-process run ($POSTROOM_DELIVERD empty) of the same
thing.  The server's --verbose log proves which deliveries it served.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import difftool  # noqa: E402

from deliver import fastclient  # noqa: E402
from deliver.deliverd import ProtocolError, parse_request  # noqa: E402

USER = pwd.getpwnam(difftool.TEST_USER)
MSG = b"From: a@example.org\nSubject: hello\n\nbody line\n"


@pytest.fixture(scope="module")
def server():
    with difftool.running_deliverd(max_children=4) as d:
        yield d


@pytest.fixture
def home():
    with difftool.reachable_home("prdeliverd-test-") as h:
        yield h


def write_rc(home: Path, text: str) -> Path:
    return difftool.write_user_rc(home, text)


def deliver(server, args: list[str], msg: bytes = MSG, *, socket_path: str | None = None,
            cwd: Path | str = "/", timeout: float = 30) -> subprocess.CompletedProcess:
    """`postroom deliver ARGS` as TEST_USER; socket_path "" means in process."""
    env = {"HOME": USER.pw_dir, "PATH": "/usr/bin:/bin", "LOGNAME": USER.pw_name, "TZ": "UTC"}
    if socket_path is not None:
        env["POSTROOM_DELIVERD"] = socket_path
    return subprocess.run([str(server.launcher), "deliver", *args], input=msg, capture_output=True,
                          env=env, cwd=cwd, user=USER.pw_uid, group=USER.pw_gid, extra_groups=[],
                          timeout=timeout)


def test_mail_lands_owned_by_the_caller(server, home: Path) -> None:
    rc = write_rc(home, f"MAILDIR={home}\n:0 wc\n| (id -u; id -G) > {home}/ids\n:0:\ninbox\n")
    before = server.served()
    p = deliver(server, [str(rc)])
    assert p.returncode == 0, p.stderr
    assert server.served() == before + 1
    inbox = home / "inbox"
    assert inbox.read_bytes().endswith(MSG + b"\n")
    assert inbox.stat().st_uid == USER.pw_uid and inbox.stat().st_gid == USER.pw_gid
    # exactly the caller's credentials: its uid, and only its gid (extra_groups=[])
    assert (home / "ids").read_text().split() == [str(USER.pw_uid), str(USER.pw_gid)]
    assert (home / "ids").stat().st_uid == USER.pw_uid


def _both(server, home: Path, args: list[str], msg: bytes = MSG, **kw):
    before = server.served()
    via = deliver(server, args, msg, **kw)
    assert server.served() == before + 1, "the server did not serve it"
    direct = deliver(server, args, msg, socket_path="", **kw)
    assert server.served() == before + 1
    return via, direct


def test_exit_73_when_nothing_can_be_written(server, home: Path) -> None:
    ro = home / "ro"
    ro.mkdir()
    for name in ("box", "box2"):
        (ro / name).touch(mode=0o444)
    shutil.chown(ro, USER.pw_uid, USER.pw_gid)
    os.chmod(ro, 0o555)
    rc = write_rc(home, f"DEFAULT={ro}/box\nORGMAIL={ro}/box2\n")
    via, direct = _both(server, home, [str(rc)])
    assert via.returncode == direct.returncode == 73
    assert via.stderr == direct.stderr


def test_exitcode_and_stderr_pass_through(server, home: Path) -> None:
    rc = write_rc(home, f'MAILDIR={home}\nLOG="to the caller\'s stderr\n"\nEXITCODE=42\n:0:\ninbox\n')
    via, direct = _both(server, home, [str(rc)])
    assert via.returncode == direct.returncode == 42
    assert b"to the caller's stderr" in via.stderr
    assert via.stderr == direct.stderr


def test_cwd_and_relative_rc(server, home: Path) -> None:
    write_rc(home, "MAILDIR=.\n:0:\nhere\n")
    via, direct = _both(server, home, ["-m", "./rc"], cwd=home)
    assert via.returncode == direct.returncode == 0
    assert (home / "here").read_bytes().count(b"body line") == 2


def test_cannot_deliver_as_someone_else(server, home: Path) -> None:
    """-d root as an unprivileged caller: refused exactly as in a direct run, and
    nothing is written for root."""
    spool_before = sorted(os.listdir("/var/mail")) if os.path.isdir("/var/mail") else []
    via, direct = _both(server, home, ["-d", "root"])
    assert via.returncode == direct.returncode != 0
    assert via.returncode == 77
    assert via.stderr == direct.stderr and b"Insufficient privileges" in via.stderr
    assert (sorted(os.listdir("/var/mail")) if os.path.isdir("/var/mail") else []) == spool_before


def test_fallback_when_socket_missing(server, home: Path) -> None:
    rc = write_rc(home, f"MAILDIR={home}\n:0:\ninbox\n")
    before = server.served()
    p = deliver(server, [str(rc)], socket_path=str(home / "no-such.sock"))
    assert p.returncode == 0, p.stderr
    assert server.served() == before
    assert (home / "inbox").read_bytes().endswith(MSG + b"\n")


@pytest.mark.parametrize("answer", [b"R", b""])
def test_fallback_when_server_refuses_or_closes(server, home: Path, answer: bytes) -> None:
    """A server that answers R, or closes before A, makes the client deliver itself."""
    rc = write_rc(home, f"MAILDIR={home}\n:0:\ninbox\n")
    path = str(home.parent / "fake.sock")
    fake = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    fake.bind(path)
    os.chmod(path, 0o666)
    fake.listen(1)
    got: list[int] = []

    def serve() -> None:
        conn, _ = fake.accept()
        msg, anc, _, _ = conn.recvmsg(1 << 16, socket.CMSG_SPACE(16))
        for _lvl, _kind, data in anc:
            for i in range(0, len(data), 4):
                got.append(int.from_bytes(data[i:i + 4], sys.byteorder))
        conn.sendall(answer)
        for fd in got:
            os.close(fd)
        conn.close()

    t = threading.Thread(target=serve)
    t.start()
    try:
        p = deliver(server, [str(rc)], socket_path=path)
    finally:
        t.join(10)
        fake.close()
    assert len(got) == 4          # it did talk to the fake server ...
    assert p.returncode == 0, p.stderr
    assert (home / "inbox").read_bytes().endswith(MSG + b"\n")    # ... and then delivered itself


def test_killed_client_does_not_stick_the_server(server, home: Path) -> None:
    rc = write_rc(home, f"MAILDIR={home}\n:0 w\n| sleep 3; cat > {home}/slow\n")
    env = {"HOME": USER.pw_dir, "PATH": "/usr/bin:/bin", "TZ": "UTC"}
    slow = subprocess.Popen([str(server.launcher), "deliver", str(rc)], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd="/",
                            user=USER.pw_uid, group=USER.pw_gid, extra_groups=[])
    slow.stdin.write(MSG)
    slow.stdin.close()
    deadline = time.monotonic() + 10
    while not server.descendants() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.descendants(), "the slow delivery never started in the server"
    slow.send_signal(signal.SIGKILL)
    slow.wait()
    # the server answers the next client at once, while the orphaned program still sleeps
    rc2 = write_rc(home, f"MAILDIR={home}\n:0:\nfast\n")
    t0 = time.monotonic()
    p = deliver(server, [str(rc2)], timeout=10)
    assert p.returncode == 0 and time.monotonic() - t0 < 5
    assert (home / "fast").exists()
    server.wait_idle(10)
    assert not server.descendants()
    assert b"went away; terminating child" in server.log.read_bytes()


def test_server_refuses_other_uid_when_not_root(home: Path) -> None:
    """A server running as TEST_USER serves nobody else: a raw request from uid 65534
    (no client-side check in the way) gets R, and its fds are not used."""
    tmp_path = home.parent
    sockdir = tmp_path / "s"
    sockdir.mkdir(mode=0o755)
    os.chown(sockdir, USER.pw_uid, USER.pw_gid)
    launcher = tmp_path / "postroom"
    difftool.make_launcher(launcher, str(sockdir / "d.sock"))
    log = open(tmp_path / "log", "wb")
    srv = subprocess.Popen([str(launcher), "deliverd", "--socket", str(sockdir / "d.sock")],
                           stdout=log, stderr=log, user=USER.pw_uid, group=USER.pw_gid,
                           extra_groups=[], cwd="/", env={"PATH": "/usr/bin:/bin"})
    try:
        deadline = time.monotonic() + 20
        while not (sockdir / "d.sock").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        raw = ("import os, socket, sys\n"
               "sys.path.insert(0, %r)\n"
               "from deliver.fastclient import encode_request\n"
               "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
               "fd = os.open('/', os.O_PATH)\n"
               "s.sendmsg([encode_request(['x'], 0o22, {})], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,"
               " b''.join(f.to_bytes(4, sys.byteorder) for f in (0, 1, 2, fd)))])\n"
               "sys.stdout.write(repr(s.recv(3)))\n") % str(difftool.REPO)
        p = subprocess.run([str(difftool.VENV_BIN / "python"), "-c", raw, str(sockdir / "d.sock")],
                           capture_output=True, text=True, user=65534, group=65534, extra_groups=[],
                           cwd="/", timeout=20)
        assert p.stdout == "b'R'", p.stderr
    finally:
        srv.terminate()
        srv.wait(10)
        log.close()
    assert "only uid" in (tmp_path / "log").read_text()


def test_request_codec_roundtrip_and_rejects() -> None:
    raw = fastclient.encode_request(["-f", "x@y", "r\xe9c", "\udcff"], 0o027, {b"A": b"1=2", b"B": b""})
    req = parse_request(raw)
    assert req.argv == ["-f", "x@y", "r\xe9c", "\udcff"] and req.umask == 0o027
    assert req.environ == [(b"A", b"1=2"), (b"B", b"")]
    for bad in (b"", b"XXXX\0\0\0\0", raw[:-1], raw + b"x", b"PRD1\0\0\0\x03999"):
        with pytest.raises(ProtocolError):
            parse_request(bad)


def test_client_imports_almost_nothing() -> None:
    code = ("import sys; before = set(sys.modules); sys.path.insert(0, %r)\n"
            "import deliver.fastclient\n"
            "print(' '.join(sorted(set(sys.modules) - before)))") % str(difftool.REPO)
    out = subprocess.run([str(difftool.VENV_BIN / "python"), "-I", "-S", "-c", code],
                         capture_output=True, text=True, check=True).stdout.split()
    assert set(out) <= {"deliver", "deliver.fastclient", "_socket"}, out


def test_garbage_and_silent_clients_do_not_hurt_the_server(server, home: Path) -> None:
    """Bad magic is refused, a client that connects and says nothing is simply left
    pending, and a real delivery still goes through meanwhile."""
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.connect(str(server.socket))
    bad = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bad.connect(str(server.socket))
    bad.sendall(b"GET / HTTP/1.0\r\n\r\n")
    bad.settimeout(5)
    assert bad.recv(1) == b"R"
    bad.close()
    rc = write_rc(home, f"MAILDIR={home}\n:0:\ninbox\n")
    before = server.served()
    p = deliver(server, [str(rc)], timeout=10)
    assert p.returncode == 0 and server.served() == before + 1
    silent.close()


def test_sigterm_stops_listening_and_removes_the_socket() -> None:
    d = difftool.start_deliverd(max_children=1)
    try:
        d.proc.send_signal(signal.SIGTERM)
        assert d.proc.wait(10) == 0
        assert not d.socket.exists()
        assert b"stopped" in d.log.read_bytes()
    finally:
        d.stop()
