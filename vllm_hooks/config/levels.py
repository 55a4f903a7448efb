"""Audit levels (what each captures, ranked) and the named presets built on them.

The rank is what the hook's call sites compare; the wire number is the contract's
(`vllm_audit.v1.AuditLevel`), imported only when a level is put on or read off the wire.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class Level(IntEnum):
    """Audit levels. The int is a *rank* (what a level captures, in increasing order), so call
    sites compare with `>=`; the wire number is `vllm_audit.v1.AuditLevel`, where KEY_EVENTS was
    appended as 5 (wire numbers are forever), hence the two differ. Names match the proto enum
    without its AUDIT_LEVEL_ prefix (a unit test holds them together)."""

    OFF = 10
    SUMMARY = 20
    #: Compile, first and last step, rejections, rollbacks, errors and finish.
    KEY_EVENTS = 25
    FULL = 30
    FULL_WITH_ALLOWED_SETS = 40

    @property
    def wire(self) -> int:
        from vllm_audit.v1 import events_pb2 as pb

        return int(pb.AuditLevel.Value("AUDIT_LEVEL_" + self.name))

    @classmethod
    def from_wire(cls, value: int) -> Level:
        """Raises ValueError for a wire value with no level (including UNSPECIFIED)."""
        from vllm_audit.v1 import events_pb2 as pb

        name = pb.AuditLevel.Name(value).removeprefix("AUDIT_LEVEL_")
        if name not in cls.__members__:
            raise ValueError(f"no audit level for wire value {value}")
        return cls[name]

    @classmethod
    def parse(cls, text: str) -> Level:
        key = text.strip().lower().replace("-", "_")
        for level in cls:
            if level.name.lower() == key:
                return level
        names = ", ".join(level.name.lower().replace("_", "-") for level in cls)
        raise ValueError(f"unknown audit level {text!r}; expected one of: {names}")


@dataclass(frozen=True)
class Preset:
    level: Level
    include_grammar: bool
    in_response: bool = False
    response_level: str = "summary"


PRESETS: dict[str, Preset] = {
    # Who called what and the structured-output summary: the cheapest useful audit.
    "minimal": Preset(Level.SUMMARY, include_grammar=False),
    # The seed's middle granularity, with the grammar kept so a trail is self-contained.
    "standard": Preset(Level.KEY_EVENTS, include_grammar=True),
    # Every step with its allowed count and the grammar: `vllm-audit replay` can prove it.
    "forensic": Preset(Level.FULL, include_grammar=True),
    # Everything, the allowed sets too, and the audit in each response.
    "debug": Preset(Level.FULL_WITH_ALLOWED_SETS, include_grammar=True, in_response=True,
                    response_level="full"),
}
