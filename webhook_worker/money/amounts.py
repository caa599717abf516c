"""Integer amounts as Stripe's metadata and payloads carry them: credits and minor units."""

from __future__ import annotations

MAX_DIGITS = 18  # below 2**63: a bigint column holds every value this accepts


def positive_int(raw: object) -> int | None:
    """A positive integer from an int or a string of at most 18 digits; None for anything
    else (floats, booleans, signs, blanks, zero): money is integers end to end."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw if raw > 0 else None
    if isinstance(raw, str):
        text = raw.strip()
        if text.isascii() and text.isdigit() and len(text) <= MAX_DIGITS:
            value = int(text)
            return value if value > 0 else None
    return None
