"""Content signals: how often each rule of the rule set (signal_rules.py) matches a request's
prompt and output, counted on the sender thread before the capture policy hashes or redacts
the text (raw_events.py), so the counts survive the HMAC. Counts only: the matched text never
leaves this module.

Bounded: over `max_chars` per side, the first and the last half of that many characters are
scanned (an injection padded behind a long benign prefix is still seen at the end) and the
rest is counted as unscanned. Measured cost: `python scripts/benchmarks.py signals`.
"""

from __future__ import annotations

import re
from typing import Any

from vllm_hooks.events.signal_rules import RULES, RULESET

_DIGITS = b"0123456789"


def scan(text: str) -> dict[str, int]:
    """Matches of each flag in `text`: only the flags that matched."""
    counts: dict[str, int] = {}
    lowered = text.lower()
    # Counted on the UTF-8 bytes: bytes.translate is ~10x faster than str.count per digit.
    encoded = text.encode("utf-8", "surrogatepass")
    digits = len(encoded) - len(encoded.translate(None, _DIGITS))
    shaped: set[re.Pattern[str]] = set()  # patterns that matched at all, checked or not
    for flag, patterns, lower, check, masked_by, min_digits in RULES:
        if digits < min_digits:
            continue
        subject = lowered if lower else text
        if masked_by is not None and masked_by in shaped:
            subject = masked_by.sub(" ", subject)
        n = 0
        for literal, regex in patterns:
            if literal not in subject:
                continue
            for match in regex.finditer(subject):
                shaped.add(regex)
                if check is None or check(match):
                    n += 1
        if n:
            counts[flag] = n
    return counts


def bounded(text: str, max_chars: int) -> tuple[str, int]:
    """(the part of `text` to scan, how many characters are left out). Over the cap: the head
    and the tail, joined by a line break so no pattern matches across the cut."""
    if len(text) <= max_chars:
        return text, 0
    half = max_chars // 2
    return text[:half] + "\n" + text[len(text) - (max_chars - half):], len(text) - max_chars


def content_signal_fields(prompt: str, output: str, max_chars: int) -> dict[str, Any]:
    """The HttpRequest fields `content_signals` and `content_signals_unscanned_chars`."""
    prompt_part, prompt_left = bounded(prompt, max_chars)
    output_part, output_left = bounded(output, max_chars)
    return {
        "content_signals": {"ruleset": RULESET, "prompt": scan(prompt_part),
                            "output": scan(output_part)},
        "content_signals_unscanned_chars": prompt_left + output_left,
    }
