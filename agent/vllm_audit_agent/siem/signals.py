"""The content signals a request record carries (`content_signals`, issue 21's contract),
read the same way by every SIEM format and the fleet store's Sigma view.

`{"ruleset": "vllm-audit-signals/1", "prompt": {"<flag>": count}, "output": {...}}`: only
non-zero flags appear; the whole field is null when signals were not computed. The flag
names are the contract enum ContentSignal's, lower-cased; they are listed here because the
Sigma view needs a column per flag even for flags no record has shown yet.
"""

from __future__ import annotations

from typing import Any

#: ContentSignal's names, lower-cased, in enum order (tests check they match the proto's).
CONTENT_FLAGS = ("sql_injection", "command_injection", "prompt_injection", "secret", "pii_email",
                 "pii_phone", "pii_card", "pii_iban")
#: The two texts a signal is counted in.
SIDES = ("prompt", "output")


def side_flags(record: dict[str, Any], side: str) -> dict[str, int]:
    """The non-zero flag counts of one side ({} when none, or when signals were not computed)."""
    signals = record.get("content_signals")
    if not isinstance(signals, dict):
        return {}
    counts = signals.get(side)
    if not isinstance(counts, dict):
        return {}
    return {str(k): int(v) for k, v in counts.items() if isinstance(v, int | float) and v}


def flagged(record: dict[str, Any]) -> list[str]:
    """`side.flag` for every flag counted in the record, sorted (e.g. "prompt.sql_injection")."""
    return sorted(f"{side}.{flag}" for side in SIDES for flag in side_flags(record, side))
