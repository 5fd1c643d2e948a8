"""``postroom sendmail``: sendmail's submission command line, into the durable queue.

SYNOPSIS
    postroom sendmail [--config FILE | --embedded DIR] [-t] [-i] [-oi] [-f sender]
                      [-F fullname] [-oXXX ...] [-bm] [--] [recipient ...]

DESCRIPTION
    Reads a message on stdin and queues it exactly as the SMTP receiver does (the
    spool's tmp/ -> fsync -> rename into incoming/ path of mta.queue), then pokes the
    running daemon (SIGUSR1, mta.serve.poke) so it is delivered at once; without a
    daemon the message waits in the queue for the next `postroom serve`.

    -t          take recipients from To:, Cc: and Bcc: as well (Postfix: they are added
                to the command-line ones); from Resent-To:, Resent-Cc: and Resent-Bcc:
                instead when the message has a Resent- field (a resent message).
                Bcc: and Resent-Bcc: are removed from the message, -t or not.
                Flags may be joined (-ti).
    -q[time]    ask the daemon to run the queue now (sendmail -q); nothing is read.
    -bp         list the queue (postroom mailq); -bi or -I: check the aliases file
                (postroom newaliases), as sendmail and Postfix's sendmail do.
    -i, -oi     a line with a single "." does not end the message (without it, it does,
                as in sendmail).
    -f sender   the envelope sender (default: the invoking user at the host name);
                "<>" or "" is the null sender; "Name <addr>" gives addr.
    -F name     the full name used if a From: header has to be added (default: $NAME,
                else, without -f, the invoking user's GECOS name).
    -oXXX, -bm, -v, -B, -N, -R, -U, -G, -m, -x, -A, -O, -e, -p, -V are accepted and
                ignored (sendmail and Postfix compatibility).

    Missing From:, Date: and Message-ID: headers are added (sendmail does), and a
    Received: header records the submission.  Line ends become LF (the queue's format).

EXIT STATUS
    0 queued; 64 (EX_USAGE) bad options or no recipients; 65 (EX_DATAERR) a recipient
    address that cannot be parsed, or a message larger than [smtp.limits]
    max_message_size (the limit SMTP clients get; nothing is queued); 75 (EX_TEMPFAIL) the queue could not be written;
    78 a configuration error.  Errors are written to stderr.
"""

from __future__ import annotations

import email.utils
import logging
import os
import pwd
import re
import sys
import time
from email.parser import BytesHeaderParser
from email.policy import compat32
from typing import Sequence

from .headerfields import remove_fields

log = logging.getLogger("mta.sendmail")

USAGE = ("usage: postroom sendmail [--config FILE | --embedded DIR] [-t] [-i] [-oi] "
         "[-f sender] [-F name] [recipient ...]\n")


class UsageError(Exception):
    pass


class Options:
    def __init__(self) -> None:
        self.config: str | None = None
        self.embedded: str | None = None
        self.extract = False
        self.ignore_dots = False
        self.sender: str | None = None
        self.fullname: str | None = None
        self.recipients: list[str] = []
        self.flush = False
        self.mode = "m"          # -b: m deliver mail, p list the queue, i check aliases


# single-letter flags without an argument that may be joined (-ti); i and t act, the
# others are accepted and ignored as Postfix's sendmail ignores them
_FLAG_LETTERS = frozenset("tivmGxUn")


def parse_args(argv: Sequence[str]) -> Options:
    """sendmail's option syntax: -f/-F/-C take an argument attached or next."""
    opts = Options()
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            i += 1
            break
        if arg in ("--config", "--embedded"):
            if i + 1 >= len(args):
                raise UsageError(f"{arg} needs an argument")
            setattr(opts, arg[2:], args[i + 1])
            i += 2
            continue
        if not arg.startswith("-") or arg == "-":
            break
        if len(arg) > 2 and set(arg[1:]) <= _FLAG_LETTERS:
            # flags joined as getopt joins them: -ti, -it, -tv
            opts.extract = opts.extract or "t" in arg
            opts.ignore_dots = opts.ignore_dots or "i" in arg
            i += 1
            continue
        letter, value = arg[1:2], arg[2:]
        if letter in ("f", "F", "C", "r"):
            if not value:
                i += 1
                if i >= len(args):
                    raise UsageError(f"option -{letter} needs an argument")
                value = args[i]
            if letter in ("f", "r"):
                opts.sender = value
            elif letter == "F":
                opts.fullname = value
            else:
                opts.config = value
        elif arg == "-t":
            opts.extract = True
        elif arg in ("-i", "-oi"):
            opts.ignore_dots = True
        elif letter == "q":
            opts.flush = True   # sendmail -q: run the queue (the daemon's, at once)
        elif arg in ("-bp", "-bi", "-I"):
            opts.mode = "p" if arg == "-bp" else "i"    # mailq, newaliases
        elif letter in ("o", "b", "v", "B", "N", "R", "U", "X", "h", "L", "G", "m", "x", "A", "O",
                        "e", "p", "V"):
            if letter in ("b",) and value not in ("m", ""):
                raise UsageError(f"mode -b{value} is not supported")
            if letter in ("B", "N", "R", "X", "h", "L", "O", "p", "V") and not value:
                i += 1      # these take an argument
            pass
        else:
            raise UsageError(f"unknown option {arg}")
        i += 1
    opts.recipients = args[i:]
    return opts


class TooBig(Exception):
    """The message exceeds the configured size limit ([smtp.limits] max_message_size)."""


def read_message(stream, ignore_dots: bool, max_size: int | None = None) -> bytes:
    """stdin to LF-terminated bytes; without -i a lone "." line ends it.  TooBig as soon
    as more than ``max_size`` bytes were read: the rest is never held in memory."""
    lines = []
    size = 0
    for line in stream:
        if line.endswith(b"\r\n"):
            line = line[:-2] + b"\n"
        elif line.endswith(b"\r"):
            line = line[:-1] + b"\n"
        if not ignore_dots and line in (b".\n", b"."):
            break
        size += len(line)
        if max_size is not None and size > max_size:
            raise TooBig(f"message file too big (limit {max_size} bytes)")
        lines.append(line)
    data = b"".join(lines)
    if data and not data.endswith(b"\n"):
        data += b"\n"
    return data


_FIELD = re.compile(rb"[\x21-\x39\x3b-\x7e]+:")     # RFC 5322 field name and colon


def _split_head(data: bytes) -> tuple[bytes, bytes]:
    """(header, body): the header ends at the empty line, or, as Postfix's cleanup
    reads it, at the first line that is neither a header field nor its continuation
    (``Subject: x`` then text at once, or a first line ``Dear Bob: hi``); an mbox
    ``From `` line in front is dropped.  The body keeps the empty line that starts it."""
    if not data:
        return b"", b"\n"
    if data.startswith(b"From ") and not _FIELD.match(data):
        data = data.partition(b"\n")[2]
    pos = 0
    while pos < len(data):
        end = data.find(b"\n", pos)
        end = len(data) if end < 0 else end + 1
        line = data[pos:end]
        if line in (b"\n", b""):
            return data[:pos], data[pos:]
        if not (_FIELD.match(line) or (pos and line[:1] in (b" ", b"\t"))):
            return data[:pos], b"\n" + data[pos:]
        pos = end
    return data, b""


def header_recipients(head: bytes) -> list[str]:
    msg = BytesHeaderParser(policy=compat32).parsebytes(head)
    # a resent message (RFC 5322 3.6.6) goes to its Resent- recipients, not to the
    # original ones: Postfix's cleanup extracts only those when a Resent- field is there
    resent = "Resent-" if any(k.lower().startswith("resent-") for k in msg.keys()) else ""
    fields = [str(v) for name in ("To", "Cc", "Bcc") for v in (msg.get_all(resent + name) or [])]
    return [addr for _, addr in email.utils.getaddresses(fields) if addr]


def _has(head: bytes, name: bytes) -> bool:
    lname = name.lower() + b":"
    return any(line.lower().startswith(lname) for line in head.splitlines())


def _full_name(opts: Options) -> str:
    """The sender's full name for an added From: when -F gave none: $NAME, else, for
    mail sent as the invoking user (no -f), the password file's GECOS name (its
    first comma-separated field), as sendmail does."""
    name = os.environ.get("NAME", "").strip()
    if name or opts.sender is not None:
        return name
    try:
        gecos = pwd.getpwuid(os.getuid()).pw_gecos
    except KeyError:
        return ""
    return gecos.split(",", 1)[0].strip()


def _login() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def main(argv: Sequence[str]) -> int:
    try:
        opts = parse_args(argv)
    except UsageError as exc:
        sys.stderr.write(f"postroom sendmail: {exc}\n{USAGE}")
        return 64
    from .config import ConfigError
    from .serve import select_config
    try:
        config = select_config(opts.config, opts.embedded)
    except ConfigError as exc:
        sys.stderr.write(f"postroom sendmail: {exc}\n")
        return 78
    if opts.mode == "p":
        from .mailq import mailq_main
        return mailq_main(_config_args(opts))
    if opts.mode == "i":
        if config.maps.aliases is None:
            sys.stderr.write("postroom sendmail: no aliases file configured ([maps] aliases)\n")
            return 64
        from .newaliases import report
        return report(config.maps.aliases)
    if opts.flush and not opts.recipients and not opts.extract:
        from .serve import poke
        poke(config, flush=True)     # no daemon: nothing to run now (it runs at start)
        return 0
    _log_to_file(config.server.log_file)
    stdin = sys.stdin.buffer if sys.stdin is not None else open(0, "rb")
    try:
        data = read_message(stdin, opts.ignore_dots, config.smtp.limits.max_message_size)
    except TooBig as exc:
        # the limit SMTP clients are held to (552 5.3.4), as Postfix's sendmail applies
        # message_size_limit: a permanent error, nothing queued
        sys.stderr.write(f"postroom sendmail: {exc}\n")
        return 65
    return submit(config, opts, data)


def _config_args(opts: Options) -> list[str]:
    """--config/--embedded as given, for a command that selects its configuration
    the same way (mailq)."""
    if opts.embedded is not None:
        return ["--embedded", opts.embedded]
    return ["--config", opts.config] if opts.config is not None else []


def _log_to_file(path) -> None:
    """The from= line goes to the daemon's log file when we may write it (quietly not)."""
    if path is None:
        return
    from .maillog import LOG_FORMAT
    try:
        handler = logging.FileHandler(path, encoding="utf-8")
    except OSError:
        return
    handler.setFormatter(logging.Formatter(LOG_FORMAT, datefmt="%b %d %H:%M:%S"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def submit(config, opts: Options, data: bytes) -> int:
    """Queue ``data`` for ``opts``' recipients; returns the exit status."""
    from .maillog import log_received
    from .maps.names import NameSyntaxError
    from .queue import Envelope, QueueError, RecipientState, Spool
    from .routing import parse_address
    from .serve import poke

    hostname = config.server.hostname
    head, body = _split_head(data)
    recipients = list(opts.recipients)
    if opts.extract:
        recipients += header_recipients(head)
    # Bcc: never travels with the message, -t or not (sendmail and Postfix remove it):
    # every recipient would see the hidden addresses
    head = remove_fields(head, (b"bcc", b"resent-bcc"))
    recipients = [r.strip() for r in recipients if r.strip()]
    # sendmail splits comma-separated argument lists
    recipients = [a for r in recipients for _, a in email.utils.getaddresses([r]) if a] or recipients
    if not recipients:
        sys.stderr.write("postroom sendmail: no recipients\n")
        return 64
    for r in recipients:
        try:
            parse_address(r)
        except NameSyntaxError as exc:
            sys.stderr.write(f"postroom sendmail: {r}: bad address: {exc}\n")
            return 65
    login = _login()
    sender = opts.sender if opts.sender is not None else f"{login}@{hostname}"
    sender = sender.strip()
    if "<" in sender:
        # "-f 'Robot <robot@example.org>'": the address in the brackets (sendmail and
        # Postfix parse it so); "<>" is the null sender
        sender = email.utils.parseaddr(sender)[1] if sender != "<>" else ""
    if sender:
        sender = sender.strip("<>")
        if "@" not in sender:
            sender = f"{sender}@{hostname}"
    now = time.time()
    added = b""
    if not _has(head, b"From"):
        name = opts.fullname or _full_name(opts)
        frm = email.utils.formataddr((name, sender or f"MAILER-DAEMON@{hostname}")) if name \
            else (sender or f"MAILER-DAEMON@{hostname}")
        added += f"From: {frm}\n".encode("utf-8")
    if not _has(head, b"Date"):
        added += f"Date: {email.utils.formatdate(now, localtime=True)}\n".encode()
    msgid = None
    if not _has(head, b"Message-ID"):
        msgid = email.utils.make_msgid(domain=hostname)
        added += f"Message-ID: {msgid}\n".encode()
    else:
        parsed = BytesHeaderParser(policy=compat32).parsebytes(head)
        msgid = str(parsed.get("Message-ID", "")).strip() or None

    try:
        spool = Spool(str(config.server.spool_dir), recover=False)
        msg = spool.new_message()
        with msg:
            received = (f"Received: (from {login}@localhost)\n\tby {hostname} (postroom) "
                        f"id {msg.qid};\n\t{email.utils.formatdate(now, localtime=True)}\n")
            msg.write(received.encode())
            msg.write(head + added)
            msg.write(body if body.startswith(b"\n") or not body else b"\n" + body)
            if not body:
                msg.write(b"\n")
            env = Envelope(sender=sender, recipients=[RecipientState(r) for r in recipients],
                           received_at=now, size=0, client_ip=None, helo="localhost",
                           protocol="local", message_id=msgid)
            env.size = msg.size
            qid = msg.commit(env)
    except (QueueError, OSError) as exc:
        sys.stderr.write(f"postroom sendmail: cannot queue the message: {exc}\n")
        return 75
    log_received(qid, sender=sender, size=env.size, nrcpts=len(recipients), msgid=msgid,
                 relay=f"{login}@localhost")
    poke(config)
    return 0
