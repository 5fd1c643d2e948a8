"""postroom.toml — the daemon's configuration as a frozen dataclass tree.

SYNOPSIS
    config = load_config("/etc/postroom/postroom.toml")
    config = load_config(None)                    # the built-in defaults, config dir = cwd
    config = Config.embedded_default(Path("."))   # what `make run` uses
    fast = dataclasses.replace(config, queue=dataclasses.replace(config.queue, initial=1.0))

DESCRIPTION
    The file is read with tomllib and mapped onto frozen, slotted dataclasses, one per
    section: [server], [smtp] (with [smtp.limits] and [smtp.timeouts]), [queue], [maps]
    and [deliver].  Every path is configurable; a relative path is resolved against the
    directory of the configuration file, so a whole installation can live in a temporary
    directory (tests, `make run`).  Durations are seconds (int or float) or strings with a
    unit: "90s", "5m", "4h", "5d".  Sizes are bytes or strings such as "35M", "512k".

    The configuration is passed in to whoever needs it; there is no module global
    (CONVENTIONS.md, "Configuration").  Overrides are made with dataclasses.replace.

GUARANTEES
    A Config that was returned is complete and type-checked: every field has the declared
    type, every path is absolute, every listener has a host and a port in 1..65535
    (port 0 allowed: "let the kernel choose", for tests).

ERRORS
    ConfigError is raised for an unreadable file, invalid TOML, an unknown key (the message
    names its dotted path, e.g. ``postroom.toml: unknown key smtp.listen.foo``), a value of
    the wrong type or out of range.  Callers (the CLI) turn it into exit status 78
    (EX_CONFIG).
"""

from __future__ import annotations

import math
import os
import re
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

__all__ = [
    "ConfigError",
    "Listener",
    "ServerConfig",
    "SmtpLimits",
    "SmtpTimeouts",
    "SmtpConfig",
    "QueueConfig",
    "MapsConfig",
    "DeliverConfig",
    "Config",
    "load_config",
    "parse_duration",
    "parse_size",
    "parse_listener",
    "install_samples",
]


class ConfigError(Exception):
    """postroom.toml cannot be loaded; the message names the file and the key path."""


# --------------------------------------------------------------------------- sections


@dataclass(frozen=True, slots=True)
class Listener:
    """One SMTP listening socket, written "host:port" or "[v6addr]:port" in the file."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class ServerConfig:
    hostname: str
    data_dir: Path  # "var": queue, logs, demo homes live under it by default
    spool_dir: Path  # the durable queue (mta/queue/)
    log_file: Path | None  # None: log to stderr


@dataclass(frozen=True, slots=True)
class SmtpLimits:
    max_message_size: int = 35 * 1024 * 1024  # advertised with SIZE (RFC 1870)
    max_recipients: int = 100  # RFC 5321 4.5.3.1.8: at least 100 must be accepted
    max_connections: int = 100
    greet_pause: float = 0.0  # seconds before the 220 banner; early talkers are refused


@dataclass(frozen=True, slots=True)
class SmtpTimeouts:
    # RFC 5321 4.5.3.2: server timeout at least 5 minutes while waiting for a command,
    # 10 minutes for the DATA terminator.
    command: float = 300.0
    data: float = 600.0


@dataclass(frozen=True, slots=True)
class SmtpConfig:
    listeners: tuple[Listener, ...] = (Listener("127.0.0.1", 25),)
    limits: SmtpLimits = field(default_factory=SmtpLimits)
    timeouts: SmtpTimeouts = field(default_factory=SmtpTimeouts)
    # Receiver processes sharing the listening sockets (as Postfix runs many smtpd);
    # 0 = one per CPU, at most 4.  mta.serve explains why more than one.
    processes: int = 0

    def receiver_processes(self) -> int:
        """How many receiver processes ``postroom serve`` runs (never more than the
        connection limit, so every process may hold at least one session)."""
        n = self.processes or min(4, os.cpu_count() or 1)
        return max(1, min(n, self.limits.max_connections))


@dataclass(frozen=True, slots=True)
class QueueConfig:
    initial: float = 300.0  # first retry after a temporary failure
    max_backoff: float = 4 * 3600.0  # the retry interval doubles up to this
    queue_lifetime: float = 5 * 86400.0  # then bounce (sendmail Timeout.queuereturn=5d)


@dataclass(frozen=True, slots=True)
class MapsConfig:
    """Paths of the sendmail-style text maps; None disables a map.

    ``users`` None means the system password database (pwd); a path means a
    passwd-format file, used when postroom runs as an ordinary user.
    """

    local_host_names: Path | None = None
    virtusertable: Path | None = None
    aliases: Path | None = None
    users: Path | None = None
    relay_domains: Path | None = None


@dataclass(frozen=True, slots=True)
class DeliverConfig:
    system_rc: Path = Path("/etc/procmailrc")
    mail_spool: Path = Path("/var/mail")
    default_mailbox: str = "$MAIL_SPOOL/$LOGNAME"  # procmail's DEFAULT, per user
    user_rc: str = ".procmailrc"  # relative to the user's home
    run_as_root_drop: bool = True  # fork and drop to the recipient before reading rc files


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration.  ``path`` is the file it came from (None: built in)."""

    server: ServerConfig
    smtp: SmtpConfig
    queue: QueueConfig
    maps: MapsConfig
    deliver: DeliverConfig
    path: Path | None = None

    @property
    def config_dir(self) -> Path:
        """The directory relative paths were resolved against."""
        return self.path.parent if self.path is not None else Path.cwd()

    @classmethod
    def embedded_default(cls, base_dir: Path | str) -> "Config":
        """A self-contained, unprivileged installation under ``base_dir``.

        Listens on 127.0.0.1:2525; maps are read from ``base_dir/etc`` (see
        install_samples) and everything written goes under ``base_dir/var``.
        The demo user's home in ``etc/users`` is relative, hence under var.
        """
        base = Path(base_dir).resolve()
        etc, var = base / "etc", base / "var"
        return cls(
            server=ServerConfig(
                hostname=_default_hostname(),
                data_dir=var,
                spool_dir=var / "spool",
                log_file=var / "log" / "postroom.log",
            ),
            smtp=SmtpConfig(listeners=(Listener("127.0.0.1", 2525),)),
            queue=QueueConfig(),
            maps=MapsConfig(
                local_host_names=etc / "local-host-names",
                virtusertable=etc / "virtusertable",
                aliases=etc / "aliases",
                users=etc / "users",
                relay_domains=None,
            ),
            deliver=DeliverConfig(
                system_rc=etc / "procmailrc",
                mail_spool=var / "mail",
                # The embedded demo runs unprivileged.  Started as root anyway, its only
                # user is the fictional `demo` whose rc is the operator's own copy of
                # samples/procmailrc (root-owned): dropping to a uid that may not even be
                # able to reach the checkout (/root is 0700) would only break the demo.
                run_as_root_drop=False,
            ),
            path=etc / "postroom.toml",
        )


SAMPLES_DIR = Path(__file__).resolve().parent.parent / "samples"


def install_samples(config: Config, samples_dir: Path = SAMPLES_DIR) -> list[Path]:
    """Copy the sample maps next to an embedded-default config, never overwriting.

    Returns the files written.  Used by `make run` so that a fresh checkout has a demo
    user and a postmaster alias; an admin's edits survive because existing files stay.
    """
    written = []
    maps = config.maps
    targets = {
        "local-host-names": maps.local_host_names,
        "virtusertable": maps.virtusertable,
        "aliases": maps.aliases,
        "users": maps.users,
        # the :include: list named by the sample aliases, next to the aliases file
        "sales.list": maps.aliases.parent / "sales.list" if maps.aliases else None,
    }
    for name, dest in targets.items():
        if dest is None or dest.exists():
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes((samples_dir / name).read_bytes())
        written.append(dest)
    return written


def _default_hostname() -> str:
    return socket.getfqdn().lower() or "localhost"


# --------------------------------------------------------------------------- values

_DURATION_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", re.IGNORECASE)
_DURATION_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_SIZE_RE = re.compile(r"\s*(\d+)\s*([kmg]?)b?\s*", re.IGNORECASE)
_SIZE_UNIT = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parse_duration(value: object, where: str = "value") -> float:
    """Seconds from a number or a string like "5m"; ConfigError when malformed."""
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a duration, got a boolean")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION_RE.fullmatch(value)):
        seconds = float(m.group(1)) * _DURATION_UNIT[m.group(2).lower()]
    else:
        raise ConfigError(f'{where}: expected a duration such as 300 or "5m", got {value!r}')
    if not math.isfinite(seconds) or seconds < 0:
        raise ConfigError(f"{where}: a duration must be a finite number >= 0")
    return seconds


def parse_size(value: object, where: str = "value") -> int:
    """Bytes from an int or a string like "35M"; ConfigError when malformed."""
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a size, got a boolean")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (m := _SIZE_RE.fullmatch(value)):
        size = int(m.group(1)) * _SIZE_UNIT[m.group(2).lower()]
    else:
        raise ConfigError(f'{where}: expected a size such as 1048576 or "35M", got {value!r}')
    if size < 0:
        raise ConfigError(f"{where}: a size must be >= 0")
    return size


_LISTENER_RE = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:\[\]\s]+)):(?P<port>\d{1,5})")


def parse_listener(value: object, where: str = "listener") -> Listener:
    """A Listener from "host:port" or "[v6addr]:port"."""
    if not isinstance(value, str) or not (m := _LISTENER_RE.fullmatch(value)):
        raise ConfigError(f'{where}: expected "host:port" or "[v6addr]:port", got {value!r}')
    port = int(m.group("port"))
    if port > 65535:
        raise ConfigError(f"{where}: port {port} out of range 0..65535")
    return Listener(m.group("v6") or m.group("host"), port)


# --------------------------------------------------------------------------- loading


class _Section:
    """Reads typed values out of one TOML table and reports what was left unread."""

    def __init__(self, file: str, path: str, table: Mapping[str, Any], base: Path) -> None:
        self.file, self.prefix, self.table, self.base = file, path, dict(table), base
        self._seen: set[str] = set()

    def where(self, key: str) -> str:
        return f"{self.file}: {self.prefix}.{key}" if self.prefix else f"{self.file}: {key}"

    def _get(self, key: str) -> Any:
        self._seen.add(key)
        return self.table.get(key, _MISSING)

    def sub(self, key: str) -> "_Section":
        value = self._get(key)
        if value is _MISSING:
            value = {}
        if not isinstance(value, dict):
            raise ConfigError(f"{self.where(key)}: expected a table")
        return _Section(self.file, f"{self.prefix}.{key}" if self.prefix else key, value, self.base)

    def string(self, key: str, default: str) -> str:
        value = self._get(key)
        if value is _MISSING:
            return default
        if not isinstance(value, str):
            raise ConfigError(f"{self.where(key)}: expected a string, got {type(value).__name__}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self._get(key)
        if value is _MISSING:
            return default
        if not isinstance(value, bool):
            raise ConfigError(f"{self.where(key)}: expected true or false")
        return value

    def integer(self, key: str, default: int, minimum: int = 0) -> int:
        value = self._get(key)
        if value is _MISSING:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{self.where(key)}: expected an integer")
        if value < minimum:
            raise ConfigError(f"{self.where(key)}: must be >= {minimum}")
        return value

    def duration(self, key: str, default: float) -> float:
        value = self._get(key)
        return default if value is _MISSING else parse_duration(value, self.where(key))

    def size(self, key: str, default: int) -> int:
        value = self._get(key)
        return default if value is _MISSING else parse_size(value, self.where(key))

    def path_or_none(self, key: str, default: Path | None) -> Path | None:
        """A path resolved against the config directory; "" in the file means None."""
        value = self._get(key)
        if value is _MISSING:
            return default
        if not isinstance(value, str):
            raise ConfigError(f"{self.where(key)}: expected a path string")
        if value == "":
            return None
        return (self.base / Path(value).expanduser()).resolve()

    def path(self, key: str, default: Path) -> Path:
        value = self.path_or_none(key, default)
        if value is None:
            raise ConfigError(f"{self.where(key)}: must not be empty")
        return value

    def listeners(self, key: str, default: tuple[Listener, ...]) -> tuple[Listener, ...]:
        value = self._get(key)
        if value is _MISSING:
            return default
        if not isinstance(value, list) or not value:
            raise ConfigError(f'{self.where(key)}: expected a non-empty list of "host:port"')
        return tuple(parse_listener(v, f"{self.where(key)}[{i}]") for i, v in enumerate(value))

    def finish(self) -> None:
        """Refuse keys nobody asked for: a typo must not be silently ignored."""
        for key in self.table:
            if key not in self._seen:
                name = f"{self.prefix}.{key}" if self.prefix else key
                raise ConfigError(f"{self.file}: unknown key {name}")


_MISSING = object()


def load_config(path: str | Path | None) -> Config:
    """Load postroom.toml at ``path``; None gives the built-in defaults (config dir = cwd)."""
    if path is None:
        return _build({}, "<defaults>", Path.cwd(), None)
    file_path = Path(path).expanduser().resolve()
    try:
        raw = file_path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{file_path.name}: not UTF-8: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file_path.name}: {exc}") from exc
    return _build(data, file_path.name, file_path.parent, file_path)


def _build(data: Mapping[str, Any], file: str, base: Path, path: Path | None) -> Config:
    top = _Section(file, "", data, base)

    s = top.sub("server")
    data_dir = s.path("data_dir", (base / "var").resolve())
    server = ServerConfig(
        hostname=s.string("hostname", "").strip().rstrip(".").lower() or _default_hostname(),
        data_dir=data_dir,
        spool_dir=s.path("spool_dir", data_dir / "spool"),
        log_file=s.path_or_none("log_file", None),
    )
    s.finish()

    s = top.sub("smtp")
    defaults = SmtpConfig()
    listeners = s.listeners("listeners", defaults.listeners)
    lim = s.sub("limits")
    d = SmtpLimits()
    limits = SmtpLimits(
        max_message_size=lim.size("max_message_size", d.max_message_size),
        max_recipients=lim.integer("max_recipients", d.max_recipients, minimum=1),
        max_connections=lim.integer("max_connections", d.max_connections, minimum=1),
        greet_pause=lim.duration("greet_pause", d.greet_pause),
    )
    lim.finish()
    tmo = s.sub("timeouts")
    t = SmtpTimeouts()
    timeouts = SmtpTimeouts(command=tmo.duration("command", t.command), data=tmo.duration("data", t.data))
    tmo.finish()
    processes = s.integer("processes", defaults.processes)
    s.finish()
    smtp = SmtpConfig(listeners=listeners, limits=limits, timeouts=timeouts, processes=processes)

    s = top.sub("queue")
    q = QueueConfig()
    queue = QueueConfig(
        initial=s.duration("initial", q.initial),
        max_backoff=s.duration("max_backoff", q.max_backoff),
        queue_lifetime=s.duration("queue_lifetime", q.queue_lifetime),
    )
    if queue.max_backoff < queue.initial:
        raise ConfigError(f"{file}: queue.max_backoff must be >= queue.initial")
    s.finish()

    s = top.sub("maps")
    maps = MapsConfig(
        local_host_names=s.path_or_none("local_host_names", None),
        virtusertable=s.path_or_none("virtusertable", None),
        aliases=s.path_or_none("aliases", None),
        users=s.path_or_none("users", None),
        relay_domains=s.path_or_none("relay_domains", None),
    )
    s.finish()

    s = top.sub("deliver")
    dd = DeliverConfig()
    deliver = DeliverConfig(
        system_rc=s.path("system_rc", dd.system_rc),
        mail_spool=s.path("mail_spool", dd.mail_spool),
        default_mailbox=s.string("default_mailbox", dd.default_mailbox),
        user_rc=s.string("user_rc", dd.user_rc),
        run_as_root_drop=s.boolean("run_as_root_drop", dd.run_as_root_drop),
    )
    if not deliver.user_rc or deliver.user_rc.startswith("/"):
        raise ConfigError(f"{file}: deliver.user_rc must be a file name relative to the home directory")
    s.finish()

    top.finish()
    return Config(server=server, smtp=smtp, queue=queue, maps=maps, deliver=deliver, path=path)

