"""On/off words, read the same way in settings (environment) and in network options."""

from __future__ import annotations

ON = frozenset({"on", "true", "1", "yes"})
OFF = frozenset({"off", "false", "0", "no"})


def switch(text: str, default: bool) -> bool | None:
    """``text`` as on or off (any case, surrounding spaces ignored); ``default`` when empty;
    None when it is neither, for the caller to refuse in its own terms."""
    word = text.strip().lower()
    if not word:
        return default
    if word in ON:
        return True
    if word in OFF:
        return False
    return None
