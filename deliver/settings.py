"""Site settings for the delivery agent: where the system rc file and the spool are.

procmail compiles these in; postroom takes them from the environment (the MTA sets them
for its deliveries) or from the [deliver] table of postroom.toml named by
$POSTROOM_CONFIG, so that tests and `make run` can use a private spool.  tomllib is only
imported when a config file is named, keeping the per-message start-up small.
"""

from __future__ import annotations

import os
from typing import Mapping

from .agent import Site


class SettingsError(Exception):
    """postroom.toml's [deliver] table has a key or value we do not understand."""


_KEYS = {"system_rc", "spool_dir", "user_rc", "sendmail"}
_INT_KEYS = {"max_message_size"}


def load_site(environ: Mapping[str, str]) -> Site:
    values: dict[str, str | None] = {}
    sizes: dict[str, int] = {}
    config = environ.get("POSTROOM_CONFIG")
    if config:
        import tomllib
        with open(config, "rb") as fh:
            table = tomllib.load(fh).get("deliver", {})
        base = os.path.dirname(os.path.abspath(config))
        for key, value in table.items():
            if key in _INT_KEYS:
                if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                    raise SettingsError(f"{config}: deliver.{key} must be a positive integer")
                sizes[key] = value
                continue
            if key not in _KEYS:
                continue    # other [deliver] keys belong to the MTA (mta.config validates them)
            if not isinstance(value, str):
                raise SettingsError(f"{config}: deliver.{key} must be a string")
            values[key] = value if key == "user_rc" or os.path.isabs(value) or not value \
                else os.path.join(base, value)
    for key, var in (("system_rc", "POSTROOM_SYSTEM_RC"), ("spool_dir", "POSTROOM_SPOOL_DIR"),
                     ("sendmail", "POSTROOM_SENDMAIL")):
        if var in environ:
            values[key] = environ[var]
    if "POSTROOM_MAX_MESSAGE_SIZE" in environ:
        try:
            sizes["max_message_size"] = int(environ["POSTROOM_MAX_MESSAGE_SIZE"])
        except ValueError:
            raise SettingsError("POSTROOM_MAX_MESSAGE_SIZE must be an integer") from None
    site = Site()
    if "system_rc" in values:
        site = Site(values["system_rc"] or None, site.spool_dir, site.user_rc, site.sendmail)
    return Site(site.system_rc,
                values.get("spool_dir") or site.spool_dir,
                values.get("user_rc") or site.user_rc,
                values.get("sendmail") or site.sendmail,
                sizes.get("max_message_size", site.max_message_size))
