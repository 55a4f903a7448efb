"""Allowed-token set sizes of real JSON-schema masks at a 128k vocabulary (figures only).

    .venv/bin/python scripts/bench_allowed_sets_json.py [WORK_DIR]

xgrammar (the backend vLLM uses by default) fills each row for a JSON schema over a byte-level
BPE vocabulary of 128,256 tokens trained here on the venv's own source and docs (nothing is
downloaded; ~1 minute the first time, then reused from WORK_DIR). Eight walks of up to 120
steps take a random allowed token each step. Each row goes through the hook's own recorder
(vllm_hooks/allowed_set_encoder.py), one request per walk, as at level
full-with-allowed-sets; the figures are the bytes stored per step against the raw row, and
the sender thread's CPU per step.
"""

from __future__ import annotations

import glob
import json
import random
import site
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vllm_audit import allowed_sets
from vllm_audit.v1 import events_pb2 as pb
from vllm_hooks.events.allowed_set_encoder import AllowedSetRecorder

VOCAB = 128_256
SCHEMA = {"type": "object",
          "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                         "email": {"type": "string"},
                         "tags": {"type": "array", "items": {"type": "string"}},
                         "active": {"type": "boolean"}},
          "required": ["name", "age", "email", "tags", "active"]}


def tokenizer(work: Path) -> Path:
    out = work / "bpe-128k"
    if (out / "tokenizer.json").exists():
        return out
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    root = site.getsitepackages()[0]
    files = (glob.glob(f"{root}/**/*.py", recursive=True)[:6000]
             + glob.glob(f"{root}/**/*.md", recursive=True)[:2000])

    def texts() -> object:
        for name in files:
            try:
                yield Path(name).read_text(errors="ignore")
            except OSError:
                continue

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts(), trainer=trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>",
                            eos_token="</s>").save_pretrained(out)
    return out


def main() -> None:
    import xgrammar as xgr
    from transformers import AutoTokenizer

    work = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.gettempdir()) / "vllm-audit-bench"
    hf = AutoTokenizer.from_pretrained(tokenizer(work))
    vocab = len(hf)
    compiled = xgr.GrammarCompiler(xgr.TokenizerInfo.from_huggingface(hf, vocab_size=vocab)
                                   ).compile_json_schema(json.dumps(SCHEMA))
    recorder = AllowedSetRecorder(1 << 20, 1 << 30)  # no cap: the sizes themselves
    rng = random.Random(0)
    sizes: list[int] = []
    forms: dict[str, int] = {}
    cpu = 0.0
    walks = 8
    for walk in range(walks):
        matcher = xgr.GrammarMatcher(compiled)
        bitmask = xgr.allocate_token_bitmask(1, vocab)
        for n in range(1, 121):
            if matcher.is_terminated():
                break
            matcher.fill_next_token_bitmask(bitmask)
            row = bitmask[0].numpy().tobytes()  # what the engine thread copies
            step = pb.StructuredOutputStep(step=n, vocab_size=vocab)
            start = time.process_time()
            recorder.record(step, f"walk-{walk}", row, vocab)
            cpu += time.process_time() - start
            sizes.append(step.allowed_set.ByteSize())
            form = allowed_sets.encoding_of(step.allowed_set)
            forms[form] = forms.get(form, 0) + 1
            bits = np.unpackbits(np.frombuffer(row, np.uint8), bitorder="little")[:vocab]
            assert matcher.accept_token(int(rng.choice(np.flatnonzero(bits).tolist())))
    raw = allowed_sets.wire_size(allowed_sets.BITMASK, allowed_sets.bitmask_bytes(vocab))
    print(f"JSON schema, xgrammar, vocabulary {vocab}: {len(sizes)} steps in {walks} requests")
    print(f"  stored per step: mean {np.mean(sizes):.0f} B, median {np.median(sizes):.0f} B, "
          f"max {max(sizes)} B; raw row {raw} B")
    print(f"  per request: {sum(sizes) / walks:.0f} B for {len(sizes) / walks:.0f} steps "
          f"(raw: {raw * len(sizes) / walks:.0f} B)")
    print(f"  forms: {forms}")
    print(f"  sender thread: {cpu / len(sizes) * 1e6:.0f} us CPU per step (encoding, cache, "
          "references, message)")


if __name__ == "__main__":
    main()
