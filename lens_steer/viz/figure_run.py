"""One run of the paper figure set on a loaded model and vector: the settings with every default
resolved, the figures built and written (``lens-steer figures`` and ``lens-steer reproduce`` both call it)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lens_steer.config import GenerationConfig, default_layer
from lens_steer.viz.figure_io import WriteReport, write_paper_figures
from lens_steer.viz.figure_settings import FigureSettings
from lens_steer.viz.figures import PaperFigures, paper_figures

__all__ = ["FigureRun", "make_figures", "resolve_figure_settings"]


@dataclass(frozen=True)
class FigureRun:
    """What :func:`make_figures` built (``paper``) and wrote (``written``)."""

    paper: PaperFigures
    written: WriteReport


def resolve_figure_settings(
    model_name: str, n_layers: int, *, layer: int | None = None, trace_question: str | None = None,
    ablation_questions: int = 16, ablation_file: str | os.PathLike[str] | None = None,
    ablation_layers: Sequence[str] | None = None, max_new_tokens: int = 128, batch_size: int = 8, top_k: int = 10,
    n_splits: int = 100, seed: int = 0, device: str = "cpu", dtype: str = "float32", allow_other_model: bool = False,
) -> FigureSettings:
    """:class:`FigureSettings` with every default filled in.

    Args:
        model_name: The model's id or path. n_layers: Its depth.
        layer: Analysis layer (default: :func:`~lens_steer.config.default_layer`).
        trace_question: Question of the projection trace (None: the first packaged held-out demo
            question; ``""`` skips the trace).
        ablation_layers: One entry per ablation figure, ``"all"`` or comma-separated layers (default:
            ``"all"`` and the analysis layer).
        The rest: see :class:`FigureSettings`.
    """
    from lens_steer.data.corpus import demo_questions_path, load_questions_jsonl

    layer = layer if layer is not None else default_layer(model_name, n_layers)
    if trace_question is None:
        trace_question = load_questions_jsonl(demo_questions_path("heldout"))[0].question
    return FigureSettings(
        model=model_name, layer=layer, trace_question=trace_question, ablation_questions=ablation_questions,
        ablation_file=None if ablation_file is None else str(ablation_file),
        ablation_layers=tuple(ablation_layers or ("all", str(layer))), max_new_tokens=max_new_tokens,
        batch_size=batch_size, top_k=top_k, n_splits=n_splits, seed=seed, device=device, dtype=dtype,
        allow_other_model=allow_other_model)


def make_figures(model, vector, settings: FigureSettings, out: str | os.PathLike[str], *, command: str,
                 png: bool = True, plotlyjs: str = "directory", progress: bool = True,
                 vector_dir: str | os.PathLike[str] | None = None) -> FigureRun:
    """Build every figure of ``vector`` on ``model`` (a bridge) and write them to ``out``.

    Args:
        model: The ``TransformerBridge`` (checked against the vector unless ``settings.allow_other_model``).
        vector: A loaded :class:`~lens_steer.method.vectors.SteeringVector`.
        settings: From :func:`resolve_figure_settings`.
        out: Output directory. command: The command line recorded in the README.
        png / plotlyjs: See :func:`~lens_steer.viz.figure_io.write_paper_figures`.
        progress: Show progress bars.
        vector_dir: The vector's directory as the README names it (default: where it was loaded from).

    Raises:
        IndexError: a layer out of range. ModelMismatchError: the vector is another model's.
    """
    from lens_steer.data.corpus import demo_questions_path, load_questions_jsonl
    from lens_steer.data.registry import subsample
    from lens_steer.models import check_layer
    from lens_steer.prompts import PromptTemplate

    vector.check_compatible(model, allow_other_model=settings.allow_other_model)
    check_layer(model, settings.layer)
    ablation_layers = [None if spec.strip() == "all" else [check_layer(model, int(x)) for x in spec.split(",")
                                                            if x.strip()]
                       for spec in settings.ablation_layers]
    items = []
    if settings.ablation_questions > 0:
        pool = (load_questions_jsonl(settings.ablation_file) if settings.ablation_file is not None else
                load_questions_jsonl(demo_questions_path("derive")) + load_questions_jsonl(demo_questions_path("heldout")))
        items = subsample(pool, settings.ablation_questions, settings.seed)
    meta = vector.metadata
    template = PromptTemplate(**meta.templates) if meta.templates else None
    generation = GenerationConfig(max_new_tokens=settings.max_new_tokens, batch_size=settings.batch_size)
    paper = paper_figures(model, vector, settings.layer, trace_question=settings.trace_question or None,
                          ablation_questions=items, ablation_layers=ablation_layers, generation=generation,
                          template=template, k=settings.top_k, seed=settings.seed, n_splits=settings.n_splits,
                          progress=progress)
    directory = str(vector_dir) if vector_dir is not None else (vector.source.path if vector.source else "")
    info = {"directory": directory, "model": meta.model_id, "fingerprint": meta.model_fingerprint,
            "layers x d_model": f"{meta.n_layers} x {meta.d_model}", "questions": len(meta.question_ids),
            "corpus sha256": meta.corpus_hash, "positions": meta.positions, "created": meta.created,
            "generation": json.dumps(meta.generation)}
    written = write_paper_figures(paper, Path(out), command=command, vector_info=info, png=png, plotlyjs=plotlyjs,
                                  settings=settings)
    return FigureRun(paper=paper, written=written)
