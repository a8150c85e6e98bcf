"""The paper's whole pipeline in one resumable object: derive → sweep → select → eval → report → figures,
each stage's output cached in one directory, checked against what was recorded before it is trusted, and
redone only when its inputs or its output changed (saying why).

``DIR/vector`` (as ``lens-steer derive`` writes it), ``DIR/sweep`` and ``DIR/eval`` (results directories
of :class:`~lens_steer.eval.run.EvalRun`), ``DIR/selection.json``, ``DIR/report.md``, ``DIR/figures``,
``DIR/reproduce.json`` (per stage: inputs, their fingerprint, the output's fingerprint, status, wall time) and
``DIR/superseded/`` (outputs the run no longer uses, moved there instead of deleted).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lens_steer.eval.results_dir import read_summary
from lens_steer.method.derive_run import sigterm_interrupts
from lens_steer.method.vectors import ModelMismatchError
from lens_steer.reproduce.cache import read_vector, results_output
from lens_steer.reproduce.context import Context, open_bridge, open_engine
from lens_steer.reproduce.figures_stage import Figures
from lens_steer.reproduce.presets import preset_for
from lens_steer.reproduce.record import Record, StageRecord, StageResult, describe_changes, fingerprint
from lens_steer.reproduce.results_stages import Evaluate, Sweep
from lens_steer.reproduce.selection import HeadlineRow, Selection, headline
from lens_steer.reproduce.settings import ReproduceSettings
from lens_steer.reproduce.stages import Derive, Report, Select, Stage, read_selection
from lens_steer.storage import DirLock

__all__ = ["STAGE_TYPES", "ReproduceOutcome", "Reproduction"]

STAGE_TYPES: tuple[type[Stage], ...] = (Derive, Sweep, Select, Evaluate, Report, Figures)
"""The stages, in the order they run (their names are :data:`~lens_steer.reproduce.settings.STAGES`)."""


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


class _Interrupted(Exception):
    pass


class Reproduction:
    """A reproduction of Zhang & Viteri (2024) into ``out``; :meth:`run` runs (or finds cached) every stage.

    One engine serves every generating stage (loaded on first need, never when all of them are cached);
    the figures need TransformerLens hooks, so they reuse a bridge engine's model or, after freeing another
    engine, load the bridge. A cached output is used only when it is the one recorded when its stage finished
    (a fingerprint of its content): an output changed or replaced afterwards is moved into ``superseded/`` and
    made again, with the reason in the log.

    Args:
        out: The directory (created). settings: What to run.
        engine_factory: ``(capture_residuals) -> Engine`` (default: ``open_engine`` of the settings' engine).
        bridge_factory: ``() -> TransformerBridge`` for the figures (default: ``load_model``).
        argv: The command line recorded in the runs and the report.
        log: Where status lines go (default ``sys.stderr``; ``False`` mutes). progress: Show progress bars.
    """

    def __init__(self, out, settings: ReproduceSettings, *, engine_factory: Callable | None = None,
                 bridge_factory: Callable | None = None, argv: list[str] | None = None, log=None,
                 progress: bool = True) -> None:
        self.out = Path(out)
        self.settings = settings
        self.argv = list(argv) if argv is not None else ["reproduce", "--model", settings.model, "--out", str(out)]
        self.log = sys.stderr if log is None else log
        self.progress = progress
        self._engine_factory = engine_factory or (lambda capture: open_engine(settings, capture))
        self._bridge_factory = bridge_factory or (lambda: open_bridge(settings))
        self._results: list[StageResult] = []
        self.record = Record(self.out)

    # ------------------------------------------------------------ running
    def run(self) -> ReproduceOutcome:
        """Run the requested stages in order; Ctrl-C or SIGTERM stops between chunks (``completed`` False,
        rerun to resume).

        Raises:
            LockedError: another process writes ``out``. ValueError (and subclasses): bad settings or inputs,
                one line each.
        """
        start = time.perf_counter()
        completed = True
        self._results = []
        with DirLock(self.out, "lens-steer reproduce") as lock, sigterm_interrupts():
            if lock.took_over:
                self._say(f"took over the lock of {lock.took_over}")
            self.out.mkdir(parents=True, exist_ok=True)
            self.record = Record.open(self.out)
            self.record.settings = self.settings.to_dict()
            ctx = Context(self.out, self.settings, preset_for(self.settings.model) if self.settings.presets else None,
                          self.argv, self._say, self.progress, self.log, self._engine_factory, self._bridge_factory)
            ctx.on_engine = lambda: self._check_vector_model(ctx)
            try:
                for stage_type in STAGE_TYPES:
                    if stage_type.name in self.settings.stages:
                        self._run_stage(stage_type(ctx))
                    else:
                        self._results.append(StageResult(stage_type.name, "skipped"))
            except _Interrupted:
                completed = False
            except KeyboardInterrupt:  # between stages (or while a model loads)
                completed = False
                self._say("interrupted; run the same command again to resume")
            finally:
                ctx.release_engine()
                self.record.save()
        return ReproduceOutcome(self.out, completed, tuple(self._results), read_selection(self.out), self._headline(),
                                round(time.perf_counter() - start, 2))

    def _say(self, line: str) -> None:
        if self.log:
            print(f"reproduce {line}", file=self.log, flush=True)

    def _run_stage(self, stage: Stage) -> None:
        """Run one stage unless its output is the recorded one, made from the same inputs."""
        ctx = stage.ctx
        status = self._status(stage)
        if status != "cached" and stage.engine and not ctx.loaded:
            ctx.engine  # noqa: B018 (load it: the model is known now, and derive's inputs hold its fingerprint)
            status = self._status(stage)
        inputs = stage.inputs()
        if status == "cached":
            self._finish(stage, inputs, stage.output(), "cached", 0.0)
            return
        if status.startswith("redone: ") and self._must_set_aside(stage, status):
            moved = stage.set_aside()
            if moved:
                self._say(f"{stage.name}: {moved}")
        self._say(f"{stage.name}: {status}")
        self.record.stages[stage.name] = StageRecord(inputs, fingerprint(inputs), None, status, 0.0, False)
        self.record.save()
        started = time.perf_counter()
        try:
            output = stage.run(status)
        except KeyboardInterrupt:
            output = None
        if output is None:
            self._finish(stage, inputs, None, "interrupted", time.perf_counter() - started)
            self._say(f"{stage.name}: interrupted; run the same command again to resume")
            raise _Interrupted
        self._finish(stage, inputs, output, status, time.perf_counter() - started)

    def _status(self, stage: Stage) -> str:
        """``cached``, ``ran``, ``resumed`` or ``redone: <why>`` for the stage as things are on disk now."""
        record = self.record.stages.get(stage.name)
        inputs = stage.inputs()
        previous = stage.made_from(record)  # first: a stage may learn from its record which files are its own
        current = stage.output()
        verified = stage.verified(record, current, self.record.format_version)
        if verified and previous == inputs:
            return "cached"
        problem = stage.problem()
        if problem:
            return f"redone: {problem}"
        if record is not None and record.complete and not verified:
            what = "is missing or incomplete" if current is None else "changed after the stage finished"
            return f"redone: {stage.shown()} {what}"
        if previous is not None and previous != inputs:
            return "redone: " + describe_changes(previous, inputs)
        return "resumed" if stage.partial() else "ran"

    @staticmethod
    def _must_set_aside(stage: Stage, status: str) -> bool:
        """A changed, missing or unusable output is moved aside whole; after a change of inputs a results stage
        keeps the rows that still apply (its run reconciles them), the others are replaced."""
        if not status.startswith("redone: "):
            return False
        tampered = status.endswith(("changed after the stage finished", "is missing or incomplete")) or \
            status.removeprefix("redone: ") == stage.problem()
        return tampered or isinstance(stage, Derive)

    def _finish(self, stage: Stage, inputs: dict, output: str | None, status: str, seconds: float) -> None:
        seconds = round(seconds, 2)
        made = self.record.stages.get(stage.name)  # a cached output keeps the wall time of the run that made it
        recorded = made.seconds if status == "cached" and made is not None else seconds
        files = stage.files()
        if files is None and status == "cached" and made is not None:
            files = made.files
        self.record.stages[stage.name] = StageRecord(inputs, fingerprint(inputs), output, status, recorded,
                                                     output is not None, files)
        self.record.save()
        self._results.append(StageResult(stage.name, status, seconds))
        if status != "interrupted":
            self._say(f"{stage.name}: {'cached' if status == 'cached' else 'done'} ({seconds:.1f} s)")

    def _check_vector_model(self, ctx: Context) -> None:
        """Once the model is loaded: a vector found cached on the assumption that it is this model's is derived
        again if it is another model's."""
        vector = read_vector(self.out / "vector")
        have, now = (vector.metadata.model_fingerprint if vector else None), ctx.engine.info.fingerprint
        if not (have and have != now and any(r.name == "derive" for r in self._results)):
            return
        if "derive" not in self.settings.stages:
            raise ModelMismatchError(f"{self.out / 'vector'} was derived on model fingerprint {have}, but "
                                     f"{self.settings.model} has {now}: run the derive stage to derive it again")
        ctx.forget_vector()
        self._run_stage(Derive(ctx))  # redone: the definition now holds the loaded model's fingerprint

    def _headline(self) -> tuple[HeadlineRow, ...]:
        selection, vector = read_selection(self.out), read_vector(self.out / "vector")
        if selection is None or vector is None or results_output(self.out / "eval") is None:
            return ()
        return headline(read_summary(self.out / "eval")[0], selection, vector)
