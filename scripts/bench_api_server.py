"""The API server's added latency per request: `vllm serve` with and without the hook.

    .venv/bin/python scripts/bench_api_server.py [--requests N] [--max-tokens N]

Two real `vllm serve` processes (the tiny model): one without the hook (no plugin, no
middleware), one with it (level summary, VLLM_AUDIT_SELF_TIMING=true) streaming to a real
agent. Requests go one at a time, alternating between the servers (interleaved, so drift
hits both alike), non-streaming and streaming chat completions, over one keep-alive
connection per server. Reported:

- client latency p50/p99 per server and mode, and the difference of the medians (what a
  client sees the hook add, engine side included), with its spread (IQR of each side);
- the middleware's own time on vLLM's event loop per request (its self-timing, read from the
  agent's metrics: `vllm_audit_hook_self_seconds{role="api_server",thread="vllm"}` per request)
  and the API server's sender-thread CPU per request;
- what moved off the loop: parsing a request's kept bytes (1 MiB of JSON request and 1 MiB of
  SSE response, the capture bound) on the sender thread, against the loop's remaining work.

About two minutes on two quiet cores; everything it starts it stops.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness import procs  # noqa: E402
from harness.tiny_model import make_tiny_model  # noqa: E402
from scripts.bench_engine import SIDE_BY_SIDE_ENV, AgentView, delta, iqr, pct  # noqa: E402

API_KEY = "bench-key-0123456789"


class Client:
    """One keep-alive connection to one server."""

    def __init__(self, base: str) -> None:
        url = urlparse(base)
        self.conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=60)

    def chat(self, max_tokens: int, stream: bool) -> float:
        body = {"model": "tiny", "messages": [{"role": "user", "content": "say something"}],
                "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
                "stream": stream}
        if stream:
            body["stream_options"] = {"include_usage": True}
        data = json.dumps(body).encode()
        start = time.perf_counter()
        self.conn.request("POST", "/v1/chat/completions", body=data, headers={
            "Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"})
        response = self.conn.getresponse()
        response.read()
        elapsed = time.perf_counter() - start
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}")
        return elapsed

    def close(self) -> None:
        self.conn.close()


def parse_cost(repeats: int = 5) -> tuple[float, float, float]:
    """(loop ms, parse ms, old loop ms) for one request at the capture bound: what the event
    loop pays now (copying the kept bytes and reading headers), what the sender thread pays
    (parsing), and what the loop paid when it parsed too."""
    from vllm_hooks.events.http_parse import complete_http_fields
    from vllm_hooks.middleware import MAX_CAPTURE_BYTES, _RequestAudit

    words = ("alpha beta gamma delta " * (MAX_CAPTURE_BYTES // 24))[: MAX_CAPTURE_BYTES - 200]
    request = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": words}]})
    chunk = b'data: {"choices":[{"delta":{"content":"token "}}]}\n\n'
    response = chunk * (MAX_CAPTURE_BYTES // len(chunk))
    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions",
             "headers": [], "client": ("10.0.0.1", 1)}
    loop, parse, old = [], [], []
    for _ in range(repeats):
        audit = _RequestAudit(scope, "x-tenant-id")
        audit.body += request.encode()
        audit.response += response
        audit.stream, audit.status = True, 200
        start = time.perf_counter()
        event = audit.raw_event()
        loop.append(time.perf_counter() - start)
        start = time.perf_counter()
        complete_http_fields(event[3], event[4], event[5])
        parse.append(time.perf_counter() - start)
        start = time.perf_counter()
        audit.fields()  # everything at once, as the loop did before
        old.append(time.perf_counter() - start)
    return (statistics.median(loop) * 1e3, statistics.median(parse) * 1e3,
            statistics.median(old) * 1e3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=150, help="per server and mode")
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args()
    t0 = time.monotonic()
    loop_ms, parse_ms, old_ms = parse_cost()
    work = Path(tempfile.mkdtemp(prefix="vllm-audit-bench-api-"))
    model = make_tiny_model(REPO / ".cache" / "tiny-llama")
    sock = work / "ingest.sock"
    started: list[procs.Proc] = []
    latencies: dict[tuple[str, bool], list[float]] = {
        (s, m): [] for s in ("without", "with") for m in (False, True)}
    try:
        agent, query, metrics = procs.start_agent(work, sock, None, level="summary")
        started.append(agent)
        view = AgentView(query, metrics, procs.admin_token(work))
        common = SIDE_BY_SIDE_ENV
        without, base_without = procs.start_vllm_server(model, work, sock, API_KEY, hook=False,
                                                        **common)
        started.append(without)
        with_hook, base_with = procs.start_vllm_server(
            model, work, sock, API_KEY, VLLM_AUDIT_LEVEL="summary",
            VLLM_AUDIT_SELF_TIMING="true", **common)
        started.append(with_hook)
        clients = {"without": Client(base_without), "with": Client(base_with)}
        for client in clients.values():  # warm-up
            for stream in (False, True):
                for _ in range(5):
                    client.chat(args.max_tokens, stream)
        time.sleep(0.5)
        before = view.self_timing()
        for i in range(args.requests):
            for stream in (False, True):
                order = ("without", "with") if i % 2 == 0 else ("with", "without")
                for name in order:
                    latencies[(name, stream)].append(clients[name].chat(args.max_tokens, stream))
        time.sleep(0.5)
        # One source: the middleware and the stat logger share the API server's runtime.
        timings = delta(view.self_timing(), before)
        timing = {k: sum(t.get(k, 0.0) for t in timings.values()
                         if t.get("middleware_calls", 0.0) > 0)
                  for k in ("middleware_s", "middleware_calls", "sender_s")}
        for client in clients.values():
            client.close()
    finally:
        for proc in reversed(started):
            proc.stop()
        shutil.rmtree(work, ignore_errors=True)

    print(f"API server, {args.requests} requests per server and mode, interleaved; chat "
          f"completions of {args.max_tokens} tokens, level summary")
    print(f"  {'mode':<14} {'without p50':>11} {'p99':>7} {'IQR':>6} {'with p50':>9} "
          f"{'p99':>7} {'IQR':>6} {'added p50':>10}")
    for stream in (False, True):
        a = [v * 1e3 for v in latencies[("without", stream)]]
        b = [v * 1e3 for v in latencies[("with", stream)]]
        print(f"  {'streaming' if stream else 'non-streaming':<14} {pct(a, 0.5):>9.2f}ms "
              f"{pct(a, 0.99):>7.2f} {iqr(a):>6.2f} {pct(b, 0.5):>7.2f}ms {pct(b, 0.99):>7.2f} "
              f"{iqr(b):>6.2f} {pct(b, 0.5) - pct(a, 0.5):>8.2f}ms")
    requests = timing.get("middleware_calls", 0.0)
    if requests:
        print(f"  middleware on the event loop (self-timed): "
              f"{timing.get('middleware_s', 0.0) / requests * 1e6:.1f} us/request over "
              f"{requests:.0f} requests; API server sender CPU "
              f"{timing.get('sender_s', 0.0) / requests * 1e6:.1f} us/request")
    print(f"  at the capture bound (1 MiB request JSON + 1 MiB SSE response): event loop "
          f"{loop_ms:.3f} ms (was {old_ms:.1f} ms with parsing), parsing on the sender thread "
          f"{parse_ms:.1f} ms")
    print(f"({os.cpu_count()} cores, {time.monotonic() - t0:.0f} s; a shared machine is noisy: "
          "read the IQR)")


if __name__ == "__main__":
    main()
