"""Markdown table cells shared by the research scripts' tables."""

from __future__ import annotations

from typing import Any

MISSING = "–"


def cell(value: Any, digits: int = 3) -> str:
    """A float with ``digits`` decimals, anything else as text, ``None`` as a dash."""
    if value is None:
        return MISSING
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)
