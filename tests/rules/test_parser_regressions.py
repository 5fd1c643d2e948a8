"""Inputs that once broke the parser: they must parse, quickly, into procmail's diagnostics."""

from __future__ import annotations

from rules.parser import parse_rc


def test_tab_after_backslash_in_recipe_header_does_not_crash():
    rc = parse_rc(":\\\t", "x")
    assert all(d.span.path == "x" for d in rc.diagnostics)


def test_huge_legacy_condition_count_stops_at_end_of_file():
    # A loop over the count would never finish: pytest-timeout (pyproject) fails it.
    rc = parse_rc(":2147483647\n* a\nb\n", "x")
    assert rc.items == ()
    assert [d.message.split(":")[0] for d in rc.diagnostics] == ["Incomplete recipe"]


def test_deep_block_nesting_parses():
    depth = 500
    text = ":0\n{\n" * depth + ":0\nbox\n" + "}\n" * depth
    rc = parse_rc(text, "x")
    assert rc.diagnostics == ()
    node = rc.items[0]
    for _ in range(depth - 1):
        node = node.action.items[0]
    assert node.action.items[0].action.text == "box"
