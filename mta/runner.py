"""mta.runner — the queue runner: claims due messages, routes and delivers them, retries.

SYNOPSIS
    runner = Runner(config, spool, router, LocalDelivery(config))
    server = SmtpServer(..., on_queued=runner.notify)
    task = asyncio.create_task(runner.run())
    runner.wake(flush=True)          # SIGUSR1 from `postroom sendmail` / `queue flush`
    await runner.stop()              # finishes the deliveries in flight
    await runner.drain()             # tests: deliver everything due now, then return

DESCRIPTION
    New mail is delivered at once (``notify`` from the SMTP receiver); the spool is
    rescanned every ``scan_interval`` seconds for deferred mail that became due and for
    mail queued by other processes.  Each message is claimed (Spool.claim: flock +
    rename into active/), so no two deliveries of one message ever run at once, in this
    process or another.  Per recipient that is due:

      1. route it (mta.routing).  One plain destination is delivered directly.  An
         address that expands (aliases, :include:, virtusertable to several targets)
         is replaced in the envelope by one recipient per destination, with ORCPT set
         to the original address, and saved before anything is delivered, so that a
         retry never repeats a delivery that already succeeded.  Destinations of a list
         with an owner (owner-LIST) are queued as a new message whose envelope sender is
         the owner, as sendmail does, so their bounces go to the owner.
      2. deliver: local mailboxes, programs and files through mta.localdelivery;
         deliveries to one mailbox are serialised inside the server rather than by
         polling lock files: one at a time per user, or two when the delivery pool
         queues them on the mailbox lock with a kernel flock (LocalDelivery.per_mailbox;
         one evaluates recipes while the other writes).  Delivery runners, one message
         each at a time, queue on the same kernel flock, and a local delivery needs one
         of its user's slots (``user_slots``, mta.userslots): without one the recipient
         is not tried and stays pending (``waiting``; the runner retries the message a
         moment later; past queue_lifetime it fails as a deferral would).  Remote
         addresses are deferred: outbound SMTP is not part of this release.
         Two recipients of one message that reach the same destination (the same
         user's mailbox however the address was spelt, the same program or file, the
         same alias target) get one delivery, as sendmail suppresses duplicates: the
         second is recorded as sent ("duplicate suppressed").
      3. record: delivered; deferred with exponential back-off ([queue] initial doubling
         up to max_backoff); failed for a permanent error, or when the message is older
         than queue_lifetime (Status 4.4.7).  The envelope is saved after every step.

    Recipients that failed get one bounce per pass (mta.bounce), queued with the null
    sender; a message with the null sender is never bounced.  Failures waiting for
    their bounce are listed in the envelope (extra["unbounced"]) until the bounce is
    committed, so a crash in between neither loses nor forgets them.

    With a ``handoff`` the runner only schedules: what it would process goes to the
    handoff instead (the split daemon's delivery runners, mta.deliveryrunners, each of
    which runs ``process`` in its own process), and ``interrupted`` settles the claim of
    a delivery process that died.

    Exit statuses become results through deliver.exitcodes' one table: its enhanced code
    decides defer (4.x.x) or fail (5.x.x); a status outside sysexits defers (Postfix).

ERRORS
    Nothing escapes a message's processing: a bug is logged, and the claim is released
    with the envelope as last saved (the entry is preserved and retried).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from dataclasses import dataclass, replace
from typing import Callable, Literal

from deliver.exitcodes import ExitCode

from .bounce import Failure, build_bounce, should_bounce, split_header
from .config import Config
from .localdelivery import LocalDelivery, Request, Result
from .maillog import log_delivery, log_received, priority
from .queue.envelope import Envelope, RecipientState
from .queue.errors import QueueError
from .queue.spool import ClaimedMessage, Spool
from .reply import Reply
from .routing import (Defer, Destination, Discard, ErrorDest, FileDest, LocalMailbox, ProgramDest,
                      RemoteDest, Reject, Router)
from .userslots import UserSlots

__all__ = ["Runner", "Attempt", "backoff", "encode_destination", "EXPIRED_STATUS"]

log = logging.getLogger("mta.runner")

EXPIRED_STATUS = "4.4.7"   # RFC 3463: delivery time expired
NO_OUTBOUND = Reply(451, "4.4.1", "Remote delivery is not available yet; message kept in queue")


@dataclass(frozen=True, slots=True)
class Attempt:
    """The result of trying one recipient."""

    outcome: Literal["sent", "deferred", "failed", "waiting"]
    status: str          # RFC 3463 code
    diagnostic: str      # RFC 3464 Diagnostic-Code value, "smtp; 550 ..." / "x-unix; ..."
    stat: str            # the maillog stat= text
    mailer: str = "local"


# Not tried: every delivery slot of the user is taken (mta.userslots).  The recipient
# stays pending, no attempt is counted, nothing is logged as a deferral.
WAITING = Attempt("waiting", "4.3.2", "x-unix; delivery slots of the user busy", "Waiting for a delivery slot")
# Another recipient of the message reached the same destination in this pass.
DUPLICATE = Attempt("sent", "2.0.0", "x-unix; duplicate suppressed", "Sent (duplicate suppressed)")


def backoff(attempts: int, initial: float, maximum: float) -> float:
    """Seconds until the next try after ``attempts`` failed ones (doubling, capped)."""
    return min(maximum, initial * (2 ** max(0, min(attempts - 1, 40))))


# --------------------------------------------------------------------------- encoding
# Expanded recipients are stored as sendmail writes them in its queue file.

def encode_destination(d: Destination) -> str:
    match d:
        case LocalMailbox(user, detail):
            return f"\\{user}+{detail}" if detail is not None else f"\\{user}"
        case ProgramDest(command, _):
            return f"|{command}"
        case FileDest(path):
            return path
        case RemoteDest(address):
            return address
        case ErrorDest():
            reply = d.report
            return f"error:{reply.code} {reply.enhanced or ''} {reply.text}"
    raise ValueError(f"not storable: {d!r}")


def _duplicate_key(d: Destination) -> Destination | None:
    """What makes two deliveries the same one: the destination itself (a local mailbox
    with its detail, a program with the user it runs as, a file), a remote address with
    its domain in lower case.  None for what is not a delivery (errors, discards)."""
    match d:
        case LocalMailbox() | ProgramDest() | FileDest():
            return d
        case RemoteDest(address):
            local, at, domain = address.rpartition("@")
            return RemoteDest(f"{local}{at}{domain.lower()}") if at else d
    return None


def decode_destination(address: str) -> Destination | None:
    """The destination an expanded recipient names, None for an address to route."""
    if address.startswith("\\"):
        user, plus, detail = address[1:].partition("+")
        return LocalMailbox(user, detail if plus else None)
    if address.startswith("|"):
        return ProgramDest(address[1:])
    if address.startswith("/"):
        return FileDest(address)
    if address.startswith("error:"):
        code, enhanced, text = (address[6:].split(" ", 2) + ["", ""])[:3]
        try:
            return ErrorDest(Reply(int(code), enhanced or None, text))
        except ValueError:
            return ErrorDest(Reply(451, "4.3.0", "bad stored error recipient"))
    return None


def display_address(address: str, hostname: str) -> str:
    """How an expanded recipient is shown in bounces: ``\\user`` becomes user@host."""
    if address.startswith("\\"):
        return f"{address[1:]}@{hostname}"
    return address


def _reply_attempt(reply: Reply) -> Attempt:
    text = f"{reply.code} {reply.enhanced or ''} {reply.text}".replace("  ", " ")
    status = reply.enhanced or f"{str(reply.code)[0]}.0.0"
    if reply.is_temporary:
        return Attempt("deferred", status, f"smtp; {text}", f"Deferred: {text}")
    return Attempt("failed", status, f"smtp; {text}", text)


def _exit_attempt(result: Result, mailer: str) -> Attempt:
    if result.ok:
        return Attempt("sent", "2.0.0", "x-unix; delivered", f"Sent ({result.text or 'ok'})", mailer)
    try:
        code = ExitCode(result.status)
        status, temporary = code.dsn, code.temporary
    except ValueError:
        status, temporary = "4.3.0", True   # Postfix sys_exits: unknown status is soft
    diag = f"x-unix; exit {result.status}: {result.text}"
    if temporary:
        return Attempt("deferred", status, diag, f"Deferred: {status} {result.text}", mailer)
    return Attempt("failed", status, diag, f"{status} {result.text} (exit {result.status})", mailer)


# --------------------------------------------------------------------------- runner


class Runner:
    def __init__(self, config: Config, spool: Spool, router: Router, delivery: LocalDelivery | None, *,
                 concurrency: int = 16, scan_interval: float | None = None,
                 clock: Callable[[], float] = time.time,
                 handoff: Callable[[str, bool], None] | None = None,
                 user_slots: UserSlots | None = None) -> None:
        """``handoff(qid, force)``, when given, receives the messages to process instead
        of this runner: it only schedules (scans, flushes) and other processes deliver
        (mta.deliveryrunners); ``delivery`` may then be None.  ``user_slots`` (a delivery
        runner's): a local delivery needs one of its user's slots; without one the
        recipient waits (``waiting``) instead of the process."""
        self.config = config
        self.handoff = handoff
        self.spool = spool
        self.router = router
        self.delivery = delivery
        self.clock = clock
        q = config.queue
        self.scan_interval = scan_interval if scan_interval is not None else \
            min(60.0, max(0.2, q.initial / 2))
        self._sem = asyncio.Semaphore(concurrency)
        self._event = asyncio.Event()
        self._ready: list[str] = []
        self._inflight: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._mailbox_locks: dict[str, asyncio.Lock] = {}
        self._mailbox_gates: dict[str, asyncio.Semaphore] = {}
        self._scan_now = True
        self._flush = False
        self._forced: set[str] = set()
        self.user_slots = user_slots
        self.waiting: set[str] = set()      # messages whose last pass waited for a slot
        self._announced: set[str] = set()   # ... whose wait is logged already
        self._stopping = False
        self._running = False
        self.delivered = 0

    # ------------------------------------------------------------------ control
    def notify(self, qid: str) -> None:
        """A message was just queued (called on the event loop): its delivery task is
        made at once rather than when ``run`` next wakes (a few loop turns sooner)."""
        self._ready.append(qid)
        if self._running or self.handoff is not None:
            self._dispatch_ready()
        else:
            self._event.set()

    def wake(self, *, flush: bool = False) -> None:
        """Rescan the spool now; ``flush`` also retries deferred mail before its time."""
        self._scan_now = True
        self._flush = self._flush or flush
        self._event.set()

    def set_router(self, router: Router) -> None:
        self.router = router

    async def stop(self) -> None:
        """Start no new work; wait for the deliveries in flight."""
        self._stopping = True
        self._event.set()
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    @property
    def busy(self) -> bool:
        return bool(self._tasks or self._ready)

    # ------------------------------------------------------------------ loops
    async def run(self) -> None:
        next_scan = 0.0
        self._running = True
        try:
            await self._run_loop(next_scan)
        finally:
            self._running = False

    async def _run_loop(self, next_scan: float) -> None:
        while not self._stopping:
            now = time.monotonic()
            if self._scan_now or now >= next_scan:
                self._scan_now = False
                next_scan = now + self.scan_interval
                await self._scan()
            self._dispatch_ready()
            timeout = max(0.0, next_scan - time.monotonic())
            try:
                await asyncio.wait_for(self._event.wait(), timeout)
            except asyncio.TimeoutError:
                pass
            self._event.clear()

    async def drain(self, *, flush: bool = False) -> None:
        """Deliver everything due (tests and `queue flush` without a daemon)."""
        self._flush = flush
        await self._scan()
        self._dispatch_ready()
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
            self._dispatch_ready()

    async def _scan(self) -> None:
        flush, self._flush = self._flush, False
        when = float("inf") if flush else self.clock()
        try:
            due = await asyncio.to_thread(self.spool.scan_due, when)
        except OSError as exc:
            log.error("cannot scan the queue: %s", exc)
            return
        if flush:
            self._forced.update(due)
        self._ready.extend(due)

    def _dispatch_ready(self) -> None:
        ready, self._ready = self._ready, []
        if self.handoff is not None:
            for qid in dict.fromkeys(ready):
                if not self._stopping:
                    force = qid in self._forced
                    self._forced.discard(qid)
                    self.handoff(qid, force)
            return
        for qid in dict.fromkeys(ready):
            if qid in self._inflight or self._stopping:
                continue
            self._inflight.add(qid)
            task = asyncio.create_task(self._guarded(qid))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _guarded(self, qid: str) -> None:
        try:
            async with self._sem:
                await self.process(qid)
        except Exception:  # noqa: BLE001 - a bug preserves the queue entry
            log.exception("%s: delivery pass failed; the message stays queued", qid)
        finally:
            self._inflight.discard(qid)

    # ------------------------------------------------------------------ one message
    async def process(self, qid: str, *, force: bool = False, waited: bool = False) -> str | None:
        """One delivery pass over ``qid``; returns where the entry went, None if busy.
        ``force``: deferred recipients are tried too (a queue flush).  ``waited``: the
        retry of a message put back for a delivery slot (``waiting``), whose deferred
        recipients keep their back-off although it is in incoming/."""
        # incoming/ means "try now" (new, released from hold, or recovered after a crash):
        # deferred recipients of such an entry are tried too, not only the due ones.
        # A claim is a few syscalls without fsync (open, flock, rename, read): cheaper on
        # the loop than a hop to a worker thread and back (tests/benchmarks/bench_mta.py).
        self.waiting.discard(qid)
        claimed = self.spool.claim(qid)
        if claimed is None:
            self._announced.discard(qid)
            return None
        if force or (claimed.source == "incoming" and not waited):
            self._forced.add(qid)       # only once claimed: a busy message keeps no flush
        try:
            await self._process(claimed)
        finally:
            where = claimed.finish()     # no fsync when the entry is done (Spool)
            if qid not in self.waiting:
                self._announced.discard(qid)
        return where

    async def interrupted(self, claimed: ClaimedMessage, reason: str) -> str:
        """A claim whose delivery process died (Spool.take_stale_claims): its pending
        recipients are deferred as a failed delivery would be (backoff, expiry, bounce),
        rather than tried again at once, so that a message that kills its delivery
        process cannot do it in a loop."""
        try:
            started = self.clock()
            for rcpt in list(claimed.envelope.recipients):
                if rcpt.state == "pending":
                    await self._record(claimed, rcpt, _exit_attempt(Result(ExitCode.TEMPFAIL, reason), "local"),
                                       started)
            await self._send_bounces(claimed)
        finally:
            where = claimed.finish()
        return where

    async def _process(self, claimed: ClaimedMessage) -> None:
        env = claimed.envelope
        now = self.clock()
        force = claimed.qid in self._forced
        self._forced.discard(claimed.qid)
        i = 0
        sent: set[Destination] = set()     # destinations delivered in this pass
        while i < len(env.recipients):
            rcpt = env.recipients[i]
            if rcpt.due(now) or (force and rcpt.state == "deferred"):
                replaced = await self._try(claimed, i, sent)
                i += replaced
            else:
                i += 1
        await self._send_bounces(claimed)

    async def _try(self, claimed: ClaimedMessage, index: int, sent: set[Destination]) -> int:
        """Try recipient ``index``; returns how many recipients now stand in its place.
        ``sent``: the destinations delivered so far in this pass (duplicates)."""
        env = claimed.envelope
        rcpt = env.recipients[index]
        started = self.clock()
        dest = decode_destination(rcpt.address)
        if dest is None:
            try:
                res = self.router.resolve(rcpt.address)
            except Reject as exc:
                return await self._record(claimed, rcpt, _reply_attempt(exc.reply), started)
            except Defer as exc:
                return await self._record(claimed, rcpt, _reply_attempt(exc.reply), started)
            dests = res.destinations
            owners = dict(res.owners)
            if res.envelope_sender_override:
                for d in dests:
                    owners.setdefault(d, res.envelope_sender_override)
            simple = len(dests) == 1 and not owners and isinstance(dests[0], (LocalMailbox, RemoteDest)) \
                and not (isinstance(dests[0], RemoteDest) and dests[0].address != rcpt.address)
            if not simple:
                return await self._expand(claimed, index, dests, owners, started)
            dest = dests[0]
        key = _duplicate_key(dest)
        if key is not None and key in sent:
            return await self._record(claimed, rcpt, DUPLICATE, started)
        attempt = await self._deliver(claimed, rcpt, dest)
        if key is not None and attempt.outcome == "sent":
            sent.add(key)
        return await self._record(claimed, rcpt, attempt, started)

    async def _expand(self, claimed: ClaimedMessage, index: int, dests: tuple[Destination, ...],
                      owners: dict[Destination, str], started: float) -> int:
        """Replace recipient ``index`` by its destinations (see the module docstring)."""
        env = claimed.envelope
        rcpt = env.recipients[index]
        orcpt = rcpt.orcpt or rcpt.address
        children: list[RecipientState] = []
        by_owner: dict[str, list[str]] = {}
        for d in dests:
            owner = owners.get(d)
            if isinstance(d, Discard):
                log.info("%s: to=<%s>, stat=Sent (discarded)", claimed.qid, orcpt)
                continue
            if owner is not None and owner != env.sender:
                # a list with an owner: its members, failing ones included, go out in a
                # message from the owner, so that their errors go to the owner
                by_owner.setdefault(owner, []).append(encode_destination(d))
                continue
            if isinstance(d, ErrorDest) and d.reply.is_permanent:
                child = RecipientState(orcpt, orcpt=orcpt)
                self._fail(env, child, _reply_attempt(d.report), claimed.qid, started)
                children.append(child)
                continue
            children.append(RecipientState(encode_destination(d), orcpt=orcpt))
        for owner, addresses in by_owner.items():
            qid = await asyncio.to_thread(self._requeue, claimed, owner, addresses, orcpt)
            log.info("%s: %s: owner-list expansion of <%s> queued as %s (from=<%s>)",
                     claimed.qid, qid, orcpt, qid, owner)
            self.notify(qid)
        log.info("%s: <%s> expanded to %d recipient(s)%s", claimed.qid, rcpt.address, len(children),
                 f" and {sum(map(len, by_owner.values()))} via owner" if by_owner else "")
        env.recipients[index:index + 1] = children
        if not env.recipients:   # everything was discarded or handed on
            placeholder = RecipientState(orcpt, orcpt=orcpt)
            placeholder.mark_delivered()
            env.recipients.append(placeholder)
            children = [placeholder]
        await asyncio.to_thread(claimed.save)
        # the new recipients are delivered in this same pass (they are pending)
        return 0

    def _requeue(self, claimed: ClaimedMessage, sender: str, addresses: list[str], orcpt: str) -> str:
        env = claimed.envelope
        msg = self.spool.new_message()
        with msg, claimed.open_message() as fh:
            while block := fh.read(1 << 20):
                msg.write(block)
            new = Envelope(sender=sender,
                           recipients=[RecipientState(a, orcpt=orcpt) for a in addresses],
                           received_at=env.received_at, size=env.size, client_ip=env.client_ip,
                           client_name=env.client_name, helo=env.helo, protocol=env.protocol,
                           body=env.body, smtputf8=env.smtputf8, message_id=env.message_id)
            return msg.commit(new)

    async def _deliver(self, claimed: ClaimedMessage, rcpt: RecipientState, dest: Destination) -> Attempt:
        env = claimed.envelope
        sender = env.sender
        path = claimed.message_path
        match dest:
            case LocalMailbox(user, detail):
                try:
                    u = self.router.maps.users.lookup(user)
                except Exception as exc:  # noqa: BLE001 - MapUnavailable: try again later
                    return Attempt("deferred", "4.3.0", f"x-unix; {exc}", f"Deferred: 4.3.0 {exc}")
                if u is None:
                    return Attempt("failed", "5.1.1", "x-unix; user unknown", "5.1.1 User unknown")
                req = Request("mailbox", sender, rcpt.orcpt or rcpt.address, path, user=u, detail=detail)
                if self.user_slots is not None:
                    slot = self.user_slots.take(u.name)
                    if slot is None:
                        return WAITING
                    with slot:
                        return _exit_attempt(await self._run(req), "local")
                # At most delivery.per_mailbox deliveries per user at once (1, or 2 when
                # the delivery queues them on the mailbox lock in the kernel).
                gate = self._mailbox_gates.get(u.name)
                if gate is None:
                    gate = self._mailbox_gates[u.name] = asyncio.Semaphore(
                        getattr(self.delivery, "per_mailbox", 1))
                async with gate:
                    result = await self._run(req)
                return _exit_attempt(result, "local")
            case ProgramDest(command, _):
                req = Request("program", sender, rcpt.orcpt or rcpt.address, path, command=command)
                return _exit_attempt(await self._run(req), "prog")
            case FileDest(fpath):
                req = Request("file", sender, rcpt.orcpt or rcpt.address, path, path=fpath)
                lock = self._mailbox_locks.setdefault("/" + fpath, asyncio.Lock())
                async with lock:
                    result = await self._run(req)
                return _exit_attempt(result, "*file*")
            case RemoteDest(_):
                return replace(_reply_attempt(NO_OUTBOUND), mailer="esmtp")
            case ErrorDest(reply):
                return _reply_attempt(reply)
            case Discard():
                return Attempt("sent", "2.0.0", "x-unix; discarded", "Sent (discarded)")
        raise AssertionError(f"unknown destination {dest!r}")

    async def _run(self, req: Request) -> Result:
        assert self.delivery is not None, "a runner with a handoff delivers nothing itself"
        return await self.delivery.deliver_async(req)

    async def _record(self, claimed: ClaimedMessage, rcpt: RecipientState, a: Attempt,
                      started: float) -> int:
        env = claimed.envelope
        now = self.clock()
        if a.outcome == "waiting" and now - env.received_at >= self.config.queue.queue_lifetime:
            # A user whose slots stay taken past queue_lifetime (recipes hanging, or so
            # much mail that this one never gets a turn) expires like any deferral.
            a = replace(a, outcome="deferred")
        if a.outcome == "waiting":
            if claimed.qid not in self._announced:
                self._announced.add(claimed.qid)
                log.info("%s: to=<%s>, %s (%d deliveries to the user in progress)", claimed.qid,
                         rcpt.address, a.stat, self.user_slots.count if self.user_slots else 0)
            self.waiting.add(claimed.qid)
            return 1
        if a.outcome == "sent":
            rcpt.mark_delivered()
            self.delivered += 1
        elif a.outcome == "deferred" and now - env.received_at < self.config.queue.queue_lifetime:
            q = self.config.queue
            rcpt.mark_deferred(a.diagnostic.partition("; ")[2] or a.stat,
                               now + backoff(rcpt.attempts + 1, q.initial, q.max_backoff))
        elif a.outcome == "deferred":
            expired = Attempt("failed", EXPIRED_STATUS,
                              f"{a.diagnostic} (message expired after "
                              f"{self.config.queue.queue_lifetime / 86400:g} days in queue)",
                              f"{EXPIRED_STATUS} Message expired: {a.stat}", a.mailer)
            self._fail(env, rcpt, expired, claimed.qid, started)
            await asyncio.to_thread(claimed.save)
            return 1
        else:
            self._fail(env, rcpt, a, claimed.qid, started)
            await asyncio.to_thread(claimed.save)
            return 1
        log_delivery(claimed.qid, to=rcpt.address, orcpt=rcpt.orcpt, received_at=env.received_at,
                     started=started, mailer=a.mailer,
                     pri=priority(env.size, len(env.recipients), rcpt.attempts - 1), stat=a.stat,
                     now=now)
        if not (env.is_done and "unbounced" not in env.extra):
            # When this was the last recipient, finish() removes the entry at once; a crash
            # before that repeats this delivery whether or not we saved (two fsyncs saved).
            await asyncio.to_thread(claimed.save)
        return 1

    def _fail(self, env: Envelope, rcpt: RecipientState, a: Attempt, qid: str, started: float) -> None:
        rcpt.mark_failed(f"{a.status} {a.diagnostic}")
        log_delivery(qid, to=rcpt.address, orcpt=rcpt.orcpt, received_at=env.received_at,
                     started=started, mailer=a.mailer,
                     pri=priority(env.size, len(env.recipients), rcpt.attempts - 1),
                     dsn=a.status, stat=f"{a.stat}")
        if should_bounce(env):
            pending = json.loads(env.extra.get("unbounced", "[]"))
            shown, diagnostic = display_address(rcpt.address, self.config.server.hostname), a.diagnostic
            if rcpt.address.startswith(("|", "/")) and rcpt.orcpt:
                # a program or file an alias named is no address (RFC 3464 2.3.2's
                # "rfc822;|cmd" was no use to anyone): the alias address is the final
                # recipient, as Postfix reports it, and the diagnostic names the target
                kind, _, detail = diagnostic.partition("; ")
                shown, diagnostic = rcpt.orcpt, f"{kind}; {rcpt.address}: {detail}"
            pending.append([shown, a.status, diagnostic, rcpt.orcpt])
            env.extra["unbounced"] = json.dumps(pending)

    async def _send_bounces(self, claimed: ClaimedMessage) -> None:
        env = claimed.envelope
        raw = env.extra.get("unbounced")
        if not raw:
            return
        failures = [Failure(r, s, d, o) for r, s, d, o in json.loads(raw)]
        try:
            bqid = await asyncio.to_thread(self._queue_bounce, claimed, failures)
        except (OSError, QueueError) as exc:
            log.error("%s: cannot queue the bounce, will retry: %s", claimed.qid, exc)
            return
        except Exception:  # noqa: BLE001 - a bug building it: the entry keeps the bounce
            log.exception("%s: cannot build the bounce; the message stays queued", claimed.qid)
            return
        del env.extra["unbounced"]
        await asyncio.to_thread(claimed.save)
        log.info("%s: %s: sender notify: Delivery Status Notification to <%s>", claimed.qid, bqid, env.sender)
        self.notify(bqid)

    def _queue_bounce(self, claimed: ClaimedMessage, failures: list[Failure]) -> str:
        env = claimed.envelope
        with claimed.open_message() as fh:
            head = split_header(fh.read(256 * 1024))
        msg = self.spool.new_message()
        with msg:
            data = build_bounce(env, head, failures, reporting_mta=self.config.server.hostname,
                                qid=claimed.qid, now=self.clock())
            msg.write(data)
            bounce_env = Envelope(sender="", recipients=[RecipientState(env.sender)],
                                  received_at=self.clock(), size=len(data), protocol="local",
                                  helo=self.config.server.hostname)
            qid = msg.commit(bounce_env)
        log_received(qid, sender="", size=len(data), nrcpts=1, msgid=None, relay="localhost")
        return qid
