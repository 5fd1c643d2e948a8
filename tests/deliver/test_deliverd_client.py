"""Tests for the native `postroom` client (deliver/client/postroom-deliver.c, built by
deliver.clientbuild) against a real `postroom deliverd` and against fake servers.

The client is compiled for each module run into a temp directory (difftool.make_launcher,
as `make venv` does).  Deliveries run as the unprivileged TEST_USER; each result through
the server is compared with a direct run of the same launcher ($POSTROOM_DELIVERD empty).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import difftool  # noqa: E402

from deliver.deliverd import parse_request  # noqa: E402

USER = pwd.getpwnam(difftool.TEST_USER)
NOBODY = pwd.getpwnam("nobody")
MSG = b"From: a@example.org\nSubject: hello\n\nbody line\n"


@pytest.fixture(scope="module")
def server():
    assert shutil.which(os.environ.get("CC") or "cc"), "make test-deps installs gcc"
    with difftool.running_deliverd(max_children=4) as d:
        yield d


@pytest.fixture
def home():
    with difftool.reachable_home("prclient-test-") as h:
        yield h


def write_rc(home: Path, text: str, name: str = "rc") -> Path:
    return difftool.write_user_rc(home, text, name)


def run(server, args: list[str], msg: bytes = MSG, *, socket_path: str | None = None,
        env: dict[str, str] | None = None, user=USER, cwd="/", timeout=60) -> subprocess.CompletedProcess:
    e = {"HOME": user.pw_dir, "PATH": "/usr/bin:/bin", "LOGNAME": user.pw_name, "TZ": "UTC"}
    e.update(env or {})
    if socket_path is not None:
        e["POSTROOM_DELIVERD"] = socket_path
    return subprocess.run([str(server.launcher), *args], input=msg, capture_output=True, env=e,
                          cwd=cwd, user=user.pw_uid, group=user.pw_gid, extra_groups=[], timeout=timeout)


def test_the_launcher_is_native(server) -> None:
    with open(server.launcher, "rb") as f:
        assert f.read(4) == b"\x7fELF"
    assert (server.launcher.parent / "postroom-python").read_text().startswith("#!")


def test_exit_codes_and_stderr_through_the_server(server, home: Path) -> None:
    for code in (0, 42, 75, 255):
        rc = write_rc(home, f'MAILDIR={home}\nLOG="code {code}\n"\nEXITCODE={code}\n:0:\ninbox\n')
        before = server.served()
        via = run(server, ["deliver", str(rc)])
        assert server.served() == before + 1
        direct = run(server, ["deliver", str(rc)], socket_path="")
        assert server.served() == before + 1
        assert via.returncode == direct.returncode == code
        assert via.stderr == direct.stderr == f"code {code}\n".encode()


def test_several_megabytes_of_stdin(server, home: Path) -> None:
    body = b"".join(b"line %07d of a big mail, From here on\n" % i for i in range(200_000))
    msg = b"From: big@example.org\nSubject: big\n\n" + body
    assert len(msg) > 7_000_000
    rc = write_rc(home, f"MAILDIR={home}\n:0:\nbig\n")
    before = server.served()
    p = run(server, ["deliver", str(rc)], msg)
    assert p.returncode == 0, p.stderr
    assert server.served() == before + 1
    rc2 = write_rc(home, f"MAILDIR={home}\n:0:\nbig2\n", "rc2")
    assert run(server, ["deliver", str(rc2)], msg, socket_path="").returncode == 0
    got = (home / "big").read_bytes()
    assert got == (home / "big2").read_bytes()
    assert got.endswith(msg + b"\n")


def test_environment_and_cwd_reach_the_delivery(server, home: Path) -> None:
    """-p keeps the caller's environment: awkward values arrive byte for byte; a
    relative -m rc file is found in the caller's cwd."""
    write_rc(home, 'MAILDIR=.\n:0 wc\n| printf "%s|%s" "$ODD" "$(pwd)" > env.out\n:0:\nhere\n', "rcm")
    odd = "a=b c\t\"quoted\" \\ $HOME ;"
    before = server.served()
    via = run(server, ["deliver", "-p", "-m", "./rcm"], env={"ODD": odd}, cwd=home)
    assert via.returncode == 0, via.stderr
    assert server.served() == before + 1
    assert (home / "env.out").read_text() == f"{odd}|{home}"
    (home / "env.out").unlink()
    direct = run(server, ["deliver", "-p", "-m", "./rcm"], env={"ODD": odd}, cwd=home, socket_path="")
    assert direct.returncode == 0
    assert (home / "env.out").read_text() == f"{odd}|{home}"


def test_fallback_when_no_server(server, home: Path) -> None:
    rc = write_rc(home, f"MAILDIR={home}\n:0:\ninbox\n")
    before = server.served()
    for path in (str(home / "no-such.sock"), ""):
        p = run(server, ["deliver", str(rc)], socket_path=path)
        assert p.returncode == 0, p.stderr
    assert server.served() == before
    assert (home / "inbox").read_bytes().count(b"body line") == 2


def test_other_subcommands_run_in_python(server, home: Path) -> None:
    rc = write_rc(home, ":0:\ninbox\n")
    p = run(server, ["check", str(rc)])
    assert p.returncode == 0, p.stderr
    p = run(server, ["deliver", "-v"])
    assert p.returncode == 0 and b"procmail" in p.stdout


class FakeServer:
    """A unix socket that records what one client sends and answers ``answer``."""

    def __init__(self, directory: Path, answer: bytes) -> None:
        self.path = str(directory / "fake.sock")
        self.answer = answer
        self.request = b""
        self.fds: list[int] = []
        self.connected = False
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        os.chmod(self.path, 0o666)
        self.sock.listen(1)
        self.sock.settimeout(30)
        self.thread = threading.Thread(target=self._serve)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        self.connected = True
        with conn:
            conn.settimeout(30)
            while True:
                msg, anc, _, _ = conn.recvmsg(1 << 20, socket.CMSG_SPACE(64))
                for _lvl, _kind, data in anc:
                    self.fds += [int.from_bytes(data[i:i + 4], sys.byteorder) for i in range(0, len(data), 4)]
                self.request += msg
                if not msg or (len(self.request) >= 8 and len(self.request) >= 8 + int.from_bytes(self.request[4:8], "big")):
                    break
            self.stat = [os.fstat(fd) for fd in self.fds]
            for fd in self.fds:
                os.close(fd)
            conn.sendall(self.answer)

    def close(self) -> None:
        self.sock.close()
        self.thread.join(30)
        os.unlink(self.path)


@pytest.mark.parametrize("answer", [b"R", b""])
def test_fallback_when_the_server_refuses_or_closes(server, home: Path, answer: bytes) -> None:
    rc = write_rc(home, f"MAILDIR={home}\n:0:\ninbox\n")
    fake = FakeServer(home.parent, answer)
    try:
        p = run(server, ["deliver", str(rc)], socket_path=fake.path)
    finally:
        fake.close()
    assert len(fake.fds) == 4                  # it talked to the fake server ...
    assert p.returncode == 0, p.stderr         # ... then delivered itself
    assert (home / "inbox").read_bytes().endswith(MSG + b"\n")


@pytest.mark.parametrize("answer,code", [(b"AE\x2a", 42), (b"A", 75), (b"AK\x0f", -15), (b"AK\x09", -9), (b"AE", 75)])
def test_status_after_accept(server, home: Path, answer: bytes, code: int) -> None:
    """After A the client never delivers itself: E n is its exit status, K n its death
    by signal n, and anything short of a status is 75 (the MTA retries)."""
    rc = write_rc(home, f"MAILDIR={home}\n:0:\ninbox\n")
    fake = FakeServer(home.parent, answer)
    try:
        p = run(server, ["deliver", str(rc)], socket_path=fake.path)
    finally:
        fake.close()
    assert p.returncode == code
    assert not (home / "inbox").exists()
    if code == 75:
        assert b"server went away, mail deferred (75)" in p.stderr


def test_request_is_what_the_python_client_sends(server, home: Path) -> None:
    """The same parsed request (argv, environment, umask) and the same four fds (stdin,
    stdout, stderr, an O_PATH fd of the cwd) from the native and the Python client."""
    got = {}
    env = {"ODD": "x=y\tz", "EMPTY": ""}
    for name, launcher in (("c", server.launcher), ("py", server.launcher.parent / "postroom-python")):
        fake = FakeServer(home.parent, b"AE\x00")
        try:
            with tempfile.TemporaryFile() as stdin:
                stdin.write(MSG)
                stdin.seek(0)
                e = {"HOME": USER.pw_dir, "PATH": "/usr/bin:/bin", "POSTROOM_DELIVERD": fake.path, **env}
                p = subprocess.run([str(launcher), "deliver", "-f", "s@example.org", "A=b c", "./rc x"],
                                   stdin=stdin, capture_output=True, env=e, cwd=home, user=USER.pw_uid,
                                   group=USER.pw_gid, extra_groups=[], umask=0o027, timeout=60)
                stdin_ino = os.fstat(stdin.fileno()).st_ino
        finally:
            fake.close()
        assert p.returncode == 0, p.stderr
        req = parse_request(fake.request)
        assert len(fake.stat) == 4
        assert fake.stat[0].st_ino == stdin_ino
        assert (fake.stat[3].st_dev, fake.stat[3].st_ino) == (home.stat().st_dev, home.stat().st_ino)
        got[name] = (req.argv, sorted(req.environ), req.umask)
    # Python's start-up adds LC_CTYPE=C.UTF-8 to its own environment in the C locale
    # (PEP 538 locale coercion); the native client passes the caller's untouched.
    assert not any(name == b"LC_CTYPE" for name, _ in got["c"][1])
    py_env = [(n, v) for n, v in got["py"][1] if (n, v) != (b"LC_CTYPE", b"C.UTF-8")]
    assert (got["c"][0], got["c"][1], got["c"][2]) == (got["py"][0], py_env, got["py"][2])
    assert got["c"][0] == ["-f", "s@example.org", "A=b c", "./rc x"]
    assert got["c"][2] == 0o027
    assert (b"ODD", b"x=y\tz") in got["c"][1] and (b"EMPTY", b"") in got["c"][1]


def test_explain_and_v_never_reach_a_server(server, home: Path) -> None:
    rc = write_rc(home, f"MAILDIR={home}\n:0:\ninbox\n")
    for args in (["deliver", "--explain", str(rc)], ["deliver", "-v"]):
        fake = FakeServer(home.parent, b"AE\x00")
        try:
            p = run(server, args, socket_path=fake.path)
        finally:
            fake.close()
        assert not fake.connected
        assert p.returncode == 0, p.stderr


def test_a_server_of_another_user_gets_nothing(server, home: Path) -> None:
    """A socket of a third uid (here TEST_USER's, reached by nobody) is not trusted:
    no byte of the request or fd goes there; the client delivers itself."""
    d = home / "s"
    d.mkdir()
    os.chown(d, USER.pw_uid, USER.pw_gid)
    os.chmod(d, 0o755)
    recorder = ("import socket, os, sys\n"
                "s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); os.chmod(sys.argv[1], 0o666)\n"
                "s.listen(1); print('ready', flush=True); s.settimeout(20)\n"
                "c, _ = s.accept(); c.settimeout(5)\n"
                "try:\n    data = c.recv(100)\nexcept OSError:\n    data = b''\n"
                "print(len(data), flush=True)\n")
    fake = subprocess.Popen([sys.executable, "-c", recorder, str(d / "other.sock")], stdout=subprocess.PIPE,
                            user=USER.pw_uid, group=USER.pw_gid, extra_groups=[], text=True)
    try:
        assert fake.stdout.readline().strip() == "ready"
        p = run(server, ["deliver", "-m", "/dev/null"], socket_path=str(d / "other.sock"), user=NOBODY)
        out, _ = fake.communicate(timeout=30)
    finally:
        if fake.poll() is None:
            fake.kill()
            fake.wait()
    assert out.strip() == "0"                  # connected, then closed without a byte
    direct = run(server, ["deliver", "-m", "/dev/null"], socket_path="", user=NOBODY)
    assert p.returncode == direct.returncode == 73    # nobody's own in-process run: no DEFAULT
    assert p.stderr == direct.stderr
