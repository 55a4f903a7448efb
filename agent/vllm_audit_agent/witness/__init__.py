"""The witness (`vllm-audit witness`): a process off the agent's pod, with its own key, that
cosigns each new checkpoint of a record log once it has checked the log only grew since the
last one it cosigned (C2SP tlog-witness), and refuses, counts and logs a fork or a rollback.

`checks` decides (the log's signature, the old size, the consistency proof), `store` keeps the
newest cosigned checkpoint of each log (atomically, before answering), `history` tells a fork
from a proof that is merely wrong, `http` serves the protocol, /checkpoint and /metrics
(`metrics`), `server` wires them.

Imports: `records` (the Merkle tree, the signed notes, the protocol's wire format) and
`storage`; used by `cli` only.
"""
