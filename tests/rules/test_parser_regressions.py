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


def test_weights_read_as_glibc_strtod_reads_inf_and_nan():
    """Debian's procmail reads weights with strtod(): a sign then inf/infinity/nan is a
    weight (procmail scores ``+inf^0 aaa``), and so is such an exponent."""
    import math

    from rules.condparse import _stod

    assert _stod("+inf^0") == (math.inf, 4)
    assert _stod("-Infinity x") == (-math.inf, 9)
    value, end = _stod("nan(12ab)^1")
    assert math.isnan(value) and end == 9
    value, end = _stod("+NaN")
    assert math.isnan(value) and end == 4
    assert _stod("1e999") == (1.7976931348623157e308, 5)
    assert _stod("+in") is None
    rc = parse_rc(":0\n* +inf^0 aaa\n* 1^nan b\nbox\n", "rc")
    weights = [c.weight for c in rc.items[0].conditions]
    assert weights[0].weight == math.inf and weights[0].exponent == 0
    assert weights[1].weight == 1 and math.isnan(weights[1].exponent)
