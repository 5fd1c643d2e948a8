"""placement — where a benchmark's directories go on disk, so that it measures the
programs and not the file system's recent history.

On this machine's ext4 (no journal) creating a file costs a scan over the inodes freed in
the last one to six minutes of its directory's block group (ext4's recently_deleted():
such an inode is skipped, and finding that out reads its inode-table entry).  A block
group churned by an earlier run, the test suite, or the other side of a comparison makes
every file creation dearer, by up to ten times.  Both benches therefore give each side
a block group of its own: their work directory is marked with spread_children, and the
directories made in it carry a random part in their names, since ext4 starts its search
for a group at a hash of the name (a fixed name lands where the previous run's
directory of that name was removed).
"""

from __future__ import annotations

import subprocess
from pathlib import Path


def spread_children(directory: Path) -> bool:
    """Mark ``directory`` a top of directory hierarchies (``chattr +T``), so that ext4's
    Orlov allocator puts each directory made in it in a block group of its own rather
    than ``directory``'s: no side then pays at its file creations for the inodes another
    side, an earlier measurement or an earlier run freed, only for its own.  Measured
    2026-12-07, same code: bench_deliver's in-process batch did 1138 and 1065 msg/s in
    a tree in a group churned by earlier runs, 2366 and 2223 in a tree of its own;
    bench_mta, two pairs of runs alternating, Postfix local(8) did 463 and 491 msg/s at
    2.29 and 2.21 ms CPU a message sharing the group (after Postfix + procmail's lock
    and queue files), 599 and 588 msg/s at 1.97 and 1.80 ms in groups of their own,
    while postroom serve (whose queue recycles its files: it frees no inode per
    message) did about the same either way.  False where the flag is refused (not
    ext2/3/4, no chattr): the directories then share one group, as before."""
    try:
        p = subprocess.run(["chattr", "+T", str(directory)], capture_output=True, check=False)
    except OSError:
        return False
    return p.returncode == 0
