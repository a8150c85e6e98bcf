"""The stages that fill a results directory of :class:`~lens_steer.eval.run.EvalRun`: the sweep on the dev
splits and the evaluation on the test subsets, each resumed where it stopped and, when its settings change,
brought in line keeping every row that still applies (:func:`~lens_steer.reproduce.cache.reconcile_results`)."""

from __future__ import annotations

import shutil
from pathlib import Path

from lens_steer.data.registry import resolve_data_dir
from lens_steer.eval.conditions import Condition, sweep_conditions
from lens_steer.eval.run import EvalRun, RunSettings, item_ids_sha256
from lens_steer.reproduce.cache import legacy_results_output, reconcile_results, results_output
from lens_steer.reproduce.selection import eval_conditions
from lens_steer.reproduce.stages import SELECTION_FILE, Stage, data_settings, read_selection, sweep_modes

__all__ = ["Evaluate", "Sweep"]


class _Results(Stage):
    """A results directory of :class:`~lens_steer.eval.run.EvalRun` (the sweep or the evaluation)."""

    engine = True

    @property
    def path(self) -> Path:
        return self.ctx.out / self.name

    def _data(self) -> tuple[list, list[str]]:
        return self.ctx.data(self.name, data_settings(self.ctx.settings, self.name))

    def _max_new_tokens(self) -> int:
        raise NotImplementedError

    def _conditions(self) -> list[Condition]:
        raise NotImplementedError

    def _common_inputs(self) -> dict:
        settings, vector = self.ctx.settings, self.ctx.vector()
        examples, names = self._data()
        ds = data_settings(settings, self.name)
        source = resolve_data_dir(ds.data_dir)
        return {"model": settings.model, "dtype": settings.dtype, "vector": vector.source.tensors_sha256,
                "data": {"benchmarks": list(names), "split": ds.split, "limit": ds.limit, "task_limit": ds.task_limit,
                         "seed": ds.seed, "source": str(source.resolve()) if source is not None else "hub",
                         "items": item_ids_sha256(examples)},
                "generation": settings.generation(self._max_new_tokens()).to_dict(),
                "template": settings.template.to_dict()}

    def output(self) -> str | None:
        return results_output(self.path)

    def legacy_output(self) -> str | None:
        return legacy_results_output(self.path)

    def partial(self) -> bool:
        return (self.path / "items.jsonl").is_file()

    def _run_settings(self) -> RunSettings:
        settings = self.ctx.settings
        return RunSettings(command=self.name, data=data_settings(settings, self.name),
                           conditions=tuple(self._conditions()), generation=settings.generation(self._max_new_tokens()),
                           template=settings.template)

    def _evaluate(self):
        """Run (or resume) the results directory; the outcome, or None when interrupted."""
        ctx = self.ctx
        vector, run_settings = ctx.vector(), self._run_settings()
        vector.check_compatible(ctx.engine)
        examples, names = self._data()
        run = EvalRun(self.path, run_settings, ctx.engine, vector, examples=examples, benchmark_names=names,
                      argv=ctx.argv, load_seconds=ctx.load_seconds)
        note = reconcile_results(self.path, run.settings_json(), {c.key for c in run_settings.conditions}, ctx.out,
                                 {e.id for e in examples})
        if note:
            ctx.say(f"{self.name}: {note}")
        outcome = run.run(progress=ctx.progress, log=ctx.log)
        return outcome if outcome.completed else None


class Sweep(_Results):
    """Layers x steering sizes x both modes on the dev splits (``DIR/sweep``, as ``lens-steer sweep`` writes it)."""

    name = "sweep"

    def _max_new_tokens(self) -> int:
        return self.ctx.settings.budget.sweep.max_new_tokens

    def _conditions(self) -> list[Condition]:
        st, vector = self.ctx.settings.budget.sweep, self.ctx.vector()
        scales = {m: list(getattr(st, f"scales_{m}")) for m in sweep_modes(self.ctx.settings)}
        return [Condition.baseline(b) for b in st.baselines] + sweep_conditions(
            vector, st.layers.resolve(vector.n_layers), list(scales), scales=scales)

    def inputs(self) -> dict:
        st = self.ctx.settings.budget.sweep
        return {**self._common_inputs(), "layers": list(st.layers.resolve(self.ctx.vector().n_layers)),
                "scales_continuous": list(st.scales_continuous), "scales_single": list(st.scales_single),
                "baselines": list(st.baselines)}

    def run(self, status: str) -> str | None:
        outcome = self._evaluate()
        if outcome is None:
            return None
        self._heatmaps(outcome.summary)
        return results_output(self.path)

    def _heatmaps(self, summary) -> None:
        """The sweep's heatmaps in ``sweep/heatmaps`` (rebuilt whole), as ``lens-steer sweep`` writes them."""
        from lens_steer.viz.figure_io import save_sweep_heatmaps

        folder = self.path / "heatmaps"
        if folder.exists():
            shutil.rmtree(folder)
        settings = self.ctx.settings
        _, message = save_sweep_heatmaps(summary, folder, {m: "scale" for m in sweep_modes(settings)},
                                         png=settings.budget.figures.png)
        if message:
            self.ctx.say(f"sweep: {message}")


class Evaluate(_Results):
    """The unsteered conditions and the selected cells on the test subsets (``DIR/eval``)."""

    name = "eval"

    def _max_new_tokens(self) -> int:
        return self.ctx.settings.budget.eval.max_new_tokens

    def _conditions(self) -> list[Condition]:
        selection = read_selection(self.ctx.out)
        if selection is None:
            raise FileNotFoundError(f"eval needs {self.ctx.out / SELECTION_FILE}: run the select stage")
        return eval_conditions(self.ctx.vector(), selection, self.ctx.settings.budget.eval.baselines)

    def inputs(self) -> dict:
        return {**self._common_inputs(), "conditions": [c.key for c in self._conditions()]}

    def run(self, status: str) -> str | None:
        return results_output(self.path) if self._evaluate() is not None else None
