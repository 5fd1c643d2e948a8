"""mta.returnpath: the Return-Path: field a final delivery puts first."""

from __future__ import annotations

from hypothesis import given, strategies as st

from mta.returnpath import with_return_path


def test_prepended_with_the_sender_and_the_null_sender() -> None:
    msg = b"Received: from x\nSubject: s\n\nbody\n"
    assert with_return_path(msg, "a@b.example") == b"Return-Path: <a@b.example>\n" + msg
    assert with_return_path(msg, "") == b"Return-Path: <>\n" + msg


def test_an_earlier_return_path_and_its_continuation_lines_are_removed() -> None:
    msg = (b"Received: from x\nreturn-PATH: <forged@evil.example>\n (folded)\n\tmore\n"
           b"Subject: s\nReturn-Path:<second@evil.example>\n\n"
           b"Return-Path: <in the body stays>\n")
    assert with_return_path(msg, "a@b.example") == (
        b"Return-Path: <a@b.example>\nReceived: from x\nSubject: s\n\n"
        b"Return-Path: <in the body stays>\n")


def test_a_field_that_only_starts_alike_is_kept() -> None:
    msg = b"Return-Path-Extra: 1\nX-Return-Path: 2\n\nbody\n"
    assert with_return_path(msg, "s@x") == b"Return-Path: <s@x>\n" + msg


def test_a_message_without_a_header_or_without_a_body() -> None:
    assert with_return_path(b"Return-Path: <old>\nSubject: s", "s@x") == b"Return-Path: <s@x>\nSubject: s"
    assert with_return_path(b"Return-Path: <old>\r\nSubject: s\r", "s@x") == b"Return-Path: <s@x>\nSubject: s\r"
    assert with_return_path(b"\nReturn-Path: <body>\n", "s@x") == b"Return-Path: <s@x>\n\nReturn-Path: <body>\n"
    assert with_return_path(b"Return-Path: <old>\nSubject: s\n", "s@x") == b"Return-Path: <s@x>\nSubject: s\n"


_field_name = st.sampled_from([b"Subject", b"Received", b"Return-Path", b"return-path", b"X-Return-Path"])
_text = st.binary(max_size=30).map(lambda b: b.replace(b"\n", b" "))   # CRs stay in
_field = st.tuples(_field_name, _text, st.lists(_text.map(lambda t: b" " + t), max_size=2)).map(
    lambda f: f[0] + b": " + f[1] + b"\n" + b"".join(c + b"\n" for c in f[2]))


@given(st.lists(_field, min_size=1, max_size=8), st.binary(max_size=200), st.text(max_size=20),
       st.booleans())
def test_one_return_path_first_and_everything_else_unchanged(fields, body, sender, headonly) -> None:
    head = b"".join(fields)
    if headonly:          # no empty line: all of it is header, the last line unended
        out = with_return_path(head[:-1], sender)
        unended = fields[:-1] + [fields[-1][:-1]]
        kept = [f for f in unended if not f.lower().startswith(b"return-path:")]
        assert out.partition(b"\n")[2] == b"".join(kept)
        return
    out = with_return_path(head + b"\n" + body, sender)
    first, _, rest = out.partition(b"\n")
    one_line = sender.replace("\r", "").replace("\n", "")
    assert first == b"Return-Path: <" + one_line.encode("utf-8", "surrogateescape") + b">"
    # the body is untouched, the other fields are kept in order, no Return-Path: left
    kept = [f for f in fields if not f.lower().startswith(b"return-path:")]
    assert rest == b"".join(kept) + b"\n" + body
