"""Helpers of the ASGI middleware (`vllm_hooks.middleware`): who made a request (`identity`) and
the audit returned inside a response (`response_audit`).

Imports: `events`, `config`.
"""
