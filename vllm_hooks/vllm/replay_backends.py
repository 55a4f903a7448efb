"""A recorded grammar compiled by vLLM's own structured-output backend, outside any engine, as
`StructuredOutputManager` compiles it (for `replay_grammar`, behind `vllm-audit replay`).

`vllm.config` is imported at module level on purpose: `replay_grammar` imports this module
lazily and reads an ImportError here as "vLLM is not installed", while one raised inside
`compile_grammar_for_replay` means the backend (or a part of vLLM it needs) is missing.
"""

from __future__ import annotations

import importlib
from typing import Any

from vllm.config import ModelConfig, StructuredOutputsConfig, VllmConfig

#: vLLM's backend class per structured-output backend name (as the hook records it).
_REPLAY_BACKENDS = {
    "xgrammar": ("vllm.v1.structured_output.backend_xgrammar", "XgrammarBackend"),
    "guidance": ("vllm.v1.structured_output.backend_guidance", "GuidanceBackend"),
    "outlines": ("vllm.v1.structured_output.backend_outlines", "OutlinesBackend"),
    "lm-format-enforcer": ("vllm.v1.structured_output.backend_lm_format_enforcer",
                           "LMFormatEnforcerBackend"),
}


class ReplayUnavailable(Exception):
    """The trail cannot be replayed here: unknown backend, or not the model that made it."""


def compile_grammar_for_replay(backend: str, spec_type: str, spec: str, model: str,
                               vocab_size: int) -> tuple[Any, Any]:
    """(compiled grammar, a one-row token bitmask) as vLLM's StructuredOutputManager makes
    them. Raises ReplayUnavailable (unknown backend, the model does not fit the trail) or
    ImportError (the backend is not installed); a grammar that does not compile raises as
    vLLM raises it."""
    from vllm.tokenizers import cached_tokenizer_from_config
    from vllm.v1.structured_output.backend_types import StructuredOutputOptions

    if backend not in _REPLAY_BACKENDS:
        raise ReplayUnavailable(f"unknown structured-output backend {backend!r}")
    module, name = _REPLAY_BACKENDS[backend]
    model_config = ModelConfig(model=model, tokenizer=model)
    if model_config.get_vocab_size() != vocab_size:
        raise ReplayUnavailable(f"the model has vocabulary {model_config.get_vocab_size()}, the trail "
                                f"{vocab_size}: not the model that generated it")
    config = VllmConfig(model_config=model_config,
                        structured_outputs_config=StructuredOutputsConfig(backend=backend))
    tokenizer = cached_tokenizer_from_config(model_config=model_config)
    impl = getattr(importlib.import_module(module), name)(config, tokenizer=tokenizer,
                                                          vocab_size=vocab_size)
    grammar = impl.compile_grammar(StructuredOutputOptions[spec_type.upper()], spec)
    return grammar, impl.allocate_token_bitmask(1)
