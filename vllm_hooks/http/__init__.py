"""Helpers of the ASGI middleware (`vllm_hooks.middleware`): who made a request (`identity`),
the caller's trace (`trace_context`) and the audit returned inside a response
(`response_audit`), read back from the agent by `audit_readers` and written with JSON numbers
by `proto_json`.

Imports: `events`, `config`.
"""
