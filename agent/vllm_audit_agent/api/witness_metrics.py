"""The agent's witness metrics (delivery/cosigning.py): per configured witness, checkpoints it
cosigned, its refusals by reason and the offers that got no answer it meant, each reason of
its closed set present at 0 from the start; how far behind it is."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from vllm_audit_agent.delivery.cosigning import WITNESS_ERRORS, Cosigner
from vllm_audit_agent.records.witness_protocol import REFUSAL_REASONS


class WitnessCollector(Collector):
    def __init__(self, cosigner: Cosigner) -> None:
        self.cosigner = cosigner

    def collect(self) -> Iterator[Metric]:
        cosigned = CounterMetricFamily("vllm_audit_witness_cosigned_checkpoints",
                                       "Checkpoints a witness cosigned (each is a cosignature "
                                       "record in the log)", labels=["witness"])
        refused = CounterMetricFamily("vllm_audit_witness_refusals",
                                      "Checkpoints a witness refused, by reason (fork, rollback: "
                                      "it holds another history of this log)",
                                      labels=["witness", "reason"])
        errors = CounterMetricFamily("vllm_audit_witness_errors", "Offers of a checkpoint that "
                                     "got no answer the witness meant: unreachable, http_error, "
                                     "bad_answer, proof_unavailable, internal",
                                     labels=["witness", "error"])
        size = GaugeMetricFamily("vllm_audit_witness_cosigned_size",
                                 "Tree size the witness last cosigned for this log",
                                 labels=["witness"])
        behind = GaugeMetricFamily("vllm_audit_witness_uncosigned_seconds",
                                   "Age of the oldest durable checkpoint the witness has not "
                                   "cosigned (0: caught up)", labels=["witness"])
        for w in self.cosigner.witnesses:
            cosigned.add_metric([w.url], w.cosigned)
            for reason in REFUSAL_REASONS:
                refused.add_metric([w.url, reason], w.refused[reason])
            for error in WITNESS_ERRORS:
                errors.add_metric([w.url, error], w.errors[error])
            size.add_metric([w.url], w.confirmed)
            behind.add_metric([w.url], self.cosigner.uncosigned_seconds(w))
        yield from (cosigned, refused, errors, size, behind)
