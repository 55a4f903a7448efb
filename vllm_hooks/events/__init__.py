"""Events as the hook builds them: the raw tuples the engine thread appends (`raw_events`),
their conversion to the contract on the sender thread under the capture policy (`capture`,
`http_parse`), allowed-set encoding (`allowed_set_encoder`) and the hook's self-timing.

Imports: `config`.
"""
