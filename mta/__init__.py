"""mta — everything SMTP: receiver, policy, durable queue, runner, routing maps, CLI.

Depends on deliver/ and rules/.  The `postroom` console script enters through mta.cli,
which imports subcommand modules lazily so `postroom deliver` stays fast.
"""
