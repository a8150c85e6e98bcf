"""Each stage of a reproduction as the library runs it: the settings it hands to derive / EvalRun / the
report / the figures, the inputs it is cached by, and the files it writes (called by
:class:`~lens_steer.reproduce.pipeline.Reproduction`)."""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from lens_steer.data.registry import resolve_data_dir
from lens_steer.eval.conditions import Condition, sweep_conditions
from lens_steer.eval.results import SummaryRow
from lens_steer.eval.run import DataSettings, RunSettings
from lens_steer.eval.sweep import BEST_RULE
from lens_steer.method.vectors import SteeringVector
from lens_steer.reproduce.selection import Selection
from lens_steer.reproduce.settings import ReproduceSettings
from lens_steer.viz.figure_settings import FigureSettings

__all__ = ["SELECTION_FILE", "checkpoint_settings", "data_settings", "derive", "eval_inputs", "eval_run_settings",
           "figure_settings", "open_bridge", "open_engine", "read_selection", "sweep_inputs", "sweep_modes", "sweep_run_settings", "write_figures",
           "write_heatmaps", "write_report"]

SELECTION_FILE = "selection.json"


# ---------------------------------------------------------------- models
def open_engine(settings: ReproduceSettings, capture_residuals: bool):
    """The settings' engine on their model (``capture_residuals``: the derivation will read residuals)."""
    from lens_steer.engines.api import open_engine as open_named

    return open_named(settings.engine, settings.model, device=settings.device, dtype=settings.dtype,
                      capture_residuals=capture_residuals)


def open_bridge(settings: ReproduceSettings):
    """The settings' model as a TransformerLens bridge (the figures need its hooks)."""
    from lens_steer.config import torch_dtype
    from lens_steer.models import load_model

    return load_model(settings.model, device=settings.device, dtype=torch_dtype(settings.dtype))


# ---------------------------------------------------------------- derive
def _checkpoint(settings: ReproduceSettings, engine, questions: Sequence, out: Path):
    from lens_steer.method.checkpoint import derive_checkpoint

    st = settings.budget.derive
    if not st.chunk_questions:
        return None
    return derive_checkpoint(out, engine, questions, template=settings.template,
                             generation=settings.generation(st.max_new_tokens), positions=st.positions,
                             method=st.method, chunk_questions=st.chunk_questions)


def checkpoint_settings(settings: ReproduceSettings, engine, questions: Sequence) -> dict | None:
    """The settings a derivation checkpoint of this run records (None: the run keeps no checkpoint)."""
    checkpoint = _checkpoint(settings, engine, questions, Path("."))
    return checkpoint.settings if checkpoint is not None else None


def derive(settings: ReproduceSettings, engine, questions: Sequence, out: Path, *, progress: bool) -> SteeringVector:
    """Derive the vector into ``out`` exactly as ``lens-steer derive --out OUT`` does (checkpointed in chunks,
    so a killed run resumes); returns it as loaded back from ``out``."""
    from lens_steer.method.derive import derive_cot_vector

    st = settings.budget.derive
    start = time.perf_counter()
    vector = derive_cot_vector(engine, questions, template=settings.template,
                               generation=settings.generation(st.max_new_tokens), positions=st.positions,
                               method=st.method, progress=progress, chunk_questions=st.chunk_questions or None,
                               checkpoint=_checkpoint(settings, engine, questions, out))
    vector.metadata.stats["wall_seconds"] = round(time.perf_counter() - start, 2)
    vector.save(out)
    return SteeringVector.load(out)


# ---------------------------------------------------------------- sweep and eval
def data_settings(settings: ReproduceSettings, stage: str) -> DataSettings:
    """The items of the ``"sweep"`` (dev splits) or ``"eval"`` (test subsets) stage."""
    if stage == "sweep":
        st = settings.budget.sweep
        return DataSettings(benchmarks=st.benchmarks, limit=st.limit, seed=settings.seed, data_dir=settings.data_dir)
    ev = settings.budget.eval
    return DataSettings(benchmarks=ev.benchmarks, split=ev.split, limit=ev.limit, task_limit=ev.task_limit,
                        seed=settings.seed, data_dir=settings.data_dir)


def _common_inputs(settings: ReproduceSettings, stage: str, vector: SteeringVector, data: tuple[list, list[str]],
                   max_new_tokens: int) -> dict:
    examples, names = data
    ds = data_settings(settings, stage)
    source = resolve_data_dir(ds.data_dir)
    ids = hashlib.sha256("\n".join(e.id for e in examples).encode()).hexdigest()
    return {"model": settings.model, "dtype": settings.dtype, "vector": vector.source.tensors_sha256,
            "data": {"benchmarks": list(names), "split": ds.split, "limit": ds.limit, "task_limit": ds.task_limit,
                     "seed": ds.seed, "source": str(source.resolve()) if source is not None else "hub",
                     "items": ids},
            "generation": settings.generation(max_new_tokens).to_dict(), "template": settings.template.to_dict()}


def sweep_modes(settings: ReproduceSettings) -> tuple[str, ...]:
    """The steering modes the sweep has a grid for."""
    st = settings.budget.sweep
    modes = tuple(m for m in ("continuous", "single") if getattr(st, f"scales_{m}"))
    if not modes:
        raise ValueError("the sweep needs scales for at least one mode (continuous or single)")
    return modes


def _sweep_conditions(settings: ReproduceSettings, vector: SteeringVector) -> list[Condition]:
    st = settings.budget.sweep
    scales = {m: list(getattr(st, f"scales_{m}")) for m in sweep_modes(settings)}
    return [Condition.baseline(b) for b in st.baselines] + sweep_conditions(
        vector, st.layers.resolve(vector.n_layers), list(scales), scales=scales)


def sweep_inputs(settings: ReproduceSettings, vector: SteeringVector, data: tuple[list, list[str]]) -> dict:
    """What the sweep's results depend on: model, vector, items, generation, templates and the grid."""
    st = settings.budget.sweep
    return {**_common_inputs(settings, "sweep", vector, data, st.max_new_tokens),
            "layers": list(st.layers.resolve(vector.n_layers)), "scales_continuous": list(st.scales_continuous),
            "scales_single": list(st.scales_single), "baselines": list(st.baselines)}


def sweep_run_settings(settings: ReproduceSettings, vector: SteeringVector) -> RunSettings:
    """The :class:`RunSettings` of the sweep (baselines, then layers x scales per mode)."""
    return RunSettings(command="sweep", data=data_settings(settings, "sweep"),
                       conditions=tuple(_sweep_conditions(settings, vector)),
                       generation=settings.generation(settings.budget.sweep.max_new_tokens), template=settings.template)


def write_heatmaps(settings: ReproduceSettings, summary: Sequence[SummaryRow], out: Path,
                   say: Callable[[str], None]) -> None:
    """The sweep's heatmaps in ``out/heatmaps`` (rebuilt whole), as ``lens-steer sweep`` writes them."""
    from lens_steer.viz.heatmaps import save_sweep_heatmaps

    folder = out / "heatmaps"
    if folder.exists():
        shutil.rmtree(folder)
    _, message = save_sweep_heatmaps(summary, folder, {m: "scale" for m in sweep_modes(settings)},
                                     png=settings.budget.figures.png)
    if message:
        say(f"sweep: {message}")


def eval_inputs(settings: ReproduceSettings, vector: SteeringVector, data: tuple[list, list[str]],
                conditions: Sequence[Condition]) -> dict:
    """What the evaluation's results depend on: model, vector, items, generation, templates and its conditions."""
    return {**_common_inputs(settings, "eval", vector, data, settings.budget.eval.max_new_tokens),
            "conditions": [c.key for c in conditions]}


def eval_run_settings(settings: ReproduceSettings, conditions: Sequence[Condition]) -> RunSettings:
    """The :class:`RunSettings` of the evaluation."""
    return RunSettings(command="eval", data=data_settings(settings, "eval"), conditions=tuple(conditions),
                       generation=settings.generation(settings.budget.eval.max_new_tokens), template=settings.template)


def read_selection(out: Path) -> Selection | None:
    """``out/selection.json``, or None when there is none yet.

    Raises:
        ValueError: the file is unreadable.
    """
    path = Path(out) / SELECTION_FILE
    if not path.is_file():
        return None
    try:
        return Selection.from_dict(json.loads(path.read_text()))
    except ValueError as exc:
        raise ValueError(f"{path} is unreadable ({exc}); delete it to choose the cells again") from None


# ---------------------------------------------------------------- report and figures
def write_report(settings: ReproduceSettings, out: Path, selection: Selection | None, argv: Sequence[str]) -> Path:
    """``out/report.md`` from ``out/eval`` and ``out/sweep``, with the selection and the budget as notes."""
    from lens_steer.viz.report_io import write_report as write_results

    notes = [f"Made by `lens-steer reproduce` with the `{settings.budget.name}` budget: the vector, the sweep on "
             "the dev splits, the choice of cells and this evaluation on the test subsets each come from one "
             f"stage of `{out}` (see `{out / 'reproduce.json'}`)."]
    if selection is not None:
        notes.append(f"Cells carried to the evaluation (rule: {BEST_RULE}): "
                     + "; ".join(cell.text() for cell in selection.cells) + ".")
        if selection.preset:
            notes.append(f"The `paper-*` cells are the paper's own settings for `{selection.preset}`, absolute "
                         "coefficients on its vectors; ours is the raw mean difference of residuals, so the same "
                         "coefficient need not be the same size here (its scale is in the table).")
    sweep = out / "sweep"
    return write_results(out / "eval", out / "report.md", sweep_dir=sweep if (sweep / "run.json").is_file() else None,
                         command=shlex.join(["lens-steer", *argv]),
                         title=f"Reproduction of Zhang & Viteri (2024): {settings.model}", notes=notes)


def figure_settings(settings: ReproduceSettings, vector: SteeringVector) -> FigureSettings:
    """The figure stage's :class:`FigureSettings`, defaults resolved."""
    from lens_steer.viz.figure_run import resolve_figure_settings

    fs = settings.budget.figures
    return resolve_figure_settings(settings.model, vector.n_layers, layer=fs.layer,
                                   ablation_questions=fs.ablation_questions, max_new_tokens=fs.max_new_tokens,
                                   batch_size=settings.batch_size, top_k=fs.top_k, n_splits=fs.n_splits,
                                   seed=settings.seed, device=settings.device, dtype=settings.dtype)


def write_figures(settings: ReproduceSettings, model, vector: SteeringVector, out: Path, argv: Sequence[str],
                  say: Callable[[str], None], *, progress: bool) -> None:
    """Every analysis figure of the vector into ``out``, as ``lens-steer figures`` writes them."""
    from lens_steer.viz.figure_run import make_figures

    png = settings.budget.figures.png
    run = make_figures(model, vector, figure_settings(settings, vector), out,
                       command=shlex.join(["lens-steer", *argv]), png=png, progress=progress,
                       vector_dir=out.parent / "vector")
    say(f"figures: wrote {len(run.written.html)} HTML and {len(run.written.png)} PNG files to {out}")
    if png and run.written.png_missing:
        say(f"figures: {run.written.png_message} (HTML written)")
    for name, reason in run.paper.skipped.items():
        say(f"figures: skipped {name}: {reason}")
