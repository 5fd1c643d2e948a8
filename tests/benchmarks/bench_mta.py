#!/usr/bin/env python3
"""bench_mta.py — postroom serve against Postfix: throughput, CPU per message, latency.

SYNOPSIS
    python tests/benchmarks/bench_mta.py [--messages 2000] [--sessions 10] [--size 2048]
                                         [--latency-samples 20] [--rounds 3]
                                         [--only a,b,c] [--json FILE]
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

    Every instance's directory is made in a block group of its own (placement.py), so
    that no configuration pays at its file creations for the queue files another one, or
    an earlier round, deleted.

    The configurations run ROUNDS times, interleaved (a b c, then c b a, ...), each time
    on a fresh instance: on this shared machine one run of a configuration can be 1.5x
    faster or slower than the next (Postfix local(8) measured 567 to 839 msg/s in three
    runs of one hour), so every figure reported is the median over the rounds, and each
    ratio is the median of the rounds' own ratios (the two sides of a ratio measured
    minutes apart, not a quarter of an hour).

    Needs root to run Postfix (and installs Debian's postfix, which brings smtp-source,
    when it is missing, leaving no system instance running).  Without root or without
    the test user, configurations that cannot run are reported as skipped.

    The last line is a JSON summary (the ratios, "ok": every target met) that
    tests/benchmarks/run.py collects.

EXIT STATUS
    0 when every configuration ran and every target was met (as bench_deliver.py), 1
    when a target was missed or a configuration could not run.
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
from placement import spread_children  # noqa: E402

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


@dataclass
class Figures:
    """One configuration's figures: a round's, or the medians over the rounds."""

    rate: float
    cpu: float          # ms per message
    latency: float      # seconds


def figures(row: Row) -> Figures | None:
    if row.load is None or row.latency is None:
        return None
    return Figures(row.load.rate, row.load.cpu_ms_per_message, row.latency)


def median_figures(rounds: list[dict[str, Row]], key: str) -> Figures | None:
    got = [f for f in (figures(r[key]) for r in rounds if key in r) if f is not None]
    if not got:
        return None
    return Figures(statistics.median(f.rate for f in got), statistics.median(f.cpu for f in got),
                   statistics.median(f.latency for f in got))


def median_ratios(rounds: list[dict[str, Row]], ref: str) -> Figures | None:
    """postroom / ``ref`` per round (rate, CPU, latency), then the median of each."""
    pairs = [(figures(r["c"]), figures(r[ref])) for r in rounds if "c" in r and ref in r]
    pairs = [(c, x) for c, x in pairs if c is not None and x is not None]
    if not pairs:
        return None
    return Figures(statistics.median(c.rate / x.rate for c, x in pairs),
                   statistics.median(c.cpu / x.cpu for c, x in pairs),
                   statistics.median(c.latency / x.latency for c, x in pairs))


def report(rounds: list[dict[str, Row]], args: argparse.Namespace) -> str:
    lines = [f"MTA benchmark: smtp-source -s {args.sessions} -m {args.messages} -l {args.size}, "
             f"one connection per message, 20-recipe rc; latency = median of {args.latency_samples}; "
             f"{len(rounds)} round(s), interleaved",
             f"{'configuration':<22}{'msg/s':>9}{'CPU ms/msg':>12}{'latency ms':>12}"]
    for i, rows in enumerate(rounds, 1):
        for key, row in rows.items():
            f = figures(row)
            if f is None:
                lines.append(f"{NAMES[key]:<22}  round {i} not run: {row.error}")
            elif len(rounds) > 1:
                lines.append(f"{NAMES[key]:<22}{f.rate:>9.1f}{f.cpu:>12.2f}{1000 * f.latency:>12.2f}"
                             f"   (round {i})")
    keys = [k for k in NAMES if any(k in r for r in rounds)]
    med = {k: median_figures(rounds, k) for k in keys}
    for k in keys:
        f = med[k]
        if f is not None:
            label = "median" if len(rounds) > 1 else ""
            lines.append(f"{NAMES[k]:<22}{f.rate:>9.1f}{f.cpu:>12.2f}{1000 * f.latency:>12.2f}   {label}")
    if med.get("c") is None:
        return "\n".join(lines)
    for ref, target, name in (("b", 1.0, "Postfix local(8)"), ("a", 3.0, "Postfix + procmail")):
        r = median_ratios(rounds, ref)
        if r is None:
            continue
        lines.append(f"postroom / {name}: throughput x{r.rate:.2f} (target >= {target:g}: "
                     f"{'met' if r.rate >= target else 'MISSED'}), CPU/msg x{r.cpu:.2f}, "
                     f"latency x{r.latency:.2f}")
    ratios = [r for r in (median_ratios(rounds, "a"), median_ratios(rounds, "b")) if r is not None]
    if ratios:
        # "no worse than Postfix's": against the better of the two Postfix configurations
        worst_cpu = max(r.cpu for r in ratios)
        worst_lat = max(r.latency for r in ratios)
        lines.append(f"CPU/msg no worse than Postfix (x{worst_cpu:.2f} of the better): "
                     f"{'met' if worst_cpu <= 1 else 'MISSED'}; latency no worse than Postfix "
                     f"(x{worst_lat:.2f} of the better): {'met' if worst_lat <= 1 else 'MISSED'}")
    return "\n".join(lines)


def verdict(rounds: list[dict[str, Row]]) -> dict[str, object]:
    """The targets, judged as ``report`` prints them: the JSON summary's fields."""
    out: dict[str, object] = {"bench": "mta"}
    met = True
    ratios = {}
    for ref, target, name in (("b", 1.0, "postfix_local"), ("a", 3.0, "postfix_procmail")):
        r = median_ratios(rounds, ref)
        if r is None:
            met = False
            continue
        ratios[ref] = r
        met = met and r.rate >= target
        out[name] = {"throughput_ratio": round(r.rate, 3), "cpu_ratio": round(r.cpu, 3),
                     "latency_ratio": round(r.latency, 3)}
    if ratios:
        met = met and max(r.cpu for r in ratios.values()) <= 1 and max(r.latency for r in ratios.values()) <= 1
    out["ok"] = met
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--latency-samples", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3,
                        help="runs of every configuration, interleaved; medians are reported")
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
        print(report([rows], args))
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
        print(report([rows], args))
        return 1

    work = Path(tempfile.mkdtemp(prefix="bench-mta-"))
    work.chmod(0o755)
    log.info("instances under %s, %s", work, "each in a block group of its own (chattr +T)"
             if spread_children(work) else "sharing one block group (chattr +T refused)")
    rounds: list[dict[str, Row]] = []
    try:
        for i in range(max(1, args.rounds)):
            rows = {}
            for k in (keys if i % 2 == 0 else keys[::-1]):
                log.info("round %d: running %s", i + 1, NAMES[k])
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
            rounds.append({k: rows[k] for k in keys})
    finally:
        if args.keep:
            log.info("kept %s", work)
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(report(rounds, args))
    summary = verdict(rounds)
    summary["command"] = " ".join([sys.executable, *sys.argv])
    print(json.dumps(summary))
    sys.stdout.flush()
    if args.json:
        Path(args.json).write_text(json.dumps([[r.as_dict() for r in rows.values()] for rows in rounds],
                                              indent=2) + "\n")
    ran = all(r.load is not None for rows in rounds for r in rows.values())
    return 0 if ran and summary["ok"] else 1


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
