"""mta.verdict — the three outcomes of every policy decision.

A policy check (connect, HELO, MAIL, RCPT) returns one of

* ``Accept(reply=None)``  — go on; ``reply`` overrides the protocol's default 2xx text;
* ``Reject(reply)``       — permanent refusal; ``reply`` must be 5xx;
* ``TempFail(reply)``     — try again later; ``reply`` must be 4xx.  An unreadable map or
  a DNS timeout is a TempFail, never "not found" (OpenSMTPD's three-way match).

Guarantees: verdicts are immutable and their reply class is checked at construction, so
a Reject can never carry a 2xx by mistake.  Errors: ``ValueError`` for a reply of the
wrong class.
"""

from __future__ import annotations

from dataclasses import dataclass

from .reply import Reply


@dataclass(frozen=True, slots=True)
class Accept:
    reply: Reply | None = None

    def __post_init__(self) -> None:
        if self.reply is not None and self.reply.code >= 400:
            raise ValueError(f"Accept with a failure reply: {self.reply}")


@dataclass(frozen=True, slots=True)
class Reject:
    reply: Reply

    def __post_init__(self) -> None:
        if not self.reply.is_permanent:
            raise ValueError(f"Reject needs a 5xx reply, got {self.reply}")


@dataclass(frozen=True, slots=True)
class TempFail:
    reply: Reply

    def __post_init__(self) -> None:
        if not self.reply.is_temporary:
            raise ValueError(f"TempFail needs a 4xx reply, got {self.reply}")


Verdict = Accept | Reject | TempFail
