"""deliver — the local delivery agent: mailboxes, locking, programs, `postroom deliver`.

Depends on rules/, never on mta/.  Importing the package is cheap by design.
"""
