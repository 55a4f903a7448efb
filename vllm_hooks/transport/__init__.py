"""Getting events to the agent without blocking vLLM: the bounded buffer (`buffer`), batching
and truncation (`batching`, `truncate`), the unacknowledged window (`window`), refusal reasons
(`refusals`) and the sender thread with its gRPC stream (`sender`).

Imports: `events`, `config`.
"""
