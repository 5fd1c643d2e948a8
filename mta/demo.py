"""``postroom demo``: deliver samples/messages/* through samples/procmailrc.

The embedded demo that `make run` starts until the SMTP server exists: every sample
message goes through the same delivery agent a real delivery uses (in-process, as the
invoking user), with MAILDIR under ./var/mail, and the demo prints where each one went.
"""

from __future__ import annotations

import glob
import os
import sys
from typing import Sequence


def main(argv: Sequence[str]) -> int:
    from deliver.agent import Agent, Invocation, Site
    from deliver.identity import current_user
    from rules.cache import load_rc

    root = os.path.abspath(argv[0] if argv else ".")
    samples = os.path.join(root, "samples")
    var_mail = os.path.join(root, "var", "mail")
    folders = os.path.join(var_mail, "demo-folders")
    os.makedirs(folders, exist_ok=True)
    rcfile = os.path.join(samples, "procmailrc")
    user = current_user()
    site = Site(system_rc=None, spool_dir=var_mail)
    messages = sorted(glob.glob(os.path.join(samples, "messages", "*.eml")))
    if not messages:
        sys.stderr.write(f"postroom demo: no messages in {samples}/messages\n")
        return 66
    cwd = os.getcwd()
    for path in messages:
        with open(path, "rb") as fh:
            raw = fh.read()
        inv = Invocation(sender="demo-sender@example.org", rcfiles=[rcfile],
                         assignments=[("MAILDIR", folders), ("DEFAULT", os.path.join(var_mail, "demo"))])
        outcome = Agent(user, site, load_rc=load_rc).run(inv, raw, dict(os.environ))
        os.chdir(cwd)
        where = outcome.lastfolder if outcome.delivered else f"NOT delivered (exit {int(outcome.status)})"
        sys.stdout.write(f"{os.path.basename(path):<18} -> {where}\n")
    sys.stdout.write(f"\nmailboxes are under {var_mail}; the log is {folders}/procmail.log\n")
    return 0
