"""rules — the procmailrc recipe language: AST, parser, regex dialect, evaluator.

Depends on nothing else in postroom; deliver/ supplies the Effects that actions need.
Importing this package must stay cheap (no pyparsing, no re2) because `postroom deliver`
imports it once per message; heavy modules are imported where they are used.
"""
