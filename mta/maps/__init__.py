"""mta.maps — the sendmail-style text maps routing and policy consult.

    local-host-names   localhosts.LocalHostNames   domains that are local
    virtusertable      virtusertable.Virtusertable virtual address -> address/user/error
    aliases            aliases.Aliases             local name -> targets (+ :include:)
    users              users.UsersFile / SystemUsers  passwd-format users
    relay-domains      relaydomains.RelayDomains   domains we relay for

Each map reloads itself when its file changes (mapfile.MapFile), reports bad lines as
``file:line: error: ...`` and raises MapUnavailable (a temporary failure) when its
file cannot be read.  ``Maps.from_config`` builds them all from a Config; a map whose
path is not configured is None (users: the system password database).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import Config
from .aliases import Aliases
from .localhosts import LocalHostNames
from .mapfile import Diagnostic, MapError, MapUnavailable
from .relaydomains import RelayDomains
from .users import SystemUsers, Users, UsersFile
from .virtusertable import Virtusertable

__all__ = [
    "Maps",
    "MapError",
    "MapUnavailable",
    "Diagnostic",
    "Aliases",
    "LocalHostNames",
    "RelayDomains",
    "SystemUsers",
    "Users",
    "UsersFile",
    "Virtusertable",
]


@dataclass(frozen=True, slots=True)
class Maps:
    local_host_names: LocalHostNames
    virtusertable: Virtusertable | None
    aliases: Aliases | None
    users: Users
    relay_domains: RelayDomains | None

    @classmethod
    def from_config(cls, config: Config) -> "Maps":
        m = config.maps
        return cls(
            local_host_names=LocalHostNames(m.local_host_names, config.server.hostname),
            virtusertable=Virtusertable(m.virtusertable) if m.virtusertable else None,
            aliases=Aliases(m.aliases) if m.aliases else None,
            users=UsersFile(m.users, config.server.data_dir) if m.users else SystemUsers(),
            relay_domains=RelayDomains(m.relay_domains) if m.relay_domains else None,
        )

    def diagnostics(self) -> list[str]:
        """Every map's diagnostics (for `postroom check` and the startup log)."""
        out: list[str] = []
        for m in (self.local_host_names, self.virtusertable, self.aliases, self.users, self.relay_domains):
            if m is not None:
                out.extend(m.diagnostics)
        return out
