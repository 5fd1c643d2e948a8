"""mta.smtp.simplepolicy — a small SessionPolicy for tests and the demo.

Accepts every client, HELO and sender.  A recipient is rejected ``550 5.7.1`` (relay
denied) when its domain is not in ``domains`` (if given), ``550 5.1.1`` when ``users``
is given and the address is not in it, and gets ``450 4.7.1`` when it is in ``tempfail``.
The real policy (access maps, relay-domains) is mta.policy.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from .. import reply as R
from ..verdict import Accept, Reject, TempFail, Verdict


class SimplePolicy:
    def __init__(self, *, domains: Iterable[str] | None = None, users: Iterable[str] | None = None,
                 tempfail: Iterable[str] = (), reject_clients: Iterable[str] = ()) -> None:
        self.domains = None if domains is None else {d.lower() for d in domains}
        self.users = None if users is None else {u.lower() for u in users}
        self.tempfail = {t.lower() for t in tempfail}
        self.reject_clients = set(reject_clients)

    def check_connect(self, client_ip: str) -> Verdict:
        if client_ip in self.reject_clients:
            return Reject(R.CONNECT_REJECTED)
        return Accept()

    def check_helo(self, client_ip: str, helo: str) -> Verdict:
        return Accept()

    def check_mail(self, client_ip: str, helo: str, sender: str, params: Mapping[str, str]) -> Verdict:
        return Accept()

    def check_rcpt(self, client_ip: str, helo: str, sender: str, recipient: str) -> Verdict:
        addr = recipient.lower()
        if addr in self.tempfail:
            return TempFail(R.TEMP_POLICY)
        domain = addr.rpartition("@")[2]
        if self.domains is not None and domain not in self.domains:
            return Reject(R.RELAY_DENIED)
        if self.users is not None and addr not in self.users:
            return Reject(R.USER_UNKNOWN)
        return Accept()
