"""Trails in memory: the store that joins a request's events until it is final (`store`), the
query index over it (`index`) and request-id correlation (`correlate`).

Owns: the bounded in-memory trail store. Imports: `model` (a final trail leaves through a
callback the composition root wires to the record log).
"""
