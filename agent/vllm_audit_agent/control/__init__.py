"""Level control: the audit level the agent pushes to every hook, and its persistence
(`level_file`).

Imports: `model`, `storage`.
"""
