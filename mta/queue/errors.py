"""mta.queue.errors — typed errors of the queue.

``QueueError`` is the base; an ``OSError`` from the file system is wrapped in it where
the queue can say what it was doing.  The SMTP receiver turns any QueueError during
DATA into ``451 4.3.0`` (mta.reply.TEMP_LOCAL): the client keeps the message and retries.
"""

from __future__ import annotations


class QueueError(Exception):
    """Base of every error raised by mta.queue."""


class UnknownMessage(QueueError):
    """No message with this queue id is in the states the operation looks at."""


class QueueBusy(QueueError):
    """The message is claimed by a delivery in progress (its lock is held)."""


class CorruptEnvelope(QueueError):
    """An envelope file cannot be parsed or fails validation; the entry goes to corrupt/."""


class InvalidQueueId(QueueError, ValueError):
    """A string that is not a queue id was given (guards against path traversal)."""
