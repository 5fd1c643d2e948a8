"""difftool - run procmail and `postroom deliver` on one case folder and compare what they did.

SYNOPSIS
    case = load_case(Path("tests/deliver/cases/mbox-basic"))
    a = run_case(case, procmail_command())
    b = run_case(case, postroom_command())
    problems = compare(a, b)          # [] when both sides behaved the same

CASE FOLDER (tests/deliver/cases/<name>/)
    rc          the rcfile; copied to $HOME/rc before the first run (optional: a case may
                bring its rcfiles in home/ instead).
    msg         the message on stdin; or msg.1, msg.2, ... delivered in numeric order, one
                program run each, all in the same home.
    args        optional, one line, shell-split (shlex): the command-line arguments.
                Default: `-f sender@example.org ./rc`.  `@HOME@` is replaced by $HOME.
                The harness inserts `SENDMAIL=$HOME/.sendmail` right after the options
                (procmail takes SENDMAIL from its own defaults, not from the environment,
                and the real one must never be reached), unless args already assign
                SENDMAIL.
    env         optional; NAME=value lines added to the environment.
    home/       optional; a tree copied into $HOME first (existing mailboxes, include
                files, scripts; the executable bit is kept).
    spool/      optional; a tree copied into the mail spool (/var/mail) first.  Without it
                the spool holds the user's empty mailbox (mode 0600, old times).
    dirs        optional; lines `home/<path>` or `spool/<path>`: empty directories to make
                (git keeps no empty directories), before `modes` is applied.
    modes       optional; lines `<octal> <path>` applied after copying, path starting with
                `home/` or `spool/` (or exactly `home` / `spool` for the directories).
    README      one line saying what the case checks.
    as-root     optional, empty: run the command as root instead of as the user (LDA
                mode: the args say `-d prtest` and the program must drop privileges).
    etc/        optional: files laid over /etc inside the run's private namespace with
                overlayfs (etc/procmailrc is the system-wide rc of LDA mode).
    unordered   optional; lines naming result paths (`home/log`) whose lines are compared
                in any order: for a log whose order procmail itself leaves to scheduling.

ISOLATION
    procmail takes HOME, the default rcfile and ORGMAIL from the passwd entry, not from
    the environment, so each run gets a private mount namespace (unshare(1)) in which a
    fresh temp directory is bind-mounted on the test user's home and another on /var/mail;
    the program then runs as that user (setpriv(1)), cwd = $HOME, with a fixed minimal
    environment.  Both sides therefore see the same paths.  The harness needs root for
    this; it raises HarnessError otherwise.  After the program exits the harness waits for
    every process left in its session (programs run without `w`, forwards) to end.

    $HOME/.sendmail is a capture script: each call makes $HOME/.sent/<n>/ holding `argv`
    (one argument a line) and `stdin`; it exits with $CAPTURE_EXIT (default 0), which an
    rcfile can set since procmail exports its variables.

COMPARISON
    Every file, directory and symlink under the home and the spool after the last run
    (kind, mode bits, bytes or link target), and per run the exit status and stderr.
    Normalised, by small functions tested on their own: ctime-format dates that fall in
    the runs' time window (From_ lines, LOGFILE abstracts, VERBOSE lines), Maildir unique
    names (`time.pid_n.host`, numbered in delivery order), directory-folder names
    (MSGPREFIX + procmail's base-64 inode number) and the tab padding after such a name in
    a LOGABSTRACT `Folder:` line, the `[pid]` of `procmail: [pid]` log
    lines and the program's own pid, and the temp paths.

VIA DELIVERD
    POSTROOM_DIFF_VIA_DELIVERD=1: the postroom side goes through the warm delivery server.
    start_deliverd() runs `postroom deliverd` as root on a temp socket, with a launcher
    built like the real one (deliver.fastclient.launcher_script) whose default socket is
    that temp socket, so the delivery's environment is exactly the direct run's.  The
    server is outside each run's private mount namespace; its delivery child joins the
    client's namespaces (setns on the client's pidfd) before becoming the client, so it
    sees the bind-mounted home and spool as the client does.  Programs a delivery left
    running are the server's descendants (child subreaper), and are waited for like the
    session's stragglers of a direct run.

ERRORS
    HarnessError when the case folder is malformed or the isolation cannot be set up;
    a program that does not finish within RUN_TIMEOUT seconds is killed and recorded as
    exit status -9 (so the comparison fails, never hangs).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import os
import pwd
import re
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Sequence

CASES_DIR = Path(__file__).parent / "cases"
REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
PROCMAIL = "/usr/bin/procmail"
SPOOL = "/var/mail"
DEFAULT_ARGS = "-f sender@example.org ./rc"
RUN_TIMEOUT = 10.0
#: how long stragglers (programs procmail did not wait for) may take after the main exit
STRAGGLER_TIMEOUT = 10.0
#: (atime, mtime) given to files copied from a case: 2001-01-01 and 2001-01-02 UTC
OLD_TIMES = (978307200, 978393600)
TEST_USER = os.environ.get("POSTROOM_TEST_USER", "prtest")


class HarnessError(Exception):
    """The case folder or the environment does not allow a meaningful run."""


# ---------------------------------------------------------------------------------------
# Case folders


@dataclasses.dataclass(frozen=True)
class Case:
    """One case folder, read into memory."""

    name: str
    path: Path
    messages: tuple[bytes, ...]
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    modes: tuple[tuple[str, int], ...]
    dirs: tuple[str, ...] = ()
    #: `as-root` file: the command runs as root (LDA mode, `-d user`), not as the user
    as_root: bool = False
    #: `unordered` file: paths whose lines are compared as a multiset, for logs whose
    #: order procmail itself leaves to scheduling (lines from two of its processes)
    unordered: tuple[str, ...] = ()


def case_names() -> list[str]:
    """All case folder names, sorted."""
    return sorted(p.name for p in CASES_DIR.iterdir() if p.is_dir())


def _msg_key(p: Path) -> int:
    return 0 if p.name == "msg" else int(p.name.split(".", 1)[1])


def load_case(path: Path) -> Case:
    """Read a case folder; raises HarnessError when it has no message or bad files."""
    msgs = [p for p in path.iterdir() if p.name == "msg" or re.fullmatch(r"msg\.\d+", p.name)]
    if not msgs:
        raise HarnessError(f"{path}: no msg or msg.N file")
    msgs.sort(key=_msg_key)
    args_file = path / "args"
    args_text = args_file.read_text().strip() if args_file.exists() else DEFAULT_ARGS
    env: list[tuple[str, str]] = []
    if (path / "env").exists():
        for line in (path / "env").read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                if "=" not in line:
                    raise HarnessError(f"{path}/env: not NAME=value: {line!r}")
                k, v = line.split("=", 1)
                env.append((k, v))
    modes: list[tuple[str, int]] = []
    if (path / "modes").exists():
        for line in (path / "modes").read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                mode, rel = line.split(None, 1)
                if not (rel in ("home", "spool") or rel.startswith(("home/", "spool/"))) \
                        or ".." in rel.split("/"):
                    raise HarnessError(f"{path}/modes: path must start with home/ or spool/")
                modes.append((rel, int(mode, 8)))
    dirs: list[str] = []
    if (path / "dirs").exists():
        for line in (path / "dirs").read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                rel = line.strip()
                if not rel.startswith(("home/", "spool/")) or ".." in rel.split("/"):
                    raise HarnessError(f"{path}/dirs: path must start with home/ or spool/")
                dirs.append(rel)
    unordered: list[str] = []
    if (path / "unordered").exists():
        for line in (path / "unordered").read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                unordered.append(line.strip())
    return Case(
        as_root=(path / "as-root").exists(),
        unordered=tuple(unordered),
        dirs=tuple(dirs),
        name=path.name,
        path=path,
        messages=tuple(p.read_bytes() for p in msgs),
        args=tuple(shlex.split(args_text)),
        env=tuple(env),
        modes=tuple(modes),
    )


# procmail's options that take a value (procmail(1)): -f and -r from, -a arg; -d ends the options.
_VALUE_OPTIONS = frozenset("fra")


def insert_sendmail(args: Sequence[str], sendmail: str) -> list[str]:
    """Put `SENDMAIL=<sendmail>` right after procmail's options.

    procmail(1): options come first, then `parameter=value` and rcfile arguments (with -m,
    assignments may precede the rcfile), so the boundary is the first argument that is not
    an option or an option's value.  Unchanged when args already assign SENDMAIL, use
    -d (after -d only recipients may follow) or end in a -f or -a without its value.
    """
    if any(a.startswith("SENDMAIL=") for a in args):
        return list(args)
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            i += 1
            break
        if not a.startswith("-") or a == "-":
            break
        letters = a[1:]
        if "d" in letters:
            return list(args)
        i += 1
        for j, ch in enumerate(letters):
            if ch in _VALUE_OPTIONS:
                if j == len(letters) - 1:
                    i += 1  # the value is the next argument
                break
    if i > len(args):
        # a -f or -a with no value left: procmail says "Missing name" and goes on,
        # and anything put after it would become its value (such a case's rc files
        # must not forward)
        return list(args)
    return [*args[:i], f"SENDMAIL={sendmail}", *args[i:]]


# ---------------------------------------------------------------------------------------
# Commands


def procmail_command() -> list[str]:
    """The oracle."""
    return [PROCMAIL]


def postroom_command() -> list[str]:
    """The command under test; POSTROOM_DIFF_AGAINST=procmail swaps in procmail itself;
    while a start_deliverd() server runs, its launcher (delivery through the server)."""
    if os.environ.get("POSTROOM_DIFF_AGAINST", "") == "procmail":
        return procmail_command()
    if DELIVERD is not None:
        return [str(DELIVERD.launcher), "deliver"]
    return [str(VENV_BIN / "postroom"), "deliver"]


def via_deliverd_requested() -> bool:
    return os.environ.get("POSTROOM_DIFF_VIA_DELIVERD", "") == "1"


@dataclasses.dataclass
class Deliverd:
    """A running `postroom deliverd` and the launcher that talks to it."""

    proc: subprocess.Popen
    directory: Path
    socket: Path
    launcher: Path
    log: Path

    def served(self) -> int:
        """Deliveries the server has forked so far (its --verbose log)."""
        return self.log.read_bytes().count(b" serves pid ")

    def child_for(self, client_pid: int) -> int | None:
        """The pid of the delivery child that served ``client_pid`` (the latest)."""
        found = re.findall(rb"child (\d+) serves pid " + str(client_pid).encode() + rb" ",
                           self.log.read_bytes())
        return int(found[-1]) if found else None

    def descendants(self) -> list[int]:
        """Live, non-zombie processes below the server (its delivery children and the
        programs they left running, which the subreaper server adopts); not its idle
        per-user zygotes and their spare children (deliver.zygote), which wait for work."""
        parents = {pid: int(fields[1]) for pid, fields in _live_processes()}
        out = []
        for pid in parents:
            if _comm(pid) in _IDLE_NAMES:
                continue
            p, seen = pid, 0
            while p in parents and seen < 64:
                p, seen = parents[p], seen + 1
                if p == self.proc.pid:
                    out.append(pid)
                    break
        return out

    def wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while (left := self.descendants()):
            if time.monotonic() > deadline:
                for pid in left:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                return
            time.sleep(0.003)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.directory, ignore_errors=True)


#: the server postroom_command() goes through, while start_deliverd()'s lasts
DELIVERD: Deliverd | None = None


def make_launcher(path: Path, socket_path: str) -> str:
    """A `postroom` like `make venv`'s (the native client when a C compiler exists, else
    the Python launcher; deliver.clientbuild), defaulting to ``socket_path``.  Returns
    "c" or "python"."""
    import sysconfig
    from deliver.clientbuild import install_launchers
    assert path.name == "postroom"
    paths = list(dict.fromkeys([str(REPO)] + [sysconfig.get_paths()[k] for k in ("purelib", "platlib")]))
    return install_launchers(str(path.parent), str(VENV_BIN / "python"), paths, socket_path)


@contextlib.contextmanager
def running_deliverd(max_children: int = 8, extra_args: Sequence[str] = ()) -> Iterator[Deliverd]:
    """``start_deliverd`` for a ``with`` block (the deliverd tests' module fixtures)."""
    d = start_deliverd(max_children, extra_args)
    try:
        yield d
    finally:
        d.stop()


@contextlib.contextmanager
def reachable_home(prefix: str) -> Iterator[Path]:
    """A directory TEST_USER owns and can reach (pytest's tmp_path sits in a 0700
    directory), removed afterwards."""
    user = pwd.getpwnam(TEST_USER)
    top = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(top, 0o755)
    h = top / "h"
    h.mkdir()
    os.chown(h, user.pw_uid, user.pw_gid)
    try:
        yield h
    finally:
        shutil.rmtree(top, ignore_errors=True)


def write_user_rc(home: Path, text: str, name: str = "rc", mtime: float | None = None) -> Path:
    """An rc file TEST_USER owns, mode 0644; ``mtime`` set when given (an rc edited in the
    last second is not preloaded by a zygote, deliver.zygote)."""
    user = pwd.getpwnam(TEST_USER)
    rc = home / name
    rc.write_text(text)
    os.chown(rc, user.pw_uid, user.pw_gid)
    os.chmod(rc, 0o644)
    if mtime is not None:
        os.utime(rc, (mtime, mtime))
    return rc


def start_deliverd(max_children: int = 8, extra_args: Sequence[str] = ()) -> Deliverd:
    """Run `postroom deliverd` as root on a socket in a fresh 0755 directory; return once
    it accepts connections.  Raises HarnessError if it does not come up."""
    if os.geteuid() != 0:
        raise HarnessError("the via-deliverd mode starts the server as root")
    directory = Path(tempfile.mkdtemp(prefix="prdeliverd-"))
    os.chmod(directory, 0o755)
    sock, launcher, log = directory / "deliverd.sock", directory / "postroom", directory / "log"
    make_launcher(launcher, str(sock))
    with open(log, "wb") as logf:
        proc = subprocess.Popen([str(launcher), "deliverd", "--socket", str(sock), "--verbose",
                                 "--max-children", str(max_children), *extra_args],
                                stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, cwd="/")
    d = Deliverd(proc, directory, sock, launcher, log)
    deadline = time.monotonic() + 30
    import socket as socketmod
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise HarnessError(f"deliverd exited {proc.returncode}: {log.read_text()[-2000:]}")
        probe = socketmod.socket(socketmod.AF_UNIX, socketmod.SOCK_STREAM)
        try:
            probe.connect(str(sock))
            return d
        except OSError:
            time.sleep(0.05)
        finally:
            probe.close()
    d.stop()
    raise HarnessError("deliverd did not start listening within 30 s")


# ---------------------------------------------------------------------------------------
# Running one side

_CAPTURE = """#!/bin/sh
# sendmail stand-in written by tests/deliver/difftool.py: one folder per call.
umask 077
d={home}/.sent
mkdir -p "$d" 2>/dev/null
n=1
while ! mkdir "$d/$n" 2>/dev/null; do n=$((n+1)); done
for a in "$@"; do printf '%s\\n' "$a"; done > "$d/$n/argv"
cat > "$d/$n/stdin"
exit ${{CAPTURE_EXIT:-0}}
"""


@dataclasses.dataclass(frozen=True)
class Entry:
    """One thing found under the home or spool after the runs."""

    kind: str  # "file", "dir", "link", "other"
    mode: int
    data: bytes  # file bytes or link target; b"" for directories
    ino: int
    owner: int = -1  # uid: shows whose identity a recipe really ran with (LDA mode)


@dataclasses.dataclass(frozen=True)
class Run:
    """One program run (one message)."""

    status: int
    stderr: bytes
    pid: int
    started: float
    ended: float
    new_paths: tuple[str, ...]  # paths that appeared during this run, in listing order


@dataclasses.dataclass(frozen=True)
class SideResult:
    """Everything one side did, raw (not yet normalised)."""

    command: tuple[str, ...]
    runs: tuple[Run, ...]
    tree: Mapping[str, Entry]
    workdir: str


def _user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(TEST_USER)
    except KeyError as e:
        raise HarnessError(f"test user {TEST_USER!r} does not exist (make test-deps)") from e


def _copy_tree(src: Path, dst: Path) -> None:
    for p in sorted(src.rglob("*")):
        target = dst / p.relative_to(src)
        if p.is_symlink():                 # kept as a link (e.g. a spool-symlink attack)
            os.symlink(os.readlink(p), target)
        elif p.is_dir():
            target.mkdir(exist_ok=True)
        else:
            shutil.copyfile(p, target)
            os.chmod(target, 0o755 if os.access(p, os.X_OK) else 0o644)
            # atime before mtime: procmail sleeps a second before writing to a mailbox
            # whose atime is not older than its mtime (so mail readers see new mail).
            os.utime(target, OLD_TIMES)


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    os.lchown(root, uid, gid)
    for p in root.rglob("*"):
        os.lchown(p, uid, gid)


def _read_noatime(p: Path) -> bytes:
    """Read without touching atime (open(2) O_NOATIME, allowed to the owner or root), so
    that looking at a mailbox between runs does not change how procmail treats it."""
    fd = os.open(p, os.O_RDONLY | getattr(os, "O_NOATIME", 0))
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def list_paths(roots: Mapping[str, Path]) -> list[str]:
    """The keys snapshot() would return, without reading anything."""
    out = []
    for label, root in roots.items():
        out.append(label)
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            base = Path(dirpath)
            for name in sorted(filenames) + dirnames:
                out.append(f"{label}/{(base / name).relative_to(root).as_posix()}")
    return out


# postroom's parsed-rc cache (rules/cache.py) lives in ~/.cache/postroom: a legitimate
# side effect procmail has no counterpart for, so it is left out of the comparison.
OWN_CACHE = ".cache/postroom"


def snapshot(roots: Mapping[str, Path]) -> dict[str, Entry]:
    """Every entry under each root, keyed `<label>/<relative path>`; the roots themselves
    are included (their mode can change, e.g. a chmod by a program)."""
    out: dict[str, Entry] = {}
    for label, root in roots.items():
        cache = root / OWN_CACHE
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            if Path(dirpath) == cache.parent:
                dirnames[:] = [d for d in dirnames if d != cache.name]
                if not dirnames and not filenames:
                    continue
            if Path(dirpath) == root and (root / ".cache").is_dir() and \
                    os.listdir(root / ".cache") == [cache.name]:
                dirnames[:] = [d for d in dirnames if d != ".cache"]
            base = Path(dirpath)
            for name in [""] + sorted(filenames) + dirnames:
                if name == "" and base != root:
                    continue
                p = base / name if name else base
                rel = p.relative_to(root).as_posix()
                key = label if rel == "." else f"{label}/{rel}"
                st = os.lstat(p)
                mode = stat.S_IMODE(st.st_mode)
                if stat.S_ISLNK(st.st_mode):
                    out[key] = Entry("link", mode, os.readlink(p).encode(), st.st_ino, st.st_uid)
                elif stat.S_ISDIR(st.st_mode):
                    out[key] = Entry("dir", mode, b"", st.st_ino, st.st_uid)
                elif stat.S_ISREG(st.st_mode):
                    out[key] = Entry("file", mode, _read_noatime(p), st.st_ino, st.st_uid)
                else:
                    out[key] = Entry("other", mode, b"", st.st_ino, st.st_uid)
    return out


def _session_members(sid: int) -> list[int]:
    """Live pids whose session id is `sid` (proc(5): state is field 3, session field 6
    of /proc/<pid>/stat)."""
    return [pid for pid, fields in _live_processes() if len(fields) > 3 and int(fields[3]) == sid]


_IDLE_NAMES = (b"pr-zygote", b"pr-spare")        # deliver.zygote.ZYGOTE_NAME, SPARE_NAME


def _comm(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/comm", "rb") as f:
            return f.read().rstrip(b"\n")
    except OSError:
        return b""


def _live_processes():
    """(pid, the fields of /proc/<pid>/stat after the command name) for every process
    that is not a zombie: a zombie has finished its work, and orphans are reaped by pid 1
    whenever it likes.  Field 0 is the state, 1 the parent, 3 the session (proc(5))."""
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                s = f.read()
        except OSError:
            continue
        fields = s[s.rfind(b")") + 2:].split()
        if fields and fields[0] != b"Z":
            yield int(d), fields


def _wait_for_session(sid: int, timeout: float) -> None:
    """Wait until no process of session `sid` remains; kill them after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        left = _session_members(sid)
        if not left:
            return
        if time.monotonic() > deadline:
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)
            return
        time.sleep(0.003)


#: how often a side is run again because a delivering pid also stands in the case's input
PID_COLLISION_TRIES = 5
RACE_RETRIES = 3
PIPE_BUF = 4096  # a write this small into an empty pipe is all or nothing


def input_numbers(case: Case) -> frozenset[bytes]:
    """Every whole number written in the case's own files (messages, rc, home/, spool/ ...)."""
    numbers: set[bytes] = set()
    for p in case.path.rglob("*"):
        if p.is_file():
            numbers.update(re.findall(rb"[0-9]+", p.read_bytes()))
    return frozenset(numbers)


def run_case(
    case: Case,
    command: Sequence[str],
    *,
    message_hook: Callable[[int, bytes], bytes] | None = None,
) -> SideResult:
    """Run `command` on every message of `case` in a fresh isolated home.

    The delivering process's pid is normalised wherever it stands as a whole number
    (normalise_pids), so a pid that equals a number in the case's input (the `2023` of a
    Date: header) would rewrite the input's text on one side only: such a side is run
    again, in a fresh home, until its pids are clear of the input.

    message_hook(index, message) may alter a message before it is fed (self-checks only).
    """
    taken = input_numbers(case)
    lost_races = 0
    for _ in range(PID_COLLISION_TRIES + RACE_RETRIES):
        result = _run_case_once(case, command, message_hook)
        if any(str(r.pid).encode() in taken for r in result.runs):
            skip_pids_past(taken)
            continue
        if (command[0] == PROCMAIL and lost_races < RACE_RETRIES
                and lost_write_race(case, result)):
            lost_races += 1
            continue
        return result
    raise HarnessError(f"{case.name}: every run's pid collided with a number in the input")


def skip_pids_past(taken: frozenset[bytes], room: int = 1000) -> None:
    """Make the next pids come from a range holding none of the input's numbers.

    Pids wrap around at pid_max to 300 and then climb through every small number: a case
    whose mail numbers its lines 0..1999 collides run after run while they do, however
    often it is repeated.  Root writes the pid namespace's last pid (ns_last_pid) to just
    below the first `room` numbers free of input numbers; elsewhere nothing changes and
    the repeats go on as before.
    """
    try:
        pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
        start = 300                                   # the kernel's RESERVED_PIDS
        for n in sorted(int(x) for x in taken if len(x) <= 7):
            if n < start:
                continue
            if n - start >= room:
                break
            start = n + 1
        if start + room < pid_max:
            Path("/proc/sys/kernel/ns_last_pid").write_text(str(start - 1))
    except OSError:
        pass


def lost_write_race(case: Case, side: SideResult) -> bool:
    """Whether procmail may have lost the race with a program that does not read its input.

    procmail writes the mail to a program only after forking it; a program that never
    reads (`| exit 1`, `| echo x`) and exits before that write makes it fail with EPIPE,
    and "Error while writing to" is logged.  With a mail smaller than PIPE_BUF this
    depends only on scheduling (it happened once in CI in about thirty full runs), so
    such a run of the oracle is repeated; a program that closes its input on purpose
    still shows the error in every repeat, and the last repeat is then kept.
    """
    if any(len(m) + 256 >= PIPE_BUF for m in case.messages):  # room for a From_ line
        return False
    logged = [r.stderr for r in side.runs]
    logged += [e.data for e in side.tree.values() if e.kind == "file"]
    names = {m for text in logged for m in re.findall(rb'Error while writing to "([^"\n]*)"', text)}
    # Only a program's write error races; a folder's ("Error while writing to "box"") does
    # not.  procmail names a program by its line after the "|" when the shell runs it
    # (" env | grep x"), else by its first word ("/bin/true"): either follows a "|".
    rc_text = b"".join(p.read_bytes() for p in case.path.rglob("*") if p.is_file())
    return any(re.search(rb"\|[ \t]*" + re.escape(name.strip()), rc_text)
               for name in names if name.strip())


def _run_case_once(
    case: Case,
    command: Sequence[str],
    message_hook: Callable[[int, bytes], bytes] | None,
) -> SideResult:
    """One run of run_case (see there)."""
    if os.geteuid() != 0:
        raise HarnessError("the differential harness must run as root (it bind-mounts a "
                           "temp home over the test user's home in a private namespace)")
    user = _user()
    workdir = Path(tempfile.mkdtemp(prefix="prdiff-"))
    os.chmod(workdir, 0o755)
    home, spool = workdir / "home", workdir / "spool"
    home.mkdir(mode=0o755)
    spool.mkdir()
    os.chmod(home, 0o755)
    # A sticky world-writable spool lets an unprivileged deliverer create its mailbox the
    # same way setgid-mail procmail can in Debian's root:mail 2775 /var/mail.
    os.chmod(spool, 0o1777)
    if (case.path / "rc").exists():
        shutil.copyfile(case.path / "rc", home / "rc")
        os.chmod(home / "rc", 0o644)
    for label, target in (("home", home), ("spool", spool)):
        if (case.path / label).is_dir():
            _copy_tree(case.path / label, target)
    for rel in case.dirs:
        (workdir / rel).mkdir(parents=True, exist_ok=True)
    if not (case.path / "spool").is_dir():
        # the user's system mailbox exists, as on a real system (procmail would otherwise
        # create it empty at startup, and then sleep before its first write: atime=mtime)
        box = spool / user.pw_name
        box.touch(mode=0o600)
        os.chown(box, user.pw_uid, user.pw_gid)
        os.utime(box, OLD_TIMES)
    sendmail = f"{user.pw_dir}/.sendmail"
    (home / ".sendmail").write_text(_CAPTURE.format(home=user.pw_dir))
    os.chmod(home / ".sendmail", 0o755)
    _chown_tree(home, user.pw_uid, user.pw_gid)
    for rel, mode in case.modes:
        os.chmod(workdir / rel, mode)

    env = {
        "HOME": user.pw_dir,
        "PATH": "/usr/bin:/bin",
        "SHELL": "/bin/sh",
        "LOGNAME": user.pw_name,
        "USER": user.pw_name,
        "TZ": "UTC",
    }
    env.update(dict(case.env))
    args = [a.replace("@HOME@", user.pw_dir) for a in case.args]
    args = insert_sendmail(args, sendmail)
    # A case's etc/ (e.g. etc/procmailrc, the system-wide rc of LDA mode) is laid over
    # the real /etc with overlayfs inside the private namespace only.
    etc_mount = ""
    if (case.path / "etc").is_dir():
        upper, work = workdir / "etc-upper", workdir / "etc-work"
        shutil.copytree(case.path / "etc", upper)
        work.mkdir()
        for p in upper.rglob("*"):
            os.chmod(p, 0o644 if p.is_file() else 0o755)
        etc_mount = (f'mount -t overlay overlay -o lowerdir=/etc,upperdir={upper},'
                     f'workdir={work} /etc && ')
    become = ("exec \"$@\"" if case.as_root else
              f"exec setpriv --reuid={user.pw_uid} --regid={user.pw_gid} --clear-groups -- \"$@\"")
    script = (
        'mount --bind "$1" "$3" && mount --bind "$2" "$4" && ' + etc_mount +
        'cd "$3" && shift 4 && ' + become
    )
    argv = ["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", script,
            "sh", str(home), str(spool), user.pw_dir, SPOOL, *command, *args]

    roots = {"home": home, "spool": spool}
    runs: list[Run] = []
    seen: set[str] = set(list_paths(roots))
    for i, msg in enumerate(case.messages):
        if message_hook is not None:
            msg = message_hook(i, msg)
        started = time.time()
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env, start_new_session=True)
        try:
            _out, err = proc.communicate(msg, timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            _out, err = proc.communicate()
        _wait_for_session(proc.pid, STRAGGLER_TIMEOUT)
        pid = proc.pid
        if DELIVERD is not None and list(command) == postroom_command():
            DELIVERD.wait_idle(STRAGGLER_TIMEOUT)
            # The delivering process is the server's child: its pid is "the program's
            # own pid" that normalise_pids replaces (procmail's $$, lock names ...).
            pid = DELIVERD.child_for(proc.pid) or pid
        ended = time.time()
        new = tuple(k for k in list_paths(roots) if k not in seen)
        seen.update(new)
        runs.append(Run(proc.returncode, err, pid, started, ended, new))
    tree = snapshot(roots)
    result = SideResult(tuple(command), tuple(runs), tree, str(workdir))
    shutil.rmtree(workdir, ignore_errors=True)
    return result


# ---------------------------------------------------------------------------------------
# Normalisation (each a small pure function; see test_differential.py for their tests)

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun",
           "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
DATE_TOKEN = b"<date>"


def ctime_utc(t: int) -> bytes:
    """ctime(3) text of `t` in UTC without the newline: `Mon Jul  3 10:00:00 2023`."""
    tm = time.gmtime(t)
    return (f"{_DAYS[tm.tm_wday]} {_MONTHS[tm.tm_mon - 1]} {tm.tm_mday:2d} "
            f"{tm.tm_hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d} {tm.tm_year}").encode()


def normalise_dates(data: bytes, start: float, end: float, slack: int = 2) -> bytes:
    """Replace every ctime date within [start - slack, end + slack] by <date>.

    Only dates of the run's own time legitimately vary; an old date carried in a message
    (an existing From_ line kept verbatim) is compared as it is.
    """
    for t in range(int(start) - slack, int(end) + slack + 1):
        s = ctime_utc(t)
        if s in data:
            data = data.replace(s, DATE_TOKEN)
    return data


MAILDIR_NAME = re.compile(r"^(\d+)\.(\d+)_(\d+)\.[^/]+$")


def maildir_key(name: str) -> tuple[int, int, int] | None:
    """(time, n, pid) of a Maildir unique name `time.pid_n.host`, else None.

    Sorting a run's new names by this key gives delivery order (one pid per run).
    """
    m = MAILDIR_NAME.match(name)
    if not m:
        return None
    return int(m.group(1)), int(m.group(3)), int(m.group(2))


_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def inode_name(ino: int) -> str:
    """procmail's spelling of an inode number in directory-folder file names: base 64,
    least significant digit first, alphabet A-Z a-z 0-9 - _ (observed: msg.4MMI)."""
    out = []
    while True:
        out.append(_B64[ino % 64])
        ino //= 64
        if not ino:
            return "".join(out)


def name_map(side: SideResult) -> dict[str, str]:
    """Map each varying file name (Maildir unique names, directory-folder inode names) to
    a placeholder numbered in the order the runs produced them."""
    mapping: dict[str, str] = {}
    md_n = ino_n = 0
    for run in side.runs:
        maildir: list[tuple[tuple[int, int, int], str]] = []
        inode: list[tuple[bytes, int, str]] = []
        for path in run.new_paths:
            entry = side.tree.get(path)
            name = path.rsplit("/", 1)[-1]
            key = maildir_key(name)
            if key is not None:
                maildir.append((key, name))
            elif entry is not None and entry.kind == "file":
                code = inode_name(entry.ino)
                if name.endswith(code):      # MSGPREFIX may be empty: the bare code
                    inode.append((entry.data, entry.ino, name))
        for _key, name in sorted(maildir):
            if name not in mapping:
                md_n += 1
                mapping[name] = f"<maildir-{md_n}>"
        for _data, ino, name in sorted(inode):
            if name not in mapping:
                ino_n += 1
                code = inode_name(ino)
                mapping[name] = f"{name[: -len(code)]}<inode-{ino_n}>"
    return mapping


def apply_names(data: bytes, mapping: Mapping[str, str]) -> bytes:
    """Replace the mapped names inside text (LOG lines, LASTFOLDER, abstracts)."""
    for old in sorted(mapping, key=len, reverse=True):
        data = data.replace(old.encode(), mapping[old].encode())
    return data


def rename_path(path: str, mapping: Mapping[str, str]) -> str:
    """Apply the name mapping to each component of a path."""
    return "/".join(mapping.get(c, c) for c in path.split("/"))


_LOG_PID = re.compile(rb"procmail: \[\d+\]")


def normalise_pids(data: bytes, pids: Iterable[int]) -> bytes:
    """`procmail: [1234]` -> `procmail: [<pid>]`, and the program's own pid wherever it
    stands as a whole number (e.g. `$$` logged)."""
    data = _LOG_PID.sub(b"procmail: [<pid>]", data)
    for pid in pids:
        data = re.sub(rb"(?<![0-9])" + str(pid).encode() + rb"(?![0-9])", b"<pid>", data)
    return data


_ABSTRACT_FOLDER = re.compile(rb"^(  Folder: .*<(?:maildir|inode)-\d+>.*?)[\t ]+(\d+)$", re.M)


def normalise_abstract_padding(data: bytes) -> bytes:
    """The LOGABSTRACT `Folder:` line pads the name with tabs to column 72 (behaviour 37);
    a varying name's length varies, so once a name is a placeholder its padding is shown
    as ` <pad> `.  Lines without a placeholder keep their exact padding."""
    return _ABSTRACT_FOLDER.sub(rb"\1 <pad> \2", data)


_UNIQUE_TIME = re.compile(rb"(?<![0-9])([0-9]{9,11})(?=\.[0-9]+_[0-9]+\.)")


def normalise_unique_times(data: bytes, start: float, end: float, slack: int = 2) -> bytes:
    """The time part of a Maildir unique name that names no file (a temp file that could
    not be made, named in a log line), when it falls in the runs' time window."""
    def sub(m: re.Match[bytes]) -> bytes:
        return b"<time>" if start - slack <= int(m.group(1)) <= end + slack else m.group(1)
    return _UNIQUE_TIME.sub(sub, data)


def normalise_text(data: bytes, side: SideResult, mapping: Mapping[str, str]) -> bytes:
    """All text normalisations, in a fixed order (names before pids: names hold pids)."""
    data = data.replace(side.workdir.encode(), b"<workdir>")
    data = apply_names(data, mapping)
    data = normalise_abstract_padding(data)
    start = min((r.started for r in side.runs), default=0.0)
    end = max((r.ended for r in side.runs), default=0.0)
    data = normalise_dates(data, start, end)
    data = normalise_unique_times(data, start, end)
    return normalise_pids(data, [r.pid for r in side.runs])


@dataclasses.dataclass(frozen=True)
class Normalised:
    """A side's result ready for comparison."""

    statuses: tuple[int, ...]
    stderrs: tuple[bytes, ...]
    tree: Mapping[str, tuple[str, int, bytes, int]]


def normalise(side: SideResult) -> Normalised:
    mapping = name_map(side)
    tree = {
        rename_path(path, mapping): (e.kind, e.mode, normalise_text(e.data, side, mapping), e.owner)
        for path, e in side.tree.items()
    }
    return Normalised(
        statuses=tuple(r.status for r in side.runs),
        stderrs=tuple(normalise_text(r.stderr, side, mapping) for r in side.runs),
        tree=tree,
    )


# ---------------------------------------------------------------------------------------
# Comparison


def _lines(data: bytes) -> list[str]:
    """Readable lines: latin-1, CR and other control bytes shown escaped."""
    out = []
    text = data.decode("latin-1")
    if not text:
        return []
    # split on \n only: str.splitlines would also split on \x1c-\x1e, \x85, \r ...
    for line in [x + "\n" for x in text.split("\n")[:-1]] + ([text.rsplit("\n", 1)[-1]]
                                                         if not text.endswith("\n") else []):
        body = line[:-1] if line.endswith("\n") else line
        shown = "".join(c if (c == "\t" or " " <= c <= "~" or c >= "\xa0") else f"\\x{ord(c):02x}"
                        for c in body)
        out.append(shown + ("\n" if line.endswith("\n") else "\n\\ No newline at end\n"))
    return out


def text_diff(a: bytes, b: bytes, label: str, a_name: str = "procmail",
              b_name: str = "postroom") -> str:
    """Unified diff of two byte strings, readable on a terminal."""
    return "".join(difflib.unified_diff(_lines(a), _lines(b), f"{a_name}:{label}",
                                        f"{b_name}:{label}"))


def _sorted_lines(data: bytes) -> bytes:
    return b"".join(sorted(data.splitlines(keepends=True)))


def compare(a: SideResult, b: SideResult, unordered: Sequence[str] = ()) -> list[str]:
    """Differences between two sides, each a readable paragraph; [] when equal.
    ``unordered``: paths whose lines may come in any order (Case.unordered)."""
    na, nb = normalise(a), normalise(b)
    problems: list[str] = []
    for i, (sa, sb) in enumerate(zip(na.statuses, nb.statuses), 1):
        if sa != sb:
            problems.append(f"run {i}: exit status procmail={sa} postroom={sb}")
    for i, (ea, eb) in enumerate(zip(na.stderrs, nb.stderrs), 1):
        if ea != eb:
            problems.append(f"run {i}: stderr differs\n" + text_diff(ea, eb, f"stderr#{i}"))
    for path in sorted(set(na.tree) | set(nb.tree)):
        ea, eb = na.tree.get(path), nb.tree.get(path)
        if ea is None or eb is None:
            who = "postroom" if ea is None else "procmail"
            kind = (eb or ea)[0]  # type: ignore[index]
            extra = (eb or ea)[2]  # type: ignore[index]
            problems.append(f"{path}: {kind} made only by {who}"
                            + (f"\n{text_diff(b'', extra, path)}" if extra else ""))
            continue
        if ea[0] != eb[0]:
            problems.append(f"{path}: procmail made a {ea[0]}, postroom a {eb[0]}")
            continue
        if ea[1] != eb[1]:
            problems.append(f"{path}: mode procmail={ea[1]:04o} postroom={eb[1]:04o}")
        if path in unordered:
            if _sorted_lines(ea[2]) != _sorted_lines(eb[2]):
                problems.append(f"{path}: lines differ (in any order)\n"
                                + text_diff(_sorted_lines(ea[2]), _sorted_lines(eb[2]), path))
        elif ea[2] != eb[2]:
            problems.append(f"{path}: contents differ\n" + text_diff(ea[2], eb[2], path))
        if ea[3] != eb[3]:
            problems.append(f"{path}: owner uid procmail={ea[3]} postroom={eb[3]}")
    return problems


def describe(side: SideResult) -> str:
    """A normalised listing of one side (for failure messages and debugging)."""
    n = normalise(side)
    lines = [f"command: {' '.join(side.command)}"]
    for i, (s, e) in enumerate(zip(n.statuses, n.stderrs), 1):
        lines.append(f"run {i}: exit {s}" + (f", stderr {e!r}" if e else ""))
    for path, (kind, mode, data, owner) in sorted(n.tree.items()):
        lines.append(f"  {mode:04o} {kind:5} uid {owner} {path} ({len(data)} bytes)")
    return "\n".join(lines)
