"""The `vllm-audit` command line: `main` (the console script) runs what `parser` accepts
through `run_agent`, `query_commands` or `offline_commands`, which print through `output`;
`client` and `credentials` are the channel and token a query uses.

The top floor: it may import any room; no room imports it.
"""
