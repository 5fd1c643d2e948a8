"""mta.smtp — the SMTP receiver's protocol layer: an asyncio.Protocol per connection.

server.py (listener, SessionPolicy), session.py (one conversation, a state machine fed
by data_received), commands.py (argument parsing), dataread.py (bounded command lines,
streaming DATA), limits.py (ServerLimits), simplepolicy.py (a policy for tests).  Knows
SMTP verbs and Reply formatting; decisions come from a SessionPolicy, storage from
mta.queue.
"""
