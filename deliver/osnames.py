"""deliver.osnames — procmail's names are bytes; postroom's are latin-1 text of them.

Inside postroom a name from the rc file, the mail, the command line or the
environment is the latin-1 text of its bytes (one character per byte, as the rules
package reads mail).  Python's os functions encode a str with the file system
encoding instead (UTF-8, with surrogateescape for bytes that are not UTF-8), so a
folder named from an 8-bit MATCH would get other bytes than procmail gives it, and a
command-line argument that is not UTF-8 could not be written at all.  These two
functions cross that boundary: ``internal`` where a name comes from the system (argv,
the environment, getcwd, passwd), ``for_os`` where one goes to it (paths, a
program's argv).  ASCII, nearly every name, passes unchanged.
"""

from __future__ import annotations

import os

__all__ = ["for_os", "internal"]


def internal(name: str) -> str:
    """A name as the system gave it (a str Python decoded) -> postroom's latin-1 text."""
    if name.isascii():
        return name
    return os.fsencode(name).decode("latin-1")


def for_os(name: str) -> str:
    """Postroom's latin-1 text of a name -> the str the os functions turn back into
    those bytes.  A str that is no latin-1 text (it holds a character above U+00FF)
    came from the system unconverted and is passed on as it is."""
    if name.isascii():
        return name
    try:
        raw = name.encode("latin-1")
    except UnicodeEncodeError:
        return name
    return os.fsdecode(raw)
