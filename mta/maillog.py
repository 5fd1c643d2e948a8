"""mta.maillog — sendmail-style maillog lines, written through ``logging``.

SYNOPSIS
    log_received(qid, sender=, size=, nrcpts=, msgid=, relay=)
    log_delivery(qid, to=, orcpt=, received_at=, started=, mailer=, pri=, stat=, relay=)
    setup_logging(log_file, stderr=True, level=logging.INFO)

DESCRIPTION
    The lines admins grep for, in sendmail's format (sendmail/savemail.c, logdelivery()):

        <qid>: from=<sender>, size=N, class=0, nrcpts=N, msgid=<id>, relay=host [ip]
        <qid>: to=<rcpt>, delay=HH:MM:SS, xdelay=HH:MM:SS, mailer=local, pri=N, stat=Sent (...)
        <qid>: to=<rcpt>, ... stat=Deferred: 4.3.0 ...

    ``delay`` is the time since the message arrived, ``xdelay`` the time this one
    attempt took; a delay over a day is written ``D+HH:MM:SS`` as sendmail does.
    ``pri`` follows sendmail's work-queue priority: size plus a per-recipient factor
    plus 90000 per attempt (WkTimeFact), so that a message retried often sorts late.

    Everything goes to the ``postroom.maillog`` logger; ``setup_logging`` attaches the
    log file and/or stderr handlers ``postroom serve`` uses.

ERRORS
    None: logging never raises into the caller (logging's own error handling).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

__all__ = ["maillog", "format_delay", "priority", "log_received", "log_delivery", "setup_logging"]

maillog = logging.getLogger("postroom.maillog")

# sendmail's default RecipientFactor and WkTimeFact (cf/README, "confWORK_RECIPIENT_FACTOR").
RECIPIENT_FACTOR = 30000
TIME_FACTOR = 90000

LOG_FORMAT = "%(asctime)s %(name)s[%(process)d]: %(message)s"


def format_delay(seconds: float) -> str:
    """sendmail's pintvl(): ``HH:MM:SS``, with ``D+`` in front for a day or more."""
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{days}+{text}" if days else text


def priority(size: int, nrcpts: int, attempts: int) -> int:
    return size + RECIPIENT_FACTOR * nrcpts + TIME_FACTOR * attempts


def _angle(address: str) -> str:
    return f"<{address}>"


def log_received(qid: str, *, sender: str, size: int, nrcpts: int, msgid: str | None,
                 relay: str) -> None:
    maillog.info("%s: from=%s, size=%d, class=0, nrcpts=%d, msgid=%s, relay=%s",
                 qid, _angle(sender), size, nrcpts, msgid or "", relay)


def log_delivery(qid: str, *, to: str, received_at: float, started: float, mailer: str,
                 pri: int, stat: str, orcpt: str | None = None, relay: str | None = None,
                 dsn: str | None = None, now: float | None = None) -> None:
    """One ``to=`` line; ``stat`` is e.g. ``Sent (inbox)`` or ``Deferred: 4.3.0 ...``."""
    now = time.time() if now is None else now
    parts = [f"to={_angle(to)}"]
    if orcpt and orcpt != to:
        parts.append(f"orcpt=<{orcpt}>")   # sendmail logs the original recipient as ctladdr=
    parts += [f"delay={format_delay(now - received_at)}",
              f"xdelay={format_delay(now - started)}", f"mailer={mailer}", f"pri={pri}"]
    if relay:
        parts.append(f"relay={relay}")
    if dsn:
        parts.append(f"dsn={dsn}")
    parts.append(f"stat={stat}")
    level = logging.INFO if stat.startswith("Sent") else logging.WARNING
    maillog.log(level, "%s: %s", qid, ", ".join(parts))


class MaillogFormatter(logging.Formatter):
    """LOG_FORMAT with the timestamp formatted once per second, not once per line: a
    daemon writes several lines per message, and strftime was a visible share of the
    receiver's CPU (tests/benchmarks/bench_mta.py)."""

    def __init__(self) -> None:
        super().__init__(LOG_FORMAT, datefmt="%b %d %H:%M:%S")
        self._second = -1
        self._stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if second != self._second:
            self._stamp = time.strftime(self.datefmt or "%b %d %H:%M:%S", time.localtime(second))
            self._second = second
        return self._stamp


def setup_logging(log_file: Path | None, *, stderr: bool = True,
                  level: int = logging.INFO) -> list[logging.Handler]:
    """Attach the daemon's handlers to the root logger; returns them (for removal).

    The log file's directory is created; a file that cannot be opened is reported on
    stderr and logging continues there (a broken log must not stop mail).

    The daemon's lines carry no thread name, source file or line: the logging HOWTO's
    "Optimization" settings skip collecting them (the caller's frame walk is the
    costliest part of a log call).
    """
    logging._srcfile = None            # noqa: SLF001 - the documented switch (HOWTO)
    logging.logThreads = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    root.setLevel(level)
    fmt = MaillogFormatter()
    handlers: list[logging.Handler] = []
    if log_file is not None:
        try:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
        except OSError as exc:
            sys.stderr.write(f"postroom: cannot open log file {log_file}: {exc}; logging to stderr\n")
            stderr = True
    if stderr or not handlers:
        handlers.append(logging.StreamHandler(sys.stderr))
    for h in handlers:
        h.setFormatter(fmt)
        root.addHandler(h)
    return handlers
