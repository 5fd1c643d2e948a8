"""deliver.fastclient — the Python client of the delivery server, and the Python launcher.

    relay(argv, default_socket=DEFAULT_SOCKET) -> int | None
    user_socket_path(path, uid) -> str
    launcher_script(python, paths, socket) -> str      (what `make venv` writes)

What it does: hands one `postroom deliver ARGS...` to the warm delivery server
(deliver.deliverd) instead of importing the delivery stack (~45 ms) in this process.  It
connects to the unix socket named by $POSTROOM_DELIVERD (empty: never use a server), or
else the socket path built into the launcher; first to that path + "." + its euid, the
user's own socket where the user's warm process answers (user_socket_path), then, when
that is missing or refuses, to the path itself.  It checks with SO_PEERCRED that the server runs
as root or as this user, and sends in one SOCK_STREAM request: its umask, its argv and its
environment, with its fds 0, 1, 2 and an O_PATH fd of its cwd attached (SCM_RIGHTS).  The
server answers one byte, ``A`` (accepted: a delivery child is being forked) or ``R``
(refused), and after ``A`` two bytes: ``E`` + exit status, or ``K`` + the signal that
killed the delivery (the client then dies of the same signal).

Guarantees:
  * Nothing depends on the server: no socket, a refused connection, a server of another
    uid, ``R``, or the connection closing before ``A`` all return None, and the launcher
    then runs deliver.cli in this process as if no server existed.  The server sends ``A``
    before it forks, so "no ``A``" means no delivery was started and the mail on stdin is
    untouched; falling back can therefore never deliver twice.
  * After ``A`` the server owns the delivery: if the connection ends without a status the
    client exits 75 (EX_TEMPFAIL), so the MTA retries and nothing is lost.
  * `--explain` and `-v` run in process (they deliver nothing).
  * Imports only builtins: `_socket`, `_signal`, `posix` (as os) and `sys`; not `os`
    (3 ms under -S) nor `array` (it pulls in collections.abc, 8 ms)
    (check: `python -X importtime .venv/bin/postroom deliver ...`).

The native client, deliver/client/postroom-deliver.c (.venv/bin/postroom when a C compiler
exists, deliver.clientbuild), speaks the same protocol byte for byte without starting
Python, and execs this launcher with ``--no-server`` when no server answers; this module
is then the fallback and the path on machines without a compiler.

No identity is claimed here: the server takes the caller's uid, gid, groups and pid from
the kernel (SO_PEERCRED, SO_PEERGROUPS, SO_PEERPIDFD), never from the request.
"""

import sys

import _socket
import posix as os        # os itself costs ~3 ms under -S (posixpath, stat, abc ...)

#: Where the launcher looks when $POSTROOM_DELIVERD is unset (Makefile DELIVERD_SOCKET).
DEFAULT_SOCKET = "/run/postroom/deliverd.sock"
ENV_SOCKET = "POSTROOM_DELIVERD"
MAGIC = b"PRD1"
ACCEPTED, REFUSED, EXITED, KILLED = b"A", b"R", b"E", b"K"
TEMPFAIL = 75
_SO_PEERCRED = 17          # <asm-generic/socket.h>; struct ucred {pid, uid, gid}


def wants_in_process(argv: list) -> bool:
    """--explain and -v deliver nothing: no reason to bother the server.  A false
    positive (an option value containing v) only costs the in-process path."""
    for arg in argv:
        if arg == "--explain" or (arg[:1] == "-" and arg[:2] != "--" and "v" in arg):
            return True
    return False


def encode_request(argv: list, umask: int, environ: dict) -> bytes:
    """MAGIC, a 4-byte big-endian body length, then the NUL-separated body:
    umask (octal), argc, the arguments, then NAME=value environment entries.
    Neither arguments nor environment entries can contain NUL (execve(2))."""
    fields = [b"%o" % umask, b"%d" % len(argv)]
    enc = sys.getfilesystemencoding()
    fields += [a.encode(enc, "surrogateescape") for a in argv]
    fields += [k + b"=" + v for k, v in environ.items()]
    body = b"\0".join(fields)
    return MAGIC + len(body).to_bytes(4, "big") + body


def _recv_exact(sock, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def user_socket_path(path: str, uid: int) -> str:
    """The per-user socket next to the server's: ``PATH.UID`` (made by deliverd for a
    user's zygote, mode 0600, owned by that user; see deliver.deliverd)."""
    return "%s.%d" % (path, uid)


def _attempt(path: str, argv: list):
    """One server: the status bytes after ACCEPTED (b"" when the connection ended
    without one), or None when nothing was started (no server, a server of another uid,
    REFUSED, or the connection closed before ACCEPTED)."""
    try:
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    except OSError:
        return None
    try:
        try:
            sock.connect(path)
            # Only a server running as root or as ourselves gets our fds and environment:
            # anyone could have put a socket at a path named in the environment.
            cred = sock.getsockopt(_socket.SOL_SOCKET, _SO_PEERCRED, 12)
            if int.from_bytes(cred[4:8], sys.byteorder) not in (0, os.geteuid()):
                return None
            # O_PATH: a cwd we may search but not read (a 0711 home) still goes across.
            cwd = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            umask = os.umask(0o077)
            os.umask(umask)
            request = encode_request(argv, umask, os.environ)   # posix.environ: bytes
            fds = b"".join(fd.to_bytes(4, sys.byteorder) for fd in (0, 1, 2, cwd))
            sent = sock.sendmsg([request], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)])
            if sent < len(request):
                sock.sendall(request[sent:])
            answer = sock.recv(1)
        except OSError:
            return None          # before ACCEPTED nothing was forked: deliver ourselves
        finally:
            os.close(cwd)
        if answer != ACCEPTED:
            return None
        try:
            return _recv_exact(sock, 2)
        except OSError:
            return b""
    except KeyboardInterrupt:
        # As deliver.cli.main.  Once the request is out the server may have forked, so
        # never fall back now; closing the socket makes the server stop the child.
        return b"E" + bytes([TEMPFAIL])
    finally:
        sock.close()


def relay(argv: list, default_socket: str = DEFAULT_SOCKET):
    """Deliver through the server: the exit status, or None to deliver in process.  The
    per-user socket is tried first (one process to wake instead of three), then the
    server's own."""
    path = os.environ.get(ENV_SOCKET.encode(), None)
    path = default_socket if path is None else path.decode(sys.getfilesystemencoding(), "surrogateescape")
    if not path or wants_in_process(argv):
        return None
    status = _attempt(user_socket_path(path, os.geteuid()), argv)
    if status is None:
        status = _attempt(path, argv)
    if status is None:
        return None
    if len(status) == 2 and status[:1] == EXITED:
        return status[1]
    if len(status) == 2 and status[:1] == KILLED:
        import _signal
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            _signal.signal(status[1], _signal.SIG_DFL)
        except (OSError, ValueError):
            pass                 # SIGKILL, SIGSTOP: cannot be caught anyway
        os.kill(os.getpid(), status[1])
        return 128 + status[1]
    sys.stderr.write("postroom deliver: the delivery server went away, mail deferred (75)\n")
    return TEMPFAIL


def launcher_script(python: str, paths: list, socket: str) -> str:
    """The text of the Python `postroom` launcher (`make venv`, deliver.clientbuild; the
    differential harness makes one with its own socket).  `python -IS` skips site and
    ignores PYTHON* variables.  ``--no-server`` first: the native client
    (deliver/client/postroom-deliver.c) already tried the server; deliver in process.
    An LC_CTYPE that is not in the environment the process was started with is CPython's
    locale coercion (PEP 538, under the C locale): dropped, so that ``-p`` passes recipes
    and programs the caller's environment, not one with LC_CTYPE=C.UTF-8 added."""
    return ("#!" + python + " -IS\n"
            "# postroom: generated by `make venv` (Makefile target .venv/.launcher); see there.\n"
            "import os, sys\n"
            "if 'LC_CTYPE' in os.environ:     # set by CPython's locale coercion?\n"
            "    with open('/proc/self/environ', 'rb') as f:\n"
            "        if not any(v.startswith(b'LC_CTYPE=') for v in f.read().split(b'\\0')):\n"
            "            del os.environ['LC_CTYPE']\n"
            "sys.path.extend(" + repr(list(paths)) + ")\n"
            "if sys.argv[1:2] == ['--no-server']:\n"
            "    del sys.argv[1]        # the C client found no server: deliver here\n"
            "elif sys.argv[1:2] == ['deliver']:\n"
            "    from deliver.fastclient import relay\n"
            "    status = relay(sys.argv[2:], " + repr(socket) + ")\n"
            "    if status is not None:\n"
            "        sys.exit(status)\n"
            "from mta.cli import main\n"
            "sys.exit(main())\n")
