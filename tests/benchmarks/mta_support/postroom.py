"""mta_support.postroom — a throw-away ``postroom serve`` on 127.0.0.1 for the benchmark.

DESCRIPTION
    ``PostroomInstance(base, port, user, rc, python=, repo=)`` writes a postroom.toml under
    ``base/etc`` (listener 127.0.0.1:port, everything else under ``base/var``), a users
    file naming ``user`` with its real uid/gid and a home in ``base/home``, and ``rc`` as
    that home's .procmailrc.  ``start()`` runs ``python -m mta.cli serve --config ...``
    as ``user`` when we are root (so recipes never run as root and no privilege drop is
    needed), otherwise as ourselves.  The mailbox is ``base/var/mail/USER``.

ERRORS
    BenchError when the daemon exits or does not listen within 30 s (its log is quoted).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from pathlib import Path

from .measure import BenchError

__all__ = ["PostroomInstance"]


class PostroomInstance:
    """See the module docstring."""

    def __init__(self, base: Path, port: int, user: str, rc: Path, *, python: str, repo: Path,
                 extra_args: tuple[str, ...] = ()) -> None:
        self.base = base
        self.port = port
        self.user = user
        self.rc = rc
        self.python = python
        self.repo = repo
        self.extra_args = extra_args
        self.mailbox = base / "var" / "mail" / user
        self.log = base / "var" / "log" / "postroom.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.as_root = os.geteuid() == 0

    def setup(self) -> None:
        pw = pwd.getpwnam(self.user) if self.as_root else pwd.getpwuid(os.getuid())
        etc, home = self.base / "etc", self.base / "home"
        for d in (etc, home, self.base / "var"):
            d.mkdir(parents=True, exist_ok=True)
        (etc / "postroom.toml").write_text(f"""\
[server]
hostname = "bench.localdomain"
data_dir = "{self.base / 'var'}"
log_file = "{self.log}"

[smtp]
listeners = ["127.0.0.1:{self.port}"]

[maps]
users = "users"

[deliver]
system_rc = "procmailrc"
mail_spool = "{self.base / 'var' / 'mail'}"
run_as_root_drop = false
""")
        (etc / "users").write_text(f"{self.user}:x:{pw.pw_uid}:{pw.pw_gid}::{home}:/bin/sh\n")
        (home / ".procmailrc").write_bytes(self.rc.read_bytes())
        (home / ".procmailrc").chmod(0o644)
        if self.as_root:
            for dirpath, dirnames, filenames in os.walk(self.base):
                for name in [dirpath, *(os.path.join(dirpath, f) for f in dirnames + filenames)]:
                    shutil.chown(name, pw.pw_uid, pw.pw_gid)

    def start(self) -> None:
        argv = [self.python, "-m", "mta.cli", "serve", "--config", str(self.base / "etc" / "postroom.toml"),
                "--no-stderr", *self.extra_args]
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(self.base / "home"),
               "PYTHONPATH": str(self.repo), "LANG": "C.UTF-8"}
        kwargs: dict = {}
        if self.as_root:
            kwargs = {"user": self.user, "group": self.user, "extra_groups": []}
        stderr = open(self.base / "serve.stderr", "wb")
        with stderr:
            self.proc = subprocess.Popen(argv, cwd=self.base, env=env, stdout=subprocess.DEVNULL,
                                         stderr=stderr, **kwargs)
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise BenchError(f"postroom serve exited {self.proc.returncode}: "
                                 f"{(self.base / 'serve.stderr').read_text(errors='replace')[-800:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.recv(100)
                    s.sendall(b"QUIT\r\n")
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise BenchError(f"postroom serve did not listen on port {self.port}")
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
