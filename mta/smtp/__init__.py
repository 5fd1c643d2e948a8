"""mta.smtp — the SMTP receiver's protocol layer on asyncio streams.

server.py (listener, SessionPolicy), session.py (one conversation), commands.py (argument
parsing), dataread.py (bounded lines, streaming DATA), limits.py (ServerLimits),
simplepolicy.py (a policy for tests).  Knows SMTP verbs and Reply formatting; decisions
come from a SessionPolicy, storage from mta.queue.
"""
