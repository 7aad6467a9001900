"""QR codes as Evolution shows them: a pairing ``code`` and a PNG that encodes it."""

from __future__ import annotations

import base64
import secrets

import segno


def new_code() -> str:
    """A code shaped like WhatsApp's: a ref, then three base64 keys, comma-separated."""
    ref = base64.b64encode(secrets.token_bytes(60)).decode()
    keys = [base64.b64encode(secrets.token_bytes(32)).decode() for _ in range(3)]
    return ",".join([f"2@{ref}", *keys])


def png_data_uri(code: str) -> str:
    """The code rendered as a scannable PNG, as a ``data:image/png;base64,`` URI."""
    return str(segno.make_qr(code, error="l").png_data_uri(scale=4, border=4))


def pairing_code() -> str:
    """An 8-character code in Crockford's alphabet, as shown for phone-number pairing."""
    alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    return "".join(secrets.choice(alphabet) for _ in range(8))
