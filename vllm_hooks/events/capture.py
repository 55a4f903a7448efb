"""Capture policy for sensitive fields: none | hmac | redact | full.

Applied on the sender thread, inside vLLM's process, so raw text never leaves it unless the
policy is `full`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]{4}){2,7}(?:[ ]?[A-Z0-9]{1,4})?\b")
_CARD = re.compile(r"\b(?:\d[ -]?){12,18}\d\b")
_IPV4 = re.compile(r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b")
_IPV6 = re.compile(r"\b(?:[0-9A-Fa-f]{1,4}:){2,7}[0-9A-Fa-f]{1,4}\b")
_PHONE = re.compile(r"(?<![\w])\+?\d[\d ()./-]{7,}\d(?![\w])")


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _card(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group(0))
    # Only Luhn-valid numbers are cards; other long digit runs fall through to the phone rule.
    return "<CARD>" if 13 <= len(digits) <= 19 and luhn_valid(digits) else match.group(0)


def redact(text: str) -> str:
    """Replaces e-mail, IBAN, card (Luhn), IP and phone numbers by typed placeholders."""
    text = _EMAIL.sub("<EMAIL>", text)
    text = _IBAN.sub("<IBAN>", text)
    text = _CARD.sub(_card, text)
    text = _IPV4.sub("<IP>", text)
    text = _IPV6.sub("<IP>", text)
    return _PHONE.sub("<PHONE>", text)


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
