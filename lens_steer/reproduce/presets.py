"""The paper's own steering cells for its two models (Zhang & Viteri 2024), looked up by model id and
evaluated beside the sweep's choice; pure."""

from __future__ import annotations

from dataclasses import dataclass

from lens_steer.viz.report import PAPER_MODELS

__all__ = ["PRESETS", "PaperCell", "Preset", "preset_for"]


@dataclass(frozen=True)
class PaperCell:
    """One steering setting as the paper states it: a block and an absolute coefficient."""

    mode: str
    layer: int
    coeff: float


@dataclass(frozen=True)
class Preset:
    """A paper model and its stated cells (one per steering mode)."""

    model: str
    cells: tuple[PaperCell, ...]

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {"model": self.model, "cells": [{"mode": c.mode, "layer": c.layer, "coeff": c.coeff}
                                               for c in self.cells]}


PRESETS: dict[str, Preset] = {
    m["model"]: Preset(m["model"], tuple(PaperCell(mode, *m[mode]) for mode in ("continuous", "single")))
    for m in PAPER_MODELS
}
"""``meta-llama/Meta-Llama-3-8B-Instruct``: single l=16 c=20, continuous l=13 c=1;
``mistralai/Mistral-7B-Instruct-v0.2``: single l=15 c=10, continuous l=10 c=0.5."""


def preset_for(model: str) -> Preset | None:
    """The paper's cells for ``model`` (its hub id; a local copy named by a path ending in the id matches
    too, e.g. ``/models/Mistral-7B-Instruct-v0.2``), or None when the paper did not run it."""
    if model in PRESETS:
        return PRESETS[model]
    tail = model.rstrip("/").rsplit("/", 1)[-1].lower()
    matches = [p for name, p in PRESETS.items() if name.rsplit("/", 1)[-1].lower() == tail]
    return matches[0] if matches else None
