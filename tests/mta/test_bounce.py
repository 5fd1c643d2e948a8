"""mta.bounce: RFC 3464 structure, parsed back with the email package; hypothesis on content."""

from __future__ import annotations

import email
import email.policy
import re

import pytest
from hypothesis import given, settings, strategies as st

from mta.bounce import Failure, build_bounce, should_bounce, split_header
from mta.queue import Envelope, RecipientState

HEADERS = b"Received: from x\nFrom: Alice <alice@example.org>\nSubject: original subject\n"


def env(sender: str = "alice@example.org") -> Envelope:
    return Envelope(sender=sender, recipients=[RecipientState("bob@example.com")],
                    received_at=1_700_000_000.0, helo="client.example", client_ip="192.0.2.7")


def parse(raw: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)


def test_structure_and_fields() -> None:
    f = Failure("bob@example.com", "5.1.1", "smtp; 550 5.1.1 User unknown", orcpt="list@example.com")
    raw = build_bounce(env(), HEADERS, [f], reporting_mta="mx.example.com", qid="ABC123",
                       now=1_700_000_100.0)
    assert b"\r" not in raw and raw.endswith(b"\n")
    msg = parse(raw)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert msg["To"].addresses[0].addr_spec == "alice@example.org"
    assert msg["From"] == "Mail Delivery Subsystem <MAILER-DAEMON@mx.example.com>"
    assert msg["Auto-Submitted"] == "auto-replied"
    human, status, headers = msg.iter_parts()
    assert human.get_content_type() == "text/plain"
    text = human.get_content()
    assert "<bob@example.com>" in text and "expanded from: <list@example.com>" in text
    assert "550 5.1.1 User unknown" in text
    assert status.get_content_type() == "message/delivery-status"
    per_msg, per_rcpt = [dict(b.items()) for b in status.get_payload()]
    assert per_msg["Reporting-MTA"] == "dns; mx.example.com"
    assert per_msg["Arrival-Date"] == email.utils.formatdate(1_700_000_000.0, localtime=True)
    assert per_rcpt == {
        "Original-Recipient": "rfc822;list@example.com",
        "Final-Recipient": "rfc822;bob@example.com",
        "Action": "failed",
        "Status": "5.1.1",
        "Diagnostic-Code": "smtp; 550 5.1.1 User unknown",
        "Last-Attempt-Date": email.utils.formatdate(1_700_000_100.0, localtime=True),
    }
    assert headers.get_content_type() == "text/rfc822-headers"
    assert "Subject: original subject" in headers.get_payload()


def test_null_sender_is_never_bounced() -> None:
    assert not should_bounce(env(""))
    assert should_bounce(env())
    with pytest.raises(ValueError):
        build_bounce(env(""), HEADERS, [Failure("b@x", "5.0.0", "x-unix; no")],
                     reporting_mta="mx", qid="Q")


def test_split_header() -> None:
    assert split_header(b"A: 1\nB: 2\n\nbody\n\nmore\n") == b"A: 1\nB: 2\n"
    assert split_header(b"A: 1\n") == b"A: 1\n"
    assert split_header(b"\nbody only\n") == b""


addresses = st.from_regex(r"[a-z0-9._+-]{1,20}@[a-z0-9-]{1,15}\.[a-z]{2,6}", fullmatch=True)
texts = st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=120)


@settings(max_examples=40, deadline=None)
@given(sender=addresses, rcpts=st.lists(st.tuples(addresses, st.sampled_from(["5.1.1", "5.2.2", "4.4.7"]),
                                                  texts), min_size=1, max_size=5),
       subject=texts)
def test_every_failure_round_trips(sender: str, rcpts, subject: str) -> None:
    failures = [Failure(a, s, f"smtp; 550 {s} {t}") for a, s, t in rcpts]
    raw = build_bounce(env(sender), f"Subject: {subject}\n".encode(), failures,
                       reporting_mta="mx.example.com", qid="Q1")
    msg = parse(raw)
    assert msg["To"].addresses[0].addr_spec == sender
    _, status, headers = msg.iter_parts()
    blocks = [dict(b.items()) for b in status.get_payload()][1:]
    assert [(b["Final-Recipient"], b["Status"]) for b in blocks] == \
        [(f"rfc822;{a}", s) for a, s, _ in rcpts]
    for b, (_, s, t) in zip(blocks, rcpts):
        # header folding may re-space long values; the words survive
        assert b["Diagnostic-Code"].split() == f"smtp; 550 {s} {t}".split()
    assert subject.split() == headers.get_payload().removeprefix("Subject:").split()


def test_non_ascii_recipient_uses_utf8_address_type() -> None:
    # RFC 6533 3: utf-8-addr-xtext in a message/delivery-status (an ASCII part), not
    # RFC 2047 around the whole field
    raw = build_bounce(env(), HEADERS, [Failure("jösé+1@exämple.com", "5.1.1", "x-unix; gone")],
                       reporting_mta="mx", qid="Q")
    assert b"\nFinal-Recipient: utf-8;j\\x{F6}s\\x{E9}\\x{2B}1@ex\\x{E4}mple.com\n" in raw
    assert b"=?utf-8?" not in raw
    _, status, _ = parse(raw).iter_parts()
    value = dict(status.get_payload()[1].items())["Final-Recipient"]
    assert _from_xtext(value.removeprefix("utf-8;")) == "jösé+1@exämple.com"


def _from_xtext(text: str) -> str:
    return re.sub(r"\\x\{([0-9A-F]{2,6})\}", lambda m: chr(int(m.group(1), 16)), text)


@given(st.text(min_size=1, max_size=30).filter(lambda a: not a.isascii()))
def test_utf8_addr_xtext_is_ascii_and_reads_back(address: str) -> None:
    from mta.bounce import _address_type
    value = _address_type(address)
    assert value.startswith("utf-8;") and value.isascii()
    body = value.removeprefix("utf-8;")
    assert all(c not in "+=" for c in re.sub(r"\\x\{[0-9A-F]+\}", "", body))
    assert _from_xtext(body) == address


def test_utf8_and_latin1_headers_are_returned_as_they_came() -> None:
    # 8-bit headers (an SMTPUTF8 or BODY=8BITMIME message): the bounce building raised
    # UnicodeEncodeError on UTF-8 ones, and the bounce was never sent
    for headers in ("Subject: Grüße aus Köln\nFrom: jörg@example.org\n".encode(),
                    b"Subject: caf\xe9\n"):
        raw = build_bounce(env(), headers, [Failure("x@y.example", "5.1.1", "x-unix; gone")],
                           reporting_mta="mx", qid="Q")
        *_, returned = parse(raw).iter_parts()
        assert returned.get_content_type() == "text/rfc822-headers"
        assert headers in raw
