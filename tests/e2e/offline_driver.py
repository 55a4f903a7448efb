"""Runs a real offline vLLM `LLM` with JSON-schema structured output and prints the results.

A separate process: the engine core is spawned, so this needs its own `__main__` guard, and
each run reads the hook's switches from its own environment.

    python tests/e2e/offline_driver.py MODEL_DIR N_PROMPTS MAX_TOKENS OUT_JSON [KV_BLOCKS]

With KV_BLOCKS the KV cache holds only that many blocks and generation is plain (no grammar,
EOS ignored), so the scheduler must preempt requests to finish them all.
"""

from __future__ import annotations

import json
import sys

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}
PROMPTS = ["hello audit", "name alice", "the model said", "value items list", "count bob"]


def main() -> None:
    from vllm import LLM, SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    model, n, max_tokens = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    kv_blocks = int(sys.argv[5]) if len(sys.argv) > 5 else 0
    llm = LLM(
        model=model,
        served_model_name="tiny-offline",
        dtype="float32",
        max_model_len=512,
        enforce_eager=True,
        gpu_memory_utilization=0.1,
        disable_log_stats=False,
        seed=0,
        num_gpu_blocks_override=kv_blocks or None,
    )
    if kv_blocks:
        params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    else:
        params = SamplingParams(
            temperature=0,
            max_tokens=max_tokens,
            structured_outputs=StructuredOutputsParams(json=SCHEMA),
        )
    prompts = [PROMPTS[i % len(PROMPTS)] + f" #{i}" for i in range(n)]
    outputs = llm.generate(prompts, params, use_tqdm=False)
    result = [
        {
            "request_id": out.request_id,
            "text": out.outputs[0].text,
            "token_ids": list(out.outputs[0].token_ids),
            "finish_reason": out.outputs[0].finish_reason,
            "prompt_tokens": len(out.prompt_token_ids or ()),
        }
        for out in outputs
    ]
    # Let the hook deliver before the engine goes away (the sender flushes every 20 ms).
    from vllm_hooks.runtime import current_runtime

    runtime = current_runtime()
    if runtime is not None:
        runtime.sender.flush(5.0)
    with open(sys.argv[4], "w") as out:
        json.dump(result, out)


if __name__ == "__main__":
    main()
