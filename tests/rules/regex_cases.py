"""The (pattern, message, flags) table that tests/rules/test_regex_oracle.py runs through
the real procmail and through rules.regex.

MESSAGES are whole mails (bytes, always with a From_ line so both sides see the same
header area).  CASES are ``(pattern, message key, recipe flags)``: the flags are those of
``:0`` - ``H`` (default), ``B``, ``HB``, plus ``D`` for case-distinction.  Patterns never
start with a character the condition parser treats specially (``! $ ? < > \\`` or
``NAME ??``), because this table is about the regex dialect, not about conditions.

WEIGHTED are ``(pattern, message key, flags)`` checked through ``* 1^1 pattern`` and
``$=`` (the number of matches, procmailsc(5)); INVALID patterns procmail rejects with
"Invalid regexp".
"""

from __future__ import annotations

FROM_ = b"From sender@example.org  Mon Jul  3 10:00:00 2023\n"

MESSAGES: dict[str, bytes] = {
    "plain": FROM_ + (
        b"Return-Path: <sender@example.org>\n"
        b"From: Bob Smith <bob.smith@example.org>\n"
        b"To: alice@example.com, carol@example.net\n"
        b"Cc: Dave <dave@example.com>\n"
        b"Subject: Hello there\n"
        b"X-Mailing-List: <list@example.org>\n"
        b"Message-ID: <1234@example.org>\n"
        b"\n"
        b"body one\n"
        b"Hello World\n"
        b"price: $100 {2} a.b*c\n"
        b"last line\n"
    ),
    "folded": FROM_ + (
        b"Subject: a\n\tb and\n  c\n"
        b"To: first@example.com,\n second@example.com\n"
        b"X-Long: one\n"
        b" two\n"
        b"\n"
        b"Body starts\n  indented body line\nend\n"
    ),
    "crlf": FROM_ + (
        b"From: x@example.org\r\n"
        b"Subject: crlf mail\r\n"
        b"\r\n"
        b"body crlf\r\n"
        b"second\r\n"
    ),
    "eightbit": FROM_ + (
        b"From: Andr\xe9 <andre@example.org>\n"
        b"Subject: caf\xe9 CAF\xc9 na\xefve\n"
        b"\n"
        b"\xe9t\xe9 \xff\xfe end\n"
    ),
    "daemon": b"From MAILER-DAEMON  Mon Jul  3 10:00:00 2023\n" + (
        b"From: Mail Delivery Subsystem <MAILER-DAEMON@example.org>\n"
        b"To: bob@example.com\n"
        b"Subject: Returned mail\n"
        b"Precedence: bulk\n"
        b"\n"
        b"The original message was received\n"
    ),
    "mailer": FROM_ + (
        b"From: postmaster@example.org (Mail System)\n"
        b"Resent-To: list-owner@example.com\n"
        b"Original-Cc: Joe <joe@x.org>\n"
        b"Apparently-To: someone@y.org\n"
        b"Subject: delivery report\n"
        b"\n"
        b"Report body\n"
    ),
    "nobody": FROM_ + (
        b"From: a@b.c\n"
        b"Subject: no body at all"
    ),
    "empty_body": FROM_ + b"Subject: s\nTo: x@y\n\n",
    "words": FROM_ + (
        b"Subject: the word cat, concat, cat-like\n"
        b"\n"
        b"word1 word2_x (paren) end.\n"
        b"aaa aaaa bab\n"
        b"abababab\n"
        b"x\n"
        b"\n"
        b"\n"
        b"after blank lines\n"
    ),
    # short bodies where random testing found regexp.c's corner cases
    "f1": FROM_ + b"Subject: s\n\n\nab   \na",
    "f2": FROM_ + b"Subject: s\n\n\na ab\n\naa",
    "f3": FROM_ + b"Subject: s\n\n \n b\n \naa",
    "f4": FROM_ + b"Subject: s\n\n\n",
    "f5": FROM_ + b"Subject: s\n\n\n\na ",
}

_H = ""
CASES: list[tuple[str, str, str]] = []


def _quote(p: str) -> str:
    """A leading \\ $ ? < > ! means something else on a condition line (item 6):
    an empty group in front keeps the regex as it is."""
    return "()" + p if p[:1] in ("\\", "$", "?", "<", ">", "!") else p


def _add(msg: str, flags: str, *patterns: str) -> None:
    for p in patterns:
        CASES.append((_quote(p), msg, flags))


# -- literals, case folding, areas
_add("plain", _H, "Subject: Hello", "subject: hello", "SUBJECT: HELLO there", "Hello World",
     "body one", "^From: Bob", "^from:", "^To:.*carol", "^Cc:.*dave", "X-Mailing-List",
     "nomatch", "Hello  there", "^Subject:.*there$", "there$", "^Message-ID:")
_add("plain", "D", "Subject: Hello", "subject: hello", "^SUBJECT", "Hello World", "hello")
_add("plain", "B", "Hello World", "Subject", "^body one$", "^last line$", "^Hello", "world$",
     "body one$Hello", "^^body", "^^Hello", "line$^^", "line$$^^", "line$^^", "line^^")
_add("plain", "BD", "hello world", "Hello World", "WORLD")
_add("plain", "HB", "Subject: Hello", "Hello World", "there$$body", "there$^body",
     "^^From sender", "^^From:", "line$^^", "Message-ID.*$$body one")
_add("plain", "BH", "Hello World", "Subject")
# -- header area ends with the empty line; ^^ anchors
_add("plain", _H, "^^From sender", "^^From:", "^^Return", ">$$^^", ">$^^", ">$$$^^", ">$^",
     ">$$^", ">$$$", ">$$$$", "^^", "$^", "^^$", "^^^From", "^^^^From", "(^^From)",
     "(^^|x)From sender", "org>$$(^^)", "org>$$(^^|zz)", "(org>$$^^)", "org>$$^^?",
     "^^From sender@example.org  Mon")
# -- ^ and $ in the middle of a regex each match exactly one newline (item 5)
_add("plain", _H, "Hello there$X-Mailing", "Hello there^X-Mailing", "there$^X-Mailing",
     "there$$X-Mailing", "org>$^Subject", "net$Cc", "net^Cc", "$Subject", "^Subject",
     "^^^Return", "(^|x)Subject", "Subject: Hello there(^|$)")
# -- dot, classes, negated classes
_add("plain", _H, "S.bject", "there.X-Mailing", "there[^a]X-Mailing",
     "[0-9]+@example", "[^a-z]smith", "bob[.]smith", "<[a-z]+@", "[]]", "[]a]lice",
     "[-x]Mailing", "[x-]Mailing", "X[-]Mailing", "[^-a-z]Mailing", "[A-Z]ello", "[a-z]ELLO",
     "[^A-Z]ello", "[z-a]lice", "[a-]lice", "[^]x]", "ID: <[1-4]*@", "[.]org",
     "[[]", "[\\]]", "[\\.]org", "[^^]ello", "[a-ce-g]xample", "Smith [<]", "[^<>]*@example.net")
_add("plain", "D", "[A-Z]ello", "[a-z]ello", "[^A-Z]ello", "[^a-z]ello", "[h]ello", "[H]ello")
_add("plain", "B", "[$]100", "\\$100", "\\{2\\}", "{2}", "a.b\\*c", "a\\.b", "c{2}", "[{]2[}]",
     "price: \\$1+0+", "b\\*", "\\n", "p\\rice")
# -- quantifiers, alternation, groups, literal operators
_add("plain", _H, "(Hello|Goodbye) there", "(foo|bar)", "Hel+o", "Hel*o", "Hel?lo", "Hx?ello",
     "(ab)*Hello", "(Hel)+lo", "((He)(l+))o", "a**", "x**y", "Hel+*o", "(|x)Hello", "(x|)Hello",
     "()Hello", "Hello()", "(()|())there", "H(e|a|i)llo", "Subject: (Hello|there)+",
     "(Hello )?there", "o+ther", "*Hello", "+Hello", "?Hello", "(*Hello)", "(+H)ello",
     "x|*", "Hel|*", "(Hello|)+ there", "e(l|ll)o", "[0-9]+@", "X-(Mailing|Other)-List")
# -- word delimiters consume a character (item 5)
_add("words", _H, "\\<cat\\>", "(x|)\\<cat\\>", "word \\<cat", "con\\<cat", "cat\\>-like",
     "cat\\>,", "\\<concat\\>", "Subject:\\<the")
_add("words", "B", "word1\\>", "\\<word2", "word2_x\\>", "\\<paren\\>", "end\\>", "end.\\>",
     "x\\>", "^x\\>\\>", "x\\>$", "bab\\>", "\\<aaa\\>", "(\\<aaa)+")
# -- \/ extraction (item 8)
_add("plain", _H, "H.*\\/o.*", "^Subject: \\/.*", "^Subject:\\/.*", "^From:.*<\\/[^>]+",
     "^To: \\/[^,]+", "^Cc:.*\\/<.*>", "Hello\\/", "\\/Hello", "(Hello|x)\\/ there",
     "^X-Mailing-List: \\/.*$", "^Message-ID: <\\/[0-9]+", "^From:.*\\/smith",
     "\\/(Hel|Hello) there", "Hello \\/(t|th|the|ther)", "e\\/l+", "xample\\.\\/(org|com)",
     "^To:.*\\/[a-z]+@example\\.(com|net)", "\\/.*there", "o\\/.*", "^Subject:.*\\/e.*",
     "^Subject:(.*)\\/e", "l*\\/l", "^\\/Subject.*", "^Cc: \\/[^<]*", "\\/$", "there\\/$",
     "there\\/$$", "org>$\\/$", "org>\\/$$^^", "\\/^^From", "nomatch\\/x",
     "^From: \\/.*\\/Smith", "Subject: Hel\\/lo|x\\/y", "(\\/Hello)+ there")
_add("plain", "B", "\\/.*", "^\\/.*", "body \\/one$", "\\/[a-z]+ [a-z]+$", "World$\\/price",
     "price: \\/\\$[0-9]+", "last \\/line$^^", "last \\/line$", "^\\/[^a-z]*$")
_add("plain", "D", "^subject: \\/.*", "^Subject: \\/.*", "\\/HELLO")
_add("plain", "HB", "^Message-ID: \\/.*$$body", "one$\\/Hello.*")
_add("words", "B", "a\\/a*", "\\/a+", "b\\/a*b", "(ab)+\\/ab", "\\/(ab)+", "a*\\/b", "^\\/$")
# -- folded header lines are joined for matching (item 4)
_add("folded", _H, "Subject: a \tb", "Subject: a$", "a \tb and   c", "^Subject:.*c$",
     "To: first@example.com, second", "X-Long: one two", "one$ two", "^ two",
     "^Subject: \\/.*", "^To:.*\\/second.*", "b and$", "^\tb")
_add("folded", "B", "^  indented", "Body starts$  indented", "starts   indented")
_add("folded", "HB", "c$To", "two$$Body", "a \tb", "two$$Body starts$  indented")
# -- CRLF mail: \r\n\r\n is not a header end, the whole mail is header (item 33)
_add("crlf", _H, "body crlf", "^Subject: crlf mail", "mail$", "mail\r$", "\r$\r$body",
     "^Subject: \\/.*", "second\r$", "second\r$$^^", "second\r$^^")
_add("crlf", "B", "body crlf", ".")
_add("crlf", "HB", "body crlf", "\r$$^^")
# -- 8-bit bytes: byte for byte, ASCII-only folding (item 1)
_add("eightbit", _H, "caf\xe9", "CAF\xe9", "caf\xc9", "CAF\xc9", "Andr\xe9", "na\xefve",
     "caf[\xe0-\xef]", "caf[^a-z]", "caf.", "[\xc0-\xff]", "\\/caf.*", "Subject:.*\\/\xc9.*",
     "^From: \\/[^ ]+")
_add("eightbit", "D", "CAF\xc9", "caf\xc9", "Caf\xe9")
_add("eightbit", "B", "\xe9t\xe9", "\xff\xfe", "[\xfe-\xff]+", "\\/[^ ]+ end", "\xc9T\xc9")
# -- macros (item 2, procmailrc(5))
_add("plain", _H, "^TO_alice@example.com", "^TO_carol@example.net", "^TO_lice@example.com",
     "^TO_dave@example.com", "^TOdave", "^TOave", "^TO_bob", "^TOalice", "^TO_Alice",
     "\\^TO_alice", "^TO_\\/[^,]+", "^TO\\/[a-z]+", "^FROM_DAEMON", "^FROM_MAILER",
     "^TO_(alice|bob)@", "x|^TO_carol", "^TO_alice^TO_x")
_add("plain", "D", "^TO_alice@example.com", "^TO_ALICE", "^TOalice", "^TO_Alice")
_add("daemon", _H, "^FROM_DAEMON", "^FROM_MAILER", "^TO_bob@example.com", "^FROM_DAEMON.*x",
     "^FROM_DAEMON\\/")
_add("daemon", "D", "^FROM_DAEMON", "^FROM_MAILER", "^FROM_DAEMON(Mail|x)", "^FROM_DAEMONbulk")
_add("mailer", _H, "^FROM_MAILER", "^FROM_DAEMON", "^TO_list-owner@example.com",
     "^TO_joe@x.org", "^TO_someone@y.org", "^TOsomeone", "^TO_owner@example.com",
     "^TO_\\/.*")
_add("words", _H, "^FROM_DAEMON", "^FROM_MAILER", "^TO_x")
# -- areas without a body / with an empty body
_add("nobody", _H, "no body at all$", "all$^^", "all^^", "all$$", "^Subject")
_add("nobody", "B", ".", "^^", "$", "x*")
_add("nobody", "HB", "body at all$")
_add("empty_body", _H, "x@y$$^^", "x@y$^^", "x@y$$$")
_add("empty_body", "B", ".", "^^", "$", "$$", "^^$", "x*", "\\/")
# -- blank lines in the body
_add("words", "B", "x$$$after", "x$^$after", "^$", "$$$", "^^word1", "blank lines$^^",
     "lines$$^^", "(a|b)+$", "^(ab)+$", "^a+ a+ b", "ab(ab)*$^^")

# -- regexp.c's corner cases: a \\/ ending an alternative runs on into the next ones,
#    an empty alternative is tried last, threads are tried in stack order, a split
#    reached only after the trailing virtual newline does not count
_add("f1", "B", "*+|a\\<\\/", "a\\<\\/", "a\\/|b", "a\\/|x", "(a\\/)*b", "(a\\/|x)b", "a\\/(|b)")
_add("f2", "B", "b|b([ab]*\\/)", "a\\/|b", "a\\/|b|x", "a\\/|", "|\\/", "(a|)\\/b", "(|a)\\/b")
_add("f3", "B", "(a\\>\\/?)", "a\\>\\/", "a\\/\\>", "a$\\/")
_add("f4", "B", "|\\/", "(\\/$$)", "\\/$", "\\/$$", "\\/$$$")
_add("words", "B", "(a)+\\/a", "a+\\/a", "(a)*\\/a", "x (a)+\\/a", "(ab)+\\/ab", "b(a)+\\/a")
_add("f5", "B", "[^a]?.|^\\/^", "^\\/^", "a \\/$")

WEIGHTED: list[tuple[str, str, str]] = [
    ("(\\/$$)", "f4", "B"), ("[^a]?.|^\\/^", "f5", "B"), ("(\\>^^)", "empty_body", "B"),
    ("\\/a", "f2", "B"), ("a\\/[ ]", "f2", "B"), ("\\/.", "f5", "B"), ("^^", "f5", "B"),
    ("$^^", "f5", "B"), (". $^^", "f5", "B"),
    ("a", "words", "B"), ("a+", "words", "B"), ("ab", "words", "B"), ("^.*$", "words", "B"),
    ("^", "words", "B"), ("x*", "words", "B"), ("cat", "words", _H), ("Hello", "plain", "HB"),
    ("[a-z]+", "plain", "B"), ("$", "plain", "B"), ("^[a-z]", "plain", "B"),
    ("o", "plain", _H), ("^.", "words", "B"), ("e$", "words", "B"), ("\\<a+\\>", "words", "B"),
    ("nomatch", "plain", "B"), ("line$", "plain", "B"), ("line$^^", "plain", "B"),
    ("(ab)+", "words", "B"), ("b\\/a", "words", "B"), ("$$", "words", "B"),
    ("end$", "folded", "B"), ("e", "nobody", "B"), ("[\xe9\xff]", "eightbit", "B"),
]

WEIGHTED = [(_quote(p), m, f) for p, m, f in WEIGHTED]

INVALID: list[str] = ["(a", "a)", "(a|b", "a|b)", "((a)", "Hello)(", "^TO_(x"]
