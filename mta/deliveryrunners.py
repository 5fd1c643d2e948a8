"""mta.deliveryrunners — processes that take queued mail from the receivers and deliver it.

SYNOPSIS
    runners = DeliveryRunners(config, spool, work_fd, count=3, sendmail=wrapper)
    runner = Runner(config, spool, router, None, handoff=runners.handoff)
    runners.start(runner, on_stopped=stop.set)     # in the queue runner, on its loop
    runner.set_router(...); runners.signal(signal.SIGHUP)
    await runners.stop()             # each finishes the message in hand and exits

DESCRIPTION
    With pool delivery (the default for an unprivileged server) the split daemon's queue
    runner process delivers nothing itself.  The receivers write each queued id into the
    work pipe, and ``count`` delivery-runner processes read that pipe directly.  Each runs
    one whole delivery pass at a time in its own process (mta.runner.Runner.process:
    claim, route, the recipient's recipes through deliver.agent, record, release).  The
    queue runner keeps the scheduling: what its periodic scans find due and what a flush
    asks for reaches the delivery runners through a second pipe (``handoff``), and it
    replaces a delivery runner that died.

    Why: the pool before this had the queue runner claim and route every message, then
    hand the delivery to a worker over a pipe and take the result back: two process
    wake-ups and a pickled request and result per message.  Measured head to head
    (tests/benchmarks/bench_mta.py, eight alternating runs each, with the receivers'
    notice moved after the 250): 5% less CPU per message, 12% less latency from connect
    to mailbox, the same throughput (README "Performance").

    Records: 20 bytes, a queue id (19 characters) then "\\n" (try what is due) or "!"
    (a flush: deferred recipients too).  Writers write whole records, at most PIPE_BUF
    bytes at a time, so every write is atomic and the pipe stays aligned on records; a
    reader takes one record per read, so each id goes to one delivery runner.  A
    duplicate (a scan that found a message before a runner claimed it) costs one failed
    claim, nothing more.

    Stopping: a delivery runner finishes the message in hand and exits when the work
    pipe reaches EOF (every receiver is gone: the daemon is stopping), or when the
    queue runner closes the schedule pipe (``stop``, or the queue runner died).  Ids
    still in the pipe stay in incoming/, where the next start finds them.

    A delivery runner that dies (killed, or a bug) leaves its claim in active/.  The
    queue runner starts another, takes the dead one's claims over
    (Spool.take_stale_claims) and defers their pending recipients ("delivery process
    died"), as the pool did for a worker that died: a message that kills its delivery
    process is retried with backoff, not in a loop.

    Mailboxes: deliveries to one mailbox queue on the server-private flock before its
    dot-lock, as the pool's workers did (LocalDelivery.for_delivery_runner), so two
    runners delivering to one user wait in the kernel, not by polling the lock file.
    At most all runners but one deliver to one user at once (mta.userslots; Postfix's
    local_destination_concurrency_limit): a runner that finds the user's slots taken
    for SLOT_WAIT seconds puts the message back into incoming/ with the recipient
    pending, takes other mail, and retries it WAIT_RETRY seconds later (doubling while
    the slots stay taken); so mail for a user whose recipes are slow cannot occupy
    every runner.  A runner that dies leaves such a message in incoming/,
    where the queue runner's next scan finds it.

    Signals in a delivery runner: SIGHUP reloads the maps before the next message (the
    queue runner passes its SIGHUP on); SIGINT, SIGTERM and SIGUSR1 are ignored, so a
    signal to the whole service never cuts a delivery short.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import select
import signal
import time
from typing import Callable

from .config import Config
from .forking import describe_exit, fork_process, watch_exit
from .queue.ids import is_qid
from .queue.spool import Spool

__all__ = ["RECORD_SIZE", "record", "parse_record", "RecordWriter", "DeliveryRunners"]

log = logging.getLogger("mta.deliveryrunners")

RECORD_SIZE = 20
_MAX_WRITE = (select.PIPE_BUF // RECORD_SIZE) * RECORD_SIZE   # whole records, atomic
DIED = "delivery process died"
SLOT_WAIT = 0.5         # seconds a runner looks for a free slot of the user (mta.userslots)
WAIT_RETRY = 0.25       # seconds before a message put back for a user's slot is retried,
WAIT_RETRY_MAX = 8.0    # doubling up to this while the slots stay taken


def record(qid: str, force: bool = False) -> bytes:
    """The pipe record for ``qid`` (``force``: a flush)."""
    data = qid.encode("ascii") + (b"!" if force else b"\n")
    if len(data) != RECORD_SIZE:
        raise ValueError(f"not a queue id: {qid!r}")
    return data


def parse_record(data: bytes) -> tuple[str, bool] | None:
    """``(qid, force)``, or None for anything that is not a whole, valid record."""
    if len(data) != RECORD_SIZE or data[-1:] not in (b"\n", b"!"):
        return None
    qid = data[:-1].decode("ascii", "replace")
    return (qid, data[-1:] == b"!") if is_qid(qid) else None


class RecordWriter:
    """The writing end of a record pipe on an event loop: never blocks the loop (what the
    pipe cannot take now waits in memory for add_writer), and writes at most PIPE_BUF
    bytes of whole records at a time, so writes from several processes never interleave
    inside a record.  The receivers tell the queue of new mail through one of these."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        self.loop, self.fd = loop, fd
        self.pending = bytearray()
        os.set_blocking(fd, False)

    def notify(self, qid: str, force: bool = False) -> None:
        if self.fd < 0:
            return
        first = not self.pending
        self.pending += record(qid, force)
        if first:
            self._flush()

    def _flush(self) -> None:
        while self.pending:
            try:
                n = os.write(self.fd, self.pending[:_MAX_WRITE])
            except BlockingIOError:
                break
            except OSError as exc:          # the reader is gone: it rescans at start
                log.error("cannot pass queued mail on: %s", exc)
                self.pending.clear()
                return
            del self.pending[:n]
        if self.pending:
            self.loop.add_writer(self.fd, self._writable)

    def _writable(self) -> None:
        self.loop.remove_writer(self.fd)
        self._flush()

    def close(self) -> None:
        """Write what is pending (blocking: the daemon is stopping), then close: the
        readers see EOF once every writer has closed."""
        if self.fd >= 0:
            self.loop.remove_writer(self.fd)
            if self.pending:
                os.set_blocking(self.fd, True)
                view = memoryview(bytes(self.pending))
                try:
                    while view:
                        view = view[os.write(self.fd, view[:_MAX_WRITE]):]
                except OSError:
                    pass
            os.close(self.fd)
            self.fd = -1


class DeliveryRunners:
    """The queue runner's side: forks the delivery runners, hands them scheduled ids,
    replaces one that died, and stops them."""

    def __init__(self, config: Config, spool: Spool, work_fd: int, count: int, *,
                 sendmail: str | None = None) -> None:
        self.config, self.spool, self.work_fd = config, spool, work_fd
        self.count, self.sendmail = max(1, count), sendmail
        self.pids: set[int] = set()
        self._exits: dict[int, asyncio.Future[int]] = {}
        self._sched_r = -1
        self._writer: RecordWriter | None = None
        self._takeovers: set[asyncio.Task[None]] = set()
        self._runner = None
        self._on_stopped: Callable[[], None] = lambda: None
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------ control
    def start(self, runner, *, on_stopped: Callable[[], None]) -> None:
        """Fork ``count`` delivery runners.  ``runner`` (a mta.runner.Runner with this
        object's ``handoff``) defers a dead runner's claims; ``on_stopped`` is called
        when one exits by itself at the work pipe's EOF: every receiver is gone."""
        from .localdelivery import preload
        self._loop = asyncio.get_running_loop()
        self._runner, self._on_stopped = runner, on_stopped
        preload()           # imported once here, shared by every runner it forks
        self._sched_r, sched_w = os.pipe()
        self._writer = RecordWriter(self._loop, sched_w)
        for _ in range(self.count):
            self._spawn()

    def handoff(self, qid: str, force: bool) -> None:
        if self._writer is not None:
            self._writer.notify(qid, force)

    def signal(self, sig: int) -> None:
        for pid in list(self.pids):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    async def stop(self) -> None:
        """Close the schedule pipe; each runner finishes the message in hand and exits."""
        self._stopping = True
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._sched_r >= 0:
            os.close(self._sched_r)
            self._sched_r = -1
        if self._exits or self._takeovers:
            await asyncio.gather(*self._exits.values(), *self._takeovers)

    # ------------------------------------------------------------------ processes
    def _spawn(self) -> None:
        assert self._loop is not None
        parent = os.getpid()
        # One runner stays free for other users' mail (Postfix's default
        # local_destination_concurrency_limit is 2, too): see mta.userslots.
        slots = self.count - 1 if self.count > 1 else 0
        pid = fork_process("delivery runner", lambda: _delivery_runner(
            self.config, self.work_fd, self._sched_r, self.sendmail, parent, slots))
        self.pids.add(pid)
        self._exits[pid] = watch_exit(self._loop, pid, lambda code: self._exited(pid, code))

    def _exited(self, pid: int, code: int) -> None:
        assert self._loop is not None
        self.pids.discard(pid)
        del self._exits[pid]
        if self._stopping:
            return
        if code == 0:
            # The work pipe's EOF: every receiver is gone, the daemon is stopping.
            self._on_stopped()
            return
        log.error("delivery runner %d failed (%s); starting another", pid, describe_exit(code))
        self._spawn()
        task = self._loop.create_task(self._take_over_claims())
        self._takeovers.add(task)           # referenced until done (asyncio keeps weak ones)
        task.add_done_callback(self._takeovers.discard)

    async def _take_over_claims(self) -> None:
        """Defer what the dead runner was delivering (see the module docstring)."""
        try:
            stale = await asyncio.to_thread(self.spool.take_stale_claims)
            for claimed in stale:
                where = await self._runner.interrupted(claimed, DIED)
                log.warning("%s: the delivery runner died during its delivery; %s", claimed.qid, where)
        except Exception:  # noqa: BLE001 - recover at the next start instead
            log.exception("cannot take over the claims of a dead delivery runner")


# --------------------------------------------------------------------------- the process


def _delivery_runner(config: Config, work_fd: int, sched_fd: int, sendmail: str | None,
                     parent: int, user_slots: int = 0) -> int:
    """A delivery runner's life (see the module docstring); 0 at either pipe's EOF, or
    when the queue runner (``parent``) is gone.  ``user_slots``: how many runners may
    deliver to one user at once (0: no bound)."""
    from .localdelivery import LocalDelivery, close_inherited
    from .maps import Maps
    from .routing import Router
    from .runner import Runner
    from .userslots import UserSlots

    close_inherited({0, 1, 2, work_fd, sched_fd})
    signal.set_wakeup_fd(-1)          # the queue runner's loop, not ours
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)
    reload = [False]

    def hup(_sig: int, _frame: object) -> None:
        reload[0] = True
    signal.signal(signal.SIGHUP, hup)

    delivery = LocalDelivery.for_delivery_runner(config, sendmail=sendmail)
    # (qid, force, retry): the record read, the retries that came due, and what their
    # deliveries queued themselves (bounces, owner-list copies)
    follow: collections.deque[tuple[str, bool, bool]] = collections.deque()
    def router() -> Router:
        # Read every map now, not at first use: the runners started (or reloaded)
        # together then route with one version of the maps, as one process would.
        maps = Maps.from_config(config)
        maps.diagnostics()
        return Router(config, maps)

    slots = UserSlots(str(config.server.data_dir / "run" / "slots"), user_slots,
                      wait=SLOT_WAIT) if user_slots else None
    runner = Runner(config, Spool(str(config.server.spool_dir), recover=False), router(), delivery,
                    handoff=lambda qid, force: follow.append((qid, force, False)), user_slots=slots)
    waiting = _Waiting()
    # asyncio's own loop, not the receivers' uvloop (mta.eventloop): a run_until_complete
    # per message costs more on uvloop (measured: +3-8% CPU on the delivery path).
    loop = asyncio.new_event_loop()
    for fd in (work_fd, sched_fd):
        os.set_blocking(fd, False)
    # EPOLLEXCLUSIVE: a record wakes one waiting runner, not all of them (with select
    # every runner woke for every message and all but one found the pipe empty).
    poller = select.epoll()
    poller.register(work_fd, select.EPOLLIN | select.EPOLLEXCLUSIVE)
    poller.register(sched_fd, select.EPOLLIN)
    try:
        while True:
            due = waiting.due()
            if due:
                follow.extend((qid, False, True) for qid in due)
            else:
                ready = {fd for fd, _ in poller.poll(waiting.timeout())}
                if not ready:
                    continue                  # a retry is due
                fd = sched_fd if sched_fd in ready else work_fd
                try:
                    data = os.read(fd, RECORD_SIZE)
                except BlockingIOError:
                    continue                  # another runner took it
                # The schedule pipe's EOF is not enough to tell that the queue runner
                # died: a runner it forked a moment before may not have closed its
                # inherited copy of the writing end yet.  Being orphaned is.
                if not data or os.getppid() != parent:
                    return 0
                job = parse_record(data)
                if job is None:
                    log.error("delivery runner: a malformed record %r ignored", data)
                    continue
                follow.append((*job, False))
            if reload[0]:
                reload[0] = False
                runner.set_router(router())
            while follow:
                qid, force, retry = follow.popleft()
                _deliver(runner, loop, qid, force, waiting, retry=retry)
    finally:
        delivery.remove_claim_files()
        if slots is not None:
            slots.close()
        poller.close()
        loop.close()


class _Waiting:
    """A runner's messages put back for a user's delivery slot and when to retry each:
    WAIT_RETRY seconds, doubling up to WAIT_RETRY_MAX while the slots stay taken (each
    retry may spend SLOT_WAIT looking for a slot: a user's recipes hanging for minutes
    must not keep a runner looking most of the time)."""

    def __init__(self) -> None:
        self._when: dict[str, float] = {}
        self._delay: dict[str, float] = {}

    def add(self, qid: str) -> None:
        delay = min(self._delay.get(qid, WAIT_RETRY / 2) * 2, WAIT_RETRY_MAX)
        self._delay[qid] = delay
        self._when[qid] = time.monotonic() + delay

    def done(self, qid: str) -> None:
        """``qid`` needs no retry from here: delivered, or held by another runner (a
        record for it came while it waited here; that runner retries it if it must)."""
        self._delay.pop(qid, None)
        self._when.pop(qid, None)

    def due(self) -> list[str]:
        now = time.monotonic()
        due = [qid for qid, when in self._when.items() if when <= now]
        for qid in due:
            del self._when[qid]
        return due

    def timeout(self) -> float | None:
        """Seconds until the next retry; None when nothing waits."""
        return max(0.0, min(self._when.values()) - time.monotonic()) if self._when else None


def _deliver(runner, loop: asyncio.AbstractEventLoop, qid: str, force: bool,
             waiting: _Waiting, *, retry: bool = False) -> None:
    """One pass over ``qid``; a message put back for a user's delivery slot is retried
    later by this runner (``waiting``), which takes other mail meanwhile."""
    try:
        where = loop.run_until_complete(runner.process(qid, force=force, waited=retry))
    except Exception:  # noqa: BLE001 - a bug preserves the queue entry
        log.exception("%s: delivery pass failed; the message stays queued", qid)
        return
    if where == "incoming" and qid in runner.waiting:
        waiting.add(qid)
    else:
        waiting.done(qid)
