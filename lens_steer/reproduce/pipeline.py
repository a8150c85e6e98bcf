"""The paper's whole pipeline in one resumable object: derive → sweep → select → eval → report → figures,
each stage's output cached in one directory and redone only when its inputs change.

``DIR/vector`` (as ``lens-steer derive`` writes it), ``DIR/sweep`` and ``DIR/eval`` (results directories
of :class:`~lens_steer.eval.run.EvalRun`), ``DIR/selection.json``, ``DIR/report.md``, ``DIR/figures`` and
``DIR/reproduce.json`` (per stage: inputs, their fingerprint, the output's fingerprint, status, wall time).
"""

from __future__ import annotations

import gc
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lens_steer.eval.results_dir import read_summary
from lens_steer.eval.sweep import BEST_RULE
from lens_steer.method.vectors import CHECKPOINT_DIR, ModelMismatchError, SteeringVector
from lens_steer.reproduce import stages as si
from lens_steer.reproduce.cache import (
    checkpoint_matches, corpus_questions, derive_definition, read_vector, reconcile_results, results_output,
    vector_definition,
)
from lens_steer.reproduce.presets import preset_for
from lens_steer.reproduce.record import Record, StageRecord, StageResult, describe_changes, fingerprint
from lens_steer.reproduce.selection import HeadlineRow, Selection, eval_conditions, headline, select_cells
from lens_steer.reproduce.settings import STAGES, ReproduceSettings
from lens_steer.storage import DirLock, write_json

__all__ = ["ReproduceOutcome", "Reproduction"]


@dataclass(frozen=True)
class ReproduceOutcome:
    """What :meth:`Reproduction.run` did.

    Attributes:
        out: The directory. completed: Every requested stage finished (False: interrupted; run again to resume).
        stages: One result per stage, in order (a stage redone because the model changed appears twice).
        selection: The cells carried to the evaluation, when chosen. headline: The evaluation's pooled rows.
        seconds: Wall time of this run.
    """

    out: Path
    completed: bool
    stages: tuple[StageResult, ...]
    selection: Selection | None
    headline: tuple[HeadlineRow, ...]
    seconds: float


@dataclass(frozen=True)
class _State:
    previous: dict | None  # the inputs the existing output was made from (None: unknown or none)
    output: str | None  # fingerprint of the complete output (None: not complete)
    partial: bool = False  # part of the output exists and will be resumed


class _Interrupted(Exception):
    pass


class Reproduction:
    """A reproduction of Zhang & Viteri (2024) into ``out``; :meth:`run` runs (or finds cached) every stage.

    One engine serves every generating stage (loaded on first need, never when all of them are cached);
    the figures need TransformerLens hooks, so they reuse a bridge engine's model or, after freeing another
    engine, load the bridge.

    Args:
        out: The directory (created). settings: What to run.
        engine_factory: ``(capture_residuals) -> Engine`` (default: ``open_engine`` of the settings' engine).
        bridge_factory: ``() -> TransformerBridge`` for the figures (default: ``load_model``).
        argv: The command line recorded in the runs and the report.
        log: Where status lines go (default ``sys.stderr``). progress: Show progress bars.
    """

    def __init__(self, out, settings: ReproduceSettings, *, engine_factory: Callable | None = None,
                 bridge_factory: Callable | None = None, argv: list[str] | None = None, log=None,
                 progress: bool = True) -> None:
        self.out = Path(out)
        self.settings = settings
        self._engine_factory = engine_factory or (lambda capture: si.open_engine(settings, capture))
        self._bridge_factory = bridge_factory or (lambda: si.open_bridge(settings))
        self.argv = list(argv) if argv is not None else ["reproduce", "--model", settings.model, "--out", str(out)]
        self.log = sys.stderr if log is None else log
        self.progress = progress
        self.preset = preset_for(settings.model) if settings.presets else None
        self._engine = None
        self._load_seconds = 0.0
        self._results: list[StageResult] = []
        self._cache: dict = {}
        self.record = Record(self.out)

    # ------------------------------------------------------------ running
    def run(self) -> ReproduceOutcome:
        """Run the requested stages in order; Ctrl-C stops between chunks (``completed`` False, rerun to resume).

        Raises:
            LockedError: another process writes ``out``. ValueError (and subclasses): bad settings or inputs,
                one line each.
        """
        start = time.perf_counter()
        completed = True
        with DirLock(self.out, "lens-steer reproduce") as lock:
            if lock.took_over:
                self._say(f"took over the lock of {lock.took_over}")
            self.out.mkdir(parents=True, exist_ok=True)
            self.record = Record.open(self.out)
            self.record.settings = self.settings.to_dict()
            try:
                for name in STAGES:
                    if name in self.settings.stages:
                        getattr(self, f"_{name}")()
                    else:
                        self._results.append(StageResult(name, "skipped"))
            except _Interrupted:
                completed = False
            finally:
                self._release_engine()
                self.record.save()
        return ReproduceOutcome(self.out, completed, tuple(self._results), self._selection(), self._headline(),
                                round(time.perf_counter() - start, 2))

    def _say(self, line: str) -> None:
        if self.log:
            print(f"reproduce {line}", file=self.log, flush=True)

    def _stage(self, name: str, inputs_fn: Callable[[], dict], state_fn: Callable[[], _State],
               run_fn: Callable[[str], str | None], *, engine: bool = False) -> None:
        """Run one stage unless its output is complete and was made from the same inputs."""
        inputs, state = inputs_fn(), state_fn()
        if not (state.output and state.previous == inputs) and engine and self._engine is None:
            self._load_engine()
            inputs, state = inputs_fn(), state_fn()  # the model is known now (and the vector may be new)
        if state.output and state.previous == inputs:
            self._finish(name, inputs, state.output, "cached", 0.0)
            return
        if state.previous is not None and state.previous != inputs:
            status = "redone: " + describe_changes(state.previous, inputs)
        else:
            status = "resumed" if state.partial else "ran"
        self._say(f"{name}: {status}")
        self.record.stages[name] = StageRecord(inputs, fingerprint(inputs), None, status, 0.0, False)
        self.record.save()
        started = time.perf_counter()
        try:
            output = run_fn(status)
        except KeyboardInterrupt:
            output = None
        if output is None:
            self._finish(name, inputs, None, "interrupted", time.perf_counter() - started)
            self._say(f"{name}: interrupted; run the same command again to resume")
            raise _Interrupted
        self._finish(name, inputs, output, status, time.perf_counter() - started)

    def _finish(self, name: str, inputs: dict, output: str | None, status: str, seconds: float) -> None:
        seconds = round(seconds, 2)
        made = self.record.stages.get(name)  # a cached output keeps the wall time of the run that made it
        recorded = made.seconds if status == "cached" and made is not None else seconds
        self.record.stages[name] = StageRecord(inputs, fingerprint(inputs), output, status, recorded,
                                               output is not None)
        self.record.save()
        self._results.append(StageResult(name, status, seconds))
        if status != "interrupted":
            self._say(f"{name}: {'cached' if status == 'cached' else 'done'} ({seconds:.1f} s)")

    def _recorded(self, name: str, output: Callable[[], str | None]) -> _State:
        """The state of a stage whose inputs only ``reproduce.json`` knows."""
        rec = self.record.stages.get(name)
        if rec is None:
            return _State(None, None)
        return _State(rec.inputs, output() if rec.complete else None, not rec.complete)

    # ------------------------------------------------------------ engines
    def _load_engine(self) -> None:
        started = time.perf_counter()
        self._engine = self._engine_factory("derive" in self.settings.stages)
        self._load_seconds = time.perf_counter() - started
        self._say(f"loaded {self.settings.model} on the {self._engine.name} engine ({self._load_seconds:.1f} s)")
        vector = read_vector(self.out / "vector")
        have, now = (vector.metadata.model_fingerprint if vector else None), self._engine.info.fingerprint
        if have and have != now and any(r.name == "derive" for r in self._results):
            if "derive" not in self.settings.stages:
                raise ModelMismatchError(f"{self.out / 'vector'} was derived on model fingerprint {have}, but "
                                         f"{self.settings.model} has {now}: run the derive stage to derive it again")
            self._cache.clear()
            self._derive()  # redone: the definition now holds the loaded model's fingerprint

    def _release_engine(self) -> None:
        if self._engine is None:
            return
        self._engine = None
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _bridge(self):
        from lens_steer.engines.bridge import BridgeEngine

        if isinstance(self._engine, BridgeEngine):
            return self._engine.model
        self._release_engine()  # vLLM (or another engine) first gives its memory back
        return self._bridge_factory()

    # ------------------------------------------------------------ inputs shared by stages
    def _vector(self) -> SteeringVector:
        if "vector" not in self._cache:
            vector = read_vector(self.out / "vector")
            if vector is None:
                raise FileNotFoundError(f"no complete steering vector in {self.out / 'vector'}: run the derive stage")
            self._cache["vector"] = vector
        return self._cache["vector"]

    def _questions(self) -> list:
        if "questions" not in self._cache:
            self._cache["questions"] = corpus_questions(self.settings.budget.derive, self.settings.data_dir)
        return self._cache["questions"]

    def _selection(self) -> Selection | None:
        return si.read_selection(self.out)

    def _headline(self) -> tuple[HeadlineRow, ...]:
        selection, vector = self._selection(), read_vector(self.out / "vector")
        if selection is None or vector is None or results_output(self.out / "eval") is None:
            return ()
        return headline(read_summary(self.out / "eval")[0], selection, vector)

    # ------------------------------------------------------------ stages
    def _derive(self) -> None:
        st = self.settings
        out = self.out / "vector"

        def inputs() -> dict:
            vector = read_vector(out)
            assumed = vector.metadata.model_fingerprint if vector is not None else None
            known = self._engine.info.fingerprint if self._engine is not None else assumed
            return {**derive_definition(st.model, st.budget.derive, st.template.to_dict(), self._questions()),
                    "fingerprint": known}

        def state() -> _State:
            vector = read_vector(out)
            if vector is not None:
                previous = {**vector_definition(vector.metadata, self._questions()),
                            "fingerprint": vector.metadata.model_fingerprint}
                return _State(previous, vector.source.tensors_sha256)
            settings = si.checkpoint_settings(st, self._engine, self._questions()) if self._engine else None
            return _State(None, None, bool(settings) and checkpoint_matches(out, settings) is True)

        def run(status: str) -> str | None:
            if checkpoint_matches(out, si.checkpoint_settings(st, self._engine, self._questions())) is False:
                shutil.rmtree(out / CHECKPOINT_DIR)
                self._say(f"derive: removed the checkpoint in {out} (made with other settings)")
            vector = si.derive(st, self._engine, self._questions(), out, progress=self.progress)
            self._cache.pop("vector", None)
            return vector.source.tensors_sha256 if vector.source else None

        self._stage("derive", inputs, state, run, engine=True)

    def _sweep(self) -> None:
        out = self.out / "sweep"

        def inputs() -> dict:
            return si.sweep_inputs(self.settings, self._vector(), self._data("sweep"))

        def run(status: str) -> str | None:
            vector = self._vector()
            run_settings = si.sweep_run_settings(self.settings, vector)
            outcome = self._run_results("sweep", out, run_settings, vector)
            si.write_heatmaps(self.settings, outcome.summary, out, self._say)
            return results_output(out)

        self._stage("sweep", inputs, lambda: self._recorded("sweep", lambda: results_output(out)), run, engine=True)

    def _select(self) -> None:
        modes = si.sweep_modes(self.settings)

        def inputs() -> dict:
            sweep = results_output(self.out / "sweep")
            if sweep is None:
                raise FileNotFoundError(f"select needs a complete sweep in {self.out / 'sweep'}: run the sweep stage")
            return {"sweep": sweep, "rule": BEST_RULE, "modes": list(modes),
                    "preset": self.preset.to_dict() if self.preset else None}

        def output() -> str | None:
            selection = self._selection()
            return fingerprint(selection.to_dict()) if selection is not None else None

        def run(status: str) -> str:
            selection = select_cells(read_summary(self.out / "sweep")[0], modes, self.preset)
            write_json(self.out / si.SELECTION_FILE, selection.to_dict())
            for cell in selection.cells:
                self._say(f"select: {cell.text()}")
            return fingerprint(selection.to_dict())

        self._stage("select", inputs, lambda: self._recorded("select", output), run)

    def _eval(self) -> None:
        out = self.out / "eval"

        def selection() -> Selection:
            found = self._selection()
            if found is None:
                raise FileNotFoundError(f"eval needs {self.out / si.SELECTION_FILE}: run the select stage")
            return found

        def inputs() -> dict:
            conditions = eval_conditions(self._vector(), selection(), self.settings.budget.eval.baselines)
            return si.eval_inputs(self.settings, self._vector(), self._data("eval"), conditions)

        def run(status: str) -> str | None:
            vector = self._vector()
            conditions = eval_conditions(vector, selection(), self.settings.budget.eval.baselines)
            self._run_results("eval", out, si.eval_run_settings(self.settings, conditions), vector)
            return results_output(out)

        self._stage("eval", inputs, lambda: self._recorded("eval", lambda: results_output(out)), run, engine=True)

    def _report(self) -> None:
        path = self.out / "report.md"

        def inputs() -> dict:
            found = results_output(self.out / "eval")
            if found is None:
                raise FileNotFoundError(f"report needs a complete evaluation in {self.out / 'eval'}: run the eval stage")
            selection = self._selection()
            return {"eval": found, "sweep": results_output(self.out / "sweep"),
                    "selection": fingerprint(selection.to_dict()) if selection else None}

        def run(status: str) -> str:
            si.write_report(self.settings, self.out, self._selection(), self.argv)
            return fingerprint(path.read_text())

        output = lambda: fingerprint(path.read_text()) if path.is_file() else None  # noqa: E731
        self._stage("report", inputs, lambda: self._recorded("report", output), run)

    def _figures(self) -> None:
        out = self.out / "figures"

        def inputs() -> dict:
            settings = si.figure_settings(self.settings, self._vector())
            return {"vector": self._vector().source.tensors_sha256, "settings": settings.to_dict(),
                    "png": self.settings.budget.figures.png}

        def output() -> str | None:
            summary = out / "summary.json"
            return fingerprint(summary.read_text()) if summary.is_file() and (out / "README.md").is_file() else None

        def run(status: str) -> str | None:
            if out.exists():
                shutil.rmtree(out)  # rebuilt whole: no figure of the old settings stays behind
            vector = self._vector()
            si.write_figures(self.settings, self._bridge(), vector, out, self.argv, self._say, progress=self.progress)
            return output()

        self._stage("figures", inputs, lambda: self._recorded("figures", output), run)

    # ------------------------------------------------------------ results directories
    def _data(self, stage: str) -> tuple[list, list[str]]:
        key = f"data-{stage}"
        if key not in self._cache:
            self._cache[key] = si.data_settings(self.settings, stage).load()
        return self._cache[key]

    def _run_results(self, name: str, out: Path, run_settings, vector: SteeringVector):
        from lens_steer.eval.run import EvalRun

        vector.check_compatible(self._engine)
        examples, names = self._data(name)
        run = EvalRun(out, run_settings, self._engine, vector, examples=examples, benchmark_names=names,
                      argv=self.argv, load_seconds=self._load_seconds)
        note = reconcile_results(out, run.settings_json(), {c.key for c in run_settings.conditions})
        if note:
            self._say(f"{name}: {note}")
        outcome = run.run(progress=self.progress, log=self.log)
        if not outcome.completed:
            raise KeyboardInterrupt
        return outcome
