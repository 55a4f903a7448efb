"""The record log and everything that reads it: the hash chain and signed checkpoints
(`chain`), the log itself (`log`), `verify`, `export`, `replay` and the record schema (`schema`).

Owns: the ordered, durable evidence. Imports: `model`, `storage`.
"""
