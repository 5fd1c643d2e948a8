"""mta.smtp.sessioncount — how many SMTP sessions the daemon's receivers hold together.

``SessionCount(slots)`` is a few integers in an anonymous shared mapping, made before
``postroom serve`` forks its receiver processes, so every receiver sees the same memory.
Each (process, listener) owns one slot and is the only writer of it (``set``), so no
lock is needed; ``total()`` sums every slot.  This is what keeps [smtp.limits]
max_connections a limit for the whole daemon: a per-process share would refuse a
connection with 421 whenever the kernel happened to hand several to one process while
another sat idle.

Guarantee: the sum is exact between accepts.  Two receivers accepting at the very same
moment may both see room for one more, so the limit can be passed by at most one
session per other receiver, briefly; it is a resource bound, not a quota.
"""

from __future__ import annotations

import mmap
import struct

__all__ = ["SessionCount"]

_SLOT = struct.Struct("=q")


class SessionCount:
    """Session counters shared by forked processes; see the module docstring."""

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError("at least one slot")
        self.slots = slots
        self._map = mmap.mmap(-1, _SLOT.size * slots)      # MAP_SHARED | MAP_ANONYMOUS
        self._all = struct.Struct(f"={slots}q")

    def set(self, slot: int, value: int) -> None:
        """Record that ``slot`` (one process's listener) now holds ``value`` sessions."""
        _SLOT.pack_into(self._map, _SLOT.size * slot, value)

    def total(self) -> int:
        return sum(self._all.unpack_from(self._map))
