"""A named figure with its export size and a line saying what it shows (what figure I/O writes)."""

from __future__ import annotations

from dataclasses import dataclass

import plotly.graph_objects as go

__all__ = ["FigureSpec"]


@dataclass(frozen=True)
class FigureSpec:
    """One figure with the name and size it is saved under and a line saying what it shows.

    Attributes:
        name: File stem (``<name>.html`` / ``<name>.png``).
        title: Short human title.
        description: What the figure shows (one or two sentences, for the README).
        figure: The plotly figure.
        width: Static export width in pixels.
        height: Static export height in pixels.
        png: Whether a static PNG is written; False for figures only readable interactively
            (e.g. a large token table), which are written as HTML only.
    """

    name: str
    title: str
    description: str
    figure: go.Figure
    width: int = 900
    height: int = 600
    png: bool = True
