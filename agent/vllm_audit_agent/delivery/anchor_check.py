"""The agent's start-time self-check: is the record log it opened the one its witnesses saw?

Before it offers anything new, the agent asks each witness for the newest checkpoint it
cosigned of this log (`GET /checkpoint/<origin>`) and compares it with the log on disk:

  matched       the log has a checkpoint at that size with that root
  truncated     the witness saw a larger tree than the log holds (records cut from its end,
                or a data directory restored from an older copy)
  rewritten     the log's checkpoint at that size has another root (records changed and the
                log re-signed: only someone with the key can make it verify alone)
  unverifiable  the log no longer holds a checkpoint at that size (expired), or the witness
                never saw this log
  unreachable   the witness did not answer (the check is skipped for it, counted)

A truncated or rewritten log is a break: a metric and an alert, and the agent goes on under a
new log identity whose genesis names the break (records/log.py `start_new_log`): the log as
found stays on disk for the investigation, and new records are never mixed into it.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from collections import Counter
from collections.abc import Sequence

import aiohttp

from vllm_audit_agent.records.log import RecordLog
from vllm_audit_agent.records.note import log_signature_valid, origin_of, parse

logger = logging.getLogger("vllm_audit.agent")

ANCHOR_CHECK_OUTCOMES = ("matched", "truncated", "rewritten", "unverifiable", "unreachable")
#: The outcomes that are a break of the log.
BREAKS = ("truncated", "rewritten")


async def _anchored(session: aiohttp.ClientSession, url: str, origin: str) -> str | None:
    where = f"{url.rstrip('/')}/checkpoint/{urllib.parse.quote(origin, safe='')}"
    async with session.get(where) as answer:
        if answer.status == 404:
            return None
        answer.raise_for_status()
        return await answer.text()


def compare(log: RecordLog, size: int, root_hex: str) -> str:
    """The outcome of comparing the log with an anchored (size, root)."""
    held = log.tree.size if log.tree is not None else 0
    if size > held:
        return "truncated"
    ours = log.checkpoint_roots.get(size)
    if ours is None:
        return "unverifiable"
    return "matched" if ours == root_hex else "rewritten"


async def check_against_witnesses(log: RecordLog, urls: Sequence[str], timeout: float,
                                  counters: Counter[str]) -> str | None:
    """Compares the log with every witness's newest checkpoint of it; on a break starts a new
    log naming it. Returns the break's reason (None: no break)."""
    origin = origin_of(log.log_id)
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(timeout=client_timeout) as session:
        for url in urls:
            try:
                text = await _anchored(session, url, origin)
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                counters["anchor_check_unreachable"] += 1
                logger.warning("start-time check: witness %s did not answer (%s)", url, exc)
                continue
            if text is None:
                counters["anchor_check_unverifiable"] += 1
                continue
            try:
                note = parse(text)
            except ValueError:
                counters["anchor_check_unverifiable"] += 1
                continue
            if not log_signature_valid(note, log.signer.public_key):
                counters["anchor_check_unverifiable"] += 1
                continue
            cp = note.checkpoint
            outcome = compare(log, cp.size, cp.root.hex())
            counters[f"anchor_check_{outcome}"] += 1
            if outcome in BREAKS:  # the log is left as found: the rest is about it too
                log.start_new_log(outcome, {"anchor": f"witness {url}", "anchored_size": cp.size,
                                            "anchored_root": cp.root.hex(),
                                            "log_tree_size": log.tree.size if log.tree else 0})
                return outcome
    return None
