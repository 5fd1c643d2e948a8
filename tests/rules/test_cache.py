"""rules.cache: hits, misses, and refusal of caches another user could write."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from rules.ast import Assignment
from rules.astcodec import VERSION
from rules.cache import _key, cache_path, load_rc
from rules.parser import parse_rc

RC = ":0 c:\n* ^From: x\n{\n  A=1\n}\nB=2\n"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def setup(tmp_path: Path):
    rc = tmp_path / "rc"
    rc.write_text(RC)
    cdir = tmp_path / "cache"
    cdir.mkdir(mode=0o700)
    os.chmod(cdir, 0o700)
    return rc, cdir


def _entry(rc: Path, cdir: Path) -> Path:
    st = os.stat(rc)
    return Path(cache_path(str(cdir), _key(os.path.realpath(rc), st, rc.read_bytes())))


def test_miss_writes_private_json_then_hit(setup) -> None:
    rc, cdir = setup
    first = load_rc(str(rc), cache_dir=str(cdir))
    assert first.items == parse_rc(RC, str(rc)).items
    entry = _entry(rc, cdir)
    st = os.stat(entry)
    assert st.st_mode & 0o777 == 0o600 and st.st_uid == os.geteuid()
    data = json.loads(entry.read_text())
    # poison the cached AST: a hit must return what the cache says
    data["ast"]["items"][-1]["value"] = "from-cache"
    entry.write_text(json.dumps(data))
    os.chmod(entry, 0o600)
    again = load_rc(str(rc), cache_dir=str(cdir))
    assert again.items[-1] == Assignment("B", "from-cache")


def test_miss_after_size_or_mtime_change(setup) -> None:
    rc, cdir = setup
    load_rc(str(rc), cache_dir=str(cdir))
    rc.write_text(RC + "C=3\n")  # size changes
    assert load_rc(str(rc), cache_dir=str(cdir)).items[-1] == Assignment("C", "3")
    st = os.stat(rc)
    rc.write_text(RC.replace("B=2", "B=9") + "C=3\n")  # same size
    os.utime(rc, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert load_rc(str(rc), cache_dir=str(cdir)).items[-2] == Assignment("B", "9")


def test_miss_after_an_edit_that_puts_size_and_mtime_back(setup) -> None:
    # cp -p / touch -r: same size, same mtime, same inode, new text
    rc, cdir = setup
    load_rc(str(rc), cache_dir=str(cdir))
    st = os.stat(rc)
    rc.write_text(RC.replace("B=2", "B=7"))
    os.utime(rc, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(rc).st_size == st.st_size and os.stat(rc).st_ino == st.st_ino
    assert load_rc(str(rc), cache_dir=str(cdir)).items[-1] == Assignment("B", "7")


def _poisoned(rc: Path, cdir: Path) -> None:
    """Plant a valid cache entry whose AST differs from the rc."""
    entry = _entry(rc, cdir)
    from rules.astcodec import encode_rc
    fake = parse_rc(RC.replace("B=2", "B=evil"), str(rc))
    entry.write_text(json.dumps({"key": _key(os.path.realpath(rc), os.stat(rc), rc.read_bytes()),
                                 "ast": encode_rc(fake)}))
    os.chmod(entry, 0o600)


@pytest.mark.parametrize("mode", [0o770, 0o707, 0o777])
def test_refused_when_dir_group_or_other_writable(setup, mode: int) -> None:
    rc, cdir = setup
    _poisoned(rc, cdir)
    os.chmod(cdir, mode)
    assert load_rc(str(rc), cache_dir=str(cdir)).items[-1] == Assignment("B", "2")
    os.chmod(cdir, 0o700)  # trusted again: the planted entry is used
    assert load_rc(str(rc), cache_dir=str(cdir)).items[-1] == Assignment("B", "evil")


def test_refused_when_file_mode_is_loose(setup) -> None:
    rc, cdir = setup
    _poisoned(rc, cdir)
    os.chmod(_entry(rc, cdir), 0o644)
    assert load_rc(str(rc), cache_dir=str(cdir)).items[-1] == Assignment("B", "2")
    st = os.stat(_entry(rc, cdir))
    assert st.st_mode & 0o777 == 0o600  # rewritten


def test_symlinked_entry_is_not_followed(setup, tmp_path: Path) -> None:
    rc, cdir = setup
    _poisoned(rc, cdir)
    entry = _entry(rc, cdir)
    target = tmp_path / "elsewhere.json"
    os.rename(entry, target)
    os.symlink(target, entry)
    assert load_rc(str(rc), cache_dir=str(cdir)).items[-1] == Assignment("B", "2")
    assert not entry.is_symlink()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown to prtest")
def test_refused_when_owned_by_another_user(setup) -> None:
    rc, cdir = setup
    pw = pwd.getpwnam("prtest")
    _poisoned(rc, cdir)
    entry = _entry(rc, cdir)
    os.chown(entry, pw.pw_uid, pw.pw_gid)  # foreign file in our directory
    assert load_rc(str(rc), cache_dir=str(cdir)).items[-1] == Assignment("B", "2")
    assert os.stat(entry).st_uid == os.geteuid()  # replaced by our own
    _poisoned(rc, cdir)
    os.chown(cdir, pw.pw_uid, pw.pw_gid)  # foreign directory: not even read
    assert load_rc(str(rc), cache_dir=str(cdir)).items[-1] == Assignment("B", "2")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run as prtest")
def test_foreign_user_cannot_poison_through_shared_dir() -> None:
    """prtest creates a cache dir and a planted entry; root must ignore both."""
    pw = pwd.getpwnam("prtest")
    tmp_path = Path(tempfile.mkdtemp(prefix="pr-cache-"))
    os.chmod(tmp_path, 0o755)
    try:
        _foreign_dir_case(tmp_path, pw)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


def _foreign_dir_case(tmp_path: Path, pw) -> None:
    rc = tmp_path / "rc"
    rc.write_text(RC)
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chown(shared, pw.pw_uid, pw.pw_gid)
    subprocess.run(["/bin/sh", "-c", f"chmod 700 {shared} && echo junk > {shared}/x"],
                   user="prtest", group="prtest", extra_groups=[], check=True,
                   env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    _poisoned(rc, shared)
    os.chown(_entry(rc, shared), pw.pw_uid, pw.pw_gid)
    assert load_rc(str(rc), cache_dir=str(shared)).items[-1] == Assignment("B", "2")


@pytest.mark.parametrize("garbage", [b"{not json", b"[]", b'{"key": 1}', b"",
                                     b'{"key": null, "ast": {}}'])
def test_corrupt_cache_is_a_miss(setup, garbage: bytes) -> None:
    rc, cdir = setup
    load_rc(str(rc), cache_dir=str(cdir))
    entry = _entry(rc, cdir)
    entry.write_bytes(garbage)
    os.chmod(entry, 0o600)
    assert load_rc(str(rc), cache_dir=str(cdir)).items == parse_rc(RC, str(rc)).items
    assert json.loads(entry.read_text())["ast"]["version"] == VERSION  # rewritten


def test_corrupt_ast_with_right_key_is_a_miss(setup) -> None:
    rc, cdir = setup
    load_rc(str(rc), cache_dir=str(cdir))
    entry = _entry(rc, cdir)
    data = json.loads(entry.read_text())
    data["ast"]["items"][0]["t"] = "exec"
    entry.write_text(json.dumps(data))
    os.chmod(entry, 0o600)
    assert load_rc(str(rc), cache_dir=str(cdir)).items == parse_rc(RC, str(rc)).items


def test_unreadable_rc_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        load_rc(str(tmp_path / "missing"), cache_dir=str(tmp_path))


def test_default_dir_is_created_private(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    rc = tmp_path / "rc"
    rc.write_text(RC)
    load_rc(str(rc))
    d = tmp_path / "xdg" / "postroom" / "rc"
    assert d.is_dir() and os.stat(d).st_mode & 0o777 == 0o700
    assert len(list(d.glob("*.json"))) == 1


CHILD = """
import sys
from rules.cache import load_rc
rc = load_rc(sys.argv[1], cache_dir=sys.argv[2])
print(len(rc.items), 'pyparsing' in sys.modules, 'rules.parser' in sys.modules)
"""


def test_cache_hit_does_not_import_pyparsing(setup) -> None:
    rc, cdir = setup

    def run() -> str:
        return subprocess.run([sys.executable, "-c", CHILD, str(rc), str(cdir)],
                              cwd=REPO, capture_output=True, text=True, check=True,
                              env={"PATH": "/usr/bin:/bin", "HOME": str(cdir),
                                   "PYTHONPATH": str(REPO)}).stdout.split()

    assert run() == ["2", "True", "True"]  # miss: parses
    assert run() == ["2", "False", "False"]  # hit: no grammar


def test_in_process_memo_is_revalidated_by_one_stat(tmp_path: Path, monkeypatch) -> None:
    """The default-directory memo returns the same AST while the file is unchanged, and
    a change of contents, mode or identity since is a miss."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    rc = tmp_path / "rc"
    rc.write_text("A=1\n")
    first = load_rc(str(rc))
    assert load_rc(str(rc)) is first
    time.sleep(0.05)                                # past the kernel's coarse clock tick
    rc.write_text("B=2\n")                          # same size
    second = load_rc(str(rc))
    assert second is not first and second.items[0].name == "B"
    assert load_rc(str(rc)) is second
    time.sleep(0.05)
    os.chmod(rc, 0o644)                             # mode change: re-read, not memo
    third = load_rc(str(rc))
    assert third is not second and third.items[0].name == "B"
    rc.unlink()
    with pytest.raises(OSError):
        load_rc(str(rc))
