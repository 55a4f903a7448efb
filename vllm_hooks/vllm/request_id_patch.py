"""Patch target: `vllm.v1.request.Request.from_engine_core_request` — the caller's request id.

vLLM's InputProcessor renames every request before the engine sees it: the caller's id moves
to `EngineCoreRequest.external_req_id` and `request_id` becomes `<that id>-<8 random chars>`
(`0-ab9a1c82` for the offline `LLM`'s request "0"). The engine core's `Request`, which the
scheduler hands to the hook, does not keep the caller's id, so the classmethod that builds it
is wrapped to note it on the instance (`EXTERNAL_ID`); `scheduler_patch` puts it on the ADDED
event. That is how a user with `RequestOutput.request_id` in hand finds the trail.
"""

from __future__ import annotations

from typing import Any

from vllm.v1.request import Request

from vllm_hooks.errors import ERRORS

#: The attribute of vLLM's Request holding the caller's id ("" when vLLM gave none).
EXTERNAL_ID = "_vllm_audit_external_id"


def patch_request_ids() -> None:
    original = Request.from_engine_core_request.__func__  # the classmethod's function

    def from_engine_core_request(cls: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        built = original(cls, request, *args, **kwargs)
        try:
            setattr(built, EXTERNAL_ID, str(getattr(request, "external_req_id", None) or ""))
        except Exception as exc:
            ERRORS.record("request.external_id", exc)
        return built

    Request.from_engine_core_request = classmethod(from_engine_core_request)


def external_id(request: Any) -> str:
    """The caller's id of vLLM's `request`, noted when it was built ("" before the patch)."""
    return str(getattr(request, EXTERNAL_ID, ""))
