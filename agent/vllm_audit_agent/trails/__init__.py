"""Trails in memory: the store that joins a request's events until it is final (`store`, with
`trail_events` putting a batch's events on trails, `completeness` deciding when a trail is
recorded, the `linger` queue, and what it `remembered` of trails that left it), the query
index over it (`index`) and request-id correlation (`correlate`).

Owns: the bounded in-memory trail store. Imports: `model` (a final trail leaves through a
callback the composition root wires to the record log).
"""
