"""``postroom mailq`` and ``postroom queue``: look at and manage the mail queue.

SYNOPSIS
    postroom mailq [--config FILE | --embedded DIR]
    postroom queue [--config FILE | --embedded DIR] flush | delete ID | hold ID | release ID

DESCRIPTION
    mailq lists every queued message in sendmail's format: queue id, size, arrival
    time, sender, then each recipient not yet delivered with its state and last error;
    the entry's queue directory is marked (``*`` active, ``-`` hold, ``!`` corrupt,
    a space for incoming/deferred), and a total closes the list.

    queue flush          make the daemon try all deferred mail now (a flush request
                         file, then SIGUSR1; see mta.serve)
    queue delete ID      remove a message that is not being delivered
    queue hold ID        stop trying a message until it is released
    queue release ID     put a held message back for immediate delivery

EXIT STATUS
    0 done; 64 usage; 67 unknown queue id; 75 the message is being delivered (try
    again) or flush found no running daemon; 78 configuration error.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Sequence, TextIO

from .queue.spool import EnvelopeInfo

MARK = {"active": "*", "hold": "-", "corrupt": "!", "incoming": " ", "deferred": " "}


def format_listing(root: str, entries: list[EnvelopeInfo]) -> str:
    lines = [f"\t\t{root} ({len(entries)} request{'s' if len(entries) != 1 else ''})",
             "-----Q-ID----- --Size-- -----Q-Time----- ------------Sender/Recipient-----------"]
    for e in sorted(entries, key=lambda e: (e.received_at or 0, e.qid)):
        when = time.strftime("%a %b %d %H:%M", time.localtime(e.received_at or 0))
        sender = "<>" if e.sender == "" else f"<{e.sender}>" if e.sender is not None else "(unreadable)"
        lines.append(f"{e.qid}{MARK.get(e.queue, ' ')} {e.size:>8} {when} {sender}")
        if e.error:
            lines.append(f"                 (corrupt: {e.error})")
        if e.queue == "hold":
            lines.append("                 (on hold)")
        for r in e.recipients:
            if r.state == "delivered":
                continue
            if r.last_error:
                lines.append(f"                 ({r.state}: {r.last_error[:60]})")
            lines.append(f"{'':41}<{r.address}>")
    lines.append(f"\t\tTotal requests: {len(entries)}")
    return "\n".join(lines) + "\n"


def _config(args: argparse.Namespace, prog: str):
    """The selected configuration, or None after saying why on stderr (exit 78)."""
    from .config import ConfigError
    from .serve import select_config
    try:
        return select_config(args.config, args.embedded)
    except ConfigError as exc:
        sys.stderr.write(f"{prog}: {exc}\n")
        return None


def mailq_main(argv: Sequence[str], out: TextIO = sys.stdout) -> int:
    from .queue import Spool
    from .serve import add_config_arguments
    parser = argparse.ArgumentParser(prog="postroom mailq", description="list the mail queue")
    add_config_arguments(parser)
    args = parser.parse_args(list(argv))
    config = _config(args, "postroom mailq")
    if config is None:
        return 78
    spool = Spool(str(config.server.spool_dir), recover=False)
    entries = spool.list()
    if not entries:
        out.write("Mail queue is empty\n")
        return 0
    out.write(format_listing(spool.root, entries))
    return 0


def queue_main(argv: Sequence[str], out: TextIO = sys.stdout) -> int:
    from .queue import QueueBusy, QueueError, Spool, UnknownMessage
    from .queue.errors import InvalidQueueId
    from .serve import add_config_arguments, poke
    parser = argparse.ArgumentParser(prog="postroom queue", description="manage the mail queue")
    add_config_arguments(parser)
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("flush", help="try all deferred mail now")
    for name in ("delete", "hold", "release"):
        sub.add_parser(name).add_argument("qid", nargs="+")
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exc:
        return 64 if exc.code else 0
    config = _config(args, "postroom queue")
    if config is None:
        return 78
    spool = Spool(str(config.server.spool_dir), recover=False)
    if args.action == "flush":
        if poke(config, flush=True):
            out.write("queue flush requested\n")
            return 0
        sys.stderr.write("postroom queue: postroom serve is not running; the flush happens at its start\n")
        return 75
    status = 0
    for qid in args.qid:
        try:
            getattr(spool, args.action)(qid)
        except (UnknownMessage, InvalidQueueId):
            sys.stderr.write(f"postroom queue: {qid}: no such message\n")
            status = status or 67
            continue
        except QueueBusy:
            sys.stderr.write(f"postroom queue: {qid}: being delivered, try again\n")
            status = status or 75
            continue
        except QueueError as exc:
            sys.stderr.write(f"postroom queue: {exc}\n")
            status = status or 75
            continue
        out.write(f"{qid}: {_past(args.action)}\n")
    if args.action == "release" and status == 0:
        poke(config)
    return status


def _past(action: str) -> str:
    return {"delete": "deleted", "hold": "held", "release": "released"}[action]
