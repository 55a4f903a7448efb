"""Whether vLLM's own API-key check runs on a request (`vllm serve --api-key` / `VLLM_API_KEY`).

Nothing is patched: `init_entrypoints_middleware` (vllm.entrypoints.serve.middleware.register)
adds `AuthenticationMiddleware(tokens=...)` only when a key is configured, and the rule below
is that middleware's own. The audit middleware asks once, on its first audited request, and
records vLLM's decision (`auth_status`) rather than guess it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vllm.entrypoints.serve.middleware.authenticate import (
    GUARDED_PREFIX,
    AuthenticationMiddleware,
)


def vllm_key_check(app: Any) -> Callable[[str, str, str], bool] | None:
    """For the ASGI app vLLM serves (`scope["app"]`): a function (method, path, root_path) ->
    whether vLLM checks an API key on that request; None when the app is not one this module
    knows (the audit then records the decision as unspecified rather than guess)."""
    stack = getattr(app, "user_middleware", None)
    if stack is None:
        return None
    configured = any(
        isinstance(getattr(m, "cls", None), type) and issubclass(m.cls, AuthenticationMiddleware)
        and bool((getattr(m, "kwargs", None) or {}).get("tokens"))
        for m in stack)
    if not configured:
        return _never_checked

    def checked(method: str, path: str, root_path: str) -> bool:
        # AuthenticationMiddleware.__call__'s own rule.
        return method != "OPTIONS" and path.removeprefix(root_path).startswith(GUARDED_PREFIX)

    return checked


def _never_checked(method: str, path: str, root_path: str) -> bool:
    return False
