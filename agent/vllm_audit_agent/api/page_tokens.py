"""Opaque page tokens: sealed to the caller and the filters they were made for.

A page token used to be base64 of a position in the agent's global trail index, so a
tenant-auditor could read how many other tenants' trails fell between its own, and hand-craft
positions. Now a token is the position sealed with AES-GCM under a key made at each agent start
(never stored), with the caller's token id and a digest of the request's filters as associated
data: it reveals nothing, cannot be forged or edited, and is refused (INVALID_ARGUMENT, the same
answer as garbage) when another caller or other filters present it.

Who it stops: a reader learning the index's size or other tenants' traffic from tokens, and a
token replayed by another caller or with widened filters. Who it does not: the agent's own
process (it holds the key). A restarted agent refuses tokens from before the restart; the
caller lists again from the first page.
"""

from __future__ import annotations

import base64
import hashlib
import os

import grpc
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf.message import Message

from vllm_audit_agent.api.errors import ApiError

_NONCE = 12
#: Fields that do not change which trails a listing walks (the rest must match the token's).
_NOT_FILTERS = frozenset({"page_token", "page_size"})


def filters_digest(request: Message) -> bytes:
    """SHA-256 over the request's fields that select trails (the page fields excluded)."""
    copy = type(request)()
    copy.CopyFrom(request)
    for name in _NOT_FILTERS:
        if name in copy.DESCRIPTOR.fields_by_name:
            copy.ClearField(name)
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).digest()


class PageTokens:
    """`key`: a 128-bit AES key; made at random when None (tokens then die with the process).
    A fleet service with several replicas behind one address shares one key
    (fleet/api_config.py: --page-token-key-file), so a replica opens another's tokens."""

    def __init__(self, key: bytes | None = None) -> None:
        self._aead = AESGCM(key or AESGCM.generate_key(bit_length=128))

    def seal(self, position: int, caller: str, request: Message) -> str:
        return self.seal_cursor(position.to_bytes(8, "big"), caller, request)

    def open(self, token: str, caller: str, request: Message) -> int:
        """The position `token` was sealed with (see `open_cursor`)."""
        return int.from_bytes(self.open_cursor(token, caller, request), "big")

    def seal_cursor(self, cursor: bytes, caller: str, request: Message) -> str:
        """A source's cursor (trail_source.py), sealed to the caller and the filters."""
        nonce = os.urandom(_NONCE)
        sealed = self._aead.encrypt(nonce, cursor,
                                    caller.encode() + b"\x00" + filters_digest(request))
        return base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")

    def open_cursor(self, token: str, caller: str, request: Message) -> bytes:
        """The cursor `token` was sealed with; ApiError(INVALID_ARGUMENT) for any token this
        service did not make for this caller and these filters."""
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            return self._aead.decrypt(raw[:_NONCE], raw[_NONCE:],
                                      caller.encode() + b"\x00" + filters_digest(request))
        except (ValueError, InvalidTag):
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                           "page_token is not one this agent made for this caller and these "
                           "filters (tokens do not survive an agent restart: list again)") from None
