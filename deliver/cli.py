"""``postroom deliver``: procmail's command line, as a drop-in for procmail.

    postroom deliver [-ptoY] [-f fromwhom] [parameter=value | rcfile] ...
    postroom deliver [-toY] [-f fromwhom] [-a argument] ... -d recipient ...
    postroom deliver [-ptY] -m [parameter=value] ... rcfile [argument] ...
    postroom deliver --explain [same arguments]     dry run: what each recipe would do

The mail is read from stdin.  This ``main`` is the only place in deliver/ that catches
and exits: typed errors become their sysexits code, and anything unexpected exits 75
(EX_TEMPFAIL) so the MTA retries instead of losing the mail.

It imports only what a delivery needs (no pyparsing when the rc cache is warm, no email
package): `python -X importtime -m mta.cli deliver` is how to keep it that way.
"""

from __future__ import annotations

import io
import logging
import os
import signal
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:              # typing costs milliseconds a process; annotations are lazy
    from typing import Sequence

from .agent import Invocation
from .exitcodes import ExitCode
from .fromline import invoker_name
from .osnames import internal

USAGE = """\
Usage: postroom deliver [-vptoYm] [-f fromwhom] [-a argument] [parameter=value | rcfile] ...
   Or: postroom deliver [-toY] [-f fromwhom] [-a argument] ... -d recipient ...
   Or: postroom deliver --explain [arguments as above]
"""

PROCMAIL_USAGE = """\
Usage: procmail [-vptoY] [-f fromwhom] [parameter=value | rcfile] ...
   Or: procmail [-toY] [-f fromwhom] [-a argument] ... -d recipient ...
   Or: procmail [-ptY] [-f fromwhom] -m [parameter=value] ... rcfile [arg] ...
   Or: procmail [-toY] [-a argument] ... -z
"""

log = logging.getLogger("postroom.deliver")


class UsageError(Exception):
    pass


class _Refused(Exception):
    """A command line procmail refuses with its own line and exit status (no usage):
    ``-z`` (LMTP on stdin, which this agent does not speak) and ``-m`` without an rcfile."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _is_assignment(arg: str) -> bool:
    """procmail's asenvcpy(): any argument with an "=" in it is an assignment, whatever
    stands before it (``1x=y`` sets "1x"; ``=foo`` sets the empty name, which postroom
    drops: no rc file can read it), never an rc file name."""
    return "=" in arg


def parse_args(argv: Sequence[str]) -> tuple[Invocation, bool]:
    """procmail's option syntax: clustered flags, -f/-a with attached or next argument,
    options end at the first non-option; -d takes every remaining argument."""
    inv = Invocation()
    explain = False
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--explain":
            explain = True
            i += 1
            continue
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-") or arg == "-":
            break
        j = 1
        while j < len(arg):
            ch = arg[j]
            if ch == "-":
                # "--word": procmail's '-' case takes what follows as an unknown cluster
                inv.unknown_options.append(arg[j + 1:])
                break
            if ch in "fra":
                value = arg[j + 1:]
                if not value:
                    i += 1
                    if i >= len(args):
                        # procmail says so and goes on without the option (a mailer
                        # line "procmail -f $sender" with an empty sender still delivers)
                        inv.missing_values.append("Missing argument" if ch == "a" else "Missing name")
                        break
                    value = args[i]
                if ch == "a":
                    inv.positional.append(value)
                else:
                    inv.sender = value
                break
            if ch == "p":
                inv.preserve_env = True
            elif ch == "t":
                inv.tempfail = True
            elif ch == "o":
                inv.override_from = True
            elif ch == "Y":
                inv.berkeley = True
            elif ch == "m":
                inv.mailfilter = True
            elif ch == "z":
                # an LMTP client would have its protocol taken for a mail
                raise _Refused("LMTP support not enabled in this binary", ExitCode.USAGE)
            elif ch == "d":
                value = arg[j + 1:]
                inv.delivery_mode = True
                rest = ([value] if value else []) + args[i + 1:]
                if not rest:
                    raise UsageError("option -d needs a recipient")
                inv.recipients = rest
                if inv.mailfilter or inv.preserve_env:
                    # procmail: "Conflicting options"; -d wins over -m and -p both
                    inv.conflicting = True
                    inv.mailfilter = inv.preserve_env = False
                return inv, explain
            elif ch == "v":
                raise _Version()
            elif ch in "h?":
                raise UsageError("")
            else:
                # procmail complains about the rest of the cluster and goes on with
                # the next argument: "-Qt" sets no -t
                inv.unknown_options.append(arg[j:])
                break
            j += 1
        i += 1
    rest = args[i:]
    if inv.mailfilter:
        if inv.positional:               # procmail: "Conflicting options", -a is dropped
            inv.conflicting = True
            inv.positional = []
        while rest and _is_assignment(rest[0]):
            name, _, value = rest.pop(0).partition("=")
            if name:
                inv.assignments.append((name, value))
        if not rest:
            raise _Refused("Missing rcfile", ExitCode.NOINPUT)
        inv.rcfiles = [rest[0]]
        inv.positional.extend(rest[1:])
        return inv, explain
    for arg in rest:
        if _is_assignment(arg):
            name, _, value = arg.partition("=")
            if name:
                inv.assignments.append((name, value))
        else:
            inv.rcfiles.append(arg)
    return inv, explain


class _Version(Exception):
    pass


def _load_rc(path: str):
    from rules.cache import load_rc
    return load_rc(path)


class MessageTooLarge(Exception):
    """The mail on stdin is larger than the site's max_message_size."""


def _read_stdin(limit: int) -> bytes:
    """The whole mail, held once.  The blocks go into one growing buffer (io.BytesIO
    grows it in place, and getvalue() hands that buffer over without a copy), so a
    50 MB mail never occupies 100 MB here as a list of blocks plus their join would.
    More than ``limit`` bytes is an error, never a silent truncation."""
    fd = sys.stdin.fileno() if sys.stdin is not None else 0
    buf = io.BytesIO()
    size = 0
    while True:
        block = os.read(fd, 1 << 20)
        if not block:
            break
        size += len(block)
        if size > limit:
            raise MessageTooLarge(f"message larger than {limit} bytes (max_message_size)")
        buf.write(block)
    return buf.getvalue()


def _site():
    from .settings import load_site
    return load_site(os.environ)


def run(argv: Sequence[str]) -> int:
    from .identity import IdentityError, current_user, lookup_user
    try:
        # procmail's arguments are bytes: as latin-1 text here (deliver.osnames)
        inv, explain = parse_args([internal(a) for a in argv])
        if inv.delivery_mode:
            inv.invoker = invoker_name()     # before -d drops privileges
    except _Version:
        from .agent import PROCMAIL_VERSION
        sys.stdout.write(f"postroom deliver (procmail {PROCMAIL_VERSION} compatible)\n")
        return ExitCode.OK
    except UsageError as err:
        if str(err):
            sys.stderr.write(f"postroom deliver: {err}\n")
        sys.stderr.write(USAGE)
        return ExitCode.USAGE
    except _Refused as err:
        sys.stderr.write(f"procmail: {err}\n")
        return err.status
    for complaint in inv.missing_values:
        sys.stderr.write(f"procmail: {complaint}\n")
    if inv.conflicting:
        sys.stderr.write("procmail: Conflicting options\n" + PROCMAIL_USAGE)
    for cluster in inv.unknown_options:
        # procmail's exact complaint: scripts and tests that compare stderr rely on it.
        sys.stderr.write(f'procmail: Unrecognised options: "{cluster}"\n'
                         + PROCMAIL_USAGE + "Processing continued\n")
    site = _site()
    caller_env = {internal(k): internal(v) for k, v in os.environ.items()}
    # The mail travels in a one-element list that its last user pops, so no caller's frame
    # keeps a 50 MB mail alive while the agent works on its own prepared copy.
    try:
        mail = [_read_stdin(site.max_message_size)]
    except MessageTooLarge as err:
        sys.stderr.write(f"postroom deliver: {err}\n")
        return ExitCode.DATAERR
    if inv.delivery_mode:
        # procmail forks a child for each recipient but the last, which it delivers
        # itself: its exit status is the last one's, unless a child failed, and then
        # its own default failure (73, or 75 under -t) whatever the child's status.
        # An unknown last recipient returns EX_NOUSER from main() at once, past the
        # Terminate() that would report a failed child
        child_failed = False
        code: int = ExitCode.OK
        last = len(inv.recipients) - 1
        for index, name in enumerate(inv.recipients):
            try:
                user = lookup_user(name)
            except IdentityError as err:
                sys.stderr.write(f"procmail: {err}\n")
                if index == last:
                    return err.code
                code = err.code
            else:
                code = _deliver_forked(inv, mail if index == last else [mail[0]], user, site,
                                       caller_env, explain)
            if index < last and code != ExitCode.OK:
                child_failed = True
        if child_failed:
            return ExitCode.TEMPFAIL if inv.tempfail else ExitCode.CANTCREAT
        return code
    if os.geteuid() == 0 and not explain:
        sys.stderr.write("postroom deliver: refusing to run recipes as root; use -d USER\n")
        return ExitCode.NOPERM
    user = current_user()
    return _deliver(inv, mail, user, site, caller_env, explain)


def _deliver_forked(inv: Invocation, mail: list[bytes], user, site, caller_env, explain: bool) -> int:
    """-d: one child per recipient, so that dropping privileges for one recipient does
    not affect the next (procmail forks the same way)."""
    from .identity import IdentityError, drop_privileges, prepare_spool_mailbox
    if os.geteuid() != 0:
        try:
            drop_privileges(user, site.spool_dir)
        except IdentityError as err:
            sys.stderr.write(f"procmail: {err}\n")
            return err.code
        return _deliver(inv, mail, user, site, caller_env, explain)
    if len(inv.recipients) == 1:
        try:
            if not explain:
                prepare_spool_mailbox(user, site.spool_dir)
            drop_privileges(user, site.spool_dir)
        except IdentityError as err:
            sys.stderr.write(f"procmail: {err}\n")
            return err.code
        return _deliver(inv, mail, user, site, caller_env, explain)
    pid = os.fork()
    if pid == 0:
        code = ExitCode.TEMPFAIL
        try:
            if not explain:
                prepare_spool_mailbox(user, site.spool_dir)
            drop_privileges(user, site.spool_dir)
            code = _deliver(inv, mail, user, site, caller_env, explain)
        except IdentityError as err:
            sys.stderr.write(f"procmail: {err}\n")
            code = err.code
        except BaseException:  # noqa: BLE001 - the child must exit, never return
            log.exception("delivery to %s failed", user.name)
        finally:
            os._exit(int(code))
    _, wstatus = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(wstatus) if os.WIFEXITED(wstatus) else ExitCode.TEMPFAIL


def _deliver(inv: Invocation, mail: list[bytes], user, site, caller_env, explain: bool) -> int:
    """Deliver ``mail.pop()``: the list is emptied, the agent holds the only reference."""
    from .agent import Agent
    if explain:
        from .explain import explain_delivery
        return explain_delivery(inv, mail.pop(), user, site, caller_env, _load_rc, sys.stdout)
    agent = Agent(user, site, load_rc=_load_rc)
    _catch_signals()
    outcome = agent.run(inv, mail.pop(), caller_env)
    return int(outcome.status)


# What a signal to the delivering process does, as in procmail: SIGTERM requeues the
# mail (75), SIGHUP and SIGINT bounce it (73), each after "Terminating prematurely";
# SIGQUIT, which procmail takes as "lose the mail" (exit 0), requeues it here (README,
# deliberate differences).  SIGUSR1/SIGUSR2 (procmail's verbose switch) and SIGALRM
# (its own timer) do not end the delivery.
_REQUEUE = (signal.SIGTERM, signal.SIGQUIT)
_BOUNCE = (signal.SIGHUP, signal.SIGINT)
_IGNORED = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM)


def _catch_signals() -> None:
    """Install the handlers above for this delivery: the first signal raises
    deliver.errors.Terminated where the delivery is (the agent logs it and unwinds its
    locks); later ones do nothing while it does."""
    from .errors import Terminated

    ended: list[int] = []

    def end(signum: int, _frame: object) -> None:
        if not ended:
            ended.append(signum)
            raise Terminated(signum, requeue=signum in _REQUEUE)

    def ignore(_signum: int, _frame: object) -> None:
        """A handler, not SIG_IGN: an ignored signal would stay ignored in the programs
        the recipes run (exec keeps SIG_IGN), a handler is reset by exec."""

    for sig in _REQUEUE + _BOUNCE:
        signal.signal(sig, end)
    for sig in _IGNORED:
        signal.signal(sig, ignore)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; the one place that maps every failure to an exit status."""
    from .errors import Terminated
    try:
        return run(sys.argv[1:] if argv is None else argv)
    except Terminated as sig:
        # a signal before the agent's rc loop or after it (the mail prepared, TRAP
        # running): no abstract to write, but the status is the signal's, never 1
        return ExitCode.TEMPFAIL if sig.requeue else ExitCode.CANTCREAT
    except KeyboardInterrupt:
        return ExitCode.TEMPFAIL
    except Exception:  # noqa: BLE001 - anything unexpected must leave the mail queued
        log.exception("postroom deliver: unexpected error; exiting 75 so the mail is retried")
        sys.stderr.write("postroom deliver: internal error, mail deferred (75)\n")
        return ExitCode.TEMPFAIL
