"""Delivery mode ``pool`` (mta.localdelivery): long-lived worker processes, for real.

Two levels:
  * LocalDelivery itself in this process (workers are our children): results come back
    over the pipes, a worker killed with SIGKILL mid-delivery yields 75 and is replaced.
  * The daemon (`postroom serve --delivery pool`): concurrent deliveries to several
    mailboxes land whole in the right ones (two per mailbox at once, queued on the
    server-private flock), and a worker SIGKILLed while a recipe runs is replaced, its
    message deferred (stat=Deferred, "delivery process died"), retried and delivered,
    and later mail still flows.
"""

from __future__ import annotations

import concurrent.futures
import mailbox
import os
import signal
import smtplib
import threading
from pathlib import Path

from deliver.exitcodes import ExitCode
from mta.localdelivery import LocalDelivery, Request

from test_runner import Site
from test_serve import wait_for
from test_serve_processes import alive, children, descendants, kill_all, pdaemon, slow_worker  # noqa: F401

SLOW = ":0 w\n| (cat >/dev/null; sleep 5)\n"


def _queued_message(site: Site, subject: str) -> str:
    """Queue a message and return the path of its message file (Request.message_path)."""
    qid = site.queue(["x@example.com"], subject=subject)
    return os.path.join(site.spool.dirs["incoming"], qid, "message")


def test_pool_delivers_and_replaces_a_killed_worker(tmp_path: Path) -> None:
    site = Site(tmp_path, users={"alice": "", "bob": SLOW}, mode="inprocess")
    site.delivery.close()
    ld = LocalDelivery(site.config, mode="pool", max_forks=2)
    strays: list[int] = []
    try:
        pool = [w.pid for w in ld._workers]
        assert len(pool) == 2 and set(pool) <= set(children(os.getpid())) and ld.per_mailbox == 1
        alice = site.runner_router.maps.users.lookup("alice")
        bob = site.runner_router.maps.users.lookup("bob")
        paths = [_queued_message(site, f"m{i}") for i in range(4)]
        results = list(ld.executor.map(
            ld.deliver, [Request("mailbox", "s@example.org", "alice@example.com", p, user=alice) for p in paths]))
        assert [r.status for r in results] == [0] * 4
        assert sorted(m["Subject"] for m in site.messages(site.inbox("alice"))) == ["m0", "m1", "m2", "m3"]

        slow = ld.executor.submit(ld.deliver, Request("mailbox", "s@example.org", "bob@example.com",
                                                      _queued_message(site, "slow"), user=bob))
        worker, below = wait_for(lambda: _find(pool), 10, "the slow recipe")
        strays += below
        os.kill(worker, signal.SIGKILL)
        result = slow.result(10)
        assert result.status == ExitCode.TEMPFAIL and "died" in result.text
        assert not os.path.exists(site.inbox("bob"))
        now = [w.pid for w in ld._workers]
        assert len(now) == 2 and worker not in now and set(now) <= set(children(os.getpid()))
        # the replacement works, and so does the survivor
        paths = [_queued_message(site, f"after{i}") for i in range(2)]
        results = list(ld.executor.map(
            ld.deliver, [Request("mailbox", "s@example.org", "alice@example.com", p, user=alice) for p in paths]))
        assert [r.status for r in results] == [0, 0]
        assert len(site.messages(site.inbox("alice"))) == 6
    finally:
        ld.close()
        kill_all(strays)
    assert not any(alive(p) for p in pool)


def test_pool_deliver_async_on_the_loop_and_a_killed_worker(tmp_path: Path) -> None:
    """The runner's entry point: the same pool driven from an event loop with no thread
    (LocalDelivery.deliver_async), concurrent deliveries, and a worker killed mid-way."""
    import asyncio
    site = Site(tmp_path, users={"alice": "", "bob": SLOW}, mode="inprocess")
    site.delivery.close()
    ld = LocalDelivery(site.config, mode="pool", max_forks=2)
    strays: list[int] = []
    pool = [w.pid for w in ld._workers]
    alice = site.runner_router.maps.users.lookup("alice")
    bob = site.runner_router.maps.users.lookup("bob")

    async def scenario() -> None:
        reqs = [Request("mailbox", "s@example.org", "alice@example.com", _queued_message(site, f"a{i}"),
                        user=alice) for i in range(5)]
        results = await asyncio.gather(*(ld.deliver_async(r) for r in reqs))
        assert [r.status for r in results] == [0] * 5
        assert threading_count_unchanged()
        slow = asyncio.create_task(ld.deliver_async(
            Request("mailbox", "s@example.org", "bob@example.com", _queued_message(site, "slow"), user=bob)))
        found = None
        for _ in range(200):
            found = _find(pool)
            if found:
                break
            await asyncio.sleep(0.05)
        assert found, "the slow recipe never started"
        worker, below = found
        strays.extend(below)
        os.kill(worker, signal.SIGKILL)
        result = await asyncio.wait_for(slow, 10)
        assert result.status == ExitCode.TEMPFAIL and "died" in result.text
        now = [w.pid for w in ld._workers]
        assert len(now) == 2 and worker not in now
        after = await asyncio.gather(*(ld.deliver_async(Request(
            "mailbox", "s@example.org", "alice@example.com", _queued_message(site, f"b{i}"), user=alice))
            for i in range(3)))
        assert [r.status for r in after] == [0, 0, 0]

    threads_before = threading.active_count()

    def threading_count_unchanged() -> bool:
        return threading.active_count() == threads_before

    try:
        asyncio.run(scenario())
        subjects = sorted(m["Subject"] for m in site.messages(site.inbox("alice")))
        assert subjects == ["a0", "a1", "a2", "a3", "a4", "b0", "b1", "b2"]
        assert not os.path.exists(site.inbox("bob"))
    finally:
        ld.close()
        kill_all(strays)
    assert not any(alive(p) for p in pool)


def test_pool_workers_keep_their_lock_claim_file_and_remove_it_at_exit(tmp_path: Path) -> None:
    """A worker reuses one claim file per mailbox lock (deliver.locking) between
    deliveries instead of making an inode each time; the lock itself is released after
    every delivery (procmail can take it), and the claim file goes with the worker."""
    site = Site(tmp_path, users={"alice": ""}, mode="inprocess")
    site.delivery.close()
    ld = LocalDelivery(site.config, mode="pool", max_forks=1)
    alice = site.runner_router.maps.users.lookup("alice")
    spool = Path(site.inbox("alice")).parent
    try:
        inodes = set()
        for i in range(4):
            r = ld.deliver(Request("mailbox", "s@example.org", "alice@example.com",
                                   _queued_message(site, f"k{i}"), user=alice))
            assert r.status == 0
            names = [n for n in os.listdir(spool) if ".lock" in n]
            assert len(names) == 1 and "|" in names[0], names       # the kept claim, not a lock
            assert not os.path.exists(str(site.inbox("alice")) + ".lock")
            inodes.add(os.stat(spool / names[0]).st_ino)
        assert len(inodes) == 1
        assert sorted(m["Subject"] for m in site.messages(site.inbox("alice"))) == ["k0", "k1", "k2", "k3"]
    finally:
        ld.close()
    assert [n for n in os.listdir(spool) if ".lock" in n] == []


def _find(pool: list[int]):
    for w in pool:
        below = descendants(w)
        if any(b"sleep" in Path(f"/proc/{p}/cmdline").read_bytes() for p in below if os.path.exists(f"/proc/{p}")):
            return w, below
    return None


def _send_many(port: int, jobs: list[tuple[str, str]]) -> None:
    def one(job: tuple[str, str]) -> dict:
        to, subject = job
        with smtplib.SMTP("127.0.0.1", port, timeout=20) as s:
            s.ehlo("client.example")
            return s.sendmail("sender@example.org", [to],
                              f"From: sender@example.org\r\nTo: {to}\r\nSubject: {subject}\r\n\r\n"
                              + "line of body text\r\n" * 200)
    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        assert list(ex.map(one, jobs)) == [{}] * len(jobs)


def test_daemon_pool_mailboxes_and_a_worker_killed_mid_delivery(pdaemon) -> None:
    d = pdaemon(users={"alice": "", "bob": "", "carol": ""}).start("--delivery", "pool", "--forks", "3")
    runner = d.runner()
    assert len(children(runner)) == 3
    assert "delivery=pool" in d.log_text()
    jobs = [(f"{u}@example.com", f"{u} {i}") for i in range(6) for u in ("alice", "bob")] + \
           [("carol@example.com", "carol 0")]
    _send_many(d.port, jobs)
    for user, n in (("alice", 6), ("bob", 6), ("carol", 1)):
        got = d.wait_subjects(d.inbox(user), n)
        assert sorted(got) == sorted(s for to, s in jobs if to.startswith(user + "@")), user
        # whole messages, none interleaved: every body is intact
        assert all(m.get_payload().count("line of body text") == 200 for m in mailbox.mbox(str(d.inbox(user))))
    # two deliveries per mailbox queue on a server-private flock under DATA/run/locks
    assert list((d.root / "var" / "run" / "locks").iterdir())

    (d.home("alice") / ".procmailrc").write_text(SLOW)
    assert d.send(["alice@example.com"], "killed once") == {}
    worker, below = wait_for(lambda: _slow(runner), 10, "the slow recipe")
    pdaemon.strays.extend(below)
    (d.home("alice") / ".procmailrc").write_text("")    # the retry goes to the inbox
    before = children(runner)
    os.kill(worker, signal.SIGKILL)
    wait_for(lambda: "delivery process died" in d.log_text(), 10, "the deferral")
    log = d.log_text()
    assert f"delivery runner {worker} failed (signal 9)" in log and "stat=Deferred: 4.3.0 delivery process died" in log
    assert "the delivery runner died during its delivery; deferred" in log
    wait_for(lambda: len(children(runner)) == 3 and worker not in children(runner), 10, "a replacement")
    assert len(set(children(runner)) - set(before)) == 1
    # retried after [queue] initial = 1s, delivered this time
    assert "killed once" in d.wait_subjects(d.inbox("alice"), 7, timeout=20)
    _send_many(d.port, [("alice@example.com", "later a"), ("bob@example.com", "later b"),
                        ("carol@example.com", "later c")])
    assert "later a" in d.wait_subjects(d.inbox("alice"), 8)
    assert "later b" in d.wait_subjects(d.inbox("bob"), 7)
    assert "later c" in d.wait_subjects(d.inbox("carol"), 2)
    assert d.subjects(d.inbox("alice")).count("killed once") == 1
    wait_for(lambda: d.cli("mailq").stdout == "Mail queue is empty\n", what="empty queue")
    assert d.runner() == runner
    assert d.stop() == 0


def _slow(runner: int):
    try:
        return slow_worker(runner)
    except LookupError:
        return None


def test_pool_worker_killed_while_idle_is_replaced_before_the_next_delivery(tmp_path: Path) -> None:
    """A worker that died between deliveries: its answer pipe, still registered with
    the loop, reports EOF, so the next request goes to a new worker instead of being
    deferred, with no hang."""
    import asyncio
    site = Site(tmp_path, users={"alice": ""}, mode="inprocess")
    site.delivery.close()
    ld = LocalDelivery(site.config, mode="pool", max_forks=1)
    alice = site.runner_router.maps.users.lookup("alice")

    def req(subject: str) -> Request:
        return Request("mailbox", "s@example.org", "alice@example.com",
                       _queued_message(site, subject), user=alice)

    async def scenario() -> list[int]:
        first = await ld.deliver_async(req("before"))
        (worker,) = [w.pid for w in ld._workers]
        os.kill(worker, signal.SIGKILL)
        wait_for(lambda: not alive(worker), 10, "the idle worker to die")
        await asyncio.sleep(0.05)                 # its EOF reaches the loop
        second = await asyncio.wait_for(ld.deliver_async(req("lost-worker")), 10)
        third = await asyncio.wait_for(ld.deliver_async(req("after")), 10)
        assert [w.pid for w in ld._workers] != [worker]
        return [first.status, second.status, third.status]

    try:
        assert asyncio.run(scenario()) == [0, 0, 0]
        assert sorted(m["Subject"] for m in site.messages(site.inbox("alice"))) == \
            ["after", "before", "lost-worker"]
    finally:
        ld.close()
