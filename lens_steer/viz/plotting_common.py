"""What every plot shares: the plotly template (with its font sizes), the cosine colour scale and the
text helpers for tokens and hover."""

from __future__ import annotations

import html
import textwrap
import unicodedata
from collections.abc import Sequence

import plotly.graph_objects as go
import plotly.io as pio
from torch import Tensor

__all__ = ["COSINE_SCALE", "FONT_PX", "MIN_FONT_PX", "TEMPLATE", "as_list", "token_label", "wrap_text"]

FONT_PX = 14
"""Base font size of every figure (ticks, axis titles, legends, annotations), in CSS px."""
MIN_FONT_PX = 10
"""No text of a figure is smaller: PNGs are exported at scale 1, so this is the size at 100 % zoom."""


def _template() -> go.layout.Template:
    """``plotly_white`` with the font sizes of every figure set in one place.

    Heatmap cell text gets a fixed size (plotly.js otherwise shrinks it to fit the cell, far below
    ``MIN_FONT_PX``), and bar/pie text is never shrunk below ``MIN_FONT_PX``.
    """
    tpl = go.layout.Template(pio.templates["plotly_white"])
    tpl.layout.font.size = FONT_PX
    tpl.layout.title.font.size = FONT_PX + 4
    tpl.layout.legend.font.size = FONT_PX - 1
    tpl.layout.annotationdefaults.font.size = FONT_PX
    tpl.layout.uniformtext = {"minsize": MIN_FONT_PX, "mode": "show"}
    for heatmap in tpl.data.heatmap:
        heatmap.textfont.size = FONT_PX - 2
    return tpl


TEMPLATE = _template()
"""The plotly template of every figure (pass as ``template=TEMPLATE``)."""
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
    return html.escape(tok, quote=False) if tok else "∅"  # plotly shows &quot; literally; quotes are safe


def wrap_text(text: str, width: int = 60, max_chars: int = 300) -> str:
    """Truncate and wrap a text for hover (lines joined with ``<br>``, HTML-escaped)."""
    text = " ".join(text.split())
    if len(text) > max_chars:
        text = text[: max_chars - 1] + "…"
    return "<br>".join(html.escape(line, quote=False) for line in textwrap.wrap(text, width)) or "(empty)"
