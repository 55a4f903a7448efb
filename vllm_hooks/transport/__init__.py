"""Getting events to the agent without blocking vLLM: the bounded buffer (`buffer`), batching
and truncation (`batching`, `truncate`), the unacknowledged window (`window`), refusal reasons
(`refusals`), the sender thread that makes the batches (`sender`, counting in `sender_stats`)
and its gRPC stream to the agent (`stream`).

Imports: `events`, `config`.
"""
