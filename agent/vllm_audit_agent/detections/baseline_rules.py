"""The baseline rules: a request's output length against its user's and its model's, a
tenant's token spend per bucket against its earlier buckets. Both compare with a robust
baseline (median and MAD, state.RobustBaseline): one long answer or one busy minute moves a
median little, where a mean and a standard deviation would follow the outlier."""

from __future__ import annotations

from collections import deque

from vllm_audit_agent.detections.event import Event
from vllm_audit_agent.detections.finding import EVIDENCE_MAX, Hit
from vllm_audit_agent.detections.rate_rules import Rule
from vllm_audit_agent.detections.settings import Baseline, OutputLength, TokenSpend
from vllm_audit_agent.detections.state import Lru, RobustBaseline


def _baseline(settings: Baseline) -> RobustBaseline:
    return RobustBaseline(settings.history, settings.warmup, settings.mad_factor,
                          settings.min_ratio, settings.min_spread, settings.min_value)


class OutputLengthAnomaly(Rule[RobustBaseline]):
    """Checked before the value joins the baseline: an anomaly is judged by what came before."""
    name = "output_length_anomaly"

    def __init__(self, settings: OutputLength, max_keys: int) -> None:
        super().__init__(settings, max_keys, lambda: _baseline(settings))

    def observe(self, event: Event) -> list[Hit]:
        # A failed request's length says nothing of what the model gives out.
        if not event.is_request or event.output_tokens <= 0 or event.status_code >= 400:
            return []
        return super().observe(event)

    def check(self, kind: str, value: str, lru: Lru[str, RobustBaseline], event: Event
              ) -> Hit | None:
        baseline = lru.get(value)
        bound = baseline.bound()
        tokens = event.output_tokens
        hit = None
        if bound is not None and tokens > bound and \
                self.admit(self.name, kind, value, event.time_ms):
            hit = Hit(self.name, kind, value, event.tenant, event.time_ms, event.time_ms, tokens,
                      round(bound, 2), (event.ref,), 1,
                      f"a response to {kind} {value} had {tokens} output tokens, above its "
                      f"baseline's bound of {bound:.0f} (median {baseline.median():g})")
        baseline.add(tokens)
        return hit


class _Spend:
    __slots__ = ("baseline", "bucket", "count", "refs", "start_ms", "total")

    def __init__(self, baseline: RobustBaseline) -> None:
        self.baseline = baseline
        self.bucket = -1
        self.total = 0
        self.count = 0
        self.start_ms = 0
        self.refs: deque[str] = deque(maxlen=EVIDENCE_MAX)


class TokenSpendSpike(Rule[_Spend]):
    name = "token_spend_spike"

    def __init__(self, settings: TokenSpend, max_keys: int) -> None:
        self.width_ms = max(1, int(settings.bucket_seconds * 1000))
        self.history = settings.history
        super().__init__(settings, max_keys, lambda: _Spend(_baseline(settings)))

    def observe(self, event: Event) -> list[Hit]:
        return super().observe(event) if event.is_request and event.total_tokens else []

    def _roll(self, spend: _Spend, bucket: int) -> None:
        """A new bucket: the one that ended joins the baseline, and each empty one since as 0."""
        if spend.bucket >= 0:
            spend.baseline.add(spend.total)
            for _ in range(min(bucket - spend.bucket - 1, self.history)):
                spend.baseline.add(0)
        spend.bucket, spend.total, spend.count = bucket, 0, 0
        spend.start_ms = bucket * self.width_ms
        spend.refs.clear()

    def check(self, kind: str, value: str, lru: Lru[str, _Spend], event: Event) -> Hit | None:
        spend = lru.get(value)
        bucket = event.time_ms // self.width_ms
        if bucket > spend.bucket:
            self._roll(spend, bucket)
        spend.total += event.total_tokens  # a late event counts in the newest bucket
        spend.count += 1
        spend.refs.append(event.ref)
        bound = spend.baseline.bound()
        if bound is None or spend.total <= bound or \
                not self.admit(self.name, kind, value, event.time_ms):
            return None
        return Hit(self.name, kind, value, event.tenant, spend.start_ms, event.time_ms,
                   spend.total, round(bound, 2), tuple(spend.refs), spend.count,
                   f"{kind} {value} spent {spend.total} tokens within "
                   f"{self.width_ms / 1000:g} s, above its baseline's bound of {bound:.0f} "
                   f"(median {spend.baseline.median():g} per bucket)")
