"""Patch target: uvicorn's `ProxyHeadersMiddleware` — the TCP peer kept before it is rewritten.

`vllm serve` runs uvicorn with proxy headers on, which replaces `scope["client"]` with an
X-Forwarded-For address before any middleware runs; on the loopback anyone could then pick the
peer the hook's trust decision rests on. The wrapper keeps the socket's own peer under
`identity.SOCKET_PEER_KEY` first; the hook applies VLLM_AUDIT_TRUSTED_PROXIES itself.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

from vllm_hooks.http.identity import SOCKET_PEER_KEY

_peer_kept = False


def keep_socket_peer() -> None:
    """Idempotent; called in the API server process by the middleware, whose stack Starlette
    builds on the first ASGI call, after uvicorn loaded its proxy-headers middleware (only
    loaded when it is on: not loaded, nothing rewrites the peer). The instance uvicorn already
    built is covered too: the method is looked up on the class at each call."""
    global _peer_kept
    module = sys.modules.get("uvicorn.middleware.proxy_headers")
    if _peer_kept or module is None:
        return
    _peer_kept = True
    cls = module.ProxyHeadersMiddleware
    original = cls.__call__

    @functools.wraps(original)
    async def __call__(self: Any, scope: Any, receive: Any, send: Any) -> None:
        if scope.get("type") != "lifespan" and SOCKET_PEER_KEY not in scope:
            scope[SOCKET_PEER_KEY] = scope.get("client")
        await original(self, scope, receive, send)

    cls.__call__ = __call__
