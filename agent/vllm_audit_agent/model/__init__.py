"""What flows through the agent, as values: the contract's events as ingest validates them
(`validation`), one request's trail (`trail`), and the record a final trail becomes (`record`).

Owns: no I/O and no shared state. Imports: `storage` at most.
"""
