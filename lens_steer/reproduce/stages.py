"""The stages of a reproduction as objects (this module: the base, derive, select and report; the sweep and the
evaluation are in :mod:`~lens_steer.reproduce.results_stages`, the figures in :mod:`~lens_steer.reproduce.figures`).
Each says what it reads (:meth:`Stage.inputs`, fingerprinted into
``reproduce.json``), what is on disk now (:meth:`Stage.output`, a fingerprint checked against the one recorded
when the stage finished before anything is trusted), how to move a superseded output aside, and how it runs:
by calling the library exactly as the matching ``lens-steer`` command does."""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from lens_steer.eval.results_dir import read_summary
from lens_steer.eval.run import DataSettings
from lens_steer.eval.sweep import BEST_RULE
from lens_steer.method.derive_run import DeriveSettings, derive_into
from lens_steer.reproduce.cache import (
    derive_definition, read_vector, results_output, set_aside, superseded_path, vector_definition, vector_problem,
)
from lens_steer.reproduce.context import Context
from lens_steer.reproduce.record import StageRecord, fingerprint
from lens_steer.reproduce.selection import Selection, select_cells
from lens_steer.reproduce.settings import ReproduceSettings
from lens_steer.storage import storage_errors, write_json

__all__ = ["SELECTION_FILE", "Derive", "Report", "Select", "Stage", "data_settings", "read_selection", "sweep_modes",
           "write_report"]

SELECTION_FILE = "selection.json"


class Stage:
    """One stage of a reproduction (subclasses set ``name`` and implement the methods that raise here).

    Attributes:
        name: The stage's name in ``reproduce.json`` and the log. engine: Whether it runs the generating engine.
        path: Its output (a file or directory of ``ctx.out``).
    """

    name: ClassVar[str] = ""
    engine: ClassVar[bool] = False

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    @property
    def path(self) -> Path:
        raise NotImplementedError

    def shown(self) -> str:
        """The output's path as messages name it (relative to the reproduction's directory)."""
        return os.path.relpath(self.path, self.ctx.out)

    def inputs(self) -> dict:
        """The settings and upstream fingerprints the output depends on (raises when an upstream output is missing)."""
        raise NotImplementedError

    def output(self) -> str | None:
        """Fingerprint of the complete output on disk now (None: absent or incomplete)."""
        raise NotImplementedError

    def legacy_output(self) -> str | None:
        """The fingerprint ``reproduce.json`` format 1 recorded for this output (when it differs from format 2's)."""
        return self.output()

    def made_from(self, record: StageRecord | None) -> dict | None:
        """The inputs the output on disk was made from (None: unknown)."""
        return record.inputs if record is not None else None

    def verified(self, record: StageRecord | None, current: str | None, version: int) -> bool:
        """Whether the output on disk is the one the record says this stage finished."""
        if record is None or not record.complete or record.output is None:
            return False
        if current is not None and current == record.output:
            return True
        return version < 2 and self.legacy_output() == record.output

    def problem(self) -> str | None:
        """Why the output on disk cannot be used at all (None: it can, or there is none)."""
        return None

    def partial(self) -> bool:
        """Whether part of an output is there for :meth:`run` to resume."""
        return False

    def set_aside(self) -> str | None:
        """Move the output into ``superseded/``; a line for the log (None: there was none)."""
        moved = set_aside(self.path, self.ctx.out)
        return f"moved {self.shown()} to {os.path.relpath(moved, self.ctx.out)}" if moved else None

    def run(self, status: str) -> str | None:
        """Make the output (resuming what is partial); its fingerprint, or None when interrupted."""
        raise NotImplementedError

    def files(self) -> tuple[str, ...] | None:
        """The files the stage wrote, when it keeps a list (a directory users may add to)."""
        return None


# ---------------------------------------------------------------- derive
class Derive(Stage):
    """The CoT vector of the corpus (``DIR/vector``, exactly what ``lens-steer derive`` writes). A vector already
    there with the requested definition is reused, whatever engine, batch size or chunking made it."""

    name = "derive"
    engine = True

    @property
    def path(self) -> Path:
        return self.ctx.out / "vector"

    def _settings(self) -> DeriveSettings:
        st, ctx = self.ctx.settings.budget.derive, self.ctx
        return DeriveSettings(template=ctx.settings.template, generation=ctx.settings.generation(st.max_new_tokens),
                              positions=st.positions, method=st.method, chunk_questions=st.chunk_questions)

    def inputs(self) -> dict:
        ctx = self.ctx
        vector = read_vector(self.path)
        assumed = vector.metadata.model_fingerprint if vector is not None else None
        known = ctx.engine.info.fingerprint if ctx.loaded else assumed
        return {**derive_definition(ctx.settings.model, ctx.settings.budget.derive, ctx.settings.template.to_dict(),
                                    ctx.questions()), "fingerprint": known}

    def output(self) -> str | None:
        vector = read_vector(self.path)
        return vector.source.tensors_sha256 if vector is not None and vector.source else None

    def made_from(self, record: StageRecord | None) -> dict | None:
        vector = read_vector(self.path)
        if vector is None:
            return None
        return {**vector_definition(vector.metadata, self.ctx.questions()),
                "fingerprint": vector.metadata.model_fingerprint}

    def verified(self, record: StageRecord | None, current: str | None, version: int) -> bool:
        # A vector nobody recorded is judged by the definition it records (made_from); a recorded one must be it.
        if record is None or not record.complete:
            return current is not None
        return current is not None and current == record.output

    def problem(self) -> str | None:
        return vector_problem(self.path)

    def set_aside(self) -> str | None:
        """Move the vector's files aside; a derivation checkpoint beside them stays, to be resumed."""
        from lens_steer.method.vectors import CHECKPOINT_DIR

        names = [p for p in self.path.iterdir() if p.name != CHECKPOINT_DIR] if self.path.is_dir() else []
        if not names:
            return None
        target = superseded_path(self.ctx.out, "vector")
        with storage_errors(target):
            target.mkdir(parents=True)
            for path in names:
                os.rename(path, target / path.name)
        return f"moved the vector in {self.shown()} to {os.path.relpath(target, self.ctx.out)}"

    def partial(self) -> bool:
        checkpoint = self._settings().checkpoint(self.path, self.ctx.engine, self.ctx.questions()) \
            if self.ctx.loaded else None
        return checkpoint is not None and checkpoint.matches() is True

    def run(self, status: str) -> str | None:
        ctx = self.ctx
        settings = self._settings()
        checkpoint = settings.checkpoint(self.path, ctx.engine, ctx.questions())
        if checkpoint is not None and checkpoint.matches() is False:
            moved = set_aside(checkpoint.dir, ctx.out)
            ctx.say(f"derive: moved the checkpoint in {self.shown()} (made with other settings) to "
                    f"{os.path.relpath(moved, ctx.out)}")
        ctx.forget_vector()
        try:
            vector = derive_into(self.path, ctx.engine, ctx.questions(), settings, progress=ctx.progress)
        except KeyboardInterrupt:
            return None
        return vector.source.tensors_sha256 if vector.source else None


# ---------------------------------------------------------------- sweep and evaluation
def data_settings(settings: ReproduceSettings, stage: str) -> DataSettings:
    """The items of the ``"sweep"`` (dev splits) or ``"eval"`` (test subsets) stage."""
    if stage == "sweep":
        st = settings.budget.sweep
        return DataSettings(benchmarks=st.benchmarks, limit=st.limit, seed=settings.seed, data_dir=settings.data_dir)
    ev = settings.budget.eval
    return DataSettings(benchmarks=ev.benchmarks, split=ev.split, limit=ev.limit, task_limit=ev.task_limit,
                        seed=settings.seed, data_dir=settings.data_dir)


def sweep_modes(settings: ReproduceSettings) -> tuple[str, ...]:
    """The steering modes the sweep has a grid for."""
    st = settings.budget.sweep
    modes = tuple(m for m in ("continuous", "single") if getattr(st, f"scales_{m}"))
    if not modes:
        raise ValueError("the sweep needs scales for at least one mode (continuous or single)")
    return modes


# ---------------------------------------------------------------- selection, report, figures
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


class Select(Stage):
    """One cell per mode from the sweep by :data:`~lens_steer.eval.sweep.BEST_RULE`, plus the paper's own cells
    for its models (``DIR/selection.json``)."""

    name = "select"

    @property
    def path(self) -> Path:
        return self.ctx.out / SELECTION_FILE

    def inputs(self) -> dict:
        sweep = results_output(self.ctx.out / "sweep")
        if sweep is None:
            raise FileNotFoundError(f"select needs a complete sweep in {self.ctx.out / 'sweep'}: run the sweep stage")
        preset = self.ctx.preset
        return {"sweep": sweep, "rule": BEST_RULE, "modes": list(sweep_modes(self.ctx.settings)),
                "preset": preset.to_dict() if preset else None}

    def output(self) -> str | None:
        try:
            selection = read_selection(self.ctx.out)
        except ValueError:
            return None
        return fingerprint(selection.to_dict()) if selection is not None else None

    def run(self, status: str) -> str:
        summary = read_summary(self.ctx.out / "sweep")[0]
        selection = select_cells(summary, sweep_modes(self.ctx.settings), self.ctx.preset)
        write_json(self.path, selection.to_dict())
        for cell in selection.cells:
            self.ctx.say(f"select: {cell.text()}")
        return fingerprint(selection.to_dict())


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


class Report(Stage):
    """``DIR/report.md`` from the evaluation, the sweep and the selection."""

    name = "report"

    @property
    def path(self) -> Path:
        return self.ctx.out / "report.md"

    def inputs(self) -> dict:
        out = self.ctx.out
        found = results_output(out / "eval")
        if found is None:
            raise FileNotFoundError(f"report needs a complete evaluation in {out / 'eval'}: run the eval stage")
        selection = read_selection(out)
        return {"eval": found, "sweep": results_output(out / "sweep"),
                "selection": fingerprint(selection.to_dict()) if selection else None}

    def output(self) -> str | None:
        return fingerprint(self.path.read_text()) if self.path.is_file() else None

    def run(self, status: str) -> str:
        write_report(self.ctx.settings, self.ctx.out, read_selection(self.ctx.out), self.ctx.argv)
        return fingerprint(self.path.read_text())
