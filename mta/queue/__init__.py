"""mta.queue — the durable mail queue: a spool of directories on one file system.

``Spool`` (spool.py) stores messages; ``Envelope`` (envelope.py) is the JSON record of
sender, per-recipient state and attempts; ``ids`` makes queue ids.  This package knows
directories, fsync, rename and locks — never SMTP or policy.
"""

from .envelope import Envelope, RecipientState
from .errors import CorruptEnvelope, QueueBusy, QueueError, UnknownMessage
from .spool import ClaimedMessage, EnvelopeInfo, IncomingMessage, Spool

__all__ = [
    "ClaimedMessage", "CorruptEnvelope", "Envelope", "EnvelopeInfo", "IncomingMessage",
    "QueueBusy", "QueueError", "RecipientState", "Spool", "UnknownMessage",
]
