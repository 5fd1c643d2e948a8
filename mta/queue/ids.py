"""mta.queue.ids — queue ids: unique, time-ordered, safe as file names.

A queue id is 13 upper-case hex digits of the arrival time in microseconds followed by 6
random hex digits (e.g. ``0006405C1F2A9B3E41D0``-like, 19 characters).  Ids sort by
arrival time, so ``ls incoming/`` lists mail oldest first (Postfix "long queue ids" have
the same property).  Uniqueness across processes is finally guaranteed by the spool's
exclusive ``mkdir``; the random part only makes a collision, and a retry, unlikely.

``check_qid`` raises ``InvalidQueueId`` for anything else, so an id from the command line
can never name a path outside the spool.
"""

from __future__ import annotations

import re
import secrets
import time

from .errors import InvalidQueueId

QID_RE = re.compile(r"^[0-9A-F]{19}$")


def new_qid(now_ns: int | None = None) -> str:
    """A fresh queue id for a message arriving now (or at ``now_ns``)."""
    usec = (time.time_ns() if now_ns is None else now_ns) // 1000
    return f"{usec & (16**13 - 1):013X}{secrets.token_hex(3).upper()}"


def is_qid(text: str) -> bool:
    return bool(QID_RE.match(text))


def check_qid(text: str) -> str:
    if not is_qid(text):
        raise InvalidQueueId(f"not a queue id: {text!r}")
    return text
