"""Crash test: SIGKILL `postroom serve` at random moments while clients send; lose nothing.

Several SMTP clients (threads, smtplib, one connection per message) send COUNT messages
to four local users while a killer thread SIGKILLs the daemon at random moments and
restarts it.  A client whose connection breaks (daemon down, 421, reset) sends that
message again later as a new attempt with a new id, as a real MTA would.  At the end the
daemon runs until its queue is empty, and the mailboxes are read back:

    sent          attempts that reached DATA's end-of-data (or broke on the way)
    acknowledged  attempts that got 250 after the final dot
    delivered     acknowledged ids found in a mailbox          (must equal acknowledged)
    duplicated    ids found more than once (a kill between the mailbox write and the
                  queue update repeats that delivery: at-least-once, never lost)
    extra         unacknowledged attempts that were delivered anyway (250 lost in the kill)

Run as a benchmark with the full count:
    .venv/bin/python tests/mta/test_crash.py --count 2000
In the suite COUNT is $POSTROOM_CRASH_COUNT, 2000 by default (see the report below for
the time it takes on this machine).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

PY = sys.executable
USERS = ("u0", "u1", "u2", "u3")
SUBJECT = re.compile(rb"^Subject: (crash-\d+-\d+)$", re.M)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Installation:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = _free_port()
        uid, gid = os.getuid(), os.getgid()
        (root / "users").write_text("".join(f"{u}:x:{uid}:{gid}::home/{u}:/bin/sh\n" for u in USERS))
        (root / "local-host-names").write_text("example.com\n")
        self.config = root / "postroom.toml"
        self.config.write_text(
            '[server]\nhostname = "mx.example.com"\nlog_file = "var/log/maillog"\n'
            f'[smtp]\nlisteners = ["127.0.0.1:{self.port}"]\n[smtp.limits]\ngreet_pause = 0\n'
            '[maps]\nlocal_host_names = "local-host-names"\nusers = "users"\n'
            '[deliver]\nsystem_rc = "none"\nmail_spool = "var/mail"\nrun_as_root_drop = false\n'
            '[queue]\ninitial = "1s"\n')
        for u in USERS:
            home = root / "var" / "home" / u
            home.mkdir(parents=True, exist_ok=True)
            (home / ".procmailrc").write_text(":0:\n* ^Subject: crash-never\nnever\n")
        self.log = root / "var" / "log" / "maillog"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.kills = 0
        self.lock = threading.Lock()

    def _ready_count(self) -> int:
        try:
            return self.log.read_bytes().count(b"postroom serve ready")
        except FileNotFoundError:
            return 0

    def start(self) -> None:
        with self.lock:
            target = self._ready_count() + 1
            err = open(self.root / "serve.stderr", "ab")
            self.proc = subprocess.Popen([PY, "-m", "mta.cli", "serve", "--config", str(self.config),
                                          "--no-stderr"], stdout=subprocess.DEVNULL, stderr=err)
            err.close()
            deadline = time.monotonic() + 20
            while self._ready_count() < target:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("postroom serve did not start; see serve.stderr")
                time.sleep(0.02)
            self.starts += 1

    def kill(self) -> None:
        with self.lock:
            if self.proc is not None:
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait()
                self.kills += 1
                self.proc = None

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(60)
        self.proc = None
        return code

    def queue_empty(self) -> bool:
        spool = self.root / "var" / "spool"
        return all(not any((spool / d).iterdir()) for d in ("incoming", "active", "deferred"))

    def delivered(self) -> Counter[str]:
        found: Counter[str] = Counter()
        for u in USERS:
            path = self.root / "var" / "mail" / u
            if path.exists():
                found.update(m.decode() for m in SUBJECT.findall(path.read_bytes()))
        return found


def _send(port: int, ident: str, to: str) -> bool:
    """One attempt; True only when the end-of-data got 250."""
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=15) as s:
            s.ehlo("crash.example")
            body = ("x" * 70 + "\r\n") * 25
            s.sendmail("crash@example.org", [to],
                       f"From: crash@example.org\r\nTo: {to}\r\nSubject: {ident}\r\n\r\n{body}")
            return True
    except (OSError, smtplib.SMTPException):
        return False


MIN_KILLS = 3


def run_crash(count: int = 2000, clients: int = 8, root: Path | None = None,
              min_gap: float = 0.3, max_gap: float = 1.5, seed: int | None = None) -> dict:
    rng = random.Random(seed)
    root = Path(tempfile.mkdtemp(prefix="postroom-crash-")) if root is None else root
    inst = Installation(root)
    inst.start()
    t0 = time.monotonic()
    todo = list(range(count))
    todo_lock = threading.Lock()
    acked: set[str] = set()
    attempted: set[str] = set()
    sent = 0
    done = threading.Event()

    def client() -> None:
        nonlocal sent
        attempt = 0
        while True:
            with todo_lock:
                if not todo:
                    return
                n = todo.pop()
            while True:
                attempt += 1
                ident = f"crash-{n}-{attempt}"
                with todo_lock:
                    sent += 1
                    attempted.add(ident)
                if _send(inst.port, ident, f"{USERS[n % len(USERS)]}@example.com"):
                    with todo_lock:
                        acked.add(ident)
                    break
                time.sleep(0.05)

    def killer() -> None:
        # at least MIN_KILLS even when the clients finish first (a fast daemon): the
        # later kills then hit the queue runner draining the queue
        while True:
            stop = done.wait(rng.uniform(min_gap, max_gap))
            if stop and inst.kills >= MIN_KILLS:
                return
            inst.kill()
            time.sleep(rng.uniform(0.0, 0.2))
            inst.start()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    kt = threading.Thread(target=killer)
    for t in threads:
        t.start()
    kt.start()
    for t in threads:
        t.join()
    done.set()
    send_time = time.monotonic() - t0
    kt.join()
    deadline = time.monotonic() + 120
    found = inst.delivered()
    while (not inst.queue_empty() or not acked <= set(found)) and time.monotonic() < deadline:
        time.sleep(0.2)
        found = inst.delivered()
    total = time.monotonic() - t0
    code = inst.stop()
    found = inst.delivered()
    return {
        "messages": count,
        "sent": sent,
        "acknowledged": len(acked),
        "delivered": len(acked & set(found)),
        "lost": sorted(acked - set(found)),
        "duplicated": sum(1 for c in found.values() if c > 1),
        "extra": len(set(found) - acked),
        "unknown": sorted(set(found) - attempted),
        "kills": inst.kills,
        "starts": inst.starts,
        "send_seconds": round(send_time, 1),
        "total_seconds": round(total, 1),
        "queue_empty": inst.queue_empty(),
        "exit_code": code,
        "root": str(root),
    }


def format_report(r: dict) -> str:
    return (f"crash test: {r['messages']} messages, {r['kills']} SIGKILLs: sent {r['sent']}, "
            f"acknowledged {r['acknowledged']}, delivered {r['delivered']}, "
            f"duplicated {r['duplicated']}, delivered without 250 {r['extra']}, "
            f"lost {len(r['lost'])}; {r['send_seconds']} s sending, {r['total_seconds']} s total")


def test_sigkill_at_random_moments_loses_nothing(tmp_path: Path, capsys) -> None:
    count = int(os.environ.get("POSTROOM_CRASH_COUNT", "2000"))
    r = run_crash(count=count, clients=8, root=tmp_path, seed=int(time.time()))
    with capsys.disabled():
        print("\n  " + format_report(r))
    assert r["kills"] >= MIN_KILLS, r
    assert r["lost"] == [], r
    assert r["unknown"] == []
    assert r["acknowledged"] == count and r["delivered"] == count
    assert r["queue_empty"] and r["exit_code"] == 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=2000)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seed", type=int)
    args = p.parse_args(argv)
    r = run_crash(args.count, args.clients, seed=args.seed)
    print(format_report(r))
    if r["lost"]:
        print("LOST:", " ".join(r["lost"][:20]))
    return 1 if r["lost"] else 0


if __name__ == "__main__":
    sys.exit(main())
