"""Golden tests for rules.parser (Postfix .in/.ref style).

Each tests/rules/golden/<construct>.rc is parsed and its ``dump_ast`` compared with
<construct>.ast.  Nothing is regenerated here unless POSTROOM_REGEN_GOLDEN=1 is set by
hand (never in CI): review the diff of the .ast files before committing them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rules.parser import parse_rc
from rules.printer import dump_ast, format_rc

GOLDEN = Path(__file__).parent / "golden"
CASES = sorted(p.stem for p in GOLDEN.glob("*.rc"))
REGEN = os.environ.get("POSTROOM_REGEN_GOLDEN") == "1"


def _parse(name: str):
    text = (GOLDEN / f"{name}.rc").read_bytes().decode("latin-1")
    return parse_rc(text, f"{name}.rc")


def test_enough_goldens() -> None:
    assert len(CASES) >= 40


@pytest.mark.parametrize("name", CASES)
def test_golden(name: str) -> None:
    got = dump_ast(_parse(name))
    ref = GOLDEN / f"{name}.ast"
    if REGEN:
        ref.write_text(got, encoding="latin-1")
    assert ref.exists(), f"missing {ref}; set POSTROOM_REGEN_GOLDEN=1 to create it"
    assert got == ref.read_text(encoding="latin-1")


@pytest.mark.parametrize("name", CASES)
def test_golden_roundtrip(name: str) -> None:
    rc = _parse(name)
    again = parse_rc(format_rc(rc), f"{name}.rc")
    assert again.items == rc.items
    # the printed form is a fixed point
    assert format_rc(again) == format_rc(rc)
