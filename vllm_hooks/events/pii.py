"""Personal data in text: one definition of each pattern, used by the `redact` capture policy
(capture.py: replace) and by the content signals (signals.py: count).

The two uses differ only in what a pattern-shaped match must also pass. Redaction errs on the
side of hiding (every IBAN-shaped run goes, any long digit run is a phone); a signal errs on
the side of not crying wolf, so it also checks what a checksum or a shape can tell: a card
number passes Luhn, an IBAN passes ISO 13616's mod-97, and a phone number is neither a date,
an IPv4 address nor a decimal number.
"""

from __future__ import annotations

import re

EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]{4}){2,7}(?:[ ]?[A-Z0-9]{1,4})?\b")
CARD = re.compile(r"\b(?:\d[ -]?){12,18}\d\b")
IPV4 = re.compile(r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b")
IPV6 = re.compile(r"\b(?:[0-9A-Fa-f]{1,4}:){2,7}[0-9A-Fa-f]{1,4}\b")
PHONE = re.compile(r"(?<![\w])\+?\d[\d ()./-]{7,}\d(?![\w])")

_NOT_DIGIT = re.compile(r"\D")
#: 2024-01-15, 15/01/2024, 1.5.2024: a date, perhaps followed by a time's hour.
_DATE = re.compile(r"^(?:\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4})(?:\D|$)")
#: E.164 allows 15 digits; fewer than 9 is a local number too short to tell from a count.
PHONE_DIGITS = (9, 15)


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


def card_number(text: str) -> bool:
    """A CARD match is a card number: 13 to 19 digits passing the Luhn check."""
    digits = _NOT_DIGIT.sub("", text)
    return 13 <= len(digits) <= 19 and luhn_valid(digits)


def iban_valid(text: str) -> bool:
    """ISO 13616: the country and check digits moved to the end, letters as 10..35, the number
    modulo 97 is 1. (An IBAN-shaped run passes by chance once in 97.)"""
    compact = text.replace(" ", "")
    if not 15 <= len(compact) <= 34:
        return False
    rearranged = compact[4:] + compact[:4]
    remainder = 0
    for ch in rearranged:
        # Digits stay, letters A..Z become 10..35; folded piecewise so no huge integer is built.
        value = ord(ch) - 48 if ch.isdigit() else ord(ch) - 55
        remainder = (remainder * (100 if value > 9 else 10) + value) % 97
    return remainder == 1


def phone_number(text: str) -> bool:
    """A PHONE match is a phone number: 9 to 15 digits, a leading + or a separator (a bare run
    of digits is an id, a count or a timestamp as often), and not a date, an IPv4 address, a
    decimal number or a card number."""
    digits = _NOT_DIGIT.sub("", text)
    if not PHONE_DIGITS[0] <= len(digits) <= PHONE_DIGITS[1]:
        return False
    if len(digits) == len(text):
        return False
    if _DATE.match(text) or IPV4.fullmatch(text):
        return False
    if text.count(".") == 1 and digits == text.replace(".", ""):
        return False
    return not card_number(text)
