"""The vLLM side of `vllm-audit replay` (agent/vllm_audit_agent/replay.py): a recorded grammar re-compiled by
vLLM's own backend class and stepped token by token, each row filled as vLLM's
`StructuredOutputManager` fills it and counted with the hook's own popcount.

Lives with the hook because it needs vLLM, which the agent's slim image does not have: the
replay command runs where vLLM runs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vllm_hooks.events.allowed_counts import allowed_counts
from vllm_hooks.events.allowed_set_encoder import row_words


class GrammarUnavailable(Exception):
    """vLLM, the backend or the model is missing, or does not fit the trail."""


class GrammarReplayer:
    """One compiled grammar and a one-row bitmask, stepped as the engine stepped it."""

    def __init__(self, backend: str, spec_type: str, spec: str, model: str,
                 vocab_size: int) -> None:
        try:
            from vllm_hooks.vllm.replay_backends import (  # imports vLLM
                ReplayUnavailable,
                compile_grammar_for_replay,
            )
        except ImportError as exc:
            raise GrammarUnavailable(f"replay needs vLLM installed: {exc}") from None
        try:
            self.grammar, self.bitmask = compile_grammar_for_replay(
                backend, spec_type, spec, model, vocab_size)
        except ReplayUnavailable as exc:
            raise GrammarUnavailable(str(exc)) from None
        except ImportError as exc:
            raise GrammarUnavailable(f"backend {backend!r} is unavailable here: {exc}") from None
        self.vocab_size = vocab_size

    def row(self) -> tuple[int, Any]:
        """The next token's row, filled as vLLM fills it: (allowed count, the row's words)."""
        if self.grammar.is_terminated():
            self.bitmask.fill_(-1)  # vLLM's row for a finished grammar: everything allowed
        else:
            self.grammar.fill_bitmask(self.bitmask, 0)
        words = self.bitmask.numpy()
        return int(allowed_counts(words, self.vocab_size)[0]), words[0]

    def row_bytes(self, words: Any) -> bytes:
        """The row in the canonical form `vllm_audit.allowed_sets.decode` returns (packed
        little-endian int32 words, bits past the vocabulary clear), to compare with a
        recorded allowed set."""
        return row_words(words, self.vocab_size).tobytes()

    def allows(self, words: Any, token: int) -> bool:
        if not 0 <= token < self.vocab_size:
            return False
        word = int(words[token // 32]) & 0xFFFFFFFF  # int32 storage, read as unsigned bits
        return bool((word >> (token % 32)) & 1)

    def accept(self, token: int) -> bool:
        return bool(self.grammar.accept_tokens("replay", [token]))

    def forbidden_token(self) -> int:
        """A token the grammar does not allow next (tests alter trails with it)."""
        _, words = self.row()
        bits = np.unpackbits(words.view(np.uint8), bitorder="little")[:self.vocab_size]
        return int(np.flatnonzero(bits == 0)[0])
