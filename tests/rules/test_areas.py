"""rules.areas: the header, body and whole-mail search areas (PROCMAIL-BEHAVIOUR 3, 4, 33).

What procmail actually matches in these areas is checked case by case in
test_regex_oracle.py (messages "folded", "crlf", "nobody", "empty_body"); here are the
exact bytes and the properties that hold for any mail."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from rules.areas import join_folds, search_area
from rules.message import Message

MAIL = (b"From a@b  Mon Jul  3 10:00:00 2023\n"
        b"Subject: a\n\tb and\n  c\n"
        b"To: x@y\n"
        b"\n"
        b" body starts with a blank\n\tand a tab\n")


def test_header_area_runs_from_the_from_line_to_the_empty_line() -> None:
    head = search_area(Message(MAIL), header=True, body=False)
    assert head.startswith(b"From a@b ")
    assert head.endswith(b"To: x@y\n\n")


def test_folded_fields_are_joined_with_their_blanks_kept() -> None:
    head = search_area(Message(MAIL), header=True, body=False)
    assert b"Subject: a \tb and   c\n" in head
    assert len(head) == Message(MAIL).header_end  # one byte for one byte


def test_body_area_is_not_joined() -> None:
    body = search_area(Message(MAIL), header=False, body=True)
    assert body == b" body starts with a blank\n\tand a tab\n"


def test_whole_mail_is_joined_header_then_raw_body() -> None:
    msg = Message(MAIL)
    both = search_area(msg, header=True, body=True)
    assert both == (search_area(msg, header=True, body=False)
                    + search_area(msg, header=False, body=True))
    assert msg.data == MAIL  # the mail itself is never changed


def test_crlf_mail_is_all_header() -> None:
    msg = Message(b"From a  Mon Jul  3 10:00:00 2023\nX: y\r\n\r\nbody\r\n")
    assert search_area(msg, header=False, body=True) == b""
    assert search_area(msg, header=True, body=False) == msg.data


def test_mail_without_body() -> None:
    msg = Message(b"From a  Mon Jul  3 10:00:00 2023\nSubject: x\n y")
    assert search_area(msg, header=True, body=False) == (
        b"From a  Mon Jul  3 10:00:00 2023\nSubject: x  y")
    assert search_area(msg, header=False, body=True) == b""


def test_neither_area_is_empty() -> None:
    assert search_area(Message(MAIL), header=False, body=False) == b""


def test_join_folds_only_touches_newlines_before_blanks() -> None:
    assert join_folds(b"a\n b\n\tc\nd\n") == b"a  b \tc\nd\n"
    assert join_folds(b"plain\n") == b"plain\n"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200).map(lambda b: b.replace(b"\r", b"")))
def test_areas_partition_the_mail(data: bytes) -> None:
    msg = Message(data)
    head = search_area(msg, header=True, body=False)
    body = search_area(msg, header=False, body=True)
    assert body == msg.body
    assert search_area(msg, header=True, body=True) == head + body
    assert len(head) == len(msg.header)
    # Only fold newlines change, and only into blanks.
    for got, orig in zip(head, msg.header, strict=True):
        assert got == orig or (orig == 0x0A and got == 0x20)


def _readmail_thebody(data: bytes) -> int:
    """procmail's readmail() step by step (mailfold.c): skip the leading newlines (its
    loop steps over the first other byte too), then strchr() for each newline, which
    stops at a NUL, until a newline follows one."""
    n, p = len(data), 0
    while p < n:
        p += 1
        if data[p - 1] != 0x0A:
            break
    while True:
        j = p
        while j < n and data[j] not in (0x0A, 0x00):
            j += 1
        if j >= n or data[j] == 0x00:
            return n                 # strchr() found no newline: all header
        p = j + 1
        if p < n and data[p] == 0x0A:
            return p + 1


def test_leading_empty_lines_do_not_end_the_header() -> None:
    msg = Message(b"\n\nX: y\n\nbody\n")
    assert msg.header == b"\n\nX: y\n\n"
    assert msg.body == b"body\n"


def test_a_nul_before_the_empty_line_makes_the_whole_mail_header() -> None:
    msg = Message(b"Subject: a\0b\n\nbody\n")
    assert msg.header_end == len(msg.data)
    assert search_area(msg, header=False, body=True) == b""
    # a NUL in the body changes nothing
    assert Message(b"Subject: a\n\nbo\0dy\n").body == b"bo\0dy\n"


@given(st.lists(st.sampled_from([b"\n", b"\0", b"a", b" ", b"From x\n", b"X: y\n"]),
                max_size=12).map(b"".join))
@settings(max_examples=400)
def test_header_end_is_where_readmail_puts_thebody(data: bytes) -> None:
    assert Message(data).header_end == _readmail_thebody(data)


def _readmail_joined_header(data: bytes) -> bytes:
    """procmail's readmail() marking folds (confield) on its way to thebody, then
    concon(' '): each marked newline, one followed by a blank or a tab, becomes a
    blank.  The scan starts at realstart and strchr() stops at a NUL."""
    n, p = len(data), 0
    while p < n:
        p += 1
        if data[p - 1] != 0x0A:
            break
    out = bytearray(data)
    while True:
        j = p
        while j < n and data[j] not in (0x0A, 0x00):
            j += 1
        if j >= n or data[j] == 0x00:
            end = n
            break
        p = j + 1
        if p < n and data[p] in (0x20, 0x09):
            out[j] = 0x20
        elif p < n and data[p] == 0x0A:
            end = p + 1
            break
    return bytes(out[:end])


@given(st.lists(st.sampled_from([b"\n", b"\0", b"a", b" ", b"\t", b"\n ", b"X: y\n"]),
                max_size=14).map(b"".join))
@settings(max_examples=500)
def test_header_area_joins_the_folds_readmail_marks(data: bytes) -> None:
    assert search_area(Message(data), header=True, body=False) == _readmail_joined_header(data)


def test_no_fold_before_realstart_or_after_a_nul() -> None:
    # a mail that starts with a newline and a blank: that newline is no fold
    assert search_area(Message(b"\n Subject: a\nTo: b\n\nx\n"), header=True, body=False) \
        == b"\n Subject: a\nTo: b\n\n"
    # after a NUL (the whole mail is header then) folds stay as they are
    assert search_area(Message(b"X: a\0b\nSubject: c\n d\n\nx\n"), header=True, body=False) \
        == b"X: a\0b\nSubject: c\n d\n\nx\n"
