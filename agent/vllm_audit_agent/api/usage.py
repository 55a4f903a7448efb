"""Usage aggregates: requests, tokens, errors and cost by tenant, user, model and day.

A source (trail_source.py) sums its final trails per distinct value of the keys asked for,
always with `model` among them, so that cost can be priced per model here, once, from the
price table, and then rolled up to the grouping the caller asked for. The price table is a
YAML or JSON file (`--price-table`):

    currency: USD
    models:                       # per 1k tokens
      llama-3-8b: {input_per_1k: 0.0002, output_per_1k: 0.0006}
    default: {input_per_1k: 0.0, output_per_1k: 0.0}   # optional: models not listed

A model with no price (and no default) adds no cost: its requests are counted in
`unpriced_requests`, so a cost of 0 is never mistaken for "free".
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

# the ignore[import-untyped] below: PyYAML ships no stubs here (safe_load only is used)
import yaml  # type: ignore[import-untyped]

from vllm_audit.v1 import query_pb2 as q
from vllm_audit_agent.api.errors import ApiError
from vllm_audit_agent.api.trail_source import USAGE_KEYS

#: The sums every usage row carries.
SUMS = ("requests", "input_tokens", "output_tokens", "errors")


@dataclass(frozen=True)
class Price:
    input_per_1k: float
    output_per_1k: float

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return input_tokens / 1000 * self.input_per_1k + output_tokens / 1000 * self.output_per_1k


@dataclass(frozen=True)
class PriceTable:
    models: Mapping[str, Price] = field(default_factory=dict)
    default: Price | None = None
    currency: str = "USD"

    def price(self, model: str) -> Price | None:
        return self.models.get(model, self.default)


def _price(where: str, value: Any) -> Price:
    if not isinstance(value, dict) or set(value) - {"input_per_1k", "output_per_1k"}:
        raise ValueError(f"{where}: expected {{input_per_1k: <number>, output_per_1k: <number>}}, "
                         f"got {value!r}")
    numbers = []
    for name in ("input_per_1k", "output_per_1k"):
        number = value.get(name, 0)
        if isinstance(number, bool) or not isinstance(number, int | float) or number < 0:
            raise ValueError(f"{where}.{name} must be a number >= 0, got {number!r}")
        numbers.append(float(number))
    return Price(*numbers)


def load_price_table(path: Path | None) -> PriceTable:
    """The price table in `path` (YAML or JSON); an empty table without one. Raises
    ValueError naming what is wrong, so a typo fails the start, not every bill."""
    if path is None:
        return PriceTable()
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict) or set(data) - {"currency", "models", "default"}:
        raise ValueError(f"price table {path}: expected the keys currency, models, default")
    models = data.get("models") or {}
    if not isinstance(models, dict):
        raise ValueError(f"price table {path}: models must be a mapping of model -> price")
    return PriceTable(
        {str(name): _price(f"{path}: models.{name}", value) for name, value in models.items()},
        _price(f"{path}: default", data["default"]) if data.get("default") is not None else None,
        str(data.get("currency") or "USD"))


def check_group_by(group_by: Sequence[str]) -> tuple[str, ...]:
    unknown = [k for k in group_by if k not in USAGE_KEYS]
    if unknown or len(set(group_by)) != len(group_by):
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                       f"group_by takes each of {', '.join(USAGE_KEYS)} at most once; "
                       f"got {list(group_by)}")
    return tuple(group_by)


def day_of(unix_ms: int) -> str:
    return dt.datetime.fromtimestamp(unix_ms / 1000, dt.timezone.utc).strftime("%Y-%m-%d")


def is_error(state: int, status_code: int, error: str) -> bool:
    return state == q.TRAIL_STATE_FAILED or status_code >= 400 or bool(error)


def sum_summaries(summaries: Iterable[q.TrailSummary], keys: Sequence[str]
                  ) -> list[dict[str, Any]]:
    """Usage rows of summaries (the agent's source: its final trails in memory)."""
    rows: dict[tuple[str, ...], list[int]] = {}
    for s in summaries:
        values = tuple(day_of(s.created_unix_ms) if k == "day" else getattr(s, k) for k in keys)
        sums = rows.setdefault(values, [0, 0, 0, 0])
        sums[0] += 1
        sums[1] += s.prompt_tokens
        sums[2] += s.completion_tokens
        sums[3] += is_error(s.state, s.status_code, s.error)
    return [{**dict(zip(keys, values, strict=True)), **dict(zip(SUMS, sums, strict=True))}
            for values, sums in rows.items()]


def aggregates(rows: Iterable[Mapping[str, Any]], group_by: Sequence[str], prices: PriceTable
               ) -> q.AggregatesResponse:
    """Rows of (group_by + model) priced per model, then summed per `group_by`."""
    out: dict[tuple[str, ...], q.AggregateRow] = {}
    for row in rows:
        values = tuple(str(row.get(k) or "") for k in group_by)
        agg = out.get(values)
        if agg is None:
            agg = out[values] = q.AggregateRow()
            for key, value in zip(group_by, values, strict=True):
                setattr(agg, key, value)
        requests, tokens_in, tokens_out = (int(row.get(k) or 0) for k in SUMS[:3])
        agg.requests += requests
        agg.input_tokens += tokens_in
        agg.output_tokens += tokens_out
        agg.errors += int(row.get("errors") or 0)
        price = prices.price(str(row.get("model") or ""))
        if price is None:
            agg.unpriced_requests += requests
        else:
            agg.cost += price.cost(tokens_in, tokens_out)
    return q.AggregatesResponse(rows=[out[k] for k in sorted(out)], currency=prices.currency)
