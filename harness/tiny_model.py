"""Generates a tiny random-weight Llama and a locally trained byte-level BPE tokenizer.

Nothing is downloaded: the tokenizer is trained on text made here, the weights are random
(seeded, so every run makes the same model). The CPU attention kernels reject head_dim 16,
hence hidden 128 with 2 heads (head_dim 64) and 1 KV head.

    python -m harness.tiny_model OUT_DIR
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
MARKER = "vllm-audit-tiny-llama-v1"


def _corpus(n: int = 3000) -> list[str]:
    rng = random.Random(7)
    words = [
        "name", "age", "city", "score", "id", "ok", "true", "false", "null", "alice", "bob",
        "carol", "paris", "rome", "lima", "audit", "model", "token", "grammar", "request",
        "user", "value", "items", "list", "count",
    ]
    lines = []
    for _ in range(n):
        obj = {rng.choice(words): rng.choice([rng.randint(0, 999), rng.choice(words),
                                              rng.random() > 0.5, None, [1, 2, 3]])
               for _ in range(rng.randint(1, 4))}
        lines.append(json.dumps(obj))
        lines.append(" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))))
    return lines


def make_tiny_model(out_dir: str | Path) -> Path:
    """Writes the model to `out_dir` (skipped if it is already there) and returns the path."""
    out = Path(out_dir)
    if (out / MARKER).exists():
        return out
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<s>", "</s>", "<pad>", "<|user|>", "<|assistant|>", "<|system|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=2048,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).to(torch.float32)
    model.save_pretrained(out, safe_serialization=True)
    (out / MARKER).write_text("generated locally; random weights\n")
    return out


if __name__ == "__main__":
    print(make_tiny_model(sys.argv[1] if len(sys.argv) > 1 else ".cache/tiny-llama"))
