"""Reading trails back from the agent's real query API."""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc

from vllm_audit.v1 import query_pb2, query_pb2_grpc

FINAL_STATES = (
    query_pb2.TRAIL_STATE_FINISHED,
    query_pb2.TRAIL_STATE_ABORTED,
    query_pb2.TRAIL_STATE_FAILED,
    query_pb2.TRAIL_STATE_INCOMPLETE,
)


def all_trails(query: query_pb2_grpc.QueryServiceStub) -> list[query_pb2.TrailSummary]:
    trails: list[query_pb2.TrailSummary] = []
    token = ""
    while True:
        page = query.ListTrails(query_pb2.ListTrailsRequest(page_size=200, page_token=token))
        trails.extend(page.trails)
        token = page.next_page_token
        if not token:
            return trails


def trail_ids_for_client_id(query: query_pb2_grpc.QueryServiceStub,
                            client_request_id: str) -> list[str]:
    """The trails of requests sent with this X-Request-Id (the trail key is the hook's own
    id; the client's header is a searchable claim)."""
    page = query.ListTrails(query_pb2.ListTrailsRequest(client_request_id=client_request_id))
    return [t.request_id for t in page.trails]


def wait_for_trail(
    query: query_pb2_grpc.QueryServiceStub,
    request_id: str,
    ready: Callable[[query_pb2.GetTrailResponse], bool],
    timeout: float = 30.0,
    include_events: bool = True,
) -> query_pb2.GetTrailResponse:
    """Waits for the trail of the request sent with X-Request-Id `request_id` (or, offline,
    with that trail id) until `ready` holds."""
    deadline = time.monotonic() + timeout
    last: query_pb2.GetTrailResponse | None = None
    while time.monotonic() < deadline:
        try:
            ids = trail_ids_for_client_id(query, request_id) or [request_id]
            assert len(ids) == 1, f"X-Request-Id {request_id!r} names {len(ids)} trails"
            last = query.GetTrail(
                query_pb2.GetTrailRequest(request_id=ids[0], include_events=include_events)
            )
            if ready(last):
                return last
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
        time.sleep(0.05)
    raise AssertionError(f"trail {request_id!r} not ready within {timeout}s; last: {last}")


def wait_for_offline_trail(
    query: query_pb2_grpc.QueryServiceStub, external_id: str, timeout: float = 30.0
) -> query_pb2.TrailSummary:
    """Offline trails are keyed by vLLM's engine id: `<external id>-<8 random chars>`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for trail in all_trails(query):
            if trail.request_id.startswith(external_id + "-") and trail.state in FINAL_STATES:
                return trail
        time.sleep(0.05)
    raise AssertionError(f"no final offline trail for request {external_id!r}")


def scrape(metrics_url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """One real scrape of /metrics: sample name -> [(labels, value)]."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(metrics_url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append((dict(s.labels), s.value))
    return samples


def engine_sample(samples: dict[str, list[tuple[dict[str, str], float]]], name: str,
                  model: str) -> float | None:
    """The value of an engine series of `model` (one frontend source per server)."""
    values = [v for labels, v in samples.get(name, []) if labels.get("model") == model]
    assert len(values) <= 1, f"{name}: several sources report model {model!r}: {values}"
    return values[0] if values else None
