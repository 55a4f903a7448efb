"""The witness's HTTP port (aiohttp): the tlog-witness API, the newest cosigned checkpoint of a
log, its public key, /metrics and /healthz.

    POST /add-checkpoint        the C2SP tlog-witness call (checks.py decides)
    GET  /checkpoint/<origin>   the newest checkpoint it cosigned for that log, as a signed note
                                with the log's signature and its cosignature (an anchor for
                                `vllm-audit verify`)
    GET  /public-key            its public key (PEM) and its note verifier key, for reading:
                                a verifier pins the key it got out of band
    GET  /metrics, /healthz

Every answer to bad input is a 4xx naming the problem; an error of the witness's own is a 500
(counted, logged), never a refusal it did not mean.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from vllm_audit_agent.records.witness_protocol import (
    ADD_CHECKPOINT_PATH,
    CHECKPOINT_PATH,
    MAX_BODY_BYTES,
    REFUSAL_HEADER,
    REFUSAL_REASONS,
)
from vllm_audit_agent.witness.checks import Witness

logger = logging.getLogger("vllm_audit.witness")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class WitnessCollector(Collector):
    """The witness's counters, read at scrape time; every refusal reason present at 0."""

    def __init__(self, witness: Witness) -> None:
        self.witness = witness

    def collect(self) -> Iterator[Metric]:
        c = self.witness.counters
        yield CounterMetricFamily("vllm_audit_witness_server_cosigned_checkpoints",
                                  "Checkpoints this witness cosigned", value=c["cosigned"])
        refused = CounterMetricFamily("vllm_audit_witness_server_refused_checkpoints",
                                      "Checkpoints this witness refused, by reason (fork and "
                                      "rollback: the log showed two histories)",
                                      labels=["reason"])
        for reason in REFUSAL_REASONS:
            refused.add_metric([reason], c[f"refused_{reason}"])
        yield refused
        yield CounterMetricFamily("vllm_audit_witness_server_state_write_errors",
                                  "Cosignatures withheld because the state could not be written",
                                  value=c["state_write_errors"])
        yield CounterMetricFamily("vllm_audit_witness_server_internal_errors",
                                  "Requests the witness failed on an error of its own (500)",
                                  value=c["internal_errors"])
        logs = self.witness.store.logs
        yield GaugeMetricFamily("vllm_audit_witness_server_logs", "Logs this witness follows",
                                value=len(logs))
        size = GaugeMetricFamily("vllm_audit_witness_server_log_size",
                                 "Tree size of the newest checkpoint cosigned", labels=["origin"])
        when = GaugeMetricFamily("vllm_audit_witness_server_log_cosigned_timestamp_seconds",
                                 "When the newest checkpoint of the log was cosigned",
                                 labels=["origin"])
        for origin, state in sorted(logs.items()):
            size.add_metric([origin], state.size)
            when.add_metric([origin], state.cosigned_unix)
        yield size
        yield when


def make_registry(witness: Witness) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(WitnessCollector(witness))
    return registry


class WitnessHttp:
    def __init__(self, witness: Witness, public_text: str) -> None:
        self.witness = witness
        self.public_text = public_text
        self.registry = make_registry(witness)
        self.runner: web.AppRunner | None = None
        self.port = 0

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors], client_max_size=MAX_BODY_BYTES)
        app.add_routes([web.post(ADD_CHECKPOINT_PATH, self._add_checkpoint),
                        web.get(CHECKPOINT_PATH + "{origin:.+}", self._checkpoint),
                        web.get("/public-key", self._public_key),
                        web.get("/metrics", self._metrics),
                        web.get("/healthz", self._healthz)])
        return app

    async def start(self, host: str, port: int) -> None:
        self.runner = web.AppRunner(self.app(), access_log=None, handle_signals=False,
                                    shutdown_timeout=1.0)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port)
        try:
            await site.start()
        except OSError:
            await self.runner.cleanup()
            raise
        self.port = int(self.runner.addresses[0][1])

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:  # aiohttp's own: no route, a method, a body too large
            return web.Response(status=exc.status, text=f"{exc.reason.lower()}: "
                                f"{request.method} {request.path}\n")
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception as exc:
            self.witness.counters["internal_errors"] += 1
            logger.exception("%s %s failed: %r", request.method, request.path, exc)
            return web.Response(status=500, text=f"internal error: {exc!r}\n")

    async def _add_checkpoint(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            self.witness.counters["refused_malformed"] += 1
            return web.Response(status=413, text=f"malformed: the body is over {MAX_BODY_BYTES} "
                                "bytes\n", headers={REFUSAL_HEADER: "malformed"})
        answer = await self.witness.add_checkpoint(body)
        headers = {REFUSAL_HEADER: answer.reason} if answer.reason else {}
        return web.Response(status=answer.status, text=answer.text, headers=headers,
                            content_type=answer.content_type)

    async def _checkpoint(self, request: web.Request) -> web.StreamResponse:
        origin = request.match_info["origin"]
        state = self.witness.store.get(origin)
        if state is None:
            return web.Response(status=404, text=f"no checkpoint cosigned for {origin[:200]!r}\n")
        return web.Response(text=state.note)

    async def _public_key(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text=self.public_text)

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encoder(self.registry), headers={"Content-Type": content_type})

    async def _healthz(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text="ok\n")
