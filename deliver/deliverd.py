"""deliver.deliverd — the warm delivery server behind `postroom deliver` (`postroom deliverd`).

    postroom deliverd [--socket PATH] [--max-children N]

What it does: imports the whole delivery stack once, listens on a unix socket (mode 0666
in a directory only its owner may write, so every local user can connect, the reach of a
setuid LDA), and for each request of deliver.fastclient (protocol there) forks a child
that becomes the caller and runs ``deliver.cli.main(argv)`` exactly as the caller's own
process would have: the caller's fds 0, 1, 2 and cwd (passed with SCM_RIGHTS), its
environment and umask, its namespaces (mount, UTS, IPC, network: the child joins them
with setns(2) on the caller's pidfd, so a caller in a container or a private mount
namespace sees its own files), and its uid, gid and supplementary groups.  The parent
sends the child's exit status (or the signal that killed it) back and never runs a
recipe itself.

Callers other than root in the server's namespaces are served by a per-user zygote
(deliver.zygote).  With its zygote a user gets a socket of their own, ``PATH.UID`` next to
PATH (deliver.fastclient.user_socket_path; mode 0600, owned by the user, in this
directory that nobody else may write), on which the zygote's spare child accepts the
user's clients directly, checking them as this server would; clients try it first and
come here when it is missing or refuses.  It is unlinked before its zygote is retired
(idle, least recently used, shutdown) and when the zygote dies; one zygote per uid has one.

Identity comes from the kernel only: SO_PEERCRED (uid, gid as of connect(2)),
SO_PEERGROUPS and SO_PEERPIDFD (a pidfd of the process that connected, so a recycled pid
can never name another process).  Nothing in the request is trusted about who the caller
is.  Running as root the child sets exactly those credentials (groups, then gid, then uid;
the kernel then also clears the dumpable flag) after joining the namespaces and before
touching any file, path or module of the caller's view; running as another user the
server serves only callers of its own uid in its own mount namespace and refuses the rest.
``-d`` needs no rule here: deliver.cli refuses it, as for any unprivileged caller, unless
the caller itself is root.

Guarantees:
  * ``A`` (accepted) is sent before fork; every refusal (``R``: capacity, wrong uid, a
    malformed request, namespaces we cannot join) happens before it, so the client's
    fallback can never deliver a second time.
  * At most --max-children deliveries at once; beyond that, requests are refused (the
    client delivers in process) rather than queued behind a slow delivery.
  * A client that goes away (killed by its MTA) gets its delivery child a SIGTERM, as the
    client's own process would have got; the server never blocks on one client.
  * The child ends with os._exit, always; anything unexpected in it exits 75 (EX_TEMPFAIL)
    like the direct path.  Orphaned recipe programs are reaped (child subreaper).
  * SIGTERM or SIGINT: stop accepting, remove the socket, let running deliveries finish.

Errors: DeliverdError (cannot listen: the socket's directory is writable by others, a live
server already listens there) -> exit 75 from main.  Logging: logger ``postroom.deliverd``
on the server's own stderr (a private copy, so a child's log lines never reach a client).
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import gc
import importlib
import io
import logging
import os
import selectors
import signal
import socket
import stat
import struct
import sys
import time
from array import array
from dataclasses import dataclass, field

from . import spoolgroup, zygote
from .errors import DeliveryError
from .fastclient import (ACCEPTED, DEFAULT_SOCKET, EXITED, KILLED, MAGIC, REFUSED, TEMPFAIL,
                         user_socket_path)

log = logging.getLogger("postroom.deliverd")

# What a delivery imports (`python -X importtime`); loaded once here, shared copy-on-write.
WARM_MODULES = (
    "deliver.cli", "deliver.agent", "deliver.effects", "deliver.folders", "deliver.locking",
    "deliver.identity", "deliver.settings", "deliver.programs", "deliver.mbox",
    "deliver.maildir", "deliver.mh", "deliver.dirfolder", "deliver.fromline",
    "deliver.mboxformat", "deliver.spoolgroup", "deliver.explain", "rules.evaluator",
    "rules.regex", "rules.cache", "rules.parser", "rules.expand", "rules.message", "re2",
    "flufl.lock", "psutil", "subprocess", "tempfile", "pwd", "grp", "fcntl", "resource",
    "encodings.idna",       # socket.getfqdn (dot-lock names) decodes with it
)

MAX_REQUEST = 4 << 20            # argv + environment; execve's own limit is smaller
MAX_PENDING = 128                # connections still sending their request
PENDING_TIMEOUT = 10.0           # seconds a client may take to send its request
N_FDS = 4                        # stdin, stdout, stderr, cwd
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)     # Linux 4.13
SO_PEERPIDFD = getattr(socket, "SO_PEERPIDFD", 77)       # Linux 6.5
PR_SET_CHILD_SUBREAPER = 36
# setns(2) with a pidfd joins several namespaces at once (Linux 5.8).  Not the user
# namespace (the credentials are set explicitly) and not the pid namespace.
JOIN_NAMESPACES = 0x00020000 | 0x04000000 | 0x08000000 | 0x40000000   # NEWNS|UTS|IPC|NET
NAMESPACES = ("mnt", "uts", "ipc", "net")          # the same four, as /proc/PID/ns names
ZYGOTE_IDLE = 300.0              # seconds an unused zygote lives (--zygote-idle)
MAX_ZYGOTES = 64                 # the least recently used one goes beyond this

_libc = ctypes.CDLL(None, use_errno=True)


class DeliverdError(DeliveryError):
    """The server cannot start or a request cannot be served."""


class ProtocolError(DeliverdError):
    """A request that is not what deliver.fastclient sends."""


@dataclass(frozen=True, slots=True)
class Peer:
    """The connecting process, as the kernel saw it at connect(2)."""

    pid: int
    uid: int
    gid: int
    groups: tuple[int, ...]
    pidfd: int                   # -1 when the kernel has no SO_PEERPIDFD


@dataclass(frozen=True, slots=True)
class Request:
    argv: list[str]
    environ: list[tuple[bytes, bytes]]
    umask: int


def peer_of(conn: socket.socket) -> Peer:
    """Credentials of the other end, from the kernel (socket(7), unix(7))."""
    pid, uid, gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    size = 64 * 4
    while True:
        try:
            raw = conn.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, size)
            break
        except OSError as err:
            if err.errno != errno.ERANGE or size > 65536 * 4:
                raise
            size *= 16
    groups = tuple(array("I", raw[: len(raw) // 4 * 4]))
    try:
        pidfd = conn.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD)
        os.set_inheritable(pidfd, False)
    except OSError:
        pidfd = -1
    return Peer(pid, uid, gid, groups, pidfd)


def parse_request(data: bytes) -> Request:
    """The inverse of deliver.fastclient.encode_request; ProtocolError when malformed."""
    if len(data) < 8 or data[:4] != MAGIC:
        raise ProtocolError("bad magic")
    length = int.from_bytes(data[4:8], "big")
    body = data[8:]
    if len(body) != length:
        raise ProtocolError("bad length")
    fields = body.split(b"\0")
    try:
        umask = int(fields[0], 8)
        argc = int(fields[1])
    except (IndexError, ValueError):
        raise ProtocolError("bad umask or argc") from None
    if not 0 <= umask <= 0o777 or not 0 <= argc <= len(fields) - 2:
        raise ProtocolError("bad umask or argc")
    argv = [os.fsdecode(a) for a in fields[2:2 + argc]]
    environ = []
    for entry in fields[2 + argc:]:
        name, eq, value = entry.partition(b"=")
        if eq and name:
            environ.append((name, value))
    return Request(argv, environ, umask)


def needed_length(data: bytes) -> int:
    """How many bytes the whole request has, once its header is in (else 8)."""
    if len(data) < 8:
        return 8
    if data[:4] != MAGIC:
        raise ProtocolError("bad magic")
    length = int.from_bytes(data[4:8], "big")
    if length > MAX_REQUEST:
        raise ProtocolError("request too large")
    return 8 + length


# --------------------------------------------------------------------------- the child


def enter_namespaces(peer: Peer) -> None:
    """Join the caller's mount, UTS, IPC and network namespaces (as root, before the
    credentials change).  The pidfd names the very process that connected."""
    if _libc.setns(peer.pidfd, JOIN_NAMESPACES) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def become(peer: Peer) -> None:
    """Take the caller's exact credentials: groups, then gid, then uid (setresuid last so
    nothing is left to regain).  The groups are the caller's own (SO_PEERGROUPS), not a
    fresh initgroups(3): no more and no fewer rights than the caller had, and no
    /etc/group read in a namespace the caller controls."""
    if os.geteuid() != 0:
        if peer.uid != os.geteuid():
            raise DeliverdError("peer of another uid")     # the parent refuses these
        return
    os.setgroups(list(peer.groups))
    os.setresgid(peer.gid, peer.gid, peer.gid)
    os.setresuid(peer.uid, peer.uid, peer.uid)
    spoolgroup.forget()
    if peer.uid != 0 and 0 in os.getresuid():
        raise DeliverdError("could not drop root")


def adopt(request: Request, fds: list[int]) -> None:
    """The caller's fds 0-2, cwd, umask and environment; fresh std streams on them."""
    stdin, stdout, stderr, cwd = fds
    for src, dst in ((stdin, 0), (stdout, 1), (stderr, 2)):
        os.dup2(src, dst, inheritable=True)
    os.fchdir(cwd)
    for fd in fds:
        if fd > 2:
            os.close(fd)
    os.umask(request.umask)
    os.environ.clear()
    for name, value in request.environ:
        if name not in os.environb:        # the first of duplicates, as Python's startup
            os.environb[name] = value
    time.tzset()                           # TZ of the caller, for ctime(3) in From_ lines
    for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
        old = getattr(sys, name)
        line = mode == "w" and os.isatty(fd)
        setattr(sys, name, open(fd, mode, buffering=1 if line else -1, closefd=False,
                                encoding=old.encoding, errors=old.errors))


def run_child(peer: Peer, request: Request, fds: list[int], deliver) -> int:
    """Everything between fork and _exit; returns the exit status."""
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)   # as a fresh python
    signal.set_wakeup_fd(-1)
    os.setsid()                  # no controlling tty; signals to the server's group miss it
    if os.geteuid() == 0:
        enter_namespaces(peer)
    become(peer)
    adopt(request, fds)
    return int(deliver(request.argv))


def serve_job(data: bytes, fds: list[int], deliver) -> int:
    """A delivery in a zygote's child (deliver.zygote), already the caller: ``fds`` are
    stdin, stdout, stderr and cwd.  As run_child; then the caller's stdio is released
    (/dev/null on 0-2), so that the zygote can report the status before this process's
    exit tears its memory down."""
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.set_wakeup_fd(-1)
    os.setsid()
    code = TEMPFAIL
    try:
        request = parse_request(data)
        adopt(request, fds[:4])
        code = int(deliver(request.argv))
    except BaseException:  # noqa: BLE001 - reported as 75, like any child
        log.exception("delivery in a zygote child failed")
    code = code & 0xFF if code >= 0 else TEMPFAIL
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    return code


def describe_request(data: bytes) -> tuple[list[str], dict[str, str]]:
    """argv and environment of a request, for the zygote's rc warmer."""
    request = parse_request(data)
    env: dict[str, str] = {}
    for name, value in request.environ:
        env.setdefault(os.fsdecode(name), os.fsdecode(value))
    return request.argv, env


# --------------------------------------------------------------------------- the server


@dataclass(slots=True)
class _Pending:
    conn: socket.socket
    peer: Peer
    since: float
    data: bytearray = field(default_factory=bytearray)
    fds: list[int] = field(default_factory=list)
    truncated: bool = False


@dataclass(slots=True)
class _Active:
    conn: socket.socket | None
    peer_pid: int


def _default_deliver(argv: list[str]) -> int:
    from .cli import main
    return main(argv)


class Server:
    """One listening socket, a selector, the children.  ``deliver(argv) -> int`` runs in
    the child after it became the caller (deliver.cli.main in production)."""

    def __init__(self, path: str, max_children: int = 32, *, deliver=_default_deliver,
                 zygote_idle: float = ZYGOTE_IDLE, max_zygotes: int = MAX_ZYGOTES,
                 prefault: bool = True) -> None:
        self.path = path
        self.max_children = max(1, max_children)
        self.deliver = deliver
        self.zygote_idle = zygote_idle          # 0: no zygotes, every delivery forks here
        self.max_zygotes = max(1, max_zygotes)
        self.prefault = prefault
        self.zygotes: dict[zygote.Creds, zygote.Handle] = {}
        self.user_sockets: dict[int, zygote.Creds] = {}    # uid -> the zygote serving it
        self._own_ns = self._namespaces("self")
        self.root = os.geteuid() == 0
        self.pending: dict[int, _Pending] = {}
        self.active: dict[int, _Active] = {}          # child pid -> its client
        self.stopping = False
        self.sel = selectors.DefaultSelector()
        self.listener: socket.socket | None = None
        self._wake_r, self._wake_w = os.pipe()
        self._own_mntns = os.readlink("/proc/self/ns/mnt")

    # ---------------------------------------------------------------- setup

    def listen(self) -> None:
        """Bind ``path`` mode 0666 in a directory nobody else can write (else anyone could
        swap the socket for their own); a stale socket is replaced, a live one is not."""
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, mode=0o755, exist_ok=True)
        st = os.stat(directory)
        if st.st_uid != os.geteuid() or st.st_mode & 0o022:
            raise DeliverdError(f"{directory}: must be owned by uid {os.geteuid()} and "
                                "writable by nobody else")
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISSOCK(st.st_mode):
                raise DeliverdError(f"{self.path}: exists and is not a socket")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(self.path)
                raise DeliverdError(f"{self.path}: a server is already listening")
            except OSError:
                os.unlink(self.path)
            finally:
                probe.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(self.path)
        os.chmod(self.path, 0o666)
        sock.listen(128)
        sock.setblocking(False)
        self.listener = sock
        self.sel.register(sock, selectors.EVENT_READ, "listen")
        os.set_blocking(self._wake_w, False)
        os.set_blocking(self._wake_r, False)
        self.sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        signal.set_wakeup_fd(self._wake_w)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        if self.root:
            _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)

    def _on_signal(self, sig: int, _frame) -> None:
        if sig in (signal.SIGTERM, signal.SIGINT):
            self.stopping = True

    # ---------------------------------------------------------------- loop

    def serve_forever(self) -> None:
        log.info("listening on %s (max %d children, %s)", self.path, self.max_children,
                 "root: deliveries become the caller" if self.root else f"uid {os.geteuid()} only")
        while not (self.stopping and not self.active):
            if self.stopping and self.listener is not None:
                self._stop_listening()
            for key, _ in self.sel.select(timeout=1.0):
                if key.data == "listen":
                    self._accept()
                elif key.data == "wake":
                    self._drain_wake()
                elif key.data[0] == "pending":
                    self._read_request(key.data[1])
                elif key.data[0] == "zygote":
                    self._zygote_note(key.data[1])
                else:
                    self._client_gone(key.data[1])
            self._reap()
            self._expire_pending()
            self._expire_zygotes()
        log.info("stopped")

    def close(self) -> None:
        if self.listener is not None:
            self._stop_listening()
        signal.set_wakeup_fd(-1)
        self.sel.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _stop_listening(self) -> None:
        assert self.listener is not None
        self.sel.unregister(self.listener)
        self.listener.close()
        self.listener = None
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        for fd in list(self.pending):
            self._refuse(self.pending.pop(fd), "server stopping")
        for z in list(self.zygotes.values()):
            self._forget_zygote(z)
            z.retire()
        self.zygotes.clear()

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 512):
                pass
        except BlockingIOError:
            pass

    def _accept(self) -> None:
        assert self.listener is not None
        try:
            conn, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as err:           # EMFILE and friends: drop this one, keep serving
            log.warning("accept: %s", err)
            return
        try:
            peer = peer_of(conn)
        except OSError as err:
            log.warning("peer credentials: %s", err)
            conn.close()
            return
        if len(self.pending) >= MAX_PENDING:
            self._refuse(_Pending(conn, peer, 0.0), "too many pending requests")
            return
        conn.setblocking(False)
        p = _Pending(conn, peer, time.monotonic())
        self.pending[conn.fileno()] = p
        self.sel.register(conn, selectors.EVENT_READ, ("pending", conn.fileno()))

    def _read_request(self, fd: int) -> None:
        p = self.pending[fd]
        try:
            msg, anc, flags, _ = p.conn.recvmsg(1 << 16, socket.CMSG_SPACE(N_FDS * 4 + 4),
                                                 socket.MSG_CMSG_CLOEXEC)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as err:
            self._drop_pending(fd, f"read: {err}")
            return
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                p.fds.extend(array("i", payload[: len(payload) // 4 * 4]))
        p.truncated |= bool(flags & socket.MSG_CTRUNC)
        if not msg:
            self._drop_pending(fd, "client closed before its request was complete")
            return
        p.data += msg
        try:
            need = needed_length(bytes(p.data[:8]))
        except ProtocolError as err:
            self._drop_pending(fd, str(err), refuse=True)
            return
        if len(p.data) < need:
            return
        del self.pending[fd]
        self.sel.unregister(p.conn)
        if len(p.data) > need:
            return self._refuse(p, "bytes after the request")
        self._start(p)

    def _start(self, p: _Pending) -> None:
        try:
            request = parse_request(bytes(p.data))
        except ProtocolError as err:
            return self._refuse(p, f"malformed request: {err}")
        if p.truncated or len(p.fds) != N_FDS:
            return self._refuse(p, f"expected {N_FDS} fds, got {len(p.fds)}")
        if not stat.S_ISDIR(os.fstat(p.fds[3]).st_mode):
            return self._refuse(p, "cwd fd is not a directory")
        if len(self.active) >= self.max_children:
            return self._refuse(p, "at max children")
        if not self.root:
            if p.peer.uid != os.geteuid():
                return self._refuse(p, f"uid {p.peer.uid} (only uid {os.geteuid()} served)")
            if not self._same_mount_ns(p.peer):
                return self._refuse(p, "caller in another mount namespace")
        elif p.peer.pidfd < 0:
            return self._refuse(p, "no SO_PEERPIDFD: cannot join the caller's namespaces")
        use_zygote = self._zygote_eligible(p.peer)
        try:
            p.conn.setblocking(True)
            p.conn.sendall(ACCEPTED)
        except OSError as err:
            return self._drop_pending(p, f"client gone before accept: {err}")
        if use_zygote and self._hand_to_zygote(p):
            return
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            pid = os.fork()
        except OSError as err:
            log.error("fork: %s", err)
            self._send_status(p.conn, EXITED + bytes([TEMPFAIL]))
            return self._close_pending(p)
        if pid == 0:
            self._child(p, request)          # never returns
        log.debug("child %d serves pid %d uid %d: %s", pid, p.peer.pid, p.peer.uid, request.argv)
        self.active[pid] = _Active(p.conn, p.peer.pid)
        self.sel.register(p.conn, selectors.EVENT_READ, ("active", pid))
        for fd in p.fds:
            os.close(fd)
        if p.peer.pidfd >= 0:
            os.close(p.peer.pidfd)

    # ---------------------------------------------------------------- zygotes

    @staticmethod
    def _namespaces(pid) -> tuple[tuple[int, int], ...]:
        out = []
        for name in NAMESPACES:
            st = os.stat(f"/proc/{pid}/ns/{name}")
            out.append((st.st_dev, st.st_ino))
        return tuple(out)

    def _zygote_eligible(self, peer: Peer) -> bool:
        """A zygote serves a caller other than root whose mount, UTS, IPC and network
        namespaces are ours (read from /proc, then the pidfd proves the pid was not
        recycled in between); anyone else gets a child of its own, as before."""
        if self.zygote_idle <= 0 or peer.uid == 0 or peer.pidfd < 0:
            return False
        try:
            theirs = self._namespaces(peer.pid)
            signal.pidfd_send_signal(peer.pidfd, 0)
        except OSError:
            return False
        return theirs == self._own_ns

    def _hand_to_zygote(self, p: _Pending) -> bool:
        """After ACCEPTED: give the request to the caller's zygote (spawned on first use).
        False when it cannot take it: the caller then gets a child of ours."""
        creds = zygote.Creds.of(p.peer.uid, p.peer.gid, p.peer.groups)
        z = self.zygotes.get(creds)
        if z is None:
            if len(self.zygotes) >= self.max_zygotes:
                oldest = min(self.zygotes.values(), key=lambda h: h.last_used)
                self._retire_zygote(oldest, "least recently used")
            listener, path = self._user_listener(creds)
            try:
                z = zygote.spawn(creds, self._zygote_job, describe_request, self._flush,
                                 lambda: self._close_for_zygote(p), max_children=self.max_children,
                                 prefault_spares=self.prefault, listener=listener)
            except OSError as err:
                log.error("cannot start a zygote for uid %d: %s", creds.uid, err)
                if listener is not None:
                    listener.close()
                    self._unlink(path)
                return False
            if listener is not None:
                listener.close()                # the zygote and its spares hold it
                z.socket_path = path
                self.user_sockets[creds.uid] = creds
            self.zygotes[creds] = z
            self.sel.register(z.sock, selectors.EVENT_READ, ("zygote", z.pid))
        if not z.submit(p.peer.pid, bytes(p.data), [p.conn.fileno(), *p.fds]):
            self._retire_zygote(z, "hand-over failed")
            return False
        log.debug("zygote %d takes pid %d uid %d", z.pid, p.peer.pid, p.peer.uid)
        self._close_pending(p)
        return True

    def _user_listener(self, creds: zygote.Creds) -> tuple[socket.socket | None, str]:
        """The per-user socket of a new zygote: ``<socket>.<uid>`` next to ours (the
        directory is ours and writable by nobody else, checked by listen), mode 0600 and
        owned by the user, so that only the user (and root) can connect; the zygote's
        spare accepts on it and checks the caller itself.  One zygote per uid has one
        (another of the same uid with other groups is reached through us only)."""
        path = user_socket_path(self.path, creds.uid)
        if creds.uid in self.user_sockets:
            return None, path
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                pass
            else:
                if not stat.S_ISSOCK(st.st_mode):
                    raise DeliverdError(f"{path}: exists and is not a socket")
                os.unlink(path)                 # a stale one: its zygote is gone
            old = os.umask(0o177)
            try:
                sock.bind(path)                 # created 0600
            finally:
                os.umask(old)
            if self.root:
                os.chown(path, creds.uid, creds.gid, follow_symlinks=False)
            sock.listen(128)
        except (OSError, DeliverdError) as err:
            log.warning("no per-user socket for uid %d: %s", creds.uid, err)
            sock.close()
            return None, path
        return sock, path

    @staticmethod
    def _unlink(path: str | None) -> None:
        if path:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def _forget_zygote(self, z: zygote.Handle) -> None:
        """Before its channel closes: no client may reach it through its socket."""
        try:
            self.sel.unregister(z.sock)
        except (KeyError, ValueError):
            pass
        if z.socket_path is not None:
            self._unlink(z.socket_path)
            z.socket_path = None
            if self.user_sockets.get(z.creds.uid) == z.creds:
                del self.user_sockets[z.creds.uid]

    def _zygote_note(self, pid: int) -> None:
        """A zygote's "in use" note (deliveries through its own socket), or its end."""
        for z in self.zygotes.values():
            if z.pid == pid:
                try:
                    while z.sock.recv(64, socket.MSG_DONTWAIT):
                        z.last_used = time.monotonic()
                except BlockingIOError:
                    return
                except OSError:
                    pass
                try:
                    self.sel.unregister(z.sock)   # EOF: it ended; _reap tidies up
                except (KeyError, ValueError):
                    pass
                return

    def _zygote_job(self, data: bytes, fds: list[int]) -> int:
        return serve_job(data, fds, self.deliver)

    @staticmethod
    def _flush() -> None:
        sys.stdout.flush()
        sys.stderr.flush()

    def _retire_zygote(self, z: zygote.Handle, why: str) -> None:
        log.info("zygote %d for uid %d retired: %s", z.pid, z.creds.uid, why)
        self._forget_zygote(z)
        z.retire()
        if self.zygotes.get(z.creds) is z:
            del self.zygotes[z.creds]

    def _expire_zygotes(self) -> None:
        now = time.monotonic()
        for z in list(self.zygotes.values()):
            if now - z.last_used > self.zygote_idle:
                self._retire_zygote(z, "idle")

    def _close_for_zygote(self, p: _Pending) -> None:
        """In a new zygote: none of deliverd's fds survive (the listener, the clients'
        connections, fds and pidfds, including the request that made it, which reaches
        it through the channel like any other; other zygotes' channels, the wake pipe)."""
        self._close_everything()
        os.close(p.conn.detach())
        for fd in p.fds:
            os.close(fd)
        if p.peer.pidfd >= 0:
            os.close(p.peer.pidfd)

    def _same_mount_ns(self, peer: Peer) -> bool:
        try:
            theirs = os.readlink(f"/proc/{peer.pid}/ns/mnt")
            if peer.pidfd >= 0:
                signal.pidfd_send_signal(peer.pidfd, 0)    # still the process that connected
        except OSError:
            return False
        return theirs == self._own_mntns

    def _child(self, p: _Pending, request: Request) -> None:
        code = TEMPFAIL
        try:
            self._close_all_but(p)
            code = run_child(p.peer, request, p.fds, self.deliver)
        except BaseException:  # noqa: BLE001 - the child must exit, never return
            log.exception("delivery for pid %d uid %d failed", p.peer.pid, p.peer.uid)
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code & 0xFF if code >= 0 else TEMPFAIL)

    def _close_all_but(self, p: _Pending) -> None:
        """A child keeps only its own client's fds: never another client's stdin or cwd,
        nor the listener (a dead server must not leave a socket that accepts)."""
        self._close_everything()
        os.close(p.conn.detach())

    def _close_everything(self) -> None:
        """In a child: every fd of the server's, except those of the pending request
        being served (the caller closes its connection; its fds are kept)."""
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        for z in self.zygotes.values():
            if z.sock.fileno() >= 0:
                os.close(z.sock.detach())
        self.zygotes = {}
        self.sel.close()
        if self.listener is not None:
            os.close(self.listener.detach())
        for other in self.pending.values():
            os.close(other.conn.detach())
            for fd in other.fds:
                os.close(fd)
            if other.peer.pidfd >= 0:
                os.close(other.peer.pidfd)
        for active in self.active.values():
            if active.conn is not None:
                os.close(active.conn.detach())
        os.close(self._wake_r)
        os.close(self._wake_w)

    # ---------------------------------------------------------------- endings

    def _reap(self) -> None:
        while True:
            try:
                pid, wstatus = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            active = self.active.pop(pid, None)
            if active is None:
                for creds, z in list(self.zygotes.items()):
                    if z.pid == pid:            # killed by its user, or failed to start
                        log.warning("zygote %d for uid %d ended: %#x", pid, creds.uid, wstatus)
                        self._forget_zygote(z)
                        z.retire()
                        del self.zygotes[creds]
                continue                        # else an orphaned recipe program (subreaper)
            if os.WIFSIGNALED(wstatus):
                reply = KILLED + bytes([os.WTERMSIG(wstatus)])
            else:
                reply = EXITED + bytes([os.waitstatus_to_exitcode(wstatus) & 0xFF])
            if active.conn is not None:
                self.sel.unregister(active.conn)
                self._send_status(active.conn, reply)
                active.conn.close()
            log.debug("child %d ended: %r", pid, reply)

    def _client_gone(self, pid: int) -> None:
        """The client's end became readable: it closed (killed, interrupted).  Its
        delivery gets the SIGTERM the client's own process would have got."""
        active = self.active.get(pid)
        if active is None or active.conn is None:
            return
        self.sel.unregister(active.conn)
        active.conn.close()
        active.conn = None
        log.warning("client pid %d went away; terminating child %d", active.peer_pid, pid)
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    def _send_status(self, conn: socket.socket, reply: bytes) -> None:
        try:
            conn.sendall(reply)
        except OSError:
            pass

    def _refuse(self, p: _Pending, why: str) -> None:
        log.warning("refused pid %d uid %d: %s", p.peer.pid, p.peer.uid, why)
        try:
            p.conn.setblocking(True)
            p.conn.settimeout(1.0)
            p.conn.sendall(REFUSED)
        except OSError:
            pass
        self._close_pending(p)

    def _drop_pending(self, p_or_fd, why: str, refuse: bool = False) -> None:
        p = self.pending.pop(p_or_fd, None) if isinstance(p_or_fd, int) else p_or_fd
        if p is None:
            return
        try:
            self.sel.unregister(p.conn)
        except (KeyError, ValueError):
            pass
        if refuse:
            return self._refuse(p, why)
        log.warning("dropped pid %d uid %d: %s", p.peer.pid, p.peer.uid, why)
        self._close_pending(p)

    def _close_pending(self, p: _Pending) -> None:
        for fd in p.fds:
            os.close(fd)
        p.fds.clear()
        if p.peer.pidfd >= 0:
            os.close(p.peer.pidfd)
        p.conn.close()

    def _expire_pending(self) -> None:
        now = time.monotonic()
        for fd, p in list(self.pending.items()):
            if now - p.since > PENDING_TIMEOUT:
                self._drop_pending(fd, "request not sent in time", refuse=True)


# --------------------------------------------------------------------------- main


def warm_up() -> None:
    """Import what deliveries use, then freeze it out of the collector so children share
    the pages (gc would otherwise touch every object and unshare them)."""
    for name in WARM_MODULES:
        importlib.import_module(name)
    gc.collect()
    gc.freeze()


def _setup_logging(verbose: bool) -> None:
    """The server's log goes to a private copy of its stderr: in a child fd 2 is the
    client's, and the deliver.* loggers must keep going there as in a direct run."""
    stream = io.TextIOWrapper(io.FileIO(os.dup(2), "w"), line_buffering=True,
                              errors="backslashreplace")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s deliverd[%(process)d] %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.DEBUG if verbose else logging.INFO)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="postroom deliverd", description=__doc__.splitlines()[0])
    ap.add_argument("--socket", default=DEFAULT_SOCKET, help=f"default {DEFAULT_SOCKET}")
    ap.add_argument("--max-children", type=int, default=32)
    ap.add_argument("--verbose", action="store_true", help="log every delivery")
    ap.add_argument("--zygote-idle", type=float, default=ZYGOTE_IDLE, metavar="SECONDS",
                    help="keep a warm per-user process this long after its last delivery "
                         f"(default {ZYGOTE_IDLE:g}; 0: fork every delivery from the server)")
    ap.add_argument("--max-zygotes", type=int, default=MAX_ZYGOTES)
    ap.add_argument("--no-prefault", action="store_true",
                    help="do not copy a spare child's memory ahead of its delivery")
    args = ap.parse_args(argv)
    _setup_logging(args.verbose)
    for fd in (0, 1, 2):                 # received fds must never land on 0-2 here
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)
    warm_up()
    server = Server(args.socket, args.max_children, zygote_idle=args.zygote_idle,
                    max_zygotes=args.max_zygotes, prefault=not args.no_prefault)
    try:
        server.listen()
    except (DeliverdError, OSError) as err:
        log.error("cannot listen: %s", err)
        return TEMPFAIL
    try:
        server.serve_forever()
    finally:
        server.close()
    return 0
