"""The content signals' flag names as records, metrics and the schema name them: the contract's
ContentSignal enum, each value's name in lower case without its prefix (the hook counts under
the same names: vllm_hooks/events/signal_rules.py)."""

from __future__ import annotations

from vllm_audit.v1 import events_pb2 as pb

_PREFIX = "CONTENT_SIGNAL_"
#: Every flag, in the enum's order (UNSPECIFIED is not a flag).
SIGNAL_NAMES: tuple[str, ...] = tuple(
    v.name.removeprefix(_PREFIX).lower() for v in pb.ContentSignal.DESCRIPTOR.values if v.number)
KNOWN = frozenset(SIGNAL_NAMES)
#: The sides of a request a signal is counted on (ContentSignals' maps).
SIDES = ("prompt", "output")
