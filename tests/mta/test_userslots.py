"""mta.userslots: at most N deliveries per user at once, between processes (flock)."""

from __future__ import annotations

import os

from mta import userslots
from mta.userslots import UserSlots


def test_a_user_has_count_slots_shared_by_every_holder(tmp_path) -> None:
    a, b, c = (UserSlots(str(tmp_path), 2) for _ in range(3))   # three processes' views
    first = a.take("slow")
    second = b.take("slow")
    assert first is not None and second is not None
    assert c.take("slow") is None and a.take("slow") is None      # both slots taken
    other = c.take("fast")                                         # another user: free
    assert other is not None
    second.release()
    third = c.take("slow")
    assert third is not None and b.take("slow") is None
    for s in (first, third, other):
        s.release()
    assert a.take("slow") is not None


def test_a_dead_holders_slot_is_free_again(tmp_path) -> None:
    """The kernel drops a flock with its process: a runner that died holds nothing."""
    told_r, told_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:                                       # pragma: no cover - child
        held = [UserSlots(str(tmp_path), 1).take("u")]
        os.write(told_w, b"1" if held[0] is not None else b"0")
        os.read(go_r, 1)                               # until the parent lets it die
        os._exit(0)
    try:
        assert os.read(told_r, 1) == b"1"
        mine = UserSlots(str(tmp_path), 1)
        assert mine.take("u") is None
    finally:
        os.write(go_w, b"x")
        os.waitpid(pid, 0)
    assert mine.take("u") is not None


def test_slot_files_are_named_by_a_hash_never_by_the_user_name(tmp_path) -> None:
    slots = UserSlots(str(tmp_path / "slots"), 2)
    with slots.take("../../etc/x") as s:
        assert s is not None
    names = os.listdir(tmp_path / "slots")
    assert len(names) == 2 and all(n.startswith("user-") and "/" not in n and ".." not in n[:-2]
                                   for n in names)
    assert os.listdir(tmp_path) == ["slots"]


def test_many_users_keep_a_bounded_number_of_descriptors_and_taken_slots(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(userslots, "MAX_USERS", 4)
    slots = UserSlots(str(tmp_path), 1)
    held = slots.take("held")
    assert held is not None
    for i in range(20):
        s = slots.take(f"user{i}")
        assert s is not None
        s.release()
    assert len(slots._fds) <= 4 and "held" in slots._fds    # evicting never drops a taken slot
    assert UserSlots(str(tmp_path), 1).take("held") is None
    held.release()
    assert UserSlots(str(tmp_path), 1).take("held") is not None


def test_take_waits_up_to_wait_seconds_for_a_slot_to_free(tmp_path) -> None:
    import threading
    import time
    holder = UserSlots(str(tmp_path), 1).take("u")
    assert holder is not None
    patient = UserSlots(str(tmp_path), 1, wait=5.0)
    timer = threading.Timer(0.2, holder.release)
    timer.start()
    t0 = time.monotonic()
    got = patient.take("u")
    waited = time.monotonic() - t0
    timer.join()
    assert got is not None and 0.15 < waited < 4.0
    hasty = UserSlots(str(tmp_path), 1, wait=0.1)
    t0 = time.monotonic()
    assert hasty.take("u") is None                    # still held by ``patient``
    assert 0.09 < time.monotonic() - t0 < 3.0
