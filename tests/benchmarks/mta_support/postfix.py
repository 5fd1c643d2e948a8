"""mta_support.postfix — a throw-away Postfix instance on 127.0.0.1 for the benchmark.

DESCRIPTION
    ``ensure_postfix()`` installs Debian's ``postfix`` (it also brings smtp-source) when
    it is missing and we are root, with services kept from starting (policy-rc.d), and
    stops a system instance if one is running, so nothing listens on port 25 afterwards.

    ``PostfixInstance(base, port, user, procmail_rc=None)`` writes its own
    config_directory, queue_directory and data_directory under ``base``; it listens on
    127.0.0.1:port only (inet_interfaces = loopback), delivers ``user@localhost`` with
    local(8) into ``base/mail/USER`` (an mbox in a 1777 spool directory), and with
    ``procmail_rc`` runs ``procmail`` as mailbox_command with that rcfile and DEFAULT
    pointing at the same mbox.  local(8) runs the command as the recipient, so procmail
    runs unprivileged.  No chroot, no aliases, no proxymap.

ERRORS
    BenchError when Postfix cannot be installed, configured or started (postfix's own
    message is included).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import time
from pathlib import Path

from .measure import BenchError

__all__ = ["ensure_postfix", "PostfixInstance"]

POLICY_RC = Path("/usr/sbin/policy-rc.d")

MASTER_CF = """\
# service type  private unpriv  chroot  wakeup  maxproc command
{port} inet  n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def ensure_postfix() -> None:
    """Install postfix (for smtp-source and the reference) without leaving it running."""
    if shutil.which("smtp-source") and Path("/usr/lib/postfix/sbin/master").exists():
        _stop_system_instance()
        return
    if os.geteuid() != 0:
        raise BenchError("postfix is not installed and we are not root: apt-get install postfix")
    made_policy = not POLICY_RC.exists()
    if made_policy:   # keep invoke-rc.d from starting the system instance on port 25
        POLICY_RC.write_text("#!/bin/sh\nexit 101\n")
        POLICY_RC.chmod(0o755)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        subprocess.run(["debconf-set-selections"], input=b"postfix postfix/main_mailer_type select No configuration\n",
                       check=False, env=env)
        for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "postfix"]):
            proc = subprocess.run(argv, env=env, capture_output=True)
            if proc.returncode != 0 and argv[1] == "install":
                raise BenchError(f"apt-get install postfix failed: {proc.stderr.decode(errors='replace')[-500:]}")
    finally:
        if made_policy:
            POLICY_RC.unlink()
    _stop_system_instance()


def _stop_system_instance() -> None:
    """Stop and disable a system Postfix if the package started one."""
    if subprocess.run(["postfix", "status"], capture_output=True).returncode == 0:
        subprocess.run(["postfix", "stop"], capture_output=True)
    if shutil.which("systemctl") and Path("/run/systemd/system").exists():
        subprocess.run(["systemctl", "disable", "--now", "postfix"], capture_output=True)
    elif shutil.which("update-rc.d"):
        subprocess.run(["update-rc.d", "postfix", "disable"], capture_output=True)


class PostfixInstance:
    """See the module docstring."""

    def __init__(self, base: Path, port: int, user: str, procmail_rc: Path | None = None) -> None:
        self.base = base
        self.port = port
        self.user = user
        self.conf = base / "etc"
        self.queue = base / "queue"
        self.data = base / "data"
        self.spool = base / "mail"
        self.mailbox = self.spool / user
        self.procmail_rc = procmail_rc
        self.started = False

    def setup(self) -> None:
        pw = pwd.getpwnam(self.user)
        for d in (self.conf, self.queue, self.data):
            d.mkdir(parents=True, exist_ok=True)
        self.spool.mkdir(parents=True, exist_ok=True)
        self.spool.chmod(0o1777)
        shutil.chown(self.data, "postfix", "postfix")
        mailbox_command = ""
        if self.procmail_rc is not None:
            pmdir = self.procmail_rc.parent
            shutil.chown(pmdir, pw.pw_uid, pw.pw_gid)
            shutil.chown(self.procmail_rc, pw.pw_uid, pw.pw_gid)
            mailbox_command = (f"/usr/bin/procmail DEFAULT={self.mailbox} "
                               f"MAILDIR={pmdir} {self.procmail_rc}")
        main_cf = f"""\
compatibility_level = 3.6
config_directory = {self.conf}
queue_directory = {self.queue}
data_directory = {self.data}
meta_directory = /etc/postfix
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = bench.localdomain
mydomain = localdomain
myorigin = localhost
mydestination = localhost
mynetworks = 127.0.0.0/8
relayhost =
alias_maps =
alias_database =
local_recipient_maps = unix:passwd.byname
mail_spool_directory = {self.spool}
mailbox_command = {mailbox_command}
maillog_file_prefixes = {self.base}
maillog_file = {self.base}/maillog
smtputf8_enable = no
biff = no
smtpd_banner = $myhostname ESMTP
"""
        (self.conf / "main.cf").write_text(main_cf)
        (self.conf / "master.cf").write_text(MASTER_CF.format(port=f"127.0.0.1:{self.port}"))
        subprocess.run(["postfix", "-c", str(self.conf), "set-permissions"], capture_output=True)
        self._postfix("check")

    def start(self) -> None:
        self._postfix("start")
        self.started = True
        deadline = time.monotonic() + 20
        import socket
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.recv(100)
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise BenchError(f"postfix did not start listening on port {self.port}; see {self.base}/maillog")
                time.sleep(0.05)

    def stop(self) -> None:
        if self.started:
            subprocess.run(["postfix", "-c", str(self.conf), "stop"], capture_output=True)
            self.started = False

    def _postfix(self, command: str) -> None:
        proc = subprocess.run(["postfix", "-c", str(self.conf), command], capture_output=True)
        if proc.returncode != 0:
            raise BenchError(f"postfix {command}: {proc.stderr.decode(errors='replace')[-800:]}")
