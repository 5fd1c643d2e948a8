"""mta.smtp.sessioncount: counters shared by forked receiver processes, and the
[smtp] processes setting that decides how many there are."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mta.config import ConfigError, load_config
from mta.smtp.sessioncount import SessionCount


def test_slots_written_in_forked_children_add_up_in_the_parent() -> None:
    count = SessionCount(4)
    count.set(0, 2)
    pids = []
    for slot, value in ((1, 5), (2, 7), (3, 0)):
        pid = os.fork()
        if pid == 0:
            count.set(slot, value)
            os._exit(0)
        pids.append(pid)
    for pid in pids:
        assert os.waitpid(pid, 0)[1] == 0
    assert count.total() == 14
    count.set(1, 0)                 # a child's sessions ended
    assert count.total() == 9


def test_no_slots_is_an_error() -> None:
    with pytest.raises(ValueError):
        SessionCount(0)


def _config(tmp_path: Path, smtp: str, limits: str = "") -> Path:
    p = tmp_path / "postroom.toml"
    p.write_text(f'[smtp]\nlisteners = ["127.0.0.1:2525"]\n{smtp}[smtp.limits]\n{limits}')
    return p


def test_processes_setting(tmp_path: Path) -> None:
    assert load_config(_config(tmp_path, "processes = 3\n")).smtp.receiver_processes() == 3
    auto = load_config(_config(tmp_path, "")).smtp
    assert auto.processes == 0 and auto.receiver_processes() == max(1, min(4, os.cpu_count() or 1))
    # never more processes than connections allowed
    capped = load_config(_config(tmp_path, "processes = 8\n", "max_connections = 2\n")).smtp
    assert capped.receiver_processes() == 2
    with pytest.raises(ConfigError, match="processes"):
        load_config(_config(tmp_path, "processes = -1\n"))
    with pytest.raises(ConfigError, match="processes"):
        load_config(_config(tmp_path, 'processes = "two"\n'))
