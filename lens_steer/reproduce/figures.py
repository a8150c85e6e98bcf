"""The paper figures of a vector in one call: compute the analysis (:mod:`lens_steer.analysis.paper`),
draw it (:mod:`lens_steer.viz.figures`) and write it (:mod:`lens_steer.viz.figure_io`). ``lens-steer
figures`` and the figures stage of ``lens-steer reproduce`` both call :func:`make_figures`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from lens_steer.analysis.paper import FigureSettings, analyse_vector
from lens_steer.viz.figure_io import WriteReport, write_paper_figures
from lens_steer.viz.figures import PaperFigures, paper_figures
from lens_steer.viz.readme import vector_info

__all__ = ["FigureRun", "make_figures"]


@dataclass(frozen=True)
class FigureRun:
    """What :func:`make_figures` built (``paper``, with the analysis it drew) and wrote (``written``)."""

    paper: PaperFigures
    written: WriteReport


def make_figures(model, vector, settings: FigureSettings, out: str | os.PathLike[str], *, command: str,
                 png: bool = True, plotlyjs: str = "directory", progress: bool = True,
                 vector_dir: str | os.PathLike[str] | None = None) -> FigureRun:
    """Build every figure of ``vector`` on ``model`` (a bridge) and write them to ``out``.

    Args:
        model: The ``TransformerBridge`` (checked against the vector unless ``settings.allow_other_model``).
        vector: A loaded :class:`~lens_steer.method.vectors.SteeringVector`.
        settings: From :func:`~lens_steer.analysis.paper.resolve_figure_settings`.
        out: Output directory. command: The command line recorded in the README.
        png / plotlyjs: See :func:`~lens_steer.viz.figure_io.write_paper_figures`.
        progress: Show progress bars.
        vector_dir: The vector's directory as the README names it (default: where it was loaded from).

    Raises:
        IndexError: a layer out of range. ModelMismatchError: the vector is another model's.
    """
    paper = paper_figures(analyse_vector(model, vector, settings, progress=progress))
    directory = str(vector_dir) if vector_dir is not None else (vector.source.path if vector.source else "")
    written = write_paper_figures(paper, Path(out), command=command, vector_info=vector_info(vector, directory),
                                  png=png, plotlyjs=plotlyjs, settings=settings)
    return FigureRun(paper=paper, written=written)
