"""deliver.clientbuild — compile the native `postroom` entry (deliver/client/postroom-deliver.c).

    build_client(output, launcher, socket, cc=None) -> bool
    install_launchers(bindir, python, paths, socket) -> str     (what `make venv` runs)

What it does: compiles the C client with the system's C compiler (``$CC``, else ``cc``),
baking in the two paths it needs: the Python launcher it execs for everything that is not
a served delivery, and the server socket it tries when $POSTROOM_DELIVERD is unset.
``install_launchers`` writes the Python launcher (deliver.fastclient.launcher_script) as
``bindir/postroom-python`` and the compiled client as ``bindir/postroom``; with no working
compiler ``bindir/postroom`` is the Python launcher itself, as before the client existed.

Guarantees: the binary is written to a temporary name and renamed into place, so a
running `postroom` is never a half-written file; a failed build leaves nothing behind and
returns False (the caller keeps the Python launcher).  The compiled binary lives in the
virtualenv only, never in the source tree.

Errors: OSError when the launcher files cannot be written.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess

from .fastclient import launcher_script

log = logging.getLogger("postroom.clientbuild")

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "client", "postroom-deliver.c")
CFLAGS = ("-O2", "-std=c11", "-Wall", "-Wextra", "-Werror", "-D_FORTIFY_SOURCE=2",
          "-fstack-protector-strong", "-fPIE", "-pie")


def _c_string(text: str) -> str:
    """A C string literal for ``-D``: only printable ASCII without quotes or backslashes
    is accepted, so no path can change the program's text."""
    if not text.isascii() or not text.isprintable() or '"' in text or "\\" in text:
        raise ValueError(f"path not usable in the C client: {text!r}")
    return '"' + text + '"'


def find_cc() -> str | None:
    cc = os.environ.get("CC") or "cc"
    return shutil.which(cc)


def build_client(output: str, launcher: str, socket: str, cc: str | None = None) -> bool:
    """Compile SOURCE into ``output``; True on success."""
    cc = cc or find_cc()
    if cc is None:
        log.info("no C compiler: keeping the Python launcher")
        return False
    tmp = output + ".tmp"
    cmd = [cc, *CFLAGS, f"-DPOSTROOM_LAUNCHER={_c_string(launcher)}",
           f"-DPOSTROOM_SOCKET={_c_string(socket)}", "-o", tmp, SOURCE]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        log.warning("building the C client failed: %s", proc.stderr.strip()[-2000:])
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        return False
    os.chmod(tmp, 0o755)
    os.replace(tmp, output)
    return True


def _write(path: str, text: str) -> None:
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.chmod(path + ".tmp", 0o755)
    os.replace(path + ".tmp", path)


def install_launchers(bindir: str, python: str, paths: list[str], socket: str,
                      cc: str | None = None) -> str:
    """Write ``bindir/postroom-python`` and ``bindir/postroom``; returns "c" or "python"
    (which one ``bindir/postroom`` is)."""
    script = launcher_script(python, paths, socket)
    py_launcher = os.path.join(bindir, "postroom-python")
    _write(py_launcher, script)
    entry = os.path.join(bindir, "postroom")
    if build_client(entry, py_launcher, socket, cc):
        return "c"
    _write(entry, script)
    return "python"
