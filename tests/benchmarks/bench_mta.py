#!/usr/bin/env python3
"""bench_mta.py — postroom serve against Postfix: throughput, CPU per message, latency.

SYNOPSIS
    python tests/benchmarks/bench_mta.py [--messages 2000] [--sessions 10] [--size 2048]
                                         [--latency-samples 20] [--only a,b,c] [--json FILE]
                                         [--postroom-repo DIR] [--postroom-arg ARG]

DESCRIPTION
    Three configurations, measured in the same invocation because the machine is noisy
    (issue 4, "Performance"); all listen on 127.0.0.1 only, on a free port, with every
    file in a temporary directory:

      a  Postfix + procmail   local(8) runs mailbox_command = procmail with the 20-recipe
                              rc (mta_support/procmailrc20), DEFAULT = the mbox
      b  Postfix local(8)     plain mbox delivery, no filtering
      c  postroom serve       the same rc as the user's ~/.procmailrc, in-process agent

    Load: ``smtp-source -s SESSIONS -m MESSAGES -l SIZE`` (one connection per message)
    to the unprivileged test user ($POSTROOM_TEST_USER, default prtest).  Reported:

      msg/s        MESSAGES / (first connection .. last message in the mbox)
      CPU ms/msg   utime+stime of every server process (for Postfix all its daemons and
                   the procmail runs; dead processes through their parents' cutime/cstime,
                   the benchmark being the daemons' subreaper), smtp-source excluded
      latency ms   median of LATENCY_SAMPLES single messages on an idle server, raw socket
                   from connect() to the message in the mbox

    and the ratios postroom/Postfix against the issue's targets: postroom with recipes
    >= Postfix local(8) without, >= 3x Postfix + procmail, latency and CPU/msg no worse.

    Needs root to run Postfix (and installs Debian's postfix, which brings smtp-source,
    when it is missing, leaving no system instance running).  Without root or without
    the test user, configurations that cannot run are reported as skipped.

EXIT STATUS
    0 when every configuration ran (targets missed are reported, not an error), 1 when
    one could not run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pwd
import shutil
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))

from mta_support.measure import (BenchError, LoadResult, MboxCounter, free_port,  # noqa: E402
                                 make_subreaper, run_load, smtp_latency)
from mta_support.postfix import PostfixInstance, ensure_postfix  # noqa: E402
from mta_support.postroom import PostroomInstance  # noqa: E402

log = logging.getLogger("bench_mta")

RC = HERE / "mta_support" / "procmailrc20"
NAMES = {"a": "Postfix + procmail", "b": "Postfix local(8)", "c": "postroom serve"}
SENDER = "bench@localhost"


@dataclass
class Row:
    key: str
    load: LoadResult | None = None
    latency: float | None = None
    error: str | None = None

    def as_dict(self) -> dict:
        if self.load is None:
            return {"config": NAMES[self.key], "error": self.error}
        return {"config": NAMES[self.key], "msg_per_s": round(self.load.rate, 1),
                "cpu_ms_per_msg": round(self.load.cpu_ms_per_message, 2),
                "latency_ms": round(1000 * self.latency, 2), "seconds": round(self.load.seconds, 2)}


def measure(key: str, port: int, mailbox: Path, args: argparse.Namespace, user: str) -> Row:
    rcpt = f"{user}@localhost"
    mbox = MboxCounter(str(mailbox))
    # warm-up: first connection, first delivery (mailbox creation, imports, caches)
    for _ in range(3):
        smtp_latency(port, mbox, sender=SENDER, recipient=rcpt)
    load = run_load(port, mbox, messages=args.messages, sessions=args.sessions, size=args.size,
                    sender=SENDER, recipient=rcpt, timeout=args.timeout)
    samples = [smtp_latency(port, mbox, sender=SENDER, recipient=rcpt, size=args.size)
               for _ in range(args.latency_samples)]
    return Row(key, load, statistics.median(samples))


def run_postfix(key: str, args: argparse.Namespace, user: str, work: Path) -> Row:
    base = Path(tempfile.mkdtemp(prefix=f"postfix-{key}-", dir=work))
    base.chmod(0o755)
    rc = None
    if key == "a":
        (base / "pm").mkdir()
        rc = base / "pm" / "procmailrc"
        rc.write_bytes(RC.read_bytes())
    port = free_port()
    pf = PostfixInstance(base, port, user, procmail_rc=rc)
    pf.setup()
    try:
        pf.start()
        return measure(key, port, pf.mailbox, args, user)
    finally:
        pf.stop()


def run_postroom(args: argparse.Namespace, user: str, work: Path) -> Row:
    base = Path(tempfile.mkdtemp(prefix="postroom-", dir=work))
    base.chmod(0o755)
    port = free_port()
    pr = PostroomInstance(base, port, user, RC, python=args.python, repo=Path(args.postroom_repo),
                          extra_args=tuple(args.postroom_arg))
    pr.setup()
    try:
        pr.start()
        return measure("c", port, pr.mailbox, args, user)
    finally:
        pr.stop()


def report(rows: dict[str, Row], args: argparse.Namespace) -> str:
    lines = [f"MTA benchmark: smtp-source -s {args.sessions} -m {args.messages} -l {args.size}, "
             f"one connection per message, 20-recipe rc; latency = median of {args.latency_samples}",
             f"{'configuration':<22}{'msg/s':>9}{'CPU ms/msg':>12}{'latency ms':>12}"]
    for key, row in rows.items():
        if row.load is None:
            lines.append(f"{NAMES[key]:<22}  not run: {row.error}")
            continue
        lines.append(f"{NAMES[key]:<22}{row.load.rate:>9.1f}{row.load.cpu_ms_per_message:>12.2f}"
                     f"{1000 * row.latency:>12.2f}")
    a, b, c = rows.get("a"), rows.get("b"), rows.get("c")
    if c is not None and c.load is not None:
        for ref, target, name in ((b, 1.0, "Postfix local(8)"), (a, 3.0, "Postfix + procmail")):
            if ref is None or ref.load is None:
                continue
            ratio = c.load.rate / ref.load.rate
            cpu = c.load.cpu_ms_per_message / ref.load.cpu_ms_per_message
            lat = c.latency / ref.latency
            lines.append(f"postroom / {name}: throughput x{ratio:.2f} (target >= {target:g}: "
                         f"{'met' if ratio >= target else 'MISSED'}), CPU/msg x{cpu:.2f}, latency x{lat:.2f}")
        refs = [r for r in (a, b) if r is not None and r.load is not None]
        if refs:
            best_cpu = min(r.load.cpu_ms_per_message for r in refs)
            best_lat = min(r.latency for r in refs)
            lines.append(f"CPU/msg no worse than Postfix ({best_cpu:.2f} ms): "
                         f"{'met' if c.load.cpu_ms_per_message <= best_cpu else 'MISSED'}; "
                         f"latency no worse than Postfix ({1000 * best_lat:.2f} ms): "
                         f"{'met' if c.latency <= best_lat else 'MISSED'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--latency-samples", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=600.0, help="per load run, seconds")
    parser.add_argument("--only", default="a,b,c", help="configurations to run (a,b,c)")
    parser.add_argument("--json", help="also write the results as JSON to this file")
    parser.add_argument("--python", default=str(REPO / ".venv" / "bin" / "python"),
                        help="the interpreter that runs postroom serve")
    parser.add_argument("--postroom-repo", default=str(REPO),
                        help="run postroom from this checkout (before/after comparisons)")
    parser.add_argument("--postroom-arg", action="append", default=[],
                        help="extra argument for postroom serve (repeatable)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directories")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="bench_mta: %(message)s")

    user = os.environ.get("POSTROOM_TEST_USER", "prtest")
    rows: dict[str, Row] = {}
    keys = [k for k in args.only.split(",") if k in NAMES]
    root = os.geteuid() == 0
    try:
        pwd.getpwnam(user)
    except KeyError:
        for k in keys:
            rows[k] = Row(k, error=f"no user {user} (make test-deps creates it)")
        print(report(rows, args))
        return 1
    postfix_error = None
    if any(k in "ab" for k in keys):
        if not root:
            postfix_error = "Postfix needs root"
        else:
            try:
                ensure_postfix()
            except BenchError as exc:
                postfix_error = str(exc)
    if root:
        make_subreaper()
    if not shutil.which("smtp-source"):
        for k in keys:
            rows[k] = Row(k, error="smtp-source missing (Debian package postfix)")
        print(report(rows, args))
        return 1

    work = Path(tempfile.mkdtemp(prefix="bench-mta-"))
    work.chmod(0o755)
    try:
        for k in keys:
            log.info("running %s", NAMES[k])
            try:
                if k in "ab":
                    if postfix_error:
                        rows[k] = Row(k, error=postfix_error)
                        continue
                    rows[k] = run_postfix(k, args, user, work)
                else:
                    rows[k] = run_postroom(args, user, work)
            except BenchError as exc:
                rows[k] = Row(k, error=str(exc))
            _reap()
    finally:
        if args.keep:
            log.info("kept %s", work)
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(report(rows, args))
    sys.stdout.flush()
    if args.json:
        Path(args.json).write_text(json.dumps([r.as_dict() for r in rows.values()], indent=2) + "\n")
    return 0 if all(r.load is not None for r in rows.values()) else 1


def _reap() -> None:
    """Collect daemons re-parented to us (we are their subreaper) once they exit."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


if __name__ == "__main__":
    sys.exit(main())
