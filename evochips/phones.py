"""Phone numbers as WhatsApp shows them: the number inside a JID, and whether two
spellings of a number are one number."""

from __future__ import annotations

import re

# The user part of a phone JID is the number, maybe with ":device"; a "@lid" JID hides it.
_PHONE_JID = re.compile(r"([0-9]{8,15})(?::[0-9]+)?(?:@(?:s\.whatsapp\.net|c\.us))?")


def owner_number(jid: str | None) -> str | None:
    """The E.164 number of a WhatsApp JID (``5511900000005:12@s.whatsapp.net`` gives
    ``+5511900000005``), a Brazilian mobile with its ninth digit; None for a JID that
    does not carry a phone number."""
    match = _PHONE_JID.fullmatch(jid or "")
    return None if match is None else "+" + _with_ninth_digit(match[1])


def same_number(one: str, other: str) -> bool:
    """Whether two phone numbers are one once reduced to digits, a Brazilian mobile with
    and without its ninth digit being the same number."""
    digits = [_with_ninth_digit(re.sub(r"[^0-9]", "", number)) for number in (one, other)]
    return digits[0] == digits[1]


def _with_ninth_digit(digits: str) -> str:
    """Brazil put a 9 in front of every mobile number (2012-2016; they began with 6 to 9
    before), and WhatsApp accounts older than that keep the old 12-digit form in their JID."""
    area, first = digits[2:4], digits[4:5]
    if len(digits) == 12 and digits.startswith("55") and "0" not in area and first in "6789":
        return f"{digits[:4]}9{digits[4:]}"
    return digits
