"""``postroom serve``: the mail daemon — SMTP receivers and the queue runner.

SYNOPSIS
    postroom serve [--config postroom.toml | --embedded DIR]
                   [--delivery auto|inprocess|fork|pool] [--forks N] [--single-process]
                   [--no-stderr] [-v]

DESCRIPTION
    Runs in the foreground (systemd's Type=simple; samples/postroom.service).  Listens on
    every [smtp] listener, queues what it accepts into [server] spool_dir, and delivers
    it with the queue runner (mta.runner).  Maillog lines go to [server] log_file and to
    stderr (unless --no-stderr).

    Processes, like Postfix's smtpd and qmgr/local:

      receiver        this pid (in DATA/run/postroom.pid): SMTP sessions; binds the
                      listeners, forks the others, receives signals and passes them on
      receivers       [smtp] processes - 1 more (default: one per CPU, at most 4), all
                      accepting from the same listening sockets; [smtp.limits]
                      max_connections bounds them together (mta.smtp.sessioncount).
                      The receivers run on uvloop (mta.eventloop), the other processes
                      on asyncio's own loop
      queue runner    forked at start: schedules retries (scans for deferred mail
                      that became due, flushes) and, in fork and inprocess delivery,
                      delivers what the receivers queued, told of it over a pipe
      delivery        with pool delivery (the default when not root): the queue
      runners         runner's children, --forks of them (at most 3 with auto).  They
                      read the receivers' pipe themselves; each claims, routes and
                      delivers one message at a time, running the recipes in its own
                      process (mta.deliveryrunners).  At most --forks - 1 of them
                      deliver to one user at once (mta.userslots), so a user whose
                      recipes hang cannot hold them all

    Each receiver commits a message's fsyncs on its own event loop (a commit thread cost
    more in GIL hand-offs than it saved), so concurrency comes from several receiver
    processes, and rule evaluation runs on other cores than the SMTP sessions
    (tests/benchmarks/bench_mta.py).  When the main receiver stops or dies, the other
    receivers see their lifeline pipe close and stop, then the runner (or its delivery
    runners) sees the receivers' pipe close, finishes the deliveries in flight and
    exits.  A runner or receiver that dies stops the daemon (exit 75); a delivery
    runner that dies is replaced.  --single-process keeps everything in one process
    (pool delivery there is mta.localdelivery's worker pool).

    --embedded DIR   the self-contained default `make run` uses: Config.embedded_default
                     (SMTP on 127.0.0.1:2525, everything under DIR/var), the sample maps
                     installed into DIR/etc, and the demo user's ~/.procmailrc copied from
                     samples/procmailrc when missing.
    --delivery       how local deliveries run (mta.localdelivery); --forks bounds the
                     concurrent delivery processes in fork and pool mode.

SIGNALS
    SIGTERM, SIGINT  stop accepting, let sessions inside DATA finish, finish the
                     deliveries in flight, exit 0.
    SIGHUP           reload the maps (they also reload by themselves when changed).
    SIGUSR1          rescan the queue now (sent by `postroom sendmail` and `queue flush`;
                     a flush request file makes deferred mail due at once).

FILES
    DATA/run/postroom.pid   the daemon's pid, flock'ed while it runs: a second daemon
                            on the same data directory refuses to start (exit 75).
    DATA/run/flush          written by `postroom queue flush`.
    DATA/bin/sendmail       a wrapper that runs `postroom sendmail` with this config;
                            it is $SENDMAIL for recipes (`! addr`).

EXIT STATUS
    0 after a clean stop; 78 for a configuration error; 75 when already running or a
    listener cannot be opened.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable, Coroutine, Sequence

from .config import Config, ConfigError, install_samples, load_config
from .deliveryrunners import RECORD_SIZE, RecordWriter, parse_record
from .forking import describe_exit, fork_process, watch_exit

__all__ = ["main", "select_config", "add_config_arguments", "pidfile_path", "poke",
           "daemon_pid", "flush_request_path"]

log = logging.getLogger("mta.serve")

DEFAULT_CONFIG = "/etc/postroom/postroom.toml"


# --------------------------------------------------------------------------- shared helpers

def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--config", "-C", metavar="FILE", help="postroom.toml (default: "
                       f"$POSTROOM_CONFIG or {DEFAULT_CONFIG})")
    group.add_argument("--embedded", metavar="DIR", help="the embedded default rooted at DIR")


def select_config(config: str | None, embedded: str | None) -> Config:
    """The Config named by --config/--embedded, $POSTROOM_CONFIG, $POSTROOM_EMBEDDED or
    the system default; ConfigError when it cannot be loaded."""
    if embedded is None and config is None:
        embedded = os.environ.get("POSTROOM_EMBEDDED") or None
        config = os.environ.get("POSTROOM_CONFIG") or None
    if embedded is not None:
        return Config.embedded_default(Path(embedded))
    return load_config(config or DEFAULT_CONFIG)


def config_argv(args: argparse.Namespace) -> list[str]:
    """The options that select the same configuration in another postroom command."""
    if getattr(args, "embedded", None):
        return ["--embedded", str(Path(args.embedded).resolve())]
    if getattr(args, "config", None):
        return ["--config", str(Path(args.config).resolve())]
    return []


def run_dir(config: Config) -> Path:
    return config.server.data_dir / "run"


def pidfile_path(config: Config) -> Path:
    return run_dir(config) / "postroom.pid"


def flush_request_path(config: Config) -> Path:
    return run_dir(config) / "flush"


def daemon_pid(config: Config) -> int | None:
    """The pid of the running daemon, None when none holds the pid file's lock."""
    path = pidfile_path(config)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            return int(text) if text.isdigit() else None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None       # nobody holds it: a stale file
    finally:
        os.close(fd)


def poke(config: Config, *, flush: bool = False) -> bool:
    """Ask the daemon to scan the queue now (SIGUSR1); False when it is not running.

    Never required for correctness: the runner also rescans the spool periodically.
    """
    if flush:
        try:
            run_dir(config).mkdir(parents=True, exist_ok=True)
            flush_request_path(config).touch()
        except OSError as exc:
            log.warning("cannot write the flush request: %s", exc)
    pid = daemon_pid(config)
    if pid is None:
        return False
    try:
        os.kill(pid, signal.SIGUSR1)
    except OSError:
        return False
    return True


# --------------------------------------------------------------------------- the daemon

def _lock_pidfile(config: Config) -> int | None:
    path = pidfile_path(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def write_sendmail_wrapper(config: Config, selector: list[str]) -> Path:
    """DATA/bin/sendmail: `postroom sendmail` with this daemon's configuration."""
    path = config.server.data_dir / "bin" / "sendmail"
    path.parent.mkdir(parents=True, exist_ok=True)
    quoted = " ".join("'" + a.replace("'", "'\\''") + "'" for a in
                      [sys.executable, "-m", "mta.cli", "sendmail", *selector])
    text = f"#!/bin/sh\n# written by postroom serve\nexec {quoted} \"$@\"\n"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.chmod(0o755)
    tmp.replace(path)
    return path


def prepare_embedded(config: Config) -> None:
    """Install the sample maps and the demo user's ~/.procmailrc (never overwriting)."""
    from .config import SAMPLES_DIR
    from .maps.users import UsersFile
    for written in install_samples(config):
        log.info("installed %s", written)
    config.deliver.mail_spool.mkdir(parents=True, exist_ok=True)
    if config.maps.users is None:
        return
    demo = UsersFile(config.maps.users, config.server.data_dir).lookup("demo")
    if demo is None:
        return
    demo.home.mkdir(parents=True, exist_ok=True)
    rc = demo.home / ".procmailrc"
    if not rc.exists():
        rc.write_bytes((SAMPLES_DIR / "procmailrc").read_bytes())
        rc.chmod(0o644)
        log.info("installed %s", rc)


def prepare_queue(config: Config):
    """Open the spool (recovering stale claims) and remove dot-locks of deliveries killed
    with the previous daemon; returns (spool, maps).  Done once, before the runner starts."""
    from .localdelivery import recover_stale_locks
    from .maps import Maps
    from .queue import Spool

    spool = Spool(str(config.server.spool_dir))
    maps = Maps.from_config(config)
    # Dot-locks of deliveries killed with the previous daemon (mail spool and the users'
    # homes when the users file lists them); see mta.localdelivery.recover_stale_locks.
    lock_dirs = [str(config.deliver.mail_spool)]
    users_data = getattr(maps.users, "data", None)
    if isinstance(users_data, dict):
        lock_dirs += [str(u.home) for u in users_data.values()]
    recover_stale_locks(lock_dirs)
    for d in maps.diagnostics():
        log.warning("%s", d)
    return spool, maps


async def run_queue_runner(config: Config, notify_fd: int, *, delivery_mode: str = "auto",
                           forks: int = 4, sendmail: str | None = None,
                           ready_fd: int | None = None) -> int:
    """The queue runner process of the split daemon (see ``main``): reads queue ids from
    ``notify_fd``, delivers, and stops (finishing deliveries in flight) at EOF — the
    receiver closed the pipe, or died — or on SIGTERM.  SIGINT is ignored: a Ctrl-C
    reaches the receiver too, which then closes the pipe after its sessions.

    With pool delivery the delivery runners (mta.deliveryrunners) read ``notify_fd``
    instead; this process schedules for them, and stops when one of them exits at the
    pipe's EOF, or on SIGTERM."""
    import asyncio

    from .deliveryrunners import DeliveryRunners
    from .localdelivery import LocalDelivery, resolve_mode
    from .maps import Maps
    from .queue import Spool
    from .routing import Router
    from .runner import Runner

    spool = Spool(str(config.server.spool_dir), recover=False)
    router = Router(config, Maps.from_config(config))
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    mode, processes = resolve_mode(config, delivery_mode, forks)
    runners = delivery = None
    if mode == "pool":            # the receivers' pipe goes straight to delivery runners
        runners = DeliveryRunners(config, spool, notify_fd, processes, sendmail=sendmail)
        runner = Runner(config, spool, router, None, handoff=runners.handoff)
        runners.start(runner, on_stopped=stop.set)
    else:
        delivery = LocalDelivery(config, mode=mode, max_forks=forks, sendmail=sendmail, warn=False)
        runner = Runner(config, spool, router, delivery)
    buf = bytearray()
    os.set_blocking(notify_fd, False)

    def readable() -> None:
        try:
            data = os.read(notify_fd, 65536)
        except BlockingIOError:
            return
        if not data:
            loop.remove_reader(notify_fd)
            stop.set()
            return
        buf.extend(data)
        whole = len(buf) - len(buf) % RECORD_SIZE
        for at in range(0, whole, RECORD_SIZE):
            job = parse_record(bytes(buf[at:at + RECORD_SIZE]))
            if job is None:
                log.error("queue runner: a malformed record %r ignored", bytes(buf[at:at + RECORD_SIZE]))
            else:
                runner.notify(job[0])
        del buf[:whole]

    def reload() -> None:
        new_maps = Maps.from_config(config)
        runner.set_router(Router(config, new_maps))
        if runners is not None:
            runners.signal(signal.SIGHUP)

    def poked() -> None:
        _wake_runner(config, runner)

    if runners is None:
        loop.add_reader(notify_fd, readable)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload)
    loop.add_signal_handler(signal.SIGUSR1, poked)
    if flush_request_path(config).exists():
        poked()
    runner_task = asyncio.create_task(runner.run())
    log.info("queue runner started, delivery=%s, pid %d%s", mode, os.getpid(),
             f", delivery runners {' '.join(map(str, sorted(runners.pids)))}" if runners else "")
    if ready_fd is not None:      # our signal handlers are in place: the receiver may go on
        os.write(ready_fd, b"r")
        os.close(ready_fd)
    await stop.wait()
    await _stop_runner(runner, runner_task, delivery)
    if runners is not None:
        await runners.stop()
    log.info("queue runner stopped")
    return 0


async def _stop_runner(runner, runner_task, delivery) -> None:
    """Finish the deliveries in flight, end the runner's task, close the delivery pool
    (``delivery`` None: the runner only scheduled, mta.deliveryrunners delivered)."""
    import asyncio
    await runner.stop()
    runner_task.cancel()
    try:
        await runner_task
    except asyncio.CancelledError:
        pass
    if delivery is not None:
        delivery.close()


def _wake_runner(config: Config, runner) -> None:
    """SIGUSR1: a queue flush when `postroom queue flush` left its request file, else
    just a rescan of what is due."""
    flush = flush_request_path(config)
    try:
        flush.unlink()
        runner.wake(flush=True)
        log.info("queue flush requested")
    except FileNotFoundError:
        runner.wake()


async def serve(config: Config, *, delivery_mode: str = "auto", forks: int = 4,
                selector: Sequence[str] = (), ready: Callable[[], None] | None = None,
                runner_pid: int | None = None, notify_fd: int | None = None,
                prepared=None, sockets: Sequence[socket.socket] | None = None,
                receivers: Sequence[int] = (), session_count=None, index: int = 0,
                lifeline_fd: int | None = None) -> int:
    """One receiver process.  Three roles:

    * the whole daemon (``notify_fd`` None): its queue runner runs in this process;
    * the main receiver of the split daemon (``runner_pid`` set): tells the runner of new
      mail through ``notify_fd``, supervises the runner and the other receivers
      (``receivers``), passes signals on, and stops them in order;
    * another receiver (``notify_fd`` set, no ``runner_pid``): sessions only; it stops
      on SIGTERM or when the main receiver's ``lifeline_fd`` pipe closes (it died).

    ``sockets`` are listening sockets bound by the main receiver before it forked (one
    per listener, shared by every receiver); without them each listener is bound here.
    ``session_count`` (mta.smtp.sessioncount) makes max_connections a bound on all the
    receivers together; ``index`` is this receiver's number (0: the main one)."""
    import asyncio

    from .maps import Maps
    from .policy import RecipientPolicy
    from .routing import Router
    from .smtp.limits import ServerLimits
    from .smtp.server import SmtpServer

    spool, maps = prepared if prepared is not None else prepare_queue(config)
    if sockets is not None:           # one of the split daemon's receivers
        spool.share_free(index, config.smtp.receiver_processes())
    router = Router(config, maps)
    policy = RecipientPolicy(router)
    loop = asyncio.get_running_loop()
    runner = delivery = notifier = None
    if notify_fd is None:
        from .localdelivery import LocalDelivery
        from .runner import Runner
        sendmail = write_sendmail_wrapper(config, list(selector))
        delivery = LocalDelivery(config, mode=delivery_mode, max_forks=forks, sendmail=str(sendmail))
        runner = Runner(config, spool, router, delivery)
        on_queued = runner.notify
    else:
        notifier = RecordWriter(loop, notify_fd)
        on_queued = notifier.notify
    lim = config.smtp.limits
    limits = ServerLimits(max_message_size=lim.max_message_size, max_recipients=lim.max_recipients,
                          max_connections=lim.max_connections,
                          greet_pause=lim.greet_pause,
                          idle_timeout=config.smtp.timeouts.command,
                          data_timeout=config.smtp.timeouts.data)
    servers = []
    stop = asyncio.Event()
    status = 0

    def watch(pid: int, what: str) -> asyncio.Future[int]:
        """Reap ``pid`` when it exits.  An exit before we are stopping stops the daemon:
        with 75 when the child died, with 0 when it stopped cleanly because it was told
        to (systemd's default KillMode signals every process of the service at once, not
        only this one)."""
        def exited(code: int) -> None:
            nonlocal status
            if stop.is_set():
                return
            if code == 0:
                log.info("the %s process %d stopped; stopping", what, pid)
            else:
                log.error("the %s process %d exited unexpectedly (%s); stopping", what, pid,
                          describe_exit(code))
                status = 75
            stop.set()
        return watch_exit(loop, pid, exited)

    runner_exit = watch(runner_pid, "queue runner") if runner_pid is not None else None
    receiver_exits = [watch(pid, "receiver") for pid in receivers]
    if lifeline_fd is not None:
        loop.add_reader(lifeline_fd, stop.set)      # EOF: the main receiver is gone

    async def stop_children() -> None:
        for pid in receivers:
            _signal_child(pid, signal.SIGTERM)
        if receiver_exits:
            await asyncio.gather(*receiver_exits)
        if notifier is not None:
            notifier.close()                # the last writer gone: EOF, the runner finishes
        if runner_exit is not None:
            await runner_exit

    try:
        for i, listener in enumerate(config.smtp.listeners):
            srv = SmtpServer(hostname=config.server.hostname, policy=policy, spool=spool,
                             limits=limits, on_queued=on_queued, session_count=session_count,
                             slot=index * len(config.smtp.listeners) + i)
            await srv.start(listener.host, listener.port, sock=sockets[i] if sockets else None)
            servers.append(srv)
    except OSError as exc:
        log.error("cannot listen: %s", exc)
        for srv in servers:
            await srv.stop()
        if delivery is not None:
            delivery.close()
        stop.set()
        await stop_children()
        return 75

    def reload() -> None:
        new_maps = Maps.from_config(config)
        for d in new_maps.diagnostics():
            log.warning("%s", d)
        new_router = Router(config, new_maps)
        policy.router = new_router
        if runner is not None:
            runner.set_router(new_router)
        else:
            _signal_child(runner_pid, signal.SIGHUP)
        for pid in receivers:
            _signal_child(pid, signal.SIGHUP)
        log.info("maps reloaded (SIGHUP)")

    def poked() -> None:
        if runner is None:
            _signal_child(runner_pid, signal.SIGUSR1)   # it reads the flush request
            return
        _wake_runner(config, runner)

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    if lifeline_fd is None:
        loop.add_signal_handler(signal.SIGINT, stop.set)
    else:       # a Ctrl-C reaches the main receiver too, which stops us in order
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    loop.add_signal_handler(signal.SIGHUP, reload)
    loop.add_signal_handler(signal.SIGUSR1, poked)
    runner_task = None
    if runner is not None:
        if flush_request_path(config).exists():
            poked()
        runner_task = asyncio.create_task(runner.run())
    if lifeline_fd is None:
        log.info("postroom serve ready: %s, delivery=%s, pid %d%s",
                 ", ".join(str(lst) for lst in config.smtp.listeners),
                 delivery.mode if delivery is not None else f"{delivery_mode} in runner process {runner_pid}",
                 os.getpid(),
                 f", receivers {os.getpid()} {' '.join(map(str, receivers))}" if receivers else "")
    if ready is not None:
        ready()
    await stop.wait()
    if lifeline_fd is None:
        log.info("stopping: finishing sessions and deliveries in flight")
    await asyncio.gather(*(srv.stop() for srv in servers), return_exceptions=True)
    if runner is not None:
        await _stop_runner(runner, runner_task, delivery)
    else:
        await stop_children()
    if lifeline_fd is None:
        log.info("stopped")
    return status


def _signal_child(pid: int | None, sig: int) -> None:
    """Pass ``sig`` on to the runner or another receiver (gone already: nothing to do)."""
    if pid is not None:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _serve_split(config: Config, args: argparse.Namespace, pidfile_fd: int,
                 ready: Callable[[], None] | None) -> int:
    """Fork the queue runner and the other receivers, then run the main receiver here
    (see the module docstring)."""
    import asyncio

    prepared = prepare_queue(config)
    sendmail = str(write_sendmail_wrapper(config, config_argv(args)))
    r, w = os.pipe()
    ready_r, ready_w = os.pipe()

    def queue_runner() -> int:
        # until its own handlers are installed, a forwarded signal must not kill it
        for sig in (signal.SIGHUP, signal.SIGUSR1, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
        os.close(w)
        os.close(ready_r)
        os.close(pidfile_fd)      # the pid file's flock belongs to the receiver
        return asyncio.run(run_queue_runner(config, r, delivery_mode=args.delivery,
                                            forks=args.forks, sendmail=sendmail,
                                            ready_fd=ready_w))

    pid = fork_process("queue runner", queue_runner)
    os.close(r)
    os.close(ready_w)
    started = os.read(ready_r, 1)
    os.close(ready_r)
    if not started:
        log.error("the queue runner process did not start")
        os.close(w)
        os.waitpid(pid, 0)
        return 75
    try:
        sockets = [_listen(lst) for lst in config.smtp.listeners]
    except OSError as exc:
        log.error("cannot listen: %s", exc)
        os.close(w)                   # EOF: the runner exits
        os.waitpid(pid, 0)
        return 75
    from .smtp.sessioncount import SessionCount
    n = config.smtp.receiver_processes()
    session_count = SessionCount(n * len(config.smtp.listeners))
    lifeline_r, lifeline_w = os.pipe()
    receivers = []
    for index in range(1, n):
        def receiver(index: int = index) -> int:
            # until serve() installs its handlers, a forwarded signal must not kill it
            for sig in (signal.SIGHUP, signal.SIGUSR1):
                signal.signal(sig, signal.SIG_IGN)
            os.close(lifeline_w)
            os.close(pidfile_fd)
            return _run_receiving(serve(config, selector=config_argv(args), notify_fd=w,
                                        prepared=prepared, sockets=sockets,
                                        session_count=session_count, index=index,
                                        lifeline_fd=lifeline_r))

        child = fork_process("receiver", receiver)
        receivers.append(child)
    os.close(lifeline_r)
    try:
        return _run_receiving(serve(config, delivery_mode=args.delivery, forks=args.forks,
                                    selector=config_argv(args), ready=ready, runner_pid=pid,
                                    notify_fd=w, prepared=prepared, sockets=sockets,
                                    receivers=receivers, session_count=session_count))
    finally:
        os.close(lifeline_w)


def _run_receiving(main: Coroutine[Any, Any, int]) -> int:
    """asyncio.run for a receiver of the split daemon, on its own loop (mta.eventloop)."""
    import asyncio

    from .eventloop import new_loop
    with asyncio.Runner(loop_factory=new_loop) as runner:
        return runner.run(main)


BIND_RETRY_SECONDS = 10.0


def _listen(listener, *, retry_for: float = BIND_RETRY_SECONDS) -> socket.socket:
    """A listening socket for ``listener``, bound before the receivers fork so that
    they all accept from it (the kernel hands each connection to one of them).

    An address in use is retried for ``retry_for`` seconds, as sendmail retries its
    bind: after the main receiver died, its other receivers hold the socket until they
    have seen their lifeline close, and a restart may come sooner than that."""
    family = socket.AF_INET6 if ":" in listener.host else socket.AF_INET
    deadline = time.monotonic() + retry_for
    warned = False
    while True:
        try:
            sock = socket.create_server((listener.host, listener.port), family=family, backlog=128)
            break
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or time.monotonic() >= deadline:
                raise
            if not warned:
                log.warning("%s: address in use; retrying for %g s", listener, retry_for)
                warned = True
            time.sleep(0.1)
    sock.setblocking(False)
    return sock


def main(argv: Sequence[str]) -> int:
    import asyncio

    from .maillog import setup_logging

    parser = argparse.ArgumentParser(prog="postroom serve", description="SMTP receiver and queue runner")
    add_config_arguments(parser)
    parser.add_argument("--delivery", choices=("auto", "inprocess", "fork", "pool"), default="auto")
    parser.add_argument("--forks", type=int, default=4, help="concurrent delivery processes (fork mode)")
    parser.add_argument("--single-process", action="store_true",
                        help="run the queue runner in the receiver's process (default: its own)")
    parser.add_argument("--no-stderr", action="store_true", help="log to the log file only")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(list(argv))
    try:
        config = select_config(args.config, args.embedded)
    except ConfigError as exc:
        sys.stderr.write(f"postroom serve: {exc}\n")
        return 78
    setup_logging(config.server.log_file, stderr=not args.no_stderr,
                  level=logging.DEBUG if args.verbose else logging.INFO)
    if args.embedded:
        prepare_embedded(config)
    fd = _lock_pidfile(config)
    if fd is None:
        sys.stderr.write(f"postroom serve: already running (pid file {pidfile_path(config)})\n")
        return 75
    banner = None
    if args.embedded:
        listener = config.smtp.listeners[0]

        def banner() -> None:
            sys.stdout.write(
                f"postroom serve: SMTP on {listener}, data under {config.server.data_dir}\n"
                f"  send a message:  swaks --server {listener.host}:{listener.port} "
                f"--to demo@localhost --from you@example.org\n"
                f"  the inbox:       {config.deliver.mail_spool / 'demo'}\n"
                f"  the log:         {config.server.log_file}\n"
                f"  stop with Ctrl-C\n")
            sys.stdout.flush()
    try:
        if not args.single_process:
            return _serve_split(config, args, fd, banner)
        return asyncio.run(serve(config, delivery_mode=args.delivery, forks=args.forks,
                                 selector=config_argv(args), ready=banner))
    finally:
        os.close(fd)
