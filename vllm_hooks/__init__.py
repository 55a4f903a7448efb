"""vllm-audit hook (stub)."""
