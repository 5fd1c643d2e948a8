"""mta.queue.envelope — the envelope of a queued message, serialised as JSON.

An ``Envelope`` records what SMTP said about a message, as opposed to what the message
says about itself: the envelope sender (``""`` for the null sender ``<>``), each
recipient with its own delivery state, when and from whom the message arrived, its size,
and the ESMTP parameters that matter later (BODY=8BITMIME, SMTPUTF8, DSN's ORCPT/NOTIFY/
RET/ENVID if a future receiver collects them).

Recipient states (one per recipient, sendmail/Postfix keep the same per-recipient record):

    pending    not tried yet (or crashed during a try): deliver now
    deferred   a try failed temporarily; ``next_try`` is when to try again
    delivered  done; never tried again
    failed     permanently failed (a bounce is due or was sent); never tried again

Guarantees: ``to_json``/``from_json`` round-trip exactly; ``from_json`` validates every
field and raises ``CorruptEnvelope`` for anything else, so a damaged file is put aside
instead of being half-read.  Envelopes are mutable on purpose: the runner updates
recipient states and saves them with ``ClaimedMessage.save`` (atomic tmp+fsync+rename).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from .errors import CorruptEnvelope

State = Literal["pending", "delivered", "deferred", "failed"]
STATES: tuple[str, ...] = ("pending", "delivered", "deferred", "failed")
FORMAT_VERSION = 1


@dataclass(slots=True)
class RecipientState:
    """One recipient and how far its delivery got."""

    address: str
    state: State = "pending"
    attempts: int = 0
    next_try: float | None = None
    last_error: str | None = None
    orcpt: str | None = None
    notify: str | None = None

    @property
    def is_final(self) -> bool:
        return self.state in ("delivered", "failed")

    def due(self, now: float) -> bool:
        """Whether this recipient should be tried at ``now``."""
        if self.state == "pending":
            return True
        if self.state == "deferred":
            return self.next_try is None or self.next_try <= now
        return False

    def mark_delivered(self) -> None:
        self.state, self.attempts, self.next_try = "delivered", self.attempts + 1, None

    def mark_deferred(self, error: str, next_try: float) -> None:
        self.state, self.attempts = "deferred", self.attempts + 1
        self.next_try, self.last_error = next_try, error

    def mark_failed(self, error: str) -> None:
        self.state, self.attempts = "failed", self.attempts + 1
        self.next_try, self.last_error = None, error


@dataclass(slots=True)
class Envelope:
    """Sender, recipients with their states, and the arrival record of one message."""

    sender: str
    recipients: list[RecipientState]
    received_at: float
    size: int = 0
    client_ip: str | None = None
    client_name: str | None = None
    helo: str | None = None
    protocol: str = "ESMTP"
    body: str | None = None  # "7BIT" / "8BITMIME" as given by MAIL BODY=
    smtputf8: bool = False
    message_id: str | None = None
    envid: str | None = None
    ret: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    # --- derived ------------------------------------------------------------------
    @property
    def is_done(self) -> bool:
        """Every recipient is delivered or failed: the message can leave the queue."""
        return all(r.is_final for r in self.recipients)

    def next_due(self) -> float | None:
        """Earliest time any recipient is due (0.0 for pending), None when done."""
        times = [0.0 if r.state == "pending" else (r.next_try or 0.0)
                 for r in self.recipients if not r.is_final]
        return min(times) if times else None

    def due(self, now: float) -> bool:
        return any(r.due(now) for r in self.recipients)

    # --- serialisation --------------------------------------------------------------
    def to_json(self) -> bytes:
        # Built by hand and written without indentation: dataclasses.asdict deep-copies
        # and ``indent`` forces json's pure-Python encoder, together a sixth of the SMTP
        # receiver's CPU per message (tests/benchmarks/bench_mta.py).  One key per line
        # would help only ``cat``; ``postroom mailq`` is the reader for people.
        data = {name: getattr(self, name) for name in _ENVELOPE_FIELDS}
        data["recipients"] = [{name: getattr(r, name) for name in _RECIPIENT_FIELDS}
                              for r in self.recipients]
        data["extra"] = dict(self.extra)
        data["version"] = FORMAT_VERSION
        return json.dumps(data, ensure_ascii=False, sort_keys=True).encode("utf-8") + b"\n"

    @classmethod
    def from_json(cls, raw: bytes) -> Envelope:
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise CorruptEnvelope(f"envelope is not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise CorruptEnvelope("envelope is not a JSON object")
        if data.pop("version", None) != FORMAT_VERSION:
            raise CorruptEnvelope("unknown envelope format version")
        try:
            rcpts = data.pop("recipients", None)
            if not isinstance(rcpts, list) or not rcpts:
                raise CorruptEnvelope("envelope has no recipients")
            recipients = [_recipient(r) for r in rcpts]
            env = cls(recipients=recipients, **data)
        except TypeError as exc:
            raise CorruptEnvelope(f"bad envelope fields: {exc}") from exc
        _check(env)
        return env


_ENVELOPE_FIELDS = tuple(f.name for f in fields(Envelope) if f.name not in ("recipients", "extra"))
_RECIPIENT_FIELDS = tuple(f.name for f in fields(RecipientState))


def _recipient(raw: Any) -> RecipientState:
    if not isinstance(raw, dict):
        raise CorruptEnvelope("recipient is not an object")
    try:
        r = RecipientState(**raw)
    except TypeError as exc:
        raise CorruptEnvelope(f"bad recipient fields: {exc}") from exc
    if r.state not in STATES:
        raise CorruptEnvelope(f"bad recipient state {r.state!r}")
    if not isinstance(r.address, str) or not isinstance(r.attempts, int) or r.attempts < 0:
        raise CorruptEnvelope("bad recipient address or attempts")
    if r.next_try is not None and not isinstance(r.next_try, (int, float)):
        raise CorruptEnvelope("bad next_try")
    for name in ("last_error", "orcpt", "notify"):
        if getattr(r, name) is not None and not isinstance(getattr(r, name), str):
            raise CorruptEnvelope(f"bad recipient {name}")
    return r


def _check(env: Envelope) -> None:
    if not isinstance(env.sender, str):
        raise CorruptEnvelope("bad sender")
    if not isinstance(env.received_at, (int, float)) or not isinstance(env.size, int):
        raise CorruptEnvelope("bad received_at or size")
    if not isinstance(env.smtputf8, bool) or not isinstance(env.protocol, str):
        raise CorruptEnvelope("bad smtputf8 or protocol")
    for name in ("client_ip", "client_name", "helo", "body", "message_id", "envid", "ret"):
        if getattr(env, name) is not None and not isinstance(getattr(env, name), str):
            raise CorruptEnvelope(f"bad {name}")
    if not isinstance(env.extra, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env.extra.items()):
        raise CorruptEnvelope("bad extra")
