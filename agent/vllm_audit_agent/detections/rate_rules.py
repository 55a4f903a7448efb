"""The sliding-window rules: calls, refused credentials, refusals and flagged content counted
per subject over a window, and the distinct addresses one API key comes from."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from vllm_audit_agent.detections.event import Event
from vllm_audit_agent.detections.finding import Hit
from vllm_audit_agent.detections.settings import (
    AuthFailures,
    CallRate,
    FlaggedContent,
    KeyAddresses,
    Refusals,
    RuleSettings,
)
from vllm_audit_agent.detections.state import Buckets, Distinct, Lru, Window

S = TypeVar("S")


#: The engine's cool-down: (rule, subject kind, subject, time) -> whether a finding may be
#: made now. Asked before a hit is built: a subject over its threshold stays over it for a
#: while, and building the evidence of each suppressed crossing was most of the cost.
Admit = Callable[[str, str, str, int], bool]


def _always(rule: str, kind: str, subject: str, time_ms: int) -> bool:
    return True


class Rule(Generic[S]):
    """A rule over one LRU of per-key state per subject kind."""
    name = ""

    def __init__(self, settings: RuleSettings, max_keys: int, make: Callable[[], S]) -> None:
        self.settings = settings
        self.keys: dict[str, Lru[str, S]] = {kind: Lru(max_keys, make)
                                              for kind in settings.subjects}
        self.admit: Admit = _always

    @property
    def evicted(self) -> int:
        return sum(lru.evicted for lru in self.keys.values())

    def observe(self, event: Event) -> list[Hit]:
        hits = []
        for kind, lru in self.keys.items():
            value = event.subject(kind)
            if value:
                hit = self.check(kind, value, lru, event)
                if hit is not None:
                    hits.append(hit)
        return hits

    def check(self, kind: str, value: str, lru: Lru[str, S], event: Event) -> Hit | None:
        raise NotImplementedError


def _seconds(ms: float) -> str:
    return f"{ms / 1000:g} s"


class _Counted(Rule[Window]):
    """Events that `counts` counted per subject within a window, over `limit`."""
    what = "events"

    def __init__(self, settings: RuleSettings, max_keys: int, window_seconds: float,
                 limit: int) -> None:
        self.span_ms, self.limit = int(window_seconds * 1000), limit
        super().__init__(settings, max_keys, lambda: Window(self.span_ms, 2 * limit + 16))

    def counts(self, event: Event) -> bool:
        raise NotImplementedError

    def observe(self, event: Event) -> list[Hit]:
        return super().observe(event) if self.counts(event) else []

    def check(self, kind: str, value: str, lru: Lru[str, Window], event: Event) -> Hit | None:
        window = lru.get(value)
        window.add(event.time_ms, event.ref, event.weight)
        if window.total <= self.limit or not self.admit(self.name, kind, value, event.time_ms):
            return None
        refs = window.refs()
        return Hit(self.name, kind, value, event.tenant, window.start_ms, event.time_ms,
                   window.total, self.limit, refs, window.total,
                   f"{kind} {value} made {window.total} {self.what} within "
                   f"{_seconds(self.span_ms)} (more than {self.limit})")


class HighCallRate(_Counted):
    name, what = "high_call_rate", "calls"

    def __init__(self, settings: CallRate, max_keys: int) -> None:
        super().__init__(settings, max_keys, settings.window_seconds, settings.max_calls)

    def counts(self, event: Event) -> bool:
        return event.is_request


class AuthFailureBurst(_Counted):
    name, what = "auth_failure_burst", "refused authentications"

    def __init__(self, settings: AuthFailures, max_keys: int) -> None:
        super().__init__(settings, max_keys, settings.window_seconds, settings.max_failures)

    def counts(self, event: Event) -> bool:
        return event.auth_failed


class RepeatedRefusals(_Counted):
    name, what = "repeated_refusals", "refused requests"

    def __init__(self, settings: Refusals, max_keys: int) -> None:
        super().__init__(settings, max_keys, settings.window_seconds, settings.max_refusals)
        self.finish_reasons = frozenset(settings.finish_reasons)

    def counts(self, event: Event) -> bool:
        if not event.is_request or event.auth_failed:
            return False  # refused credentials are auth_failure_burst's
        return event.status_code >= 400 or event.error or \
            event.finish_reason in self.finish_reasons


class ApiKeyManyAddresses(Rule[Distinct]):
    name = "api_key_many_addresses"

    def __init__(self, settings: KeyAddresses, max_keys: int) -> None:
        self.span_ms, self.limit = int(settings.window_seconds * 1000), settings.max_addresses
        super().__init__(settings, max_keys,
                         lambda: Distinct(self.span_ms, 2 * self.limit + 16))

    def observe(self, event: Event) -> list[Hit]:
        return super().observe(event) if event.is_request and event.client_ip else []

    def check(self, kind: str, value: str, lru: Lru[str, Distinct], event: Event) -> Hit | None:
        seen = lru.get(value)
        seen.add(event.client_ip, event.time_ms, event.ref)
        if len(seen) <= self.limit or not self.admit(self.name, kind, value, event.time_ms):
            return None
        return Hit(self.name, kind, value, event.tenant, seen.start_ms, event.time_ms, len(seen),
                   self.limit, seen.refs(), len(seen),
                   f"{kind} {value} was used from {len(seen)} client addresses within "
                   f"{_seconds(self.span_ms)} (more than {self.limit})")


class _Flagged:
    __slots__ = ("all", "flagged")

    def __init__(self, span_ms: int, cap: int) -> None:
        self.all = Buckets(span_ms)
        self.flagged = Window(span_ms, cap)


class FlaggedContentRate(Rule[_Flagged]):
    name = "flagged_content_rate"

    def __init__(self, settings: FlaggedContent, max_keys: int) -> None:
        self.span_ms = int(settings.window_seconds * 1000)
        self.min_flagged, self.max_rate = settings.min_flagged, settings.max_rate
        super().__init__(settings, max_keys,
                         lambda: _Flagged(self.span_ms, 2 * self.min_flagged + 16))

    def observe(self, event: Event) -> list[Hit]:
        return super().observe(event) if event.is_request else []

    def check(self, kind: str, value: str, lru: Lru[str, _Flagged], event: Event) -> Hit | None:
        state = lru.get(value)
        state.all.add(event.time_ms)
        if not event.flagged:  # no signals computed (null) counts as not flagged
            return None
        state.flagged.add(event.time_ms, event.ref)
        flagged, total = state.flagged.total, max(state.all.total, 1)
        rate = flagged / total
        if flagged < self.min_flagged or rate < self.max_rate or \
                not self.admit(self.name, kind, value, event.time_ms):
            return None
        return Hit(self.name, kind, value, event.tenant, state.flagged.start_ms, event.time_ms,
                   round(rate, 4), self.max_rate, state.flagged.refs(), flagged,
                   f"{kind} {value} sent {flagged} of {total} requests with flagged content "
                   f"within {_seconds(self.span_ms)} (rate {rate:.2f}, threshold "
                   f"{self.max_rate:g} and at least {self.min_flagged})")
