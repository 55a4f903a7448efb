"""The content-signal rule set: what each ContentSignal flag counts, as compiled patterns.

One pattern per flag, its alternatives joined, so a scan is one pass of the text per flag;
a flag whose matches must also pass a check (a card's Luhn digit, an IBAN's mod-97, a phone
number's shape) names that check. The personal-data patterns are the `redact` policy's own
(pii.py): one definition of each.

RULESET names the rule set in every record that carries its counts. Any change to what a
pattern matches is a new version, so counts from two versions are never compared as one.

Choices a reader of the counts should know (tests/hooks/test_signals.py holds each):
  - SQL words alone are not injection: "drop the table salt" (a recipe) and "how do I join
    two tables" are not flagged; "DROP TABLE users" (in any case, even in prose: "drop table
    salt" is flagged, a pattern cannot tell it from SQL) and the classic tautology and
    comment tricks are.
  - Shell commands are flagged where they are injected (after ; && | or inside $( ) or
    backticks) or are a known destructive or exfiltrating idiom (rm -rf, | sh, /dev/tcp),
    not where a text merely names a command.
  - Prompt-injection phrases are English only, and aimed at instructions: "ignore my previous
    message" (a user correcting themself) is not flagged, "ignore all previous instructions" is.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import NamedTuple

from vllm_audit.v1 import events_pb2 as pb
from vllm_hooks.events.pii import (
    CARD,
    EMAIL,
    IBAN,
    PHONE,
    PHONE_DIGITS,
    card_number,
    iban_valid,
    phone_number,
)

RULESET = "vllm-audit-signals/1"
_PREFIX = "CONTENT_SIGNAL_"


def flag_name(value: int) -> str:
    """A ContentSignal value's name in records: CONTENT_SIGNAL_PII_CARD -> "pii_card"."""
    return pb.ContentSignal.Name(value).removeprefix(_PREFIX).lower()


#: Speed: each rule is a few patterns that each begin with a literal, matched against the
#: lower-cased text (injection rules) or the text itself (secrets, personal data): `re` then
#: jumps from one occurrence of the literal to the next instead of trying every position.
#: One pattern of alternatives per rule, starting with \b or an alternation, was ~100x
#: slower (1.6 ms per KiB of prose, measured: scripts/benchmarks.py signals).

Check = Callable[["re.Match[str]"], bool]


class Pattern(NamedTuple):
    """A compiled pattern and the literal every match of it begins with: the scan asks
    `literal in text` (a C substring search, ~20x faster than `re` finding nothing) before
    it runs the pattern."""

    literal: str
    regex: re.Pattern[str]


#: Characters that stand for themselves in these patterns, and the escaped ones that do too.
_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_'\";`/-:@ ")
_ESCAPED = frozenset("$()|.[]{}*+?^\\/-`\"'")


def leading_literal(pattern: str) -> str:
    """The characters every match of `pattern` begins with (up to its first construct that is
    not a plain character; a character a quantifier makes optional is not included)."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern) and pattern[i + 1] in _ESCAPED:
            out.append(pattern[i + 1])
            i += 2
        elif c in _PLAIN:
            out.append(c)
            i += 1
        else:
            if c in "?*{" and out:
                out.pop()
            break
    return "".join(out)


def _compiled(*patterns: str) -> tuple[Pattern, ...]:
    return tuple(Pattern(leading_literal(p), re.compile(p)) for p in patterns)


def _word_start(match: re.Match[str]) -> bool:
    """The match does not begin inside a word ("task-..." is not an "sk-..." key)."""
    i = match.start()
    return i == 0 or not match.string[i - 1].isalnum()


#: What an injected shell command does first: destroy, fetch, open a shell, look around.
#: (Commands a programming question names every day, python, git, cd, are not here.)
_PAYLOAD = (r"(?:rm\s+-|curl\s|wget\s|nc\s|ncat\s|netcat\s|bash\s+-[ci]|sh\s+-c|whoami\b"
            r"|uname\s+-a|cat\s+/etc/)")

SQL_INJECTION = _compiled(
    r"drop\s+(?:table|database|schema)\s+(?:if\s+exists\s+)?[\w`\"\[]",
    r"union\s+(?:all\s+)?select\b",
    r"'\s*(?:or|and)\s+'[^']*'\s*=\s*'",  # ' or 'a'='a
    r"or\s+(\d+)\s*=\s*\1\b",  # or 1=1
    # A quote or a statement's end, then a comment: the rest of the query is cut off.
    r"'\s*--(?:\s|$)", r"\"\s*--(?:\s|$)", r";\s*--(?:\s|$)",
    r";\s*(?:delete\s+from|insert\s+into|truncate\s+table|alter\s+table|update\s+\w+\s+set"
    r"|exec\b|shutdown\b)",  # a stacked query
    r"xp_cmdshell\b",
    r"waitfor\s+delay\s+'",
    r"sleep\s*\(\s*\d+\s*\)\s*(?:--|#|and\b|or\b|=)", r"pg_sleep\s*\(\s*\d",
    r"benchmark\s*\(\s*\d+\s*,",
    r"information_schema\.(?:tables|columns)\b",
)

COMMAND_INJECTION = _compiled(
    rf";\s*{_PAYLOAD}",
    rf"\$\(\s*{_PAYLOAD}",
    r"`\s*(?:whoami|id|uname(?:\s+-a)?|cat\s+/etc/[^`\n]*|(?:nc|ncat|wget|curl)\s[^`\n]*)\s*`",
    r"rm\s+-(?:[a-z]*r[a-z]*f|[a-z]*f[a-z]*r)[a-z]*\s+(?:/|~|\*|\.\.?(?:\s|$))",
    r"\|\s*(?:sudo\s+)?(?:ba|z|da)?sh\b",
    r"/dev/tcp/",
    r"nc(?:at)?\s+(?:\S+\s+){0,6}-e\s",
    r"/etc/(?:passwd|shadow)\b",
)

_OBEYED = (r"\s+(?:all\s+|any\s+|every\s+)?(?:of\s+)?(?:the\s+|your\s+|these\s+|those\s+)?"
           r"(?:previous|prior|above|earlier|preceding|original|initial|system)\s+"
           r"(?:instructions?|prompts?|rules|directions|guidelines)")
_HIDDEN = (r"\s+(?:me\s+|us\s+)?(?:your|the)\s+(?:full\s+|entire\s+|original\s+|hidden\s+)?"
           r"(?:system\s+prompt|initial\s+(?:prompt|instructions)|hidden\s+instructions"
           r"|instructions\s+above)")
PROMPT_INJECTION = _compiled(
    *(verb + _OBEYED for verb in ("ignore", "disregard", "forget", "override", "bypass")),
    *(verb + _HIDDEN for verb in ("reveal", "show", "print", "repeat", "output", "display",
                                  "leak", "tell")),
    r"you\s+are\s+now\s+(?:dan|in\s+developer\s+mode|jailbroken|unrestricted|unfiltered"
    r"|an?\s+(?:unrestricted|unfiltered|uncensored))\b",
    r"do\s+anything\s+now\b",
    *(mode + r"\s+mode\s+(?:enabled|activated|on)\b" for mode in ("developer", "god",
                                                                  "jailbreak")),
    r"pretend\s+(?:that\s+)?you\s+(?:are|have)\s+(?:no|not\s+bound\s+by)\s+"
    r"(?:restrictions|rules|guidelines|filters)",
)

SECRET = _compiled(  # matched against the text as written: these keys are case-sensitive
    r"A(?:KIA|SIA|BIA|CCA)[0-9A-Z]{16}\b",  # AWS access key id
    r"gh[pousr]_[A-Za-z0-9]{36,255}\b",  # GitHub tokens
    r"github_pat_[A-Za-z0-9_]{22,255}\b",
    r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----",
    r"sk-(?:proj-|ant-(?:api\d\d-)?)?[A-Za-z0-9_-]{20,}",  # OpenAI, Anthropic
    r"sk_(?:live|test)_[A-Za-z0-9]{16,}", r"rk_(?:live|test)_[A-Za-z0-9]{16,}",  # Stripe
    r"xox[abposr]-[A-Za-z0-9-]{10,}",  # Slack
    r"AIza[0-9A-Za-z_-]{35}",  # Google API key
    r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",  # a JWT
)


class Rule(NamedTuple):
    flag: str
    #: Every match of every pattern counts (one text may match more than one pattern).
    patterns: tuple[Pattern, ...]
    #: Matched against the lower-cased text (else the text as written).
    lower: bool = False
    #: A match counts only when this holds (None: every match counts).
    check: Check | None = None
    #: An earlier rule's pattern whose matches, valid or not, are blanked out before this one
    #: runs: an IBAN's digit groups, checksum right or wrong, are not a phone number (the
    #: `redact` policy replaces IBANs before phones for the same reason).
    masked_by: re.Pattern[str] | None = None
    #: Not run on a text with fewer ASCII digits than this (no phone has fewer than 9).
    min_digits: int = 0


#: In scan order: a rule that masks another comes first.
RULES: tuple[Rule, ...] = (
    Rule(flag_name(pb.CONTENT_SIGNAL_SQL_INJECTION), SQL_INJECTION, lower=True),
    Rule(flag_name(pb.CONTENT_SIGNAL_COMMAND_INJECTION), COMMAND_INJECTION, lower=True),
    Rule(flag_name(pb.CONTENT_SIGNAL_PROMPT_INJECTION), PROMPT_INJECTION, lower=True),
    Rule(flag_name(pb.CONTENT_SIGNAL_SECRET), SECRET, check=_word_start),
    Rule(flag_name(pb.CONTENT_SIGNAL_PII_EMAIL), (Pattern("@", EMAIL),)),
    Rule(flag_name(pb.CONTENT_SIGNAL_PII_IBAN), (Pattern("", IBAN),), check=lambda m: iban_valid(m.group(0)),
         min_digits=8),
    Rule(flag_name(pb.CONTENT_SIGNAL_PII_CARD), (Pattern("", CARD),), check=lambda m: card_number(m.group(0)),
         min_digits=PHONE_DIGITS[0] + 4),
    Rule(flag_name(pb.CONTENT_SIGNAL_PII_PHONE), (Pattern("", PHONE),),
         check=lambda m: phone_number(m.group(0)), masked_by=IBAN, min_digits=PHONE_DIGITS[0]),
)
