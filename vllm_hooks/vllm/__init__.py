"""Everything that touches vLLM's internals: the hook points and their install (`adapter`,
whose docstring maps them), one module per patch target (`scheduler_patch`,
`structured_output_patch`, `request_id_patch`, `offline_stat_logger_patch`,
`socket_peer_patch`; `api_key_check` reads vLLM's own; `backend_check` refuses a
structured-output backend vLLM could not load), the grammar proxy (`grammar_tap`), the stat
logger plugin (`stat_logger`) and grammar replay (`replay_grammar`, compiled by
`replay_backends`). Only this room imports `vllm`.

Imports: `transport`, `events`, `config`.
"""
