"""mta.maps.mapfile — the line reader and reload machinery shared by every text map.

SYNOPSIS
    class MyMap(MapFile[dict[str, str]]):
        def parse(self, lines): ...        # -> (data, diagnostics)
    m = MyMap(Path("/etc/postroom/aliases"))
    m.data            # re-stats the file; reloads it when it changed
    m.diagnostics     # ["aliases:3: error: ...", ...] of the version loaded

DESCRIPTION
    A map file is sendmail-style text: one entry per logical line, ``#`` starts a comment
    line, blank lines are ignored.  ``logical_lines`` optionally joins continuation lines
    (a line starting with a blank continues the previous one, as in aliases(5)); each
    logical line keeps the number of its first physical line, so every diagnostic reads
    ``file:line: error: message`` and points where an editor should jump.

    A parser never raises on bad input: a bad line is reported as a Diagnostic and
    skipped, and the rest of the map still works (DESIGN.md, "Every bad input ...").

    Files are decoded as UTF-8; undecodable bytes are kept as surrogate escapes so a line
    with stray latin-1 is reported, not fatal.

RELOAD
    Each use of ``data`` does one stat(2) and compares (device, inode, size, mtime_ns) with
    the version loaded; a changed file is read again, so `mv new aliases` and in-place
    edits both take effect without a restart.  The stamp is taken with fstat on the open
    descriptor, so it always describes the bytes that were parsed.

ERRORS
    MapUnavailable (a MapError) is raised when a configured file cannot be stat'ed or read
    — missing, permission denied, I/O error.  Callers must treat it as a temporary failure
    (SMTP 451 4.3.0, queue: defer), never as "not found" (OpenSMTPD's three-way lookup).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Iterable, Iterator, TypeVar

__all__ = [
    "MapError",
    "MapUnavailable",
    "Diagnostic",
    "Line",
    "read_lines",
    "logical_lines",
    "MapFile",
]

log = logging.getLogger(__name__)

T = TypeVar("T")


class MapError(Exception):
    """Base of every error raised by mta.maps."""


class MapUnavailable(MapError):
    """A map file cannot be read now; a temporary failure, never "not found"."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: map unavailable: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One problem found in a map file, located by file and line (1-based)."""

    path: str
    line: int
    message: str
    severity: str = "error"  # "error" or "warning"

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.severity}: {self.message}"


@dataclass(frozen=True, slots=True)
class Line:
    """A logical line of a map file: its text and the number of its first physical line."""

    path: str
    number: int
    text: str

    def error(self, message: str) -> Diagnostic:
        return Diagnostic(self.path, self.number, message)

    def warning(self, message: str) -> Diagnostic:
        return Diagnostic(self.path, self.number, message, "warning")


def read_lines(path: str, data: bytes) -> Iterator[Line]:
    """Physical lines with comments and blank lines removed, numbered from 1.

    A line whose first character other than a blank is ``#`` is a comment (Postfix
    aliases(5); an indented one inside a continued list drops out, not joins it); a
    ``#`` further on may belong to a quoted program.  Lines that are blank after
    stripping are dropped.  Trailing CR (a file edited on Windows) is dropped too.
    """
    text = data.decode("utf-8", "surrogateescape")
    for number, raw in enumerate(text.split("\n"), start=1):
        raw = raw.rstrip("\r")
        stripped = raw.lstrip(" \t")
        if not stripped or stripped.startswith("#"):
            continue
        yield Line(path, number, raw)


def logical_lines(lines: Iterable[Line]) -> Iterator[Line]:
    """Join continuation lines (leading space or tab) onto the previous logical line.

    aliases(5): "Lines beginning with white space are continuation lines."  A
    continuation with nothing before it is returned on its own so the parser can report it.
    """
    current: Line | None = None
    for line in lines:
        if line.text[:1] in (" ", "\t") and current is not None:
            current = Line(current.path, current.number, current.text + " " + line.text.strip())
            continue
        if current is not None:
            yield current
        current = line
    if current is not None:
        yield current


Stamp = tuple[int, int, int, int]


def _stamp(st: os.stat_result) -> Stamp:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class MapFile(Generic[T]):
    """A parsed text file that reloads itself when the file changes.

    Subclasses implement ``parse(lines) -> (data, diagnostics)`` over ``read_lines``
    output.  ``data`` and ``diagnostics`` always describe the same version of the file.
    ``display_name`` (default: the file's name) prefixes diagnostics.
    """

    def __init__(self, path: Path | str, display_name: str | None = None) -> None:
        self.path = Path(path)
        self.display_name = display_name if display_name is not None else self.path.name
        self._stamp: Stamp | None = None
        self._data: T | None = None
        self._diagnostics: tuple[Diagnostic, ...] = ()
        self.loads = 0  # how many times the file was parsed (tests, `postroom status`)

    # -- to be provided by subclasses
    def parse(self, lines: Iterator[Line]) -> tuple[T, list[Diagnostic]]:
        raise NotImplementedError

    # -- the machinery
    def refresh(self) -> bool:
        """Reload if the file changed since the last load; True when it was (re)loaded."""
        try:
            st = os.stat(self.path)
        except OSError as exc:
            raise MapUnavailable(self.path, exc.strerror or str(exc)) from exc
        if self._stamp is not None and _stamp(st) == self._stamp:
            return False
        self._load()
        return True

    def _load(self) -> None:
        try:
            with open(self.path, "rb") as f:
                stamp = _stamp(os.fstat(f.fileno()))
                raw = f.read()
        except OSError as exc:
            raise MapUnavailable(self.path, exc.strerror or str(exc)) from exc
        data, diagnostics = self.parse(read_lines(self.display_name, raw))
        self._data, self._diagnostics, self._stamp = data, tuple(diagnostics), stamp
        self.loads += 1
        for d in diagnostics:
            log.warning("%s", d)

    @property
    def data(self) -> T:
        """The parsed contents, current as of one stat(2) ago."""
        self.refresh()
        assert self._data is not None
        return self._data

    @property
    def diagnostics(self) -> list[str]:
        """``file:line: severity: message`` for every bad line of the loaded version."""
        self.refresh()
        return [str(d) for d in self._diagnostics]

    @property
    def problems(self) -> tuple[Diagnostic, ...]:
        """The diagnostics as values (for newaliases' exit status)."""
        self.refresh()
        return self._diagnostics
