"""mta.config: postroom.toml loading, unknown keys, value parsing, embedded default."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from mta.config import (
    Config,
    ConfigError,
    Listener,
    install_samples,
    load_config,
    parse_duration,
    parse_listener,
    parse_size,
)
from mta.maps import Maps

SAMPLES = Path(__file__).resolve().parents[2] / "samples"


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "postroom.toml"
    p.write_text(text)
    return p


def test_sample_loads_and_resolves_paths_against_its_directory() -> None:
    c = load_config(SAMPLES / "postroom.toml")
    assert c.server.hostname == "mail.example.com"
    assert c.server.data_dir == SAMPLES / "var"
    assert c.maps.aliases == SAMPLES / "aliases"
    assert c.maps.relay_domains is None  # "" disables
    assert c.smtp.listeners == (Listener("127.0.0.1", 2525), Listener("::1", 2525))
    assert c.smtp.limits.max_message_size == 35 * 1024 * 1024
    assert c.smtp.timeouts.command == 300 and c.smtp.timeouts.data == 600
    assert c.queue.queue_lifetime == 5 * 86400 and c.queue.max_backoff == 4 * 3600
    assert c.deliver.mail_spool == SAMPLES / "var" / "mail"
    assert c.config_dir == SAMPLES


def test_sample_maps_are_clean() -> None:
    maps = Maps.from_config(load_config(SAMPLES / "postroom.toml"))
    assert maps.diagnostics() == []
    demo = maps.users.lookup("demo")
    assert demo is not None and demo.home == SAMPLES / "var" / "home" / "demo"


@pytest.mark.parametrize(
    "text, path",
    [
        ("foo = 1\n", "foo"),
        ("[server]\nhostnme = 'x'\n", "server.hostnme"),
        ("[smtp]\nlisten = ['127.0.0.1:25']\n", "smtp.listen"),
        ("[smtp.limits]\nmax_size = 3\n", "smtp.limits.max_size"),
        ("[smtp.timeouts]\nfoo = 3\n", "smtp.timeouts.foo"),
        ("[maps]\nalias = 'aliases'\n", "maps.alias"),
        ("[deliver]\nsystemrc = 'x'\n", "deliver.systemrc"),
    ],
)
def test_unknown_key_is_an_error_naming_its_path(tmp_path: Path, text: str, path: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, text))
    assert str(exc.value) == f"postroom.toml: unknown key {path}"


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("[server]\nhostname = 3\n", "server.hostname: expected a string"),
        ("[smtp]\nlisteners = ['nohostport']\n", "smtp.listeners[0]"),
        ("[smtp]\nlisteners = []\n", "smtp.listeners: expected a non-empty list"),
        ("[smtp]\nlisteners = ['1.2.3.4:70000']\n", "out of range"),
        ("[smtp.limits]\nmax_recipients = 0\n", "must be >= 1"),
        ("[smtp.limits]\nmax_recipients = true\n", "expected an integer"),
        ("[smtp.limits]\nmax_message_size = '12 parsecs'\n", "expected a size"),
        ("[queue]\ninitial = 'soon'\n", "queue.initial: expected a duration"),
        ("[queue]\ninitial = '1h'\nmax_backoff = '5m'\n", "max_backoff must be >= queue.initial"),
        ("[deliver]\nrun_as_root_drop = 'yes'\n", "expected true or false"),
        ("[deliver]\nuser_rc = '/etc/x'\n", "relative to the home"),
        ("smtp = 3\n", "smtp: expected a table"),
        ("[server\n", "postroom.toml:"),
    ],
)
def test_bad_values(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, text))
    assert fragment in str(exc.value)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "postroom.toml"
    bad.write_bytes(b"a = '\xff'\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(bad)


def test_defaults_and_absolute_paths(tmp_path: Path) -> None:
    c = load_config(write(tmp_path, "[maps]\naliases = '/etc/aliases'\nusers = 'etc/users'\n"))
    assert c.maps.aliases == Path("/etc/aliases")
    assert c.maps.users == tmp_path / "etc" / "users"
    assert c.maps.virtusertable is None
    assert c.deliver.system_rc == Path("/etc/procmailrc")
    assert c.deliver.mail_spool == Path("/var/mail")
    assert c.deliver.run_as_root_drop is True
    assert c.queue.queue_lifetime == 5 * 86400
    assert c.server.data_dir == tmp_path / "var" and c.server.spool_dir == tmp_path / "var" / "spool"
    assert load_config(None).path is None


def test_config_is_frozen_and_replaceable(tmp_path: Path) -> None:
    c = load_config(write(tmp_path, ""))
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.server.hostname = "x"  # type: ignore[misc]
    d = dataclasses.replace(c, queue=dataclasses.replace(c.queue, initial=1.0))
    assert d.queue.initial == 1.0 and c.queue.initial == 300.0


def test_embedded_default_lives_under_base_dir(tmp_path: Path) -> None:
    c = Config.embedded_default(tmp_path)
    assert c.smtp.listeners == (Listener("127.0.0.1", 2525),)
    var = tmp_path.resolve() / "var"
    for p in (c.server.data_dir, c.server.spool_dir, c.server.log_file, c.deliver.mail_spool):
        assert p is not None and p.is_relative_to(var)
    assert c.deliver.run_as_root_drop is False
    written = install_samples(c)
    assert len(written) == 5 and install_samples(c) == []  # never overwrites
    maps = Maps.from_config(c)
    assert maps.diagnostics() == []
    from mta.routing import LocalMailbox, RemoteDest, Router

    res = Router(c, maps).resolve("sales")  # the sample list, through its :include: file
    assert res.destinations == (LocalMailbox("demo"), RemoteDest("partner@elsewhere.example"))
    assert res.envelope_sender_override == f"owner-sales@{c.server.hostname}"
    demo = maps.users.lookup("demo")
    assert demo is not None and demo.home == var / "home" / "demo"


def test_listener_forms() -> None:
    assert parse_listener("[::1]:25") == Listener("::1", 25)
    assert str(Listener("::1", 25)) == "[::1]:25"
    assert parse_listener("localhost:0") == Listener("localhost", 0)
    for bad in ("::1:25", "host", ":25", "host:", 25):
        with pytest.raises(ConfigError):
            parse_listener(bad)


def test_durations_and_sizes() -> None:
    assert parse_duration("90s") == 90 and parse_duration("5m") == 300 and parse_duration("2d") == 172800
    assert parse_duration(1.5) == 1.5 and parse_duration("1w") == 7 * 86400
    assert parse_size("35M") == 35 * 1024**2 and parse_size("512k") == 512 * 1024 and parse_size(10) == 10
    for bad in (True, -1, "5 fortnights", "", float("nan")):
        with pytest.raises(ConfigError):
            parse_duration(bad)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=12), st.integers(), st.floats(), st.booleans(), st.none()))
def test_value_parsers_never_raise_anything_else(value: object) -> None:
    for parser in (parse_duration, parse_size, parse_listener):
        try:
            parser(value)
        except ConfigError:
            pass
