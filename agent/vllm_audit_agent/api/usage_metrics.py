"""Usage as Prometheus metrics, with bounded label sets: requests, tokens, errors and cost of
the stored trails by tenant and model (never by user: one series per user is unbounded).

A scrape reads a snapshot at most REFRESH_SECONDS old (the store is asked once per refresh,
not per scrape). The MAX_TENANTS tenants and MAX_MODELS models with the most requests keep
their names; the rest are summed under OTHER, so a fleet of a million tenants is still a few
hundred series.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from vllm_audit_agent.api.usage import SUMS, PriceTable

MAX_TENANTS = 50
MAX_MODELS = 20
OTHER = "__other__"
REFRESH_SECONDS = 60.0
_HELP = {
    "requests": "Trails stored (newest revision each) by tenant and model",
    "input_tokens": "Input (prompt) tokens of the stored trails",
    "output_tokens": "Output (completion) tokens of the stored trails",
    "errors": "Stored trails that failed (state failed, HTTP status >= 400 or an error)",
}

#: () -> usage rows keyed by tenant and model (trail_source.py's `usage` shape).
UsageRows = Callable[[], Sequence[Mapping[str, Any]]]


def _top(rows: Sequence[Mapping[str, Any]], key: str, limit: int) -> set[str]:
    totals: dict[str, int] = {}
    for row in rows:
        totals[str(row.get(key) or "")] = totals.get(str(row.get(key) or ""), 0) + \
            int(row.get("requests") or 0)
    return set(sorted(totals, key=lambda k: (-totals[k], k))[:limit])


def bounded(rows: Sequence[Mapping[str, Any]], prices: PriceTable,
            max_tenants: int = MAX_TENANTS, max_models: int = MAX_MODELS
            ) -> dict[tuple[str, str], dict[str, float]]:
    """(tenant, model) -> sums and cost, tenants and models past their caps as OTHER."""
    tenants, models = _top(rows, "tenant", max_tenants), _top(rows, "model", max_models)
    out: dict[tuple[str, str], dict[str, float]] = {}
    for row in rows:
        tenant, model = str(row.get("tenant") or ""), str(row.get("model") or "")
        key = (tenant if tenant in tenants else OTHER, model if model in models else OTHER)
        sums = out.setdefault(key, {name: 0.0 for name in (*SUMS, "cost")})
        for name in SUMS:
            sums[name] += int(row.get(name) or 0)
        price = prices.price(model)
        if price is not None:
            sums["cost"] += price.cost(int(row.get("input_tokens") or 0),
                                       int(row.get("output_tokens") or 0))
    return out


class UsageCollector(Collector):
    def __init__(self, usage: UsageRows, prices: PriceTable, prefix: str = "vllm_audit_fleet",
                 refresh_seconds: float = REFRESH_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.usage, self.prices, self.prefix = usage, prices, prefix
        self.refresh_seconds, self.clock = refresh_seconds, clock
        self._lock = threading.Lock()
        self._at: float | None = None
        self._snapshot: dict[tuple[str, str], dict[str, float]] = {}

    def _current(self) -> dict[tuple[str, str], dict[str, float]]:
        with self._lock:
            now = self.clock()
            if self._at is None or now - self._at >= self.refresh_seconds:
                self._snapshot = bounded(self.usage(), self.prices)
                self._at = now
            return self._snapshot

    def collect(self) -> Iterator[Metric]:
        snapshot = self._current()
        labels = ["tenant", "model"]
        for name in SUMS:
            family = GaugeMetricFamily(f"{self.prefix}_usage_{name}", _HELP[name], labels=labels)
            for (tenant, model), sums in sorted(snapshot.items()):
                family.add_metric([tenant, model], sums[name])
            yield family
        cost = GaugeMetricFamily(
            f"{self.prefix}_usage_cost",
            f"Cost of the stored trails from the price table ({self.prices.currency}; models "
            "without a price add nothing)", labels=labels)
        for (tenant, model), sums in sorted(snapshot.items()):
            cost.add_metric([tenant, model], sums["cost"])
        yield cost
