"""The number inside a WhatsApp JID, and when two spellings are one number."""

from __future__ import annotations

import pytest

from evochips.phones import owner_number, same_number


@pytest.mark.parametrize(
    ("jid", "number"),
    [
        ("5511900000005@s.whatsapp.net", "+5511900000005"),
        ("5511900000005:12@s.whatsapp.net", "+5511900000005"),
        ("5511900000005@c.us", "+5511900000005"),
        ("5511900000005", "+5511900000005"),
        # A Brazilian mobile paired before the ninth digit keeps the 12-digit form.
        ("554790000001@s.whatsapp.net", "+5547990000001"),
        # A 12-digit Brazilian landline (it starts with 2 to 5) has no ninth digit.
        ("551133330000@s.whatsapp.net", "+551133330000"),
        ("14155550100@s.whatsapp.net", "+14155550100"),
        ("123456789012345@lid", None),
        ("120363000000000000@g.us", None),
        ("not-a-number@s.whatsapp.net", None),
        ("", None),
        (None, None),
    ],
)
def test_owner_number_reads_the_jid(jid: str | None, number: str | None) -> None:
    assert owner_number(jid) == number


@pytest.mark.parametrize(
    ("one", "other", "same"),
    [
        ("+55 11 90000-0005", "5511900000005", True),
        ("+5547990000001", "554790000001", True),
        ("+5511900000005", "+5511900000006", False),
        ("+551133330000", "+5511933330000", False),
        ("+14155550100", "14155550100", True),
    ],
)
def test_same_number_ignores_spelling_and_the_ninth_digit(one: str, other: str, same: bool) -> None:
    assert same_number(one, other) is same
