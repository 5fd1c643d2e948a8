"""mta.smtp.limits — the numbers that bound an SMTP session.

Defaults follow RFC 5321 4.5.3 (command line 512 octets, text line 1000, 100 recipients)
and 4.5.3.2 (a server waits at least 5 minutes for a command), sendmail's MaxHopCount /
Postfix hopcount_limit for the Received: loop count, and Postfix's smtpd_hard_error_limit
for the error counters.  All lengths count the terminating CRLF.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServerLimits:
    max_line: int = 512               # RFC 5321 4.5.3.1.4 command line
    max_text_line: int = 1000         # RFC 5321 4.5.3.1.6 text line in DATA
    max_recipients: int = 100         # RFC 5321 4.5.3.1.8
    max_message_size: int = 35 * 1024 * 1024   # advertised as SIZE (RFC 1870)
    max_connections: int = 100        # concurrent sessions; more get 421 4.3.2
    idle_timeout: float = 300.0       # a whole command line must arrive within this
    data_timeout: float = 300.0       # DATA: at most this long without a complete line
    max_data_time: float = 3600.0     # DATA: the whole message (sendmail Timeout.datafinal)
    greet_pause: float = 1.0          # sendmail FEATURE(greet_pause): early talkers refused
    max_bad_commands: int = 20        # Postfix smtpd_hard_error_limit
    max_unknown_rcpts: int = 20       # rejected RCPTs before disconnecting a prober
    max_received_headers: int = 30    # more Received: headers than this is a loop

    def __post_init__(self) -> None:
        if self.max_line < 512 or self.max_text_line < 1000:
            raise ValueError("RFC 5321 minimum line lengths are 512 and 1000")
        if self.max_recipients < 1 or self.max_message_size < 1 or self.max_connections < 1:
            raise ValueError("limits must be positive")
