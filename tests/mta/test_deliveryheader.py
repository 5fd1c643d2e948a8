"""mta.deliveryheader: the header of a message as a final delivery hands it on."""

from __future__ import annotations

import email
import email.policy

from hypothesis import given, strategies as st

from mta.deliveryheader import for_delivery

RCVD = b"Received: from c\n\tby mx; Mon, 7 Dec 2026\n"


def test_return_path_first_with_the_sender_or_the_null_sender() -> None:
    msg = RCVD + b"Subject: s\n\nbody\n"
    assert for_delivery(msg, "a@b.example") == b"Return-Path: <a@b.example>\n" + msg
    assert for_delivery(msg, "") == b"Return-Path: <>\n" + msg
    assert for_delivery(msg, "x\r\ny@z") == b"Return-Path: <xy@z>\n" + msg


def test_return_path_and_content_length_that_came_with_it_are_removed() -> None:
    msg = (RCVD + b"return-PATH: <forged@evil.example>\n (folded)\n\tmore\n"
           b"Subject: s\nContent-Length: 3\nReturn-Path:<second@evil.example>\n\n"
           b"Return-Path: <in the body stays>\nContent-Length: 9\n")
    assert for_delivery(msg, "a@b.example") == (
        b"Return-Path: <a@b.example>\n" + RCVD + b"Subject: s\n\n"
        b"Return-Path: <in the body stays>\nContent-Length: 9\n")


def test_blanks_before_the_colon_still_make_a_field() -> None:
    # RFC 5322 4.5.2 obs-syntax, which the receiver's header reading takes too
    msg = RCVD + b"Subject : s\nReturn-Path : <forged@x>\n\nbody\n"
    assert for_delivery(msg, "s@x") == b"Return-Path: <s@x>\n" + RCVD + b"Subject : s\n\nbody\n"


def test_a_field_that_only_starts_alike_is_kept() -> None:
    msg = RCVD + b"Return-Path-Extra: 1\nX-Content-Length: 2\n\nbody\n"
    assert for_delivery(msg, "s@x") == b"Return-Path: <s@x>\n" + msg


def test_text_without_a_header_stays_body() -> None:
    # Postfix's cleanup: the header ends at the first line that is no field
    msg = RCVD + b"This is not a header\nSubject: planted\n\nbody\n"
    assert for_delivery(msg, "s@x") == b"Return-Path: <s@x>\n" + RCVD + b"\nThis is not a header\nSubject: planted\n\nbody\n"
    msg = RCVD + b"Subject: real\nDear Bob: hi\nmore\n"
    assert for_delivery(msg, "s@x") == b"Return-Path: <s@x>\n" + RCVD + b"Subject: real\n\nDear Bob: hi\nmore\n"


def test_a_leading_mbox_from_line_becomes_x_mailbox_line() -> None:
    msg = RCVD + b"From someone@example.org Mon Dec  7 10:00:00 2026\nFrom: a@b\nSubject: s\n\nbody\n"
    out = for_delivery(msg, "s@x")
    assert out == (b"Return-Path: <s@x>\n" + RCVD + b"X-Mailbox-Line: From someone@example.org Mon Dec  7 10:00:00 2026\n"
                   b"From: a@b\nSubject: s\n\nbody\n")
    parsed = email.message_from_bytes(out, policy=email.policy.default)
    assert parsed["Subject"] == "s" and parsed["From"] == "a@b"
    # a "From " line later in the header is no field: the header ends there
    msg = RCVD + b"Subject: s\nFrom x\nTo: y\n\nbody\n"
    assert for_delivery(msg, "s@x") == b"Return-Path: <s@x>\n" + RCVD + b"Subject: s\n\nFrom x\nTo: y\n\nbody\n"


def test_a_message_that_is_all_header_or_has_no_header() -> None:
    assert for_delivery(RCVD + b"\nReturn-Path: <body>\n", "s@x") == b"Return-Path: <s@x>\n" + RCVD + b"\nReturn-Path: <body>\n"
    assert for_delivery(RCVD + b"Return-Path: <old>\nSubject: s", "s@x") == b"Return-Path: <s@x>\n" + RCVD + b"Subject: s"
    assert for_delivery(RCVD + b"Return-Path: <old>\r\nSubject: s\r", "s@x") == b"Return-Path: <s@x>\n" + RCVD + b"Subject: s\r"


_field_name = st.sampled_from([b"Subject", b"Received", b"Return-Path", b"return-path", b"X-Return-Path",
                               b"Content-Length", b"content-length"])
_text = st.binary(max_size=30).map(lambda b: b.replace(b"\n", b" "))   # CRs stay in
_field = st.tuples(_field_name, _text, st.lists(_text.map(lambda t: b" " + t), max_size=2)).map(
    lambda f: f[0] + b": " + f[1] + b"\n" + b"".join(c + b"\n" for c in f[2]))


def _dropped(field: bytes) -> bool:
    return field.lower().startswith((b"return-path:", b"content-length:"))


@given(st.lists(_field, min_size=0, max_size=8), st.binary(max_size=200), st.text(max_size=20),
       st.booleans())
def test_one_return_path_first_and_everything_else_unchanged(fields, body, sender, headonly) -> None:
    head = RCVD + b"".join(fields)
    top = b"Return-Path: <" + sender.replace("\r", "").replace("\n", "").encode("utf-8", "surrogateescape") + b">\n"
    kept = [f for f in fields if not _dropped(f)]
    if headonly:          # no empty line: all of it is header, the last line unended
        out = for_delivery(head[:-1], sender)
        unended = fields[:-1] + [fields[-1][:-1]] if fields else []
        expect = RCVD + b"".join(f for f in unended if not _dropped(f))
        assert out == top + (expect if fields else RCVD[:-1])
        return
    out = for_delivery(head + b"\n" + body, sender)
    assert out == top + RCVD + b"".join(kept) + b"\n" + body


def test_remove_fields_takes_continuations_and_keeps_lookalikes() -> None:
    from mta.headerfields import remove_fields
    head = b"Bcc: a\n b\nBcc : c\nBcc-Extra: d\nX: e\r\n f\nbcc:"
    assert remove_fields(head, (b"bcc",)) == b"Bcc-Extra: d\nX: e\r\n f\n"
    assert remove_fields(b"", (b"bcc",)) == b""
