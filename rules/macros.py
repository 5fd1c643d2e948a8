"""procmail's built-in regex macros: ``^FROM_DAEMON``, ``^TO_``, ``^TO``, ``^FROM_MAILER``.

What it does: ``expand_macros(pattern)`` replaces each macro keyword by the long regex
procmail substitutes for it (the strings are those compiled into procmail 3.22/3.23pre
and documented in procmailrc(5), MISCELLANEOUS), exactly the way procmail's
``conditions()`` does it (misc.c):

  * the keywords are tried in the order ``^FROM_DAEMON``, ``^TO_``, ``^TO``,
    ``^FROM_MAILER``; for each, only its *first* occurrence is looked at;
  * that occurrence is replaced unless a backslash precedes it (``\\^TO_x`` stays the
    literal regex ``\\^TO_x``); after any replacement the search starts over with the
    first keyword;
  * a condition whose text started with a backslash (which the rc parser removes,
    PROCMAIL-BEHAVIOUR 6) counts as "preceded by a backslash" at position 0.

Guarantees: pure function of its input, no regex compilation.  ``force_nocase`` in the
result is True when ``^FROM_DAEMON`` was substituted: procmail then matches the whole
condition case-insensitively even on a ``D`` recipe (PROCMAIL-BEHAVIOUR 1);
``^FROM_MAILER``, ``^TO_`` and ``^TO`` obey ``D``.

Raises nothing.
"""

from __future__ import annotations

FROM_DAEMON = (
    "(^(Mailing-List:|Precedence:.*(junk|bulk|list)|To: Multiple recipients of |"
    "(((Resent-)?(From|Sender)|X-Envelope-From):|>?From )([^>]*[^(.%@a-z0-9])?("
    "Post(ma?(st(e?r)?|n)|office)|(send)?Mail(er)?|daemon|m(mdf|ajordomo)|n?uucp|"
    "LIST(SERV|proc)|NETSERV|o(wner|ps)|r(e(quest|sponse)|oot)|b(ounce|bs\\.smtp)|"
    "echo|mirror|s(erv(ices?|er)|mtp(error)?|ystem)|A(dmin(istrator)?|MMGR|utoanswer))"
    "(([^).!:a-z0-9][-_a-z0-9]*)?[%@>\t ][^<)]*(\\(.*\\).*)?)?$([^>]|$)))"
)
TO_ = (
    "(^((Original-)?(Resent-)?(To|Cc|Bcc)|(X-Envelope|Apparently(-Resent)?)-To):"
    "(.*[^-a-zA-Z0-9_.])?)"
)
TO = (
    "(^((Original-)?(Resent-)?(To|Cc|Bcc)|(X-Envelope|Apparently(-Resent)?)-To):"
    "(.*[^a-zA-Z])?)"
)
FROM_MAILER = (
    "(^(((Resent-)?(From|Sender)|X-Envelope-From):|>?From )([^>]*[^(.%@a-z0-9])?("
    "Post(ma(st(er)?|n)|office)|(send)?Mail(er)?|daemon|mmdf|n?uucp|ops|"
    "r(esponse|oot)|(bbs\\.)?smtp(error)?|s(erv(ices?|er)|ystem)|A(dmin(istrator)?|MMGR))"
    "(([^).!:a-z0-9][-_a-z0-9]*)?[%@>\t ][^<)]*(\\(.*\\).*)?)?$([^>]|$))"
)

# Order matters: ^TO_ before ^TO (misc.c, regs[]).
_MACROS: tuple[tuple[str, str], ...] = (
    ("^FROM_DAEMON", FROM_DAEMON),
    ("^TO_", TO_),
    ("^TO", TO),
    ("^FROM_MAILER", FROM_MAILER),
)


def expand_macros(pattern: str, *, quoted_start: bool = False) -> tuple[str, bool]:
    """Return ``(expanded, force_nocase)``.

    ``quoted_start``: the condition began with a backslash that the rc parser dropped;
    a keyword at position 0 is then not expanded, as in procmail.
    """
    if "^" not in pattern:
        return pattern, False
    force_nocase = False
    i = 0
    while i < len(_MACROS):
        key, subst = _MACROS[i]
        at = pattern.find(key)
        escaped = at > 0 and pattern[at - 1] == "\\" or at == 0 and quoted_start
        if at >= 0 and not escaped:
            pattern = pattern[:at] + subst + pattern[at + len(key):]
            if i == 0:
                force_nocase = True
            i = 0
        else:
            i += 1
    return pattern, force_nocase
