"""The record log and everything that reads it: the hash chain and signed checkpoints
(`chain`), the log itself (`log`) with its retention (`retention`), its start (`log_start`),
what it remembers at start of the records before (`recorded_before`), the publisher's entries
(`entry`) and reads from disk (`disk_feed`), reading a stopped log untouched (`read_only`),
`verify`, `export`, `replay` and the record schema (`schema`).

Owns: the ordered, durable evidence. Imports: `model`, `storage`.
"""
