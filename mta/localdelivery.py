"""mta.localdelivery — hand one queued message to one local destination.

SYNOPSIS
    ld = LocalDelivery(config, mode="auto")       # "inprocess" | "fork" | "auto"
    result = ld.deliver(Request.mailbox(user, detail, sender, recipient, message_path))
    ld.executor                                   # where the runner must call deliver()

DESCRIPTION
    Three kinds of local destination (sendmail's local, prog and file mailers):

    mailbox   the recipient's procmail run, through deliver.agent.Agent in delivery
              mode (Invocation(delivery_mode=True, recipients=[user], sender=...)):
              the system rc, then ~/.procmailrc, then $DEFAULT in the mail spool.
    program   an alias's "|command", run with /bin/sh -c, message on stdin.
    file      an alias's /path/file, appended as an mbox (From_ line, >From quoting).

    How a delivery runs (``mode``):

    fork       each delivery in a child process (os.fork).  When the server is root,
               the child prepares the spool mailbox as root, drops to the recipient's
               groups, gid and uid (deliver.identity) and only then reads any user file;
               program and file aliases run as the unprivileged ``nobody``.  Children
               run concurrently, each with its own cwd and umask.
    inprocess  in the calling thread, as the server's own user.  The agent changes the
               process-wide cwd (MAILDIR) and umask, so ``executor`` has ONE thread and
               cwd/umask are restored after each delivery: never two at once.
    pool       as inprocess, but in ``max_forks`` long-lived worker processes forked
               when LocalDelivery is made (before any thread exists), one delivery at a
               time each.  The rc evaluation then runs on another core than the SMTP
               sessions and never competes with them for the GIL; a request and its
               result cross a pipe (pickle, length-prefixed).  A worker that dies is
               replaced; its delivery is a temporary failure (75), as in fork mode.
               Workers ignore SIGINT/SIGTERM/SIGHUP and finish the delivery in hand;
               they exit when the server closes their pipe (or dies).  The split
               daemon (`postroom serve`) runs pool delivery as delivery runners
               instead (mta.deliveryrunners, ``for_delivery_runner``): worker
               processes that take queued mail from the receivers themselves.
    auto       fork when root (and dropping), otherwise pool with three workers
               (tests/benchmarks/bench_mta.py: the GIL shared by SMTP sessions and
               rule evaluation was the server's bottleneck).

    Root with ``[deliver] run_as_root_drop = false`` runs in-process as root; that is
    logged as a warning at start (the embedded default is meant for ordinary users).

GUARANTEES
    ``deliver`` never raises for a delivery problem: every failure is a ``Result`` whose
    ``status`` is a sysexits code (deliver.exitcodes); an unexpected exception becomes
    75 (EX_TEMPFAIL), so the message is retried, never lost.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import gc
import hashlib
import json
import logging
import os
import pickle
import pwd
import queue
import signal
import struct
import subprocess
import sys
import threading
from dataclasses import dataclass
from typing import Iterator, Literal

from deliver.exitcodes import ExitCode

from .config import Config
from .deliveryheader import for_delivery
from .forking import fork_process
from .maps.users import User as MapUser

__all__ = ["Request", "Result", "LocalDelivery", "resolve_mode", "status_text", "recover_stale_locks",
           "close_inherited"]

log = logging.getLogger("mta.local")

Kind = Literal["mailbox", "program", "file"]
NOBODY = "nobody"  # sendmail's DefaultUser for program and file aliases


@dataclass(frozen=True, slots=True)
class Request:
    kind: Kind
    sender: str                   # envelope sender, "" for <>
    recipient: str                # the address being delivered (for the environment)
    message_path: str
    user: MapUser | None = None   # mailbox
    detail: str | None = None     # user+detail: procmail's $1 (-a)
    command: str | None = None    # program
    path: str | None = None       # file


@dataclass(frozen=True, slots=True)
class Result:
    status: int                   # sysexits
    text: str = ""                # where it went, or why not

    @property
    def ok(self) -> bool:
        return self.status == 0


def status_text(status: int) -> str:
    try:
        return ExitCode(status).text
    except ValueError:
        return f"unknown exit status {status}"


def resolve_mode(config: Config, mode: str, max_forks: int, *, warn: bool = True) -> tuple[str, int]:
    """The delivery mode ``mode`` ("auto" or one of the modes) means for this server,
    and how many delivery processes it runs (see the module docstring); ``warn`` logs
    that recipes will run as root when that is so."""
    root = os.geteuid() == 0
    if warn and root and not config.deliver.run_as_root_drop:
        log.warning("running as root with run_as_root_drop = false: recipes run as root")
    if mode == "auto":
        mode = "fork" if root and config.deliver.run_as_root_drop else "pool"
        if mode == "pool":
            max_forks = min(max_forks, 3)
    if root and config.deliver.run_as_root_drop and mode != "fork":
        mode = "fork"   # never run user recipes as root when asked to drop
    if mode not in ("fork", "inprocess", "pool"):
        raise ValueError(f"unknown delivery mode {mode!r}")
    return mode, 1 if mode == "inprocess" else max(1, max_forks)


class LocalDelivery:
    """Runs Requests; see the module docstring for the execution modes."""

    def __init__(self, config: Config, *, mode: str = "auto", max_forks: int = 4,
                 sendmail: str | None = None, warn: bool = True) -> None:
        self.config = config
        self.root = os.geteuid() == 0
        mode, workers = resolve_mode(config, mode, max_forks, warn=warn)
        self.mode = mode
        self.drop = self.root and config.deliver.run_as_root_drop
        self.inline = False           # deliver_async calls deliver_here on the loop's thread
        self.sendmail = sendmail or f"{sys.executable} -m mta.cli sendmail"
        self._site = None
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        self._aidle = None            # asyncio.Queue[_Worker] once deliver_async is used
        self._claims: dict[str, str] | None = None    # a pool worker's kept claim files
        self._spool_made = False
        self._workers: list[_Worker] = []
        self._pool_lock = threading.Lock()
        # Pool workers queue on a server-private flock before taking a mailbox's lock, so
        # two deliveries to one mailbox may run at once (as Postfix's local(8) with
        # local_destination_concurrency_limit = 2): one evaluates its recipes while the
        # other appends and fsyncs, and the second waits in the kernel, not by polling
        # the dot-lock (deliver.locking sleeps 50 ms and more between attempts).
        self.lock_queue_dir: str | None = None
        self.per_mailbox = 1
        if mode == "pool" and workers > 1:
            self.lock_queue_dir = str(config.server.data_dir / "run" / "locks")
            os.makedirs(self.lock_queue_dir, mode=0o700, exist_ok=True)
            # Two at once per mailbox, but always one worker left for everyone else: a
            # user whose recipes are slow must not hold up other users' mail.
            self.per_mailbox = min(2, workers - 1)
        if mode == "pool":
            preload()
            for _ in range(workers):
                self._spawn()
        self.executor = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix=f"deliver-{mode}")

    @classmethod
    def for_delivery_runner(cls, config: Config, *, sendmail: str | None = None) -> "LocalDelivery":
        """What a delivery runner (mta.deliveryrunners) delivers with: a pool worker's
        delivery in the runner's own process, one at a time, called straight from its
        loop (no thread); mailbox locks queue on the server-private flocks and the
        lock claim files are kept, as in a pool worker."""
        ld = cls(config, mode="inprocess", sendmail=sendmail, warn=False)
        ld.inline = True
        ld.lock_queue_dir = str(config.server.data_dir / "run" / "locks")
        os.makedirs(ld.lock_queue_dir, mode=0o700, exist_ok=True)
        ld._claims = {}
        return ld

    def remove_claim_files(self) -> None:
        """The kept lock claim files (pool worker, delivery runner), at exit."""
        for claim in (self._claims or {}).values():
            with contextlib.suppress(OSError):
                os.unlink(claim)

    def close(self) -> None:
        self.executor.shutdown(wait=True)
        with self._pool_lock:
            workers, self._workers = self._workers, []
        for w in workers:
            w.close()

    # ------------------------------------------------------------------ entry point
    def deliver(self, req: Request) -> Result:
        try:
            if self.mode == "fork":
                return self._forked(req)
            if self.mode == "pool":
                return self._pooled(req)
            return self._inprocess(req)
        except Exception as exc:  # noqa: BLE001 - a delivery bug must defer, never lose mail
            log.exception("delivery to %s failed unexpectedly", req.recipient)
            return Result(ExitCode.TEMPFAIL, f"internal error: {exc.__class__.__name__}")

    # ------------------------------------------------------------------ modes
    def _inprocess(self, req: Request) -> Result:
        raw = _read(req)
        cwd = os.getcwd()
        mask = os.umask(0o077)
        os.umask(mask)
        try:
            return self._run(req, raw)
        finally:
            os.chdir(cwd)
            os.umask(mask)

    def _pooled(self, req: Request) -> Result:
        worker = self._idle.get()
        try:
            result = worker.call(req)
        except (OSError, EOFError, pickle.PickleError) as exc:
            return self._replace(worker, exc)
        self._idle.put(worker)
        return result

    def _replace(self, worker: _Worker, exc: BaseException) -> Result:
        """A worker died or garbled its answer: reap it, start another, and defer the
        delivery it had (as fork mode does for a child that dies)."""
        log.error("delivery worker %d failed (%s); starting another", worker.pid, exc)
        worker.close()
        with self._pool_lock:
            if worker in self._workers:
                self._workers.remove(worker)
        self._spawn()
        return Result(ExitCode.TEMPFAIL, "delivery process died")

    async def deliver_async(self, req: Request) -> Result:
        """``deliver`` for an event loop (the runner).  In pool mode the request and the
        result cross the worker's pipes on the loop itself (add_reader), with no thread:
        a thread per delivery cost the runner more CPU in GIL hand-offs (futex storms,
        tests/benchmarks/bench_mta.py) than the delivery's own bookkeeping.  Other modes
        run ``deliver`` on ``executor``.  Use one of the two entry points per instance:
        the first call here moves the idle pool to the loop's queue."""
        import asyncio
        if self.inline:
            return self.deliver_here(req)
        if self.mode != "pool":
            return await asyncio.get_running_loop().run_in_executor(self.executor, self.deliver, req)
        if self._aidle is None:
            self._aidle = asyncio.Queue()
            while True:
                try:
                    self._aidle.put_nowait(self._idle.get_nowait())
                except queue.Empty:
                    break
        worker = await self._aidle.get()
        while worker.dead:                # its pipe closed while it was idle: replace it
            self._replace(worker, EOFError("exited while idle"))
            worker = await self._aidle.get()
        try:
            result = await worker.call_async(req)
        except asyncio.CancelledError:
            worker.close_fds()        # it exits after the delivery in hand; not reused
            raise
        except (OSError, EOFError, pickle.PickleError) as exc:
            return self._replace(worker, exc)
        except Exception as exc:  # noqa: BLE001 - a delivery bug must defer, never lose mail
            log.exception("delivery to %s failed unexpectedly", req.recipient)
            self._aidle.put_nowait(worker)
            return Result(ExitCode.TEMPFAIL, f"internal error: {exc.__class__.__name__}")
        self._aidle.put_nowait(worker)
        return result

    def _spawn(self) -> None:
        """Fork one pool worker (see the module docstring, mode ``pool``)."""
        req_r, req_w = os.pipe()
        res_r, res_w = os.pipe()

        def worker() -> int:
            close_inherited({0, 1, 2, req_r, res_w})
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1):
                signal.signal(sig, signal.SIG_IGN)
            signal.set_wakeup_fd(-1)
            self._serve_pool(req_r, res_w)
            return 0

        pid = fork_process("delivery worker", worker, failed=1)
        os.close(req_r)
        os.close(res_w)
        worker = _Worker(pid, req_w, res_r)
        with self._pool_lock:
            self._workers.append(worker)
        if self._aidle is not None:
            self._aidle.put_nowait(worker)
        else:
            self._idle.put(worker)

    def _serve_pool(self, req_r: int, res_w: int) -> None:
        """The worker's loop: one request in, one Result out, until EOF.

        A worker keeps the claim file of each mailbox lock it took (deliver.locking)
        for the next delivery instead of creating and deleting one every time: making
        an inode was the dearest step of a delivery's lock (bench_mta.py).  They are
        plain files named "<mailbox>.lock|host|pid|n", never the lock itself; they go
        when the worker exits, and ``recover_stale_locks`` removes a dead worker's."""
        self._claims = {}
        try:
            while True:
                try:
                    req = _recv(req_r)
                except EOFError:
                    return
                result = self.deliver_here(req)
                _send(res_w, result)
        finally:
            self.remove_claim_files()

    def deliver_here(self, req: Request) -> Result:
        """In-process delivery that never raises (the pool worker's body)."""
        try:
            return self._inprocess(req)
        except Exception as exc:  # noqa: BLE001 - a delivery bug must defer, never lose mail
            log.exception("delivery to %s failed unexpectedly", req.recipient)
            return Result(ExitCode.TEMPFAIL, f"internal error: {exc.__class__.__name__}")

    def _forked(self, req: Request) -> Result:
        raw = _read(req)      # as the server: the spool is not the recipient's to read
        preload()
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            code = ExitCode.TEMPFAIL
            try:
                gc.disable()      # a collection would touch, hence copy, every shared page
                os.close(r)
                if self.drop:
                    self._become(req)
                result = self._run(req, raw)
                code = result.status
                os.write(w, json.dumps({"text": result.text}).encode("utf-8")[:60000])
            except _Refused as exc:
                code = exc.code
                os.write(w, json.dumps({"text": str(exc)}).encode("utf-8")[:60000])
            except BaseException:  # noqa: BLE001 - the child must exit, never return
                try:
                    log.exception("delivery child for %s failed", req.recipient)
                finally:
                    code = ExitCode.TEMPFAIL
            finally:
                os._exit(int(code) & 0xFF)
        os.close(w)
        chunks = []
        try:
            while block := os.read(r, 65536):
                chunks.append(block)
        finally:
            os.close(r)
        _, wstatus = os.waitpid(pid, 0)
        if not os.WIFEXITED(wstatus):
            return Result(ExitCode.TEMPFAIL, f"delivery process killed by signal {os.WTERMSIG(wstatus)}")
        try:
            text = json.loads(b"".join(chunks) or b"{}").get("text", "")
        except ValueError:
            text = ""
        return Result(os.waitstatus_to_exitcode(wstatus), text)

    def _become(self, req: Request) -> None:
        """In the child, as root: prepare the mailbox, then drop for good."""
        from deliver.identity import IdentityError, drop_privileges, prepare_spool_mailbox
        try:
            if req.kind == "mailbox":
                assert req.user is not None
                user = _agent_user(req.user)
                prepare_spool_mailbox(user, str(self.config.deliver.mail_spool))
            else:
                user = _nobody()
            # a mailbox delivery keeps the spool's group for its dot-locks (saved gid only,
            # deliver.spoolgroup); program and file destinations get nothing extra
            spool = str(self.config.deliver.mail_spool) if req.kind == "mailbox" else None
            drop_privileges(user, spool)
        except IdentityError as exc:
            raise _Refused(str(exc), exc.code) from exc

    # ------------------------------------------------------------------ the work
    def _run(self, req: Request, raw: bytes) -> Result:
        if req.kind == "mailbox":
            return self._mailbox(req, raw)
        if req.kind == "program":
            return self._program(req, raw)
        return self._file(req, raw)

    def site(self):
        from deliver.agent import Site
        if self._site is None:
            d = self.config.deliver
            self._site = Site(system_rc=str(d.system_rc), spool_dir=str(d.mail_spool),
                              user_rc=d.user_rc, sendmail=self.sendmail)
        return self._site

    def _mailbox(self, req: Request, raw: bytes) -> Result:
        from deliver.agent import Agent, Invocation
        from rules.cache import load_rc
        assert req.user is not None
        user = _agent_user(req.user)
        if not self.drop:
            # Not switching users: the delivery runs as the server's own user, so that is
            # the identity the agent checks rc files and mailboxes against.
            user = type(user)(user.name, os.geteuid(), os.getegid(), user.home, user.shell)
        # $1 is the +detail, "" without one, and always there ($# = 1): the rules see
        # what procmail -a "$EXTENSION" under Postfix (or -a $h under sendmail) gives
        inv = Invocation(sender=_as_argument(req.sender) or "MAILER-DAEMON", delivery_mode=True,
                         recipients=[user.name], positional=[req.detail or ""])
        env = {"TZ": os.environ["TZ"]} if "TZ" in os.environ else {}
        if not self._spool_made:         # once per process, not a mkdir per delivery
            os.makedirs(self.config.deliver.mail_spool, exist_ok=True)
            self._spool_made = True
        effects = None
        if self.lock_queue_dir is not None:
            effects = _QueuedLockEffects(self.lock_queue_dir, stderr_fd=2, uid=user.uid, rc_loader=load_rc,
                                         claims=self._claims)
        elif self._claims is not None:
            from deliver.effects import RealEffects
            effects = RealEffects(stderr_fd=2, uid=user.uid, rc_loader=load_rc, claims=self._claims)
        outcome = Agent(user, self.site(), load_rc=load_rc, effects=effects).run(inv, raw, env)
        status = int(outcome.status)
        if outcome.delivered and status == 0:
            return Result(0, outcome.lastfolder)
        return Result(status, status_text(status))

    def _program(self, req: Request, raw: bytes) -> Result:
        assert req.command is not None
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "SHELL": "/bin/sh",
               "SENDER": req.sender, "RECIPIENT": req.recipient, "HOME": "/"}
        try:
            proc = subprocess.run(["/bin/sh", "-c", req.command], input=raw, env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  timeout=3600, close_fds=True)
        except subprocess.TimeoutExpired:
            return Result(ExitCode.TEMPFAIL, "program timed out")
        except OSError as exc:
            return Result(ExitCode.TEMPFAIL, f"cannot run program: {exc.strerror}")
        if proc.returncode < 0:
            return Result(ExitCode.TEMPFAIL, f"program killed by signal {-proc.returncode}")
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        text = err[-1][:200] if err else status_text(proc.returncode)
        return Result(proc.returncode, text if proc.returncode else "program")

    def _file(self, req: Request, raw: bytes) -> Result:
        from deliver.errors import DeliveryError
        from deliver.fromline import prepare_message
        from deliver.mbox import append_mbox
        assert req.path is not None
        data = prepare_message(raw, sender=_as_argument(req.sender) or "MAILER-DAEMON")
        try:
            append_mbox(req.path, data)
        except OSError as exc:
            code = ExitCode.TEMPFAIL if getattr(exc, "errno", None) not in (13, 2, 21) else ExitCode.CANTCREAT
            return Result(code, f"{req.path}: {exc.strerror or exc}")
        except DeliveryError as exc:
            # a file that can never be written as named (a directory, a symlink, a
            # missing directory) fails, as Postfix local(8) bounces it (5.2.0); a full
            # disk or a lock timeout is retried
            return Result(ExitCode.TEMPFAIL if exc.temporary else ExitCode.CANTCREAT, f"{req.path}: {exc}")
        except Exception as exc:  # noqa: BLE001 - a bug: defer, never lose mail
            return Result(ExitCode.TEMPFAIL, f"{req.path}: {exc}")
        return Result(0, req.path)


def recover_stale_locks(directories: list[str]) -> list[str]:
    """Remove dot-locks left behind by a delivery that was killed (crash recovery).

    deliver.locking makes a lock by hard-linking a claim file ``<lock>|<host>|<pid>|<n>``
    (flufl.lock's protocol) to ``<lock>``.  When the claim names this host and a process
    that no longer exists, nobody can ever release that lock: without this, the next
    delivery to the mailbox would wait LOCKTIMEOUT (1024 s) before forcing it.  Run by
    `postroom serve` at start, before any delivery; a lock whose owner lives, or that
    another host made, is left alone.  Returns the lock files removed.
    """
    import socket
    host = socket.getfqdn()
    removed: list[str] = []
    for directory in directories:
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        for name in names:
            parts = name.split("|")
            if len(parts) != 4 or parts[1] != host or not parts[2].isdigit():
                continue
            try:
                os.kill(int(parts[2]), 0)
                continue                       # the owner is alive
            except ProcessLookupError:
                pass
            except PermissionError:
                continue                       # alive, someone else's
            claim = os.path.join(directory, name)
            lock = os.path.join(directory, parts[0])
            try:
                same = os.path.samestat(os.lstat(claim), os.lstat(lock))
            except OSError:
                same = False
            for path in ((lock, claim) if same else (claim,)):
                try:
                    os.unlink(path)
                    removed.append(path)
                except OSError:
                    pass
            if same:
                log.warning("removed stale lock %s left by killed process %s", lock, parts[2])
    return removed


_preloaded = False


def preload() -> None:
    """Import what a delivery needs before the first fork and freeze the heap (gc.freeze),
    so children neither re-import nor copy the parent's objects on write.

    Everything a delivery imports on first use, so that no delivery pays for it: the
    agent, the mailbox writers, the locks (flufl.lock and psutil), the rc parser
    (pyparsing: an rc file whose AST cache is missing or stale is parsed), google-re2
    and the host name for lock claim files.
    A delivery runner's first delivery cost 117 ms of CPU without this (57 ms with the
    former, shorter list), three runners a third of a second in a benchmark of 2000
    messages (0.17 ms a message)."""
    global _preloaded
    if not _preloaded:
        import deliver.agent, deliver.effects, deliver.folders, deliver.fromline  # noqa: F401,E401
        import deliver.groupcommit, deliver.identity, deliver.locking, deliver.mbox  # noqa: F401,E401
        import rules.cache, rules.evaluator, rules.parser, rules.regex  # noqa: F401,E401
        rules.regex._re2()
        deliver.locking._fqdn()     # the host name in lock claim files (getfqdn, IDNA codec)
        gc.freeze()
        _preloaded = True


def _as_argument(text: str) -> str:
    """``text`` (an SMTPUTF8 address may hold any character) as deliver/ takes the
    command-line text it is handed: the latin-1 reading of its UTF-8 bytes, so that
    the From_ line gets those bytes (as Postfix writes them).  Given as it was, a
    non-latin-1 sender made the delivery fail (UnicodeEncodeError: deferred until it
    expired) and a latin-1 one was written in latin-1."""
    return text.encode("utf-8", "surrogateescape").decode("latin-1")


def _read(req: Request) -> bytes:
    """The queued message as this delivery hands it on (mta.deliveryheader): its
    Return-Path: first, as sendmail's local mailer and Postfix local(8) deliver it."""
    from .queue.spool import read_file
    return for_delivery(read_file(req.message_path), req.sender)


def _queued_lock_effects():
    from deliver.effects import RealEffects

    class QueuedLockEffects(RealEffects):
        """RealEffects whose ``lock`` first waits for a flock on a server-private file
        named after the lock (LocalDelivery.lock_queue_dir): deliveries of this server
        take a mailbox's dot-lock one after the other, in the order they asked."""

        def __init__(self, queue_dir: str, **kwargs) -> None:
            super().__init__(**kwargs)
            self._queue_dir = queue_dir

        @contextlib.contextmanager
        def lock(self, path: str) -> Iterator[bool]:
            name = hashlib.sha1(os.path.abspath(path).encode("utf-8", "surrogateescape")).hexdigest()
            try:
                fd = os.open(os.path.join(self._queue_dir, name), os.O_RDWR | os.O_CREAT, 0o600)
            except OSError:
                fd = -1          # no queue: the dot-lock alone still excludes
            try:
                if fd >= 0:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                with super().lock(path) as ok:
                    yield ok
            finally:
                if fd >= 0:
                    os.close(fd)

    return QueuedLockEffects


_effects_class = None


def _QueuedLockEffects(queue_dir: str, **kwargs):
    global _effects_class
    if _effects_class is None:
        _effects_class = _queued_lock_effects()
    return _effects_class(queue_dir, **kwargs)


def close_inherited(keep: set[int]) -> None:
    """In a pool worker: close what the server had open (listening sockets, the event
    loop, the pid file whose flock must die with the server, other workers' pipes),
    keeping ``keep`` and the log handlers' files."""
    for handler in logging.getLogger().handlers:
        stream = getattr(handler, "stream", None)
        try:
            keep.add(stream.fileno())
        except (AttributeError, OSError, ValueError):
            pass
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass


_LEN = struct.Struct("!I")


def _send(fd: int, obj: object) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(_LEN.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view):]


def _read_exactly(fd: int, n: int) -> bytes:
    chunks = []
    while n:
        block = os.read(fd, n)
        if not block:
            raise EOFError("pipe closed")
        chunks.append(block)
        n -= len(block)
    return b"".join(chunks)


def _recv(fd: int):
    (n,) = _LEN.unpack(_read_exactly(fd, _LEN.size))
    return pickle.loads(_read_exactly(fd, n))


class _Worker:
    """The server's end of one pool worker: its pid and two pipes."""

    def __init__(self, pid: int, req_w: int, res_r: int) -> None:
        self.pid, self.req_w, self.res_r = pid, req_w, res_r
        self.closed = False
        # call_async: the answer pipe stays registered with the loop between deliveries
        # (two epoll_ctl calls per delivery saved); answers go to ``_pending``.
        self._loop = None
        self._pending = None
        self._buf = bytearray()
        self.dead = False             # the answer pipe closed with no request in hand

    def call(self, req: Request) -> Result:
        _send(self.req_w, req)
        result = _recv(self.res_r)
        if not isinstance(result, Result):
            raise EOFError(f"unexpected answer {type(result).__name__}")
        return result

    async def call_async(self, req: Request) -> Result:
        """``call`` on the running loop: the request is written at once (a few hundred
        bytes into an idle worker's empty pipe never blocks), the answer is collected by
        a reader callback that stays registered for the worker's life."""
        import asyncio
        loop = asyncio.get_running_loop()
        if self.closed:
            raise EOFError("worker closed")
        if self._loop is None:
            loop.add_reader(self.res_r, self._readable)
            self._loop = loop
        fut: asyncio.Future[bytes] = loop.create_future()
        self._pending = fut
        _send(self.req_w, req)
        try:
            frame = await fut
        finally:
            self._pending = None
        result = pickle.loads(frame)
        if not isinstance(result, Result):
            raise EOFError(f"unexpected answer {type(result).__name__}")
        return result

    def _readable(self) -> None:
        try:
            block = os.read(self.res_r, 65536)
        except OSError as exc:
            self._broken(exc)
            return
        if not block:
            self._broken(EOFError("pipe closed"))
            return
        self._buf += block
        if len(self._buf) < _LEN.size:
            return
        need = _LEN.size + _LEN.unpack_from(self._buf)[0]
        if len(self._buf) < need:
            return
        frame, fut = bytes(self._buf[_LEN.size:need]), self._pending
        del self._buf[:need]
        if fut is None or fut.done() or self._buf:
            self._broken(EOFError("an answer nobody asked for"))
            return
        fut.set_result(frame)

    def _broken(self, exc: BaseException) -> None:
        """EOF, an error or a stray answer: stop listening; a waiting call fails."""
        self._unregister()
        fut = self._pending
        if fut is not None and not fut.done():
            fut.set_exception(exc)
        elif fut is None:
            self.dead = True

    def _unregister(self) -> None:
        if self._loop is not None:
            loop, self._loop = self._loop, None
            if not loop.is_closed():
                loop.remove_reader(self.res_r)

    def close_fds(self) -> None:
        if not self.closed:
            self.closed = True
            self._unregister()
            for fd in (self.req_w, self.res_r):
                try:
                    os.close(fd)
                except OSError:
                    pass

    def close(self) -> None:
        """Close the pipe (the worker exits after its delivery in hand) and reap it."""
        self.close_fds()
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass


class _Refused(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _agent_user(u: MapUser):
    from deliver.agent import User
    return User(u.name, u.uid, u.gid, str(u.home), u.shell or "/bin/sh")


def _nobody():
    from deliver.agent import User
    try:
        pw = pwd.getpwnam(NOBODY)
        return User(pw.pw_name, pw.pw_uid, pw.pw_gid, "/", "/bin/sh")
    except KeyError:
        return User(NOBODY, 65534, 65534, "/", "/bin/sh")
