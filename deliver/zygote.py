"""deliver.zygote — per-user warm processes that fork one delivery child per mail (for deliverd).

    spawn(creds, run_job, describe, before_fork, close_in_child, *, max_children=32,
          prefault_spares=True, listener=None) -> Handle
    Handle.submit(client_pid, request, fds) -> bool      (deliverd, non-blocking)
    Handle.retire()                                      (deliverd: idle, or stopping)
    RcWarmer().learn(argv, environ)                      (what a zygote keeps warm)

What it does: `postroom deliverd` (root) forks one zygote per caller identity (uid, gid,
supplementary groups) that it sees in its own namespaces.  The zygote drops to exactly
those credentials at once (groups, gid, uid; it never runs anything as root), and then
serves deliveries two ways, one child per mail, each exactly as in a direct run
(deliver.deliverd.serve_job):
  * on the user's own socket (``listener``: SOCKET.UID, made by deliverd, mode 0600,
    owned by the user): the zygote's waiting spare child accepts the client itself and
    becomes its delivery, so a mail wakes one process instead of three (client ->
    deliverd -> zygote -> child).  The spare first checks, from the kernel's word, what
    deliverd would: SO_PEERCRED/SO_PEERGROUPS exactly the zygote's uid, gid and groups
    (never root), SO_PEERPIDFD and the caller's mount, UTS, IPC and network namespaces
    equal to its own (/proc/PID/ns, then the pidfd proves the pid was not recycled).  It
    refuses (``R``) anyone else before reading the request, stays clean and waits again;
    the client then asks deliverd's main socket.  It tells the zygote (``T``, with the
    connection) before it answers ``A``;
  * handed over by deliverd on a SOCK_SEQPACKET pair: each message one client request
    (deliver.fastclient's bytes) with five fds: the client connection, the client's
    stdin, stdout, stderr and cwd.

What it keeps warm, so a child does not pay for it:
  * the rc files a delivery reads (``~/.procmailrc``, rc arguments, the system rc in -d
    mode): loaded through rules.cache.load_rc, whose in-memory memo is keyed by the file's
    path, size, mtime, inode and device and re-validated with an fstat by every load, so
    an edited rc is seen by the very next delivery; and the regexes of their conditions,
    through rules.regex.compile_regex's own cache.  An rc modified less than RC_SETTLE
    seconds ago is not preloaded (a second edit within the file system's timestamp
    granularity would keep size and mtime: the racy-git problem), the child loads it;
  * one spare child, forked ahead of the next mail, whose memory is copied ahead too
    (madvise MADV_POPULATE_WRITE, Linux 5.14; stopped as soon as a client waits), so
    neither fork(2) nor the copy-on-write faults of a 30 MB Python heap are paid while a
    client waits.  The fork, the copy and the rc warming are done only when no client is
    waiting on this zygote (measured on 2 CPUs: a fork during a delivery delayed it by
    ~1.7 ms, a copy delayed its status as much).  A child writes the exit status to its
    client itself after closing the client's stdio, before its exit tears that memory
    down; the zygote reaps it and reports a signal death (``K``) or a status the child
    could not send.

Guarantees:
  * Never root: the zygote and its children have the caller's exact uid, gid and groups
    (checked after the change); deliverd uses zygotes only for callers other than root,
    and only when the caller's mount, UTS, IPC and network namespaces are deliverd's own;
    on the per-user socket the spare checks the same itself.
  * Only ever the caller's own: a zygote serves one identity, so all it holds and every
    process it forks belong to that user; the user can kill or stop it, which hurts no
    one else (deliverd's end is non-blocking; a failed hand-over falls back to deliverd's
    per-delivery path, before any delivery started).
  * Never twice, never lost: ``A`` goes out only after every check, so a refused client's
    fallback starts from untouched stdin; after ``A`` the client counts the delivery done
    only on a status (else it exits 75).
  * The zygote exits when deliverd closes its end (idle expiry, shutdown, or deliverd's
    death; deliverd unlinks the per-user socket first), after its running deliveries have
    finished.  Deliveries on its own socket are noted to deliverd (``u``, at most once a
    second) so that it does not expire while in use.

Errors: ZygoteError (credentials could not be set) ends the zygote before it serves.
Logging: logger ``postroom.deliverd`` (deliverd's stream): "child N serves pid P uid U"
(by the zygote; by the child itself, naming its zygote, on the per-user socket); "refused
pid P uid U on the user socket: why".
"""

from __future__ import annotations

import ctypes
import errno
import gc
import logging
import os
import selectors
import signal
import socket
import stat
import time
from array import array
from dataclasses import dataclass, field
from typing import Callable

from . import spoolgroup
from .errors import DeliveryError
from .fastclient import ACCEPTED, EXITED, KILLED, REFUSED

log = logging.getLogger("postroom.deliverd")

#: one request with its fds; larger requests take deliverd's per-delivery path
MAX_MESSAGE = 128 << 10
N_FDS = 5                        # client connection, stdin, stdout, stderr, cwd
RC_SETTLE = 1.0                  # seconds an rc must be unmodified before it is preloaded
MADV_POPULATE_WRITE = 23         # <linux/mman.h>, Linux 5.14
PREFAULT_STEP = 1 << 20          # bytes populated between two looks for a waiting client
PR_SET_NAME = 15
ZYGOTE_NAME = b"pr-zygote"       # comm names (ps, /proc/PID/stat): test harnesses tell
SPARE_NAME = b"pr-spare"         # idle processes from deliveries by them
DELIVERY_NAME = b"pr-deliver"
_PID = 4                         # the client pid before the request (big-endian)
PING_INTERVAL = 1.0              # seconds between "in use" notes to deliverd

_libc = ctypes.CDLL(None, use_errno=True)
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


class ZygoteError(DeliveryError):
    """A zygote could not become its user."""


@dataclass(frozen=True, slots=True)
class Creds:
    """The identity a zygote serves: the caller's, from SO_PEERCRED/SO_PEERGROUPS."""

    uid: int
    gid: int
    groups: tuple[int, ...]

    @classmethod
    def of(cls, uid: int, gid: int, groups) -> "Creds":
        return cls(uid, gid, tuple(sorted(set(groups))))


def set_name(name: bytes) -> None:
    """The comm name (prctl PR_SET_NAME), at most 15 bytes."""
    _libc.prctl(PR_SET_NAME, ctypes.c_char_p(name[:15]), 0, 0, 0)


def drop_to(creds: Creds) -> None:
    """Groups, then gid, then uid (nothing left to regain); a no-op for a server that is
    not root (it serves only its own uid, as deliver.deliverd.become)."""
    if os.geteuid() != 0:
        if creds.uid != os.geteuid():
            raise ZygoteError("a zygote of another uid needs root")
        return
    os.setgroups(list(creds.groups))
    os.setresgid(creds.gid, creds.gid, creds.gid)
    os.setresuid(creds.uid, creds.uid, creds.uid)
    spoolgroup.forget()
    if creds.uid != 0 and 0 in os.getresuid():
        raise ZygoteError("could not drop root")


def prefault(interrupt: list[int] = ()) -> int:
    """Copy every private writable page now (MADV_POPULATE_WRITE) so the delivery that
    follows takes no copy-on-write faults; returns the bytes populated (0 on kernels
    without it).  Stops early when one of the ``interrupt`` fds becomes readable (a
    client is waiting: it is better served now with the faults than after the copy)."""
    import select
    poller = select.poll()
    for fd in interrupt:
        poller.register(fd, select.POLLIN)
    done = 0
    try:
        with open("/proc/self/maps", "rb") as f:
            maps = f.read().splitlines()
    except OSError:
        return 0
    for line in maps:
        fields = line.split()
        if len(fields) < 2 or fields[1][1:2] != b"w" or fields[1][3:4] != b"p":
            continue
        start, end = (int(x, 16) for x in fields[0].split(b"-"))
        for at in range(start, end, PREFAULT_STEP):
            if interrupt and poller.poll(0):
                return done
            size = min(PREFAULT_STEP, end - at)
            if _libc.madvise(at, size, MADV_POPULATE_WRITE) == 0:
                done += size
            elif ctypes.get_errno() == errno.EINVAL and done == 0:
                return 0         # kernel without MADV_POPULATE_WRITE
            else:
                break            # this mapping cannot be populated (guard pages): the next
    return done


# --------------------------------------------------------------------------- rc warmth


class RcWarmer:
    """Which rc files a delivery with ``argv`` reads (deliver.agent's order), loaded
    through the memo of rules.cache and their regexes compiled, in the zygote."""

    def __init__(self) -> None:
        self.loaded: dict[str, int] = {}        # path -> id() of the RcFile warmed

    @staticmethod
    def rc_paths(argv: list[str], user, site) -> list[tuple[str, bool]]:
        """(path, is ~/.procmailrc) as deliver.agent.Agent opens them; cwd-relative
        rc files (-m, ./x) are left to the child (the zygote has no cwd of the caller)."""
        from .cli import UsageError, _Version, parse_args
        try:
            inv, explain = parse_args(argv)
        except (UsageError, _Version):
            return []
        if explain:
            return []
        if inv.rcfiles:
            out = []
            for rc in inv.rcfiles:
                if rc.startswith("/"):
                    out.append((rc, False))
                elif not (inv.mailfilter or rc.startswith("./")):
                    out.append((os.path.join(user.home, rc), False))
            return out
        out = []
        if inv.delivery_mode and site.system_rc:
            out.append((site.system_rc, False))
        out.append((os.path.join(user.home, site.user_rc), True))
        return out

    def learn(self, argv: list[str], environ: dict[str, str]) -> list[str]:
        """Warm the rc files of this request; returns the paths (re)loaded just now."""
        from .agent import rcfile_is_safe
        from .identity import current_user
        from .settings import load_site
        user = current_user()
        try:
            site = load_site(environ)
        except Exception:  # noqa: BLE001 - a broken site config is the child's to report
            return []
        fresh = []
        for path, default_rc in self.rc_paths(argv, user, site):
            try:
                st = os.stat(path)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode) or time.time() - st.st_mtime < RC_SETTLE:
                continue
            if not rcfile_is_safe(path, user, default_rc=default_rc):
                continue         # the child refuses it; nothing of it is kept here
            rc = self._load(path)
            if rc is not None and self.loaded.get(path) != id(rc):
                self.loaded[path] = id(rc)
                self._compile(rc.items)
                self._prefilter(rc)
                fresh.append(path)
        return fresh

    @staticmethod
    def _prefilter(rc) -> None:
        """The rc file's header Set (rules.prefilter), built here once: every child
        forked from here has it, its DFA's common states included."""
        from rules import prefilter
        try:
            prefilter.register(rc)
        except Exception:  # noqa: BLE001 - an optimisation: the children search one by one
            log.exception("zygote: no header Set for %s", rc.path)

    @staticmethod
    def _load(path: str):
        from rules.cache import load_rc
        try:
            return load_rc(path)
        except Exception:  # noqa: BLE001 - unreadable or unparsable: the child reports it
            return None

    def _compile(self, items) -> None:
        """compile_regex for every literal condition regex, as rules.evaluator calls it
        (its lru_cache is keyed by the call); ``$`` conditions are expanded at run time."""
        from rules.ast import Block, Flag, Recipe, RegexTest, VarTest
        from rules.regex import compile_regex
        for item in items:
            if not isinstance(item, Recipe):
                continue
            for cond in item.conditions:
                if isinstance(cond.test, (RegexTest, VarTest)):
                    try:
                        compile_regex(cond.test.pattern, case_sensitive=Flag.CASE in item.flags)
                    except Exception:  # noqa: BLE001 - invalid: reported at delivery
                        pass
            if isinstance(item.action, Block):
                self._compile(item.action.items)


def _namespaces(pid, names) -> tuple[tuple[int, int], ...]:
    """(device, inode) of each /proc/PID/ns/NAME: equal pairs mean the same namespace."""
    out = []
    for name in names:
        st = os.stat(f"/proc/{pid}/ns/{name}")
        out.append((st.st_dev, st.st_ino))
    return tuple(out)


def _read_request(conn: socket.socket, n_fds: int, timeout: float) -> tuple[bytes, list[int], str | None]:
    """One request of deliver.fastclient's protocol from ``conn`` (blocking, at most
    ``timeout`` seconds in all): (bytes, fds received, why it is refused or None).  The
    checks are deliverd's: exact length, nothing after it, ``n_fds`` fds, the last a
    directory (the caller's cwd)."""
    from .deliverd import ProtocolError, needed_length, parse_request
    data = bytearray()
    fds: list[int] = []
    truncated = False
    deadline = time.monotonic() + timeout
    try:
        while True:
            need = needed_length(bytes(data[:8]))
            if len(data) >= need:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                return b"", fds, "request not sent in time"
            conn.settimeout(left)
            msg, anc, flags, _ = conn.recvmsg(1 << 16, socket.CMSG_SPACE(n_fds * 4 + 4),
                                              socket.MSG_CMSG_CLOEXEC)
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.extend(array("i", payload[: len(payload) // 4 * 4]))
            truncated |= bool(flags & socket.MSG_CTRUNC)
            if not msg:
                return b"", fds, "client closed before its request was complete"
            data += msg
        if len(data) > need:
            return b"", fds, "bytes after the request"
        parse_request(bytes(data))
    except ProtocolError as err:
        return b"", fds, f"malformed request: {err}"
    except (OSError, socket.timeout) as err:
        return b"", fds, f"read: {err}"
    if truncated or len(fds) != n_fds:
        return b"", fds, f"expected {n_fds} fds, got {len(fds)}"
    if not stat.S_ISDIR(os.fstat(fds[-1]).st_mode):
        return b"", fds, "cwd fd is not a directory"
    return bytes(data), fds, None


# --------------------------------------------------------------------------- deliverd's side


@dataclass(slots=True)
class Handle:
    """deliverd's end of one zygote."""

    pid: int
    sock: socket.socket
    creds: Creds
    last_used: float = field(default_factory=time.monotonic)
    socket_path: str | None = None       # its per-user socket, which deliverd unlinks

    def submit(self, client_pid: int, request: bytes, fds: list[int]) -> bool:
        """Hand one request over without blocking; False if the zygote cannot take it
        (gone, stopped with a full queue, message too large): deliverd then forks the
        delivery itself, which it may since nothing was started."""
        msg = client_pid.to_bytes(_PID, "big") + request
        if len(msg) > MAX_MESSAGE or len(fds) != N_FDS:
            return False
        try:
            sent = self.sock.sendmsg([msg], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array("i", fds))],
                                     socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
        except OSError as err:
            log.warning("zygote %d for uid %d cannot take a request: %s", self.pid, self.creds.uid, err)
            return False
        self.last_used = time.monotonic()
        return sent == len(msg)

    def retire(self) -> None:
        """Close our end: the zygote finishes its deliveries and exits."""
        if self.sock.fileno() >= 0:
            self.sock.close()


def spawn(creds: Creds, run_job: Callable[[bytes, list[int]], int],
          describe: Callable[[bytes], tuple[list[str], dict[str, str]]],
          before_fork: Callable[[], None], close_in_child: Callable[[], None], *,
          max_children: int = 32, prefault_spares: bool = True,
          listener: socket.socket | None = None) -> Handle:
    """Fork a zygote for ``creds`` (deliverd, root).  ``close_in_child`` closes every fd of
    deliverd's in the new process; ``run_job(request, [stdin, stdout, stderr, cwd])`` is
    the delivery (deliver.deliverd.serve_job); ``describe(request)`` gives its argv and
    environment for the rc warmer.  ``listener``: the caller's per-user socket (bound and
    listening, owned by creds.uid), served by the zygote's spares; the caller closes its
    own copy after this returns."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    before_fork()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            ours.close()
            close_in_child()
            os.setsid()
            set_name(ZYGOTE_NAME)
            drop_to(creds)
            Zygote(theirs, run_job, describe, max_children, prefault_spares,
                   creds=creds, listener=listener).serve()
            code = 0
        except BaseException:  # noqa: BLE001 - a zygote must exit, never return to deliverd
            try:
                log.exception("zygote for uid %d failed", creds.uid)
            except BaseException:  # noqa: BLE001
                pass
        finally:
            os._exit(code)
    theirs.close()
    ours.setblocking(False)
    log.info("zygote %d for uid %d gid %d", pid, creds.uid, creds.gid)
    return Handle(pid, ours, creds)


# --------------------------------------------------------------------------- the zygote


@dataclass(slots=True)
class _Busy:
    conn: socket.socket | None
    client_pid: int


class Zygote:
    """The zygote's loop: jobs in from deliverd, one child per job, statuses out."""

    def __init__(self, chan: socket.socket, run_job, describe, max_children: int,
                 prefault_spares: bool, *, creds: Creds | None = None,
                 listener: socket.socket | None = None) -> None:
        self.chan = chan
        self.creds = creds
        self.listener = listener
        self.listening = False                     # the listener is in our selector
        self.spare_prefaulted = False
        self.last_ping = 0.0
        self.used = False                          # served a client of its own socket
        self.run_job = run_job
        self.describe = describe
        self.max_children = max(1, max_children)
        self.prefault_spares = prefault_spares
        self.busy: dict[int, _Busy] = {}
        self.spare: tuple[int, socket.socket] | None = None
        self.queue: list[tuple[int, bytes, list[int]]] = []
        self.warmer = RcWarmer()
        self.draining = False
        self.sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._done_r, self._done_w = os.pipe2(os.O_CLOEXEC)      # children: "pid done"
        os.set_blocking(self._done_r, False)
        self.done: set[int] = set()
        self.spare_paused = False                  # the last spare was killed unused
        self.to_learn: list[bytes] = []            # requests whose rc files to warm

    # ---------------------------------------------------------------- loop

    def serve(self) -> None:
        os.umask(0o077)
        os.chdir("/")
        os.environ.clear()
        from .identity import current_user
        user = current_user()
        os.environ.update({"HOME": user.home, "LOGNAME": user.name, "USER": user.name,
                           "PATH": "/usr/local/bin:/usr/bin:/bin"})
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)     # deliverd ends us by closing the channel
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(self._wake_w)
        self.sel.register(self.chan, selectors.EVENT_READ, "job")
        self.sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self.sel.register(self._done_r, selectors.EVENT_READ, "done")
        if self.listener is not None:
            self.listener.setblocking(False)       # spares poll, then accept
        self._freeze()
        while not (self.draining and not self.busy and not self.queue):
            if self._quiet():
                self._settle()
            self._watch_listener(self.spare is None and not self.draining
                                 and len(self.busy) < self.max_children)
            for key, _ in self.sel.select(timeout=5.0):
                if key.data == "job":
                    self._receive()
                elif key.data == "done":
                    self._read_done()
                elif key.data == "spare":
                    self._spare_message()
                elif key.data == "listen":
                    self.spare_paused = False      # a client waits: a spare will take it
                    self._ensure_spare()
                elif key.data == "wake":
                    try:
                        while os.read(self._wake_r, 512):
                            pass
                    except BlockingIOError:
                        pass
                else:
                    self._client_gone(key.data[1])
            self._reap()
        self._drop_spare()

    def _settle(self) -> None:
        """What waits for a quiet moment (no client waiting on us), because it takes a
        CPU for a while and on a small machine a running delivery, its exit and its
        client's wake-up would wait for it: warming the rc files of the requests seen,
        forking the next spare (~2 ms) and its prefault (~15 ms for 20 MB).  Measured on
        2 CPUs: done during a delivery, the fork delayed it by ~1.7 ms, the prefault its
        status by as much."""
        while self.to_learn:
            self._learn(self.to_learn.pop(0))
        self._ping()
        self._ensure_spare()
        self._prefault_spare()

    def _watch_listener(self, on: bool) -> None:
        """The listener is ours to watch while no spare waits on it: a client that
        connects meanwhile (while another's delivery runs) gets a spare forked for it."""
        if on and not self.listening and self.listener is not None:
            self.sel.register(self.listener, selectors.EVENT_READ, "listen")
            self.listening = True
        elif not on and self.listening:
            self.sel.unregister(self.listener)
            self.listening = False

    def _freeze(self) -> None:
        """Keep the collector off the shared heap in children (it would copy every page)."""
        gc.collect()
        gc.freeze()

    def _receive(self) -> None:
        try:
            msg, anc, flags, _ = self.chan.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(N_FDS * 4),
                                                   socket.MSG_CMSG_CLOEXEC | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        fds: list[int] = []
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.extend(array("i", payload[: len(payload) // 4 * 4]))
        if not msg and not fds:
            self.draining = True                   # deliverd closed its end
            self.sel.unregister(self.chan)
            self.chan.close()
            if self.listener is not None:          # (deliverd unlinked its path first)
                self._watch_listener(False)
                self.listener.close()
                self.listener = None
            self._drop_spare()
            return
        if len(fds) != N_FDS or len(msg) <= _PID or flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            log.error("zygote: malformed hand-over (%d fds, %d bytes)", len(fds), len(msg))
            for fd in fds:
                os.close(fd)
            return
        client_pid = int.from_bytes(msg[:_PID], "big")
        self.spare_paused = False
        self.queue.append((client_pid, msg[_PID:], fds))
        self._dispatch()
        if not self.draining:
            self._stash(msg[_PID:])

    def _dispatch(self) -> None:
        while self.queue and len(self.busy) < self.max_children:
            client_pid, request, fds = self.queue.pop(0)
            conn = socket.socket(fileno=fds[0])
            # With a per-user socket the spare serves that socket only: a job sent to
            # it could cross a connection it has just accepted, and be lost with it.
            spare = self.spare is not None and self.listener is None
            pid = self._hand_to_spare(request, fds) if spare else None
            if pid is None:
                pid = self._fork(lambda: self._run(request, fds[1:], conn.fileno()))
            for fd in fds[1:]:
                os.close(fd)
            try:
                argv = self.describe(request)[0]
            except Exception:  # noqa: BLE001 - only for the log line
                argv = []
            log.debug("child %d serves pid %d uid %d: %s", pid, client_pid, os.getuid(), argv)
            self.busy[pid] = _Busy(conn, client_pid)
            self.sel.register(conn, selectors.EVENT_READ, ("client", pid))

    def _hand_to_spare(self, request: bytes, fds: list[int]) -> int | None:
        pid, sock = self._release_spare()
        try:
            sock.sendmsg([request], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array("i", fds))])
        except OSError as err:
            log.warning("zygote: spare %d gone (%s); forking", pid, err)
            sock.close()
            return None
        sock.close()
        return pid

    def _learn(self, request: bytes) -> None:
        try:
            argv, environ = self.describe(request)
            fresh = self.warmer.learn(argv, environ)
        except Exception:  # noqa: BLE001 - warmth is an optimisation, never a failure
            log.exception("zygote: warming the rc files failed")
            return
        if fresh:
            log.debug("zygote %d preloaded %s", os.getpid(), ", ".join(fresh))
            self._freeze()

    # ---------------------------------------------------------------- children

    def _fork(self, body: Callable[[], int]) -> int:
        pid = os.fork()
        if pid == 0:
            code = 75
            try:
                self._close_in_child()
                set_name(DELIVERY_NAME)
                code = body()
            except BaseException:  # noqa: BLE001 - the child must exit, never return
                try:
                    log.exception("zygote child failed")
                except BaseException:  # noqa: BLE001
                    pass
            finally:
                os._exit(code & 0xFF if code >= 0 else 75)
        return pid

    def _close_in_child(self, keep_listener: bool = False) -> None:
        """A child keeps nothing of the zygote's: not the job channel (it would steal
        jobs), not another client's connection, not the spare's channel; the per-user
        socket only in a spare (``keep_listener``), which closes it once it has a job."""
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        self.sel.close()
        if self.chan.fileno() >= 0:
            os.close(self.chan.detach())
        for busy in self.busy.values():
            if busy.conn is not None:
                os.close(busy.conn.detach())
        if self.spare is not None:
            os.close(self.spare[1].detach())
            self.spare = None
        for _, _, fds in self.queue:
            for fd in fds:
                os.close(fd)
        self.queue.clear()
        os.close(self._wake_r)
        os.close(self._wake_w)
        os.close(self._done_r)
        self.listening = False
        if not keep_listener:
            self._close_listener()

    def _run(self, request: bytes, fds: list[int], conn: int) -> int:
        """One delivery in this process, then its status straight to the client (before
        the exit that frees this copy of the heap).  The zygote hears "done" first, so a
        client that closes once it has the status is never taken for a killed one."""
        code = self.run_job(request, fds)
        code = code & 0xFF if code >= 0 else 75
        try:
            os.write(self._done_w, os.getpid().to_bytes(4, "little"))
        except OSError:
            pass
        try:
            os.write(conn, EXITED + bytes([code]))
        except OSError:
            pass
        return code

    def _quiet(self) -> bool:
        """No client is waiting: nothing queued, and every running child's client has its
        status and closed (or went away); see _settle."""
        return not self.queue and all(b.conn is None for b in self.busy.values())

    def _ensure_spare(self) -> None:
        """Fork the next spare (when quiet, or for a client waiting on the per-user
        socket).  At max_children running deliveries no spare is made: clients of the
        per-user socket then wait in its backlog until one ends."""
        if (self.spare is not None or self.draining or self.spare_paused
                or len(self.busy) >= self.max_children):
            return
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                ours.close()
                self._close_in_child(keep_listener=True)
                set_name(SPARE_NAME)
                code = self._spare_wait(theirs)
            except BaseException:  # noqa: BLE001 - the child must exit, never return
                code = 75
                try:
                    log.exception("zygote spare failed")
                except BaseException:  # noqa: BLE001
                    pass
            finally:
                os._exit(code & 0xFF if code >= 0 else 75)
        theirs.close()
        ours.setblocking(False)
        self.spare = (pid, ours)
        self.spare_prefaulted = False
        self.sel.register(ours, selectors.EVENT_READ, "spare")

    def _prefault_spare(self) -> None:
        """Tell the spare to copy its memory now (``P``): nobody is waiting for us."""
        if self.spare is None or self.spare_prefaulted or not self.prefault_spares:
            return
        self.spare_prefaulted = True
        try:
            self.spare[1].send(b"P", socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
        except OSError:
            pass                                   # gone: reaped in due course

    def _release_spare(self) -> tuple[int, socket.socket]:
        assert self.spare is not None
        pid, sock = self.spare
        self.spare = None
        self._unwatch(sock)
        return pid, sock

    def _unwatch(self, sock: socket.socket) -> None:
        try:
            self.sel.unregister(sock)
        except (KeyError, ValueError):
            pass

    def _spare_message(self) -> None:
        """The spare took a client of the per-user socket: ``T`` + its pid (+ the request,
        for the rc warmer), with the connection attached.  It is a busy child from now
        on, exactly as one handed a job by deliverd."""
        if self.spare is None:
            return
        try:
            msg, anc, flags, _ = self.spare[1].recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(4),
                                                       socket.MSG_CMSG_CLOEXEC | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            msg, anc, flags = b"", [], 0
        fds: list[int] = []
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.extend(array("i", payload[: len(payload) // 4 * 4]))
        if msg[:1] != b"T" or len(fds) != 1 or len(msg) < 1 + _PID or flags & socket.MSG_CTRUNC:
            for fd in fds:
                os.close(fd)
            if not msg:                            # it exited: the reap says how
                self._unwatch(self.spare[1])
            return
        pid, sock = self._release_spare()
        sock.close()
        client_pid = int.from_bytes(msg[1:1 + _PID], "big")
        request = msg[1 + _PID:]
        conn = socket.socket(fileno=fds[0])
        self.busy[pid] = _Busy(conn, client_pid)
        self.sel.register(conn, selectors.EVENT_READ, ("client", pid))
        self.used = True
        if request:
            self._stash(request)

    def _stash(self, request: bytes) -> None:
        if len(self.to_learn) < 8:
            self.to_learn.append(request)

    def _ping(self) -> None:
        """Deliveries through the per-user socket pass deliverd by: tell it, at most once
        a second, that this zygote is in use (its idle expiry)."""
        now = time.monotonic()
        if not self.used or now - self.last_ping < PING_INTERVAL or self.chan.fileno() < 0:
            return
        self.used = False
        self.last_ping = now
        try:
            self.chan.send(b"u", socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
        except OSError:
            pass

    # ---------------------------------------------------------------- the spare

    def _spare_wait(self, chan: socket.socket) -> int:
        """A spare's life: wait for ``P`` (prefault), a job from the zygote, EOF (retired),
        or a client on the per-user socket (_take); a refused client leaves it as clean
        as before, waiting again."""
        import select
        poller = select.poll()
        poller.register(chan.fileno(), select.POLLIN)
        if self.listener is not None:
            poller.register(self.listener.fileno(), select.POLLIN)
        while True:
            try:
                ready = {fd for fd, _ in poller.poll()}
            except InterruptedError:
                continue
            if chan.fileno() in ready:
                msg, anc, flags, _ = chan.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(N_FDS * 4),
                                                  socket.MSG_CMSG_CLOEXEC)
                fds: list[int] = []
                for level, kind, payload in anc:
                    if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                        fds.extend(array("i", payload[: len(payload) // 4 * 4]))
                if not msg and not fds:
                    return 0                       # retired unused
                if msg == b"P" and not fds:
                    waiting = [chan.fileno()]
                    if self.listener is not None:
                        waiting.append(self.listener.fileno())
                    prefault(waiting)
                    continue
                chan.close()
                self._close_listener()
                if len(fds) != N_FDS or flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                    return 75
                set_name(DELIVERY_NAME)
                return self._run(msg, fds[1:], fds[0])
            if self.listener is not None and self.listener.fileno() in ready:
                try:
                    conn, _ = self.listener.accept()
                except (BlockingIOError, InterruptedError):
                    continue                       # another process took it
                except OSError as err:
                    log.warning("zygote spare: accept: %s", err)
                    continue
                code = self._take(conn, chan)
                if code is not None:
                    return code

    def _close_listener(self) -> None:
        if self.listener is not None:
            os.close(self.listener.detach())
            self.listener = None

    def _take(self, conn: socket.socket, chan: socket.socket) -> int | None:
        """Serve one client of the per-user socket in this spare, or refuse it (``R``: the
        client then asks deliverd's main socket, nothing having started) and return None.

        The checks are deliverd's, done here from the kernel's word (SO_PEERCRED,
        SO_PEERGROUPS, SO_PEERPIDFD): exactly this zygote's uid, gid and groups, never
        root, and the mount, UTS, IPC and network namespaces of this process (read from
        /proc, then the pidfd proves the pid was not recycled in between).  Then the
        request, with its four fds, as deliverd reads it; the zygote is told (``T``)
        before ``A`` goes out, and the delivery runs in this process."""
        from .deliverd import N_FDS as REQUEST_FDS, PENDING_TIMEOUT, Peer, peer_of
        peer: Peer | None = None
        fds: list[int] = []
        try:
            peer = peer_of(conn)
            why = self._refusal(peer)
            data = b""
            if why is None:
                data, fds, why = _read_request(conn, REQUEST_FDS, PENDING_TIMEOUT)
            if why is None:
                msg = b"T" + peer.pid.to_bytes(_PID, "big")
                if len(msg) + len(data) <= MAX_MESSAGE:
                    msg += data                    # (else the warmer does without)
                try:
                    chan.sendmsg([msg], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array("i", [conn.fileno()]))],
                                 socket.MSG_NOSIGNAL)
                except OSError as err:
                    why = f"zygote gone: {err}"
        except OSError as err:
            why = f"{err}"
        finally:
            if peer is not None and peer.pidfd >= 0:
                os.close(peer.pidfd)
        if why is not None:
            log.info("zygote: refused pid %d uid %d on the user socket: %s",
                        peer.pid if peer else 0, peer.uid if peer else -1, why)
            for fd in fds:
                os.close(fd)
            try:
                conn.settimeout(1.0)
                conn.sendall(REFUSED)
            except OSError:
                pass
            conn.close()
            return None
        chan.close()
        self._close_listener()
        set_name(DELIVERY_NAME)
        if log.isEnabledFor(logging.DEBUG):    # (here, not in the zygote: logged before 'A')
            try:
                argv = self.describe(data)[0]
            except Exception:  # noqa: BLE001 - only for the log line
                argv = []
            log.debug("child %d serves pid %d uid %d (zygote %d): %s", os.getpid(), peer.pid,
                      os.getuid(), os.getppid(), argv)
        try:
            conn.settimeout(None)
            conn.sendall(ACCEPTED)
        except OSError:
            return 75                              # gone before 'A': nothing delivered
        fd = conn.detach()
        return self._run(data, fds, fd)

    def _refusal(self, peer) -> str | None:
        """Why ``peer`` may not be served by this zygote (None: it may)."""
        from .deliverd import NAMESPACES
        creds = self.creds
        if creds is None:
            return "no identity"
        if peer.pidfd < 0:
            return "no SO_PEERPIDFD"
        if peer.uid == 0 or (peer.uid, peer.gid) != (creds.uid, creds.gid):
            return f"uid {peer.uid} gid {peer.gid}: not this zygote's"
        if Creds.of(peer.uid, peer.gid, peer.groups) != creds:
            return "other supplementary groups"
        try:
            theirs = _namespaces(peer.pid, NAMESPACES)
            signal.pidfd_send_signal(peer.pidfd, 0)
            ours = _namespaces("self", NAMESPACES)
        except OSError as err:
            return f"namespaces: {err}"
        if theirs != ours:
            return "caller in other namespaces"
        return None

    def _drop_spare(self) -> None:
        if self.spare is not None:
            self._release_spare()[1].close()       # EOF: the spare exits

    # ---------------------------------------------------------------- endings

    def _reap(self) -> None:
        spare_died = False
        self._read_done()
        while True:
            try:
                pid, wstatus = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            if self.spare is not None and self.spare[0] == pid:
                self._spare_message()              # a client it took before it died?
            if self.spare is not None and self.spare[0] == pid:
                self._release_spare()[1].close()   # killed unused: the next job forks one
                spare_died = True
                continue
            busy = self.busy.pop(pid, None)
            reported = pid in self.done
            self.done.discard(pid)
            if busy is None:
                continue
            if busy.conn is not None and reported and not os.WIFSIGNALED(wstatus):
                self.sel.unregister(busy.conn)
                busy.conn.close()
            elif busy.conn is not None:
                # The child normally sent its status before exiting; a second status
                # is never read.  A signal death, though, is ours to report.
                if os.WIFSIGNALED(wstatus):
                    reply = KILLED + bytes([os.WTERMSIG(wstatus)])
                else:
                    reply = EXITED + bytes([os.waitstatus_to_exitcode(wstatus) & 0xFF])
                try:
                    busy.conn.send(reply, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
                except OSError:
                    pass
                self.sel.unregister(busy.conn)
                busy.conn.close()
        self._dispatch()                           # queued jobs run even when draining
        if spare_died:
            self.spare_paused = True               # until the next job: no fork loop

    def _read_done(self) -> None:
        """Pids of children that sent their status (4-byte writes: atomic on a pipe)."""
        while True:
            try:
                data = os.read(self._done_r, 4096)
            except BlockingIOError:
                return
            for i in range(0, len(data) - 3, 4):
                self.done.add(int.from_bytes(data[i:i + 4], "little"))
            if len(data) < 4096:
                return

    def _client_gone(self, pid: int) -> None:
        """The client's end became readable: it has its status, or it was killed; a
        delivery still running gets the SIGTERM the client's own process would have."""
        busy = self.busy.get(pid)
        if busy is None or busy.conn is None:
            return
        self.sel.unregister(busy.conn)             # (a client never sends more)
        busy.conn.close()
        busy.conn = None
        self._read_done()
        if pid in self.done:
            return                                 # it has its status: a normal ending
        log.warning("client pid %d went away; terminating child %d", busy.client_pid, pid)
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
