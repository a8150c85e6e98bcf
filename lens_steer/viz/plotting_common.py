"""What every plot shares: the plotly template, the cosine colour scale and the text helpers for tokens and hover."""

from __future__ import annotations

import html
import textwrap
import unicodedata
from collections.abc import Sequence

from torch import Tensor

__all__ = ["COSINE_SCALE", "TEMPLATE", "as_list", "token_label", "wrap_text"]

TEMPLATE = "plotly_white"
"""The plotly template of every figure."""
COSINE_SCALE = "RdBu_r"
"""Diverging colour scale of cosine heatmaps (drawn on [-1, 1])."""


def as_list(x: Tensor | Sequence[float]) -> list:
    """Plain Python list from a tensor or sequence (plotly-friendly)."""
    if isinstance(x, Tensor):
        return x.detach().cpu().float().tolist()
    return list(x)


def _visible_char(c: str) -> str:
    """A control character as its Unicode "control picture" (or ``\\xNN``); others unchanged."""
    code = ord(c)
    if code < 0x20:
        return chr(0x2400 + code)
    if code == 0x7F:
        return "␡"
    if unicodedata.category(c) == "Cc":
        return f"\\x{code:02x}"
    return c


def token_label(tok: str) -> str:
    """A token string made visible and HTML-safe (spaces, newlines, tabs, other control characters, angle brackets).

    Control characters must go: plotly.js fails to draw cell text holding e.g. a form feed.
    """
    tok = tok.replace(" ", "␣").replace("\n", "↵").replace("\t", "⇥")
    tok = "".join(_visible_char(c) for c in tok)
    return html.escape(tok) if tok else "∅"


def wrap_text(text: str, width: int = 60, max_chars: int = 300) -> str:
    """Truncate and wrap a text for hover (lines joined with ``<br>``, HTML-escaped)."""
    text = " ".join(text.split())
    if len(text) > max_chars:
        text = text[: max_chars - 1] + "…"
    return "<br>".join(html.escape(line) for line in textwrap.wrap(text, width)) or "(empty)"
