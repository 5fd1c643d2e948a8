"""``postroom``: one command, many jobs (sendmail's and procmail's command names).

    postroom deliver ...        the local delivery agent (procmail's command line)
    postroom deliverd [--socket PATH] [--max-children N]   warm server for `deliver`
    postroom explain -u USER MESSAGE   dry run of USER's recipes against MESSAGE
    postroom check RCFILE...    lint procmailrc files
    postroom demo               deliver samples/messages through samples/procmailrc
    postroom serve [--config F | --embedded DIR]   the SMTP daemon and queue runner
    postroom sendmail [-t] [-i] [-f sender] [rcpt ...]   queue a message (sendmail's CLI)
    postroom mailq              list the queue
    postroom queue flush | delete ID | hold ID | release ID
    postroom newaliases         check the aliases file

Subcommands are imported lazily: `postroom deliver` runs once per message and must not
pay for the SMTP server, pyparsing or tomllib.
"""

from __future__ import annotations

import sys
TYPE_CHECKING = False
if TYPE_CHECKING:              # typing costs milliseconds a process; annotations are lazy
    from typing import Callable, Sequence


def _deliver(argv: Sequence[str]) -> int:
    from deliver.cli import main
    return main(argv)


def _deliverd(argv: Sequence[str]) -> int:
    from deliver.deliverd import main
    return main(list(argv))


def _explain(argv: Sequence[str]) -> int:
    from deliver.explain import main
    return main(argv)


def _check(argv: Sequence[str]) -> int:
    from rules.check import main
    return main(argv)


def _demo(argv: Sequence[str]) -> int:
    from mta.demo import main
    return main(argv)


def _serve(argv: Sequence[str]) -> int:
    from mta.serve import main
    return main(argv)


def _sendmail(argv: Sequence[str]) -> int:
    from mta.sendmail import main
    return main(argv)


def _mailq(argv: Sequence[str]) -> int:
    from mta.mailq import mailq_main
    return mailq_main(argv)


def _queue(argv: Sequence[str]) -> int:
    from mta.mailq import queue_main
    return queue_main(argv)


def _newaliases(argv: Sequence[str]) -> int:
    from mta.newaliases import main
    return main(list(argv))


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "deliver": _deliver,
    "deliverd": _deliverd,
    "explain": _explain,
    "check": _check,
    "demo": _demo,
    "serve": _serve,
    "sendmail": _sendmail,
    "mailq": _mailq,
    "queue": _queue,
    "newaliases": _newaliases,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        sys.stdout.write(__doc__ or "")
        return 0 if args else 64
    command = COMMANDS.get(args[0])
    if command is None:
        sys.stderr.write(f"postroom: unknown command {args[0]!r}; try 'postroom help'\n")
        return 64
    return command(args[1:])


if __name__ == "__main__":
    sys.exit(main())
