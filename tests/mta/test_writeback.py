"""mta.queue.writeback: the file system test that decides whether one fsync's cache flush
may cover another file's writes, checked against stat(1), and the writeback calls on real
files.  (The commit that relies on it: tests/mta/test_spool_deferred.py, under strace.)"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

from mta.queue.writeback import (SHARED_FLUSH, filesystem_type, flush_covers_other_files,
                                 start_writeback, wait_writeback)


def _stat_f_type(path: str) -> int:
    return int(subprocess.run(["stat", "-f", "-c", "%t", path], capture_output=True, text=True,
                              check=True).stdout, 16)


@pytest.mark.parametrize("where", ["tmp", "/proc", "/sys", "/dev/shm", "/"])
def test_filesystem_type_is_what_stat_reports(tmp_path: Path, where: str) -> None:
    path = str(tmp_path) if where == "tmp" else where
    if not os.path.exists(path):
        pytest.fail(f"{path} is missing on this machine")
    assert filesystem_type(path) == _stat_f_type(path)
    assert flush_covers_other_files(path) == (_stat_f_type(path) in SHARED_FLUSH)


def test_pseudo_and_memory_file_systems_keep_one_fsync_per_file() -> None:
    assert not flush_covers_other_files("/proc")
    assert not flush_covers_other_files("/sys")
    assert not flush_covers_other_files("/dev/shm")       # tmpfs


def test_a_path_that_does_not_exist_is_not_trusted(tmp_path: Path) -> None:
    assert filesystem_type(str(tmp_path / "missing")) is None
    assert not flush_covers_other_files(str(tmp_path / "missing"))


def test_writeback_calls_succeed_on_a_file_and_report_errors(tmp_path: Path) -> None:
    """Linux exposes no per-file count of dirty pages to check the writeback against;
    what is checked: the calls succeed on a real file, leave its data as written, and
    fail on a bad descriptor with its errno rather than silently."""
    path = tmp_path / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.write(fd, b"x" * 10000)
        start_writeback(fd)
        wait_writeback(fd)
        assert os.pread(fd, 10, 9990) == b"x" * 10
    finally:
        os.close(fd)
    with pytest.raises(OSError) as info:
        wait_writeback(fd)                 # closed
    assert info.value.errno == errno.EBADF


def test_copy_on_write_file_systems_are_not_trusted() -> None:
    """btrfs, ZFS and bcachefs (and XFS for reflinked extents) may write an overwritten
    block elsewhere: the new envelope is part of the file only once its own sync commits
    the new extent, so the message's flush does not cover it (mta.queue.writeback)."""
    for magic in (0x9123683E, 0x2FC12FC1, 0xCA451A4E, 0x58465342):   # btrfs zfs bcachefs xfs
        assert magic not in SHARED_FLUSH
    assert set(SHARED_FLUSH) == {0xEF53}
