"""Everything that touches vLLM's internals: the adapter that patches the scheduler and the
structured-output manager (`adapter`), the grammar proxy (`grammar_tap`), the stat logger plugin
(`stat_logger`) and grammar replay (`replay_grammar`). Only this
room imports `vllm`.

Imports: `transport`, `events`, `config`.
"""
