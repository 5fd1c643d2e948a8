"""The local delivery agent: one mail, one recipient, procmail's whole run.

What it does, in procmail's order: prepare the mail (From_ line per -f/-o), build the
environment procmail presets (HOME, SHELL, LOGNAME from the user's passwd entry, ORGMAIL,
DEFAULT, SHELLMETAS ...; only TZ survives from the caller unless -p), apply command-line
assignments, choose the rc files (the given ones, or in delivery mode the system rc then
~/.procmailrc), refuse rc files that others could have written, run the evaluator, then
fall back to $DEFAULT and $ORGMAIL, log the abstract, run TRAP and settle the exit code.

``Agent.run_many`` delivers a batch of mails with one group commit (deliver.groupcommit):
a mail is durable when its outcome is returned, and the outcomes come after one sync.

Guarantees:
  * The exit status is a sysexits code: 0 delivered, 73 (75 with -t) when nothing could
    be written, EXITCODE when the rc sets it.  An unexpected exception is the caller's to
    map to 75 (deliver.cli does), so mail is retried, never lost.
  * Nothing here changes identity: the caller has already dropped to the recipient
    (deliver.identity) before any user file is opened.

Deliberate differences from procmail (README, "Differences"): DELIVERED=yes does not
fork and pretend success; HOST mismatch with no further rc file still delivers to
$DEFAULT instead of silently dropping the mail; the system rc never runs as root.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass, field
from typing import Callable, Iterable

from rules.ast import RcFile
from rules.envint import renvint
from rules.evaluator import End, Evaluator
from rules.message import Message

from . import procinfo
from .effects import RealEffects, format_abstract
from .errors import Terminated
from .exitcodes import ExitCode
from .fromline import TRUSTED_IDS, prepare_message
from .groupcommit import GroupCommit
from .mbox import tighten_spool_mailbox
from .osnames import for_os, internal

_log = logging.getLogger(__name__)

PROCMAIL_VERSION = "3.23pre"
SHELLMETAS = "&|<>~;?*["


@dataclass(frozen=True, slots=True)
class User:
    """The recipient, from passwd or postroom's users file."""

    name: str
    uid: int
    gid: int
    home: str
    shell: str = "/bin/sh"


@dataclass(slots=True)
class Invocation:
    """procmail's command line, parsed (deliver.cli)."""

    sender: str | None = None          # -f / -r
    override_from: bool = False        # -o
    berkeley: bool = False             # -Y
    tempfail: bool = False             # -t
    preserve_env: bool = False         # -p
    mailfilter: bool = False           # -m
    delivery_mode: bool = False        # -d
    recipients: list[str] = field(default_factory=list)
    positional: list[str] = field(default_factory=list)   # -a, or -m's extra arguments
    assignments: list[tuple[str, str]] = field(default_factory=list)
    rcfiles: list[str] = field(default_factory=list)
    # the rest of each option cluster from a letter procmail does not know: it
    # complains about that much and carries on with the next argument
    unknown_options: list[str] = field(default_factory=list)
    # "-f" or "-a" as the last argument: procmail's complaint, and it goes on without it
    missing_values: list[str] = field(default_factory=list)
    conflicting: bool = False          # -m with -d or -a: procmail says so and goes on
    # who ran us (the real uid's login name, taken before -d drops privileges): the
    # From_ line procmail makes up names it, and -d by a user it does not trust marks
    # the From_ line (deliver.fromline); None: the recipient (the MTA's own deliveries)
    invoker: str | None = None


@dataclass(frozen=True, slots=True)
class Site:
    """Site-wide settings (postroom.toml [deliver], or procmail's compiled-in values)."""

    system_rc: str | None = "/etc/procmailrc"
    spool_dir: str = "/var/mail"
    user_rc: str = ".procmailrc"
    sendmail: str = "/usr/sbin/sendmail"
    # procmail has no limit; a delivery agent must not be made to hold any amount of mail
    max_message_size: int = 1 << 30
    # what $0 expands to: procmail gives its own argv[0], which a recipe may run again
    program: str = "postroom deliver"


@dataclass(slots=True)
class Outcome:
    status: ExitCode | int
    delivered: bool
    lastfolder: str = ""
    trace: list = field(default_factory=list)


_BASE_PATH = "/usr/local/bin:/usr/bin:/bin"     # procmail's DEFpath, after $HOME/bin


def initial_environment(user: User, inv: Invocation, site: Site,
                        caller_env: dict[str, str]) -> dict[str, str]:
    """The variables procmail presets (procmailrc(5) "Environment variable defaults")."""
    env: dict[str, str] = dict(caller_env) if inv.preserve_env else {}
    if not inv.preserve_env and "TZ" in caller_env:
        env["TZ"] = caller_env["TZ"]
    for name in ("IFS", "ENV", "PWD"):      # procmail's PRESTENV
        env.pop(name, None)
    # the user's names as the rc sees them: latin-1 text of their bytes (deliver.osnames)
    home, name = internal(user.home), internal(user.name)
    orgmail = internal(os.path.join(site.spool_dir, user.name))
    env.update({
        "HOME": home,
        "LOGNAME": name,
        "SHELL": internal(user.shell) or "/bin/sh",
        "PATH": f"{home}/bin:{_BASE_PATH}",
        "SHELLMETAS": SHELLMETAS,
        "SHELLFLAGS": "-c",
        "ORGMAIL": orgmail,
        "DEFAULT": orgmail,
        "MSGPREFIX": "msg.",
        "SENDMAIL": site.sendmail,
        "SENDMAILFLAGS": "-oi",
        "HOST": procinfo.nodename(),    # gethostname(2) is uname's nodename
        "LOCKEXT": ".lock",
        "LINEBUF": "2048",
        "PROCMAIL_VERSION": PROCMAIL_VERSION,
    })
    if inv.preserve_env and not inv.mailfilter:
        # procmail clears these two unless -p comes with -m: a caller's EXITCODE or
        # LASTFOLDER must not decide this delivery's exit status or $LASTFOLDER
        env.pop("LASTFOLDER", None)
        env.pop("EXITCODE", None)
    if inv.rcfiles and not inv.preserve_env:
        env["COMSAT"] = "no"
    if inv.mailfilter:
        # procmail -m unsets ORGMAIL and empties its own copy of DEFAULT (fdefault);
        # $DEFAULT still reads as set, and only an assignment makes it a destination
        # (Agent._fallback, Evaluator.default_assigned)
        env.pop("ORGMAIL", None)
    return env


def rcfile_is_safe(path: str, user: User, *, default_rc: bool) -> bool:
    """procmail's check for absolute and HOME-relative rc files: owned by the user or
    root, not world-writable (nor group-writable for ~/.procmailrc), in a directory that
    others cannot both write and search (nor its group, for ~/.procmailrc) unless
    sticky."""
    try:
        st = os.stat(path)
        dst = os.stat(os.path.dirname(os.path.abspath(path)) or "/")
    except OSError:
        return True   # unreadable: reported as "Couldn't read" by the loader
    if path == os.devnull:
        return True
    if st.st_uid not in (user.uid, 0) or st.st_mode & stat.S_IWOTH:
        return False
    if default_rc and st.st_mode & stat.S_IWGRP and st.st_gid != user.gid:
        return False
    # the directory: procmail objects to one that others can write *and* search (a
    # default rc: also its group, unless the user's), unless it is sticky
    if dst.st_mode & stat.S_ISVTX:
        return True
    others = stat.S_IWOTH | stat.S_IXOTH
    group = stat.S_IWGRP | stat.S_IXGRP
    if dst.st_mode & others == others:
        return False
    if default_rc and dst.st_mode & group == group and dst.st_gid != user.gid:
        return False
    return True


def system_rc_is_safe(path: str) -> bool:
    """The system rc file runs for every recipient: only root may be able to change it
    (owned by root, no write bit for others, nor for a group other than root's, in a
    directory others cannot write unless it is sticky).  procmail runs a world-writable
    /etc/procmailrc as it finds it, so any user could run commands as every other one;
    postroom says "Suspicious rcfile" and goes on with the user's own."""
    try:
        st = os.stat(path)
        dst = os.stat(os.path.dirname(os.path.abspath(path)) or "/")
    except OSError:
        return True   # absent or unreadable: reported as procmail does by the loader
    if path == os.devnull:
        return True
    if st.st_uid != 0 or st.st_mode & stat.S_IWOTH or (st.st_mode & stat.S_IWGRP and st.st_gid != 0):
        return False
    return bool(dst.st_mode & stat.S_ISVTX) or not dst.st_mode & stat.S_IWOTH


class Agent:
    """Runs one delivery.  ``load_rc`` turns a path into an RcFile (the cached loader in
    production, rules.parser directly in tests)."""

    def __init__(self, user: User, site: Site, *, load_rc: Callable[[str], RcFile],
                 effects: RealEffects | None = None, stderr_fd: int = 2) -> None:
        self.user = user
        self.site = site
        self.load_rc = load_rc
        self.effects = effects or RealEffects(stderr_fd=stderr_fd, uid=user.uid, rc_loader=load_rc)
        self._stderr_fd = stderr_fd
        # the per-recipe trace costs a record per condition: made only for --explain
        self.tracing = False
        self._fresh_own_effects = effects is None     # made here and not used yet
        # the rc files after the one running now: where a c block's clone goes on
        # after a HOST mismatch, as procmail's clone opens its next rc file
        self._rcs_after: list[tuple[str, str]] = []
        self._mailfilter = False           # this run is procmail -m's
        self._rc_failed = False
        self._system_rc_opened = False
        self._preserve_env = False

    # ------------------------------------------------------------------ rc files

    def _rc_candidates(self, inv: Invocation) -> list[tuple[str, str]]:
        """(path, kind) in order; kind is 'given', 'cwd' (./x), 'system' or 'default'."""
        if inv.rcfiles:
            out = []
            for rc in inv.rcfiles:
                if rc.startswith("/") or not rc:     # procmail opens "" as it is
                    out.append((rc, "given"))
                elif inv.mailfilter or rc.startswith("./"):
                    out.append((rc, "cwd"))
                else:
                    out.append((os.path.join(internal(self.user.home), rc), "given"))
            return out
        out = []
        if inv.delivery_mode and self.site.system_rc:
            out.append((self.site.system_rc, "system"))
        out.append((internal(os.path.join(self.user.home, self.site.user_rc)), "default"))
        return out

    def _open_rc(self, path: str, kind: str) -> RcFile | None:
        """The rc file, or None after logging why not.  Of the command line's rc files
        only the first that fails is said to be unreadable: procmail's findrc loop
        clears its suppmunreadable after one."""
        cmdline = kind in ("given", "cwd")
        say = not cmdline or not self._rc_failed
        if kind in ("given", "default") and \
                not rcfile_is_safe(for_os(path), self.user, default_rc=kind == "default") \
                or kind == "system" and not system_rc_is_safe(for_os(path)):
            self.effects.log(f'procmail: Suspicious rcfile "{path}"\n'
                             + (f'procmail: Couldn\'t read "{path}"\n' if say else ""))
            self._rc_failed = self._rc_failed or cmdline
            return None
        try:
            return self.load_rc(for_os(path))
        except IsADirectoryError:
            # procmail opens a directory without complaint and reads its end at once:
            # an rc file with nothing in it (and the later rc files are not tried)
            return RcFile(path, ())
        except OSError:
            if cmdline and say:
                self.effects.log(f'procmail: Couldn\'t read "{path}"\n')
            self._rc_failed = self._rc_failed or cmdline
            return None

    # ------------------------------------------------------------------ the run

    def run_many(self, jobs: Iterable[tuple[Invocation, bytes, dict[str, str]]]) -> list[Outcome]:
        """Deliver several mails in a row with one group commit (deliver.groupcommit).

        Each job is what ``run`` takes; each is delivered exactly as ``run`` would (fresh
        RealEffects per mail, the agent's own ``effects`` are not used), except that the
        fsyncs are deferred to one sync of the touched file systems after the last mail
        and the lock claim files are reused.  The outcomes, in job order, are returned
        only after that sync: a mail is durable when its outcome is returned.  A mail
        whose deferred sync or Maildir link failed gets status 75 (delivered=False), as
        does one whose delivery raised (the exception is logged): the caller retries it.
        """
        if self._fresh_own_effects:
            self.effects.close()              # never used: drop its log handler
        saved = self.effects
        group = GroupCommit()
        outcomes: list[Outcome] = []
        try:
            for index, (inv, raw, caller_env) in enumerate(jobs):
                group.begin(index)
                self.effects = RealEffects(stderr_fd=self._stderr_fd, uid=self.user.uid,
                                           rc_loader=self.load_rc, group=group)
                try:
                    outcomes.append(self.run(inv, raw, caller_env))
                except Exception:  # noqa: BLE001 - one mail must not sink the batch
                    _log.exception("delivery %d of a batch failed", index)
                    self.effects.close()
                    outcomes.append(Outcome(ExitCode.TEMPFAIL, False))
            failed = group.commit()
        finally:
            group.close()
            self.effects = saved
            self._fresh_own_effects = False
        for index in failed:
            outcomes[index] = Outcome(ExitCode.TEMPFAIL, False, outcomes[index].lastfolder,
                                      outcomes[index].trace)
        return outcomes

    def run(self, inv: Invocation, raw: bytes, caller_env: dict[str, str]) -> Outcome:
        self._fresh_own_effects = False
        eff = self.effects
        if inv.berkeley and isinstance(eff, RealEffects):
            eff.berkeley = True
        # -d by a user procmail does not trust marks the From_ line; -f naming that
        # user themself makes them trusted (procmail: "if -f user is the same as the
        # invoker, allow it")
        untrusted = inv.invoker if inv.delivery_mode and inv.invoker is not None \
            and inv.invoker not in TRUSTED_IDS and inv.sender != inv.invoker else None
        data = prepare_message(raw, sender=inv.sender, delivery_mode=inv.delivery_mode,
                               invoker=inv.invoker or self.user.name, berkeley=inv.berkeley,
                               untrusted=untrusted, override=inv.override_from)
        del raw     # a 50 MB mail must not be held twice longer than needed
        self._mailfilter = inv.mailfilter
        self._rc_failed = False            # a command-line rc file failed to open
        self._system_rc_opened = False     # see _system_rc_path
        self._preserve_env = inv.preserve_env
        variables = initial_environment(self.user, inv, self.site, caller_env)
        message = Message(data)
        ev = Evaluator(eff, variables, message, positional=inv.positional, argv0=self.site.program,
                       pid=procinfo.pid(),
                       on_clone_end=self._finish_clone, tracing=self.tracing)
        eff.set_umask(0o077)
        if inv.delivery_mode and isinstance(eff, RealEffects):
            eff.spool_mailbox = os.path.normpath(os.path.join(self.site.spool_dir, self.user.name))
        orgmail = variables.get("ORGMAIL")
        if orgmail and not inv.mailfilter and tighten_spool_mailbox(for_os(orgmail), self.user.uid):
            eff.log(f'procmail: Enforcing stricter permissions on "{orgmail}"\n')
        candidates = self._rc_candidates(inv)
        # MAILDIR is set when procmail opens its first rc file (_enter_maildir), after
        # the command line's assignments; a delivery agent starts in the user's home
        if inv.delivery_mode:
            eff.chdir(internal(self.user.home))
        host_matches = True
        for name, value in inv.assignments:
            if name == "INCLUDERC":
                # procmail sets it (asenvcpy) but includes nothing: no rc file is open
                ev.assign_argument(name, value, special=False)
                continue
            if not ev.assign_argument(name, value):
                host_matches = False      # procmail exits 0 here, delivering nothing; a
                break                     # HOST mismatch goes to $DEFAULT (README)
        try:
            delivered = self._run_rcfiles(ev, candidates) if host_matches else self._fallback(ev)
        except Terminated as sig:
            return self._terminated(ev, sig)
        except _HostExit:
            return self._host_exit(ev)
        outcome = self._finish(ev, inv, delivered)
        outcome.trace = ev.trace
        return outcome

    def _run_rcfiles(self, ev: Evaluator, candidates: list[tuple[str, str]]) -> bool:
        """The rc files in turn, then $DEFAULT / $ORGMAIL; whether the mail was delivered."""
        end = End.FELL_OFF
        for index, (path, kind) in enumerate(candidates):
            rc = self._open_rc(path, kind)
            if rc is None:
                continue
            self._rcs_after = candidates[index + 1:]
            self._system_rc_path(ev, system=kind == "system")
            if kind != "system":
                self._enter_maildir(ev, kind)
            result = ev.run_rcfile(rc)
            end = result.end
            if end is End.DELIVERED:
                break
            if end is End.HOST:
                continue
            if kind == "system":
                continue                  # then the user's own rc file
            break
        delivered = end is End.DELIVERED
        if end is End.HOST and ev.copied:
            # HOST did not match in the last rc file: procmail stops there; postroom's
            # $DEFAULT (README) is for a mail that would be lost, and a c copy of this
            # one is already delivered
            delivered = True
        if end is End.HOST and not delivered and (self._exitcode(ev) or 0) > 0:
            # nor is it lost when an EXITCODE makes procmail's exit a failure (the
            # "EXITCODE=67, HOST" bounce): procmail ends there, delivering nothing
            raise _HostExit()
        if not delivered:
            delivered = self._fallback(ev)
        return delivered

    def _system_rc_path(self, ev: Evaluator, *, system: bool) -> None:
        """procmail (Debian's 3.22/3.23pre, observed) runs /etc/procmailrc with PATH
        without $HOME/bin, and gives the user's rc file the preset PATH again, whatever
        the system rc set it to.  Only when a system rc file was opened: without one the
        preset PATH stands from the start (and under -p the caller's)."""
        if self._preserve_env:
            return
        if system:                         # the system rc file is about to run
            self._system_rc_opened = True
            ev.set_variable("PATH", _BASE_PATH)
        elif self._system_rc_opened:       # the user's rc file, after it
            ev.set_variable("PATH", f"{ev.vars.get('HOME', '')}/bin:{_BASE_PATH}")

    def _enter_maildir(self, ev: Evaluator, kind: str) -> None:
        """procmail's first rc file opened (not /etc/procmailrc) sets MAILDIR, unless a
        MAILDIR assignment did already: "." for one named relative to the cwd (./rc,
        -m), else the home directory it changes to ($HOME, then "." if it cannot)."""
        if ev.maildir_set:
            return
        ev.maildir_set = True
        if kind == "cwd":
            ev.vars["MAILDIR"] = "."
            return
        home = ev.vars.get("HOME", "")
        ev.vars["MAILDIR"] = home if home and self.effects.chdir(home) else "."

    @staticmethod
    def _exitcode(ev: Evaluator) -> int | None:
        """An EXITCODE the rc (or the command line) assigned, read as procmail's
        exectrap() reads it (renvint: -2 when it is no number); None when none was."""
        value = ev.vars.get("EXITCODE") if ev.exitcode_assigned else None
        return None if value is None else renvint(-2, value)

    def _end_at_host(self, ev: Evaluator) -> int:
        """procmail's exit at a HOST mismatch with no rc file left: nothing delivered,
        the abstract of what it had; the status EXITCODE (and TRAP) make of 0."""
        eff = self.effects
        if eff.abstract_enabled(final=True):
            eff.log(format_abstract(ev.message.data, ev.vars.get("LASTFOLDER", ""), eff.last_size))
        return self._trap_and_exitcode(ev, ExitCode.OK)

    def _host_exit(self, ev: Evaluator) -> Outcome:
        status = self._end_at_host(ev)
        self.effects.close()
        return Outcome(status, False, ev.vars.get("LASTFOLDER", ""))

    def _terminated(self, ev: Evaluator, sig: Terminated) -> Outcome:
        """A signal ended the delivery (deliver.cli): procmail's terminate().  A copy
        already delivered stays; the mail itself is requeued or bounced."""
        eff = self.effects
        eff.log("procmail: Terminating prematurely\n")
        status = ExitCode.TEMPFAIL if sig.requeue else ExitCode.CANTCREAT
        if eff.abstract_enabled(final=True):
            where = "**Requeued**" if sig.requeue else "**Bounced**"
            eff.log(format_abstract(ev.message.data, where, eff.last_size, subject=False))
        eff.close()
        return Outcome(status, False, ev.vars.get("LASTFOLDER", ""))

    def _fallback(self, ev: Evaluator) -> bool:
        """Falling off the end: $DEFAULT (locked), then $ORGMAIL (item 44)."""
        variables = ev.vars
        default = variables.get("DEFAULT", "")
        if self._mailfilter and not ev.default_assigned:
            default = ""        # procmail -m: no destination unless the rc names one
        if default:
            # procmail locks $DEFAULT$LOCKEXT when it writes it as an mbox (the save
            # takes that lock once it knows): not a Maildir, MH or plain directory, not
            # /dev/null (one in /dev would fail at every delivery)
            res = self.effects.save([default], ev.message.data, raw=False, box="DEFAULT")
            if res.overflow:
                variables["PROCMAIL_OVERFLOW"] = "yes"
            # set even when the save failed: procmail names the file as it opens it
            # (a Maildir, MH or directory temp file that could not be made names none)
            if not res.keeps_lastfolder:
                variables["LASTFOLDER"] = res.lastfolder or default
            if res.ok:
                return True
        orgmail = variables.get("ORGMAIL", "")
        if orgmail and orgmail != default:
            res = self.effects.save([orgmail], ev.message.data, raw=False, box="ORGMAIL")
            if not res.keeps_lastfolder:
                variables["LASTFOLDER"] = res.lastfolder or orgmail
            if res.ok:
                return True
        return False

    def _finish_clone(self, clone: Evaluator, end: End) -> int:
        """A ``c`` block's clone that fell off the end delivers to $DEFAULT as the real
        forked procmail would; its exit status, which a w or W parent looks at.  After a
        HOST mismatch the clone goes on with the next rc file, as procmail's does; with
        none left it ends with 0 and its abstract, delivering nothing (the parent still
        has the mail: postroom's $DEFAULT for a mail HOST would lose is not needed)."""
        if end is End.HOST:
            rest, parent_rest = self._rcs_after, self._rcs_after
            if not rest:
                return self._end_at_host(clone)
            try:
                delivered = self._run_rcfiles(clone, rest)
            except _HostExit:          # the clone's own end: the parent goes on
                return self._end_at_host(clone)
            finally:
                self._rcs_after = parent_rest
        else:
            delivered = end is End.DELIVERED or (end is End.FELL_OFF and self._fallback(clone))
        if delivered and self.effects.abstract_enabled(final=True):
            self.effects.log(format_abstract(clone.message.data, clone.vars.get("LASTFOLDER", ""),
                                             self.effects.last_size))
        # the clone is a procmail of its own: its TRAP runs when it ends
        return self._trap_and_exitcode(clone, ExitCode.OK if delivered else ExitCode.CANTCREAT)

    def _finish(self, ev: Evaluator, inv: Invocation, delivered: bool) -> Outcome:
        eff = self.effects
        variables = ev.vars
        if delivered:
            status: int = ExitCode.OK
            if eff.abstract_enabled(final=True):
                eff.log(format_abstract(ev.message.data, variables.get("LASTFOLDER", ""), eff.last_size))
        else:
            status = ExitCode.TEMPFAIL if inv.tempfail else ExitCode.CANTCREAT
            if eff.abstract_enabled(final=True):
                where = "**Requeued**" if inv.tempfail else "**Bounced**"
                # procmail's lastdump: what its last successful write wrote (a copy's)
                eff.log(format_abstract(ev.message.data, where, eff.last_size))
        status = self._trap_and_exitcode(ev, status)
        eff.close()
        return Outcome(status, delivered, variables.get("LASTFOLDER", ""))

    def _trap_and_exitcode(self, ev: Evaluator, status: int) -> int:
        """procmail's exectrap(): an EXITCODE the rc file assigned (an inherited one
        does not count) that reads as a number ("yes" is 1, "all" 2) is the exit status;
        one that does not (empty, a word) lets a TRAP's non-zero status replace it."""
        variables = ev.vars
        trap = ev.trap
        forced = self._exitcode(ev)
        if forced is not None and forced >= 0:
            status = forced
        elif forced is None and trap:
            variables["EXITCODE"] = str(int(status))     # what the TRAP is told
        command = ev.program_command(trap) if trap else None
        if command is not None:
            # run as a pipe's command line is: through $SHELL only with SHELLMETAS in it
            trap_status = self.effects.run_trap(command, ev.message.data)
            if trap_status != 0 and forced == -2:
                status = trap_status
        return status


class _HostExit(Exception):
    """A HOST mismatch with no rc file left ends the delivery (Agent._host_exit)."""

