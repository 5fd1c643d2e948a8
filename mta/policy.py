"""mta.policy — what the SMTP receiver accepts, decided over the routing maps.

SYNOPSIS
    policy = RecipientPolicy(Router(config, Maps.from_config(config)))
    SmtpServer(..., policy=policy, ...)             # mta.smtp.server.SessionPolicy
    for out in drive(policy, open("case.in")): print(out)   # the test driver

RCPT (check_rcpt), in this order
    bad address syntax                         Reject 501 5.1.3
    postmaster, bare or @ a local domain       Accept — always (RFC 5321 4.5.1)
    domain neither local nor virtual           Reject 550 5.7.1 Relaying denied
                                               (AUTH and relay-domains: next issue)
    resolves only to failures                  Reject with that reply (unknown user:
                                               550 5.1.1, virtusertable/aliases error:)
    a map or :include: file unreadable         TempFail 451 4.3.0 — never "not found"
    otherwise                                  Accept
    An address that resolves to some good and some failed destinations (a list with
    one bad member) is accepted; the failures bounce at delivery, as sendmail does.

CONNECT, HELO, MAIL
    Accepted: access maps, DNSBLs and sender checks belong to later issues.

TEST DRIVER (Postfix smtpd_check style)
    ``drive(policy, lines)`` reads ``client 1.2.3.4``, ``helo name``, ``mail addr``,
    ``rcpt addr`` lines (``#`` comments, blank lines ignored) and yields one line per
    command: ``rcpt bob@example.com: accept`` or ``rcpt x@y: reject 550 5.7.1 Relaying
    denied``.  tests/mta/policy/*.in + *.ref are run through it.

ERRORS
    None of its own: routing's Reject/Defer become verdicts here, in one place; any other
    exception is a bug and propagates (the SMTP layer answers 451 and logs it).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping

from . import reply as R
from .maps.names import NameSyntaxError
from .routing import Address, Defer, DomainClass, Reject as RouteReject, Router, parse_address
from .verdict import Accept, Reject, TempFail, Verdict

__all__ = ["RecipientPolicy", "drive", "format_verdict"]

log = logging.getLogger(__name__)

RELAY_DENIED = R.RELAY_DENIED  # 550 5.7.1


class RecipientPolicy:
    """SessionPolicy whose RCPT decision is the router's resolution of the address."""

    def __init__(self, router: Router) -> None:
        self.router = router

    def check_connect(self, client_ip: str) -> Verdict:
        return Accept()

    def check_helo(self, client_ip: str, helo: str) -> Verdict:
        return Accept()

    def check_mail(self, client_ip: str, helo: str, sender: str, params: Mapping[str, str]) -> Verdict:
        return Accept()

    def check_rcpt(self, client_ip: str, helo: str, sender: str, recipient: str) -> Verdict:
        try:
            address = parse_address(recipient)
        except NameSyntaxError as exc:
            return Reject(R.BAD_ADDRESS.with_text(f"Bad recipient address syntax: {exc}"))
        try:
            kind = self.router.classify(address.domain)
            if _is_postmaster(address) and kind == DomainClass.LOCAL:
                return Accept()
            if kind == DomainClass.REMOTE:
                log.info("relay denied: client=%s from=<%s> to=<%s>", client_ip, sender, recipient)
                return Reject(RELAY_DENIED)
            self.router.resolve(address)
        except Defer as exc:
            log.warning("recipient deferred: to=<%s>: %s", recipient, exc.reply)
            return TempFail(exc.reply)
        except RouteReject as exc:
            log.info("recipient rejected: client=%s to=<%s>: %s", client_ip, recipient, exc.reply)
            return Reject(exc.reply)
        return Accept()


def _is_postmaster(address: Address) -> bool:
    # RFC 5321 4.5.1: "postmaster" is case-insensitive, bare or qualified.
    return address.local.lower() in ("postmaster", '"postmaster"')


def format_verdict(verdict: Verdict) -> str:
    match verdict:
        case Accept(reply):
            return "accept" if reply is None else f"accept {reply}"
        case Reject(reply):
            return f"reject {reply}"
        case TempFail(reply):
            return f"tempfail {reply}"
    raise TypeError(f"not a verdict: {verdict!r}")


def drive(policy: RecipientPolicy, lines: Iterable[str]) -> Iterator[str]:
    """Run a policy script; one output line per command (see module doc)."""
    client, helo, sender = "127.0.0.1", "", ""
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        verb, _, arg = line.partition(" ")
        arg = arg.strip()
        match verb.lower():
            case "client":
                client = arg
                verdict = policy.check_connect(client)
            case "helo" | "ehlo":
                helo = arg
                verdict = policy.check_helo(client, helo)
            case "mail":
                sender = arg.strip("<>")
                verdict = policy.check_mail(client, helo, sender, {})
            case "rcpt":
                verdict = policy.check_rcpt(client, helo, sender, arg)
            case _:
                yield f"{line}: error: unknown command {verb!r}"
                continue
        yield f"{line}: {format_verdict(verdict)}"
