"""Capture policy for sensitive fields: none | hmac | redact | full.

Applied on the sender thread, inside vLLM's process, so raw text never leaves it unless the
policy is `full`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

from vllm_hooks.events.pii import CARD, EMAIL, IBAN, IPV4, IPV6, PHONE, card_number, luhn_valid

__all__ = ["CapturePolicy", "luhn_valid", "redact"]



def _card(match: re.Match[str]) -> str:
    # Only Luhn-valid numbers are cards; other long digit runs fall through to the phone rule.
    return "<CARD>" if card_number(match.group(0)) else match.group(0)


def redact(text: str) -> str:
    """Replaces e-mail, IBAN, card (Luhn), IP and phone numbers by typed placeholders."""
    text = EMAIL.sub("<EMAIL>", text)
    text = IBAN.sub("<IBAN>", text)
    text = CARD.sub(_card, text)
    text = IPV4.sub("<IP>", text)
    text = IPV6.sub("<IP>", text)
    return PHONE.sub("<PHONE>", text)


class CapturePolicy:
    def __init__(self, key: bytes | None) -> None:
        # Without a configured secret, hashes are still unreadable but not joinable across
        # processes; the operator is told once (see runtime.py).
        self.key = key if key else secrets.token_bytes(32)
        self.key_configured = key is not None

    def apply(self, policy: str, text: str) -> str:
        if not text or policy == "full":
            return text
        if policy == "none":
            return ""
        if policy == "redact":
            return redact(text)
        digest = hmac.new(self.key, text.encode("utf-8", "surrogatepass"), hashlib.sha256)
        return "hmac-sha256:" + digest.hexdigest()
