"""Which trail an event belongs to.

- HTTP events carry the X-Request-Id the hook's middleware saw or injected: that is the id.
- The OpenAI server names engine requests `chatcmpl-<X-Request-Id>` / `cmpl-<X-Request-Id>`
  and vLLM appends `-<8 random chars>`: stripping both gives the same id, so the halves meet.
- The completions API runs one engine request per prompt, `cmpl-<id>-<prompt index>-<8 chars>`:
  the prompt index is stripped too, so every prompt of one HTTP request joins its trail.
- With `n > 1` every sample is a child request `<index>_<parent id>`: all join the parent's
  trail, which is complete once every child finished.
- Offline `LLM` ids (`0-1a2b3c4d`) are kept whole: the counter restarts with every process,
  the random suffix keeps them unique. (Offline children keep their `<index>_` prefix, so each
  sample is a trail of its own.)
"""

from __future__ import annotations

import re

_SUFFIX = re.compile(r"-[0-9a-zA-Z]{8}$")
#: Parallel sampling (n > 1) runs one child request per sample, named `<index>_<parent id>`.
_CHILD = re.compile(r"^\d+_")
SERVER_PREFIXES = ("chatcmpl-", "cmpl-")
#: `-<prompt index>` the completions API appends to its request id, one per prompt.
_PROMPT_INDEX = re.compile(r"-\d+$")


def trail_id_for_engine_request(engine_request_id: str) -> tuple[str, bool]:
    """Returns (trail id, whether an HTTP event is expected for it)."""
    external = _SUFFIX.sub("", _CHILD.sub("", engine_request_id))
    for prefix in SERVER_PREFIXES:
        if external.startswith(prefix) and len(external) > len(prefix):
            trail_id = external[len(prefix):]
            if prefix == "cmpl-":
                trail_id = _PROMPT_INDEX.sub("", trail_id) or trail_id
            return trail_id, True
    return engine_request_id, False
