"""A resumable eval or sweep: :class:`RunSettings` (frozen, built once by a Python caller or the CLI)
and :class:`EvalRun`, which owns its results directory, resume, invocation records and signals."""

from __future__ import annotations

import contextlib
import hashlib
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from lens_steer.config import GenerationConfig
from lens_steer.data.registry import Example, expand_benchmarks, resolve_data_dir
from lens_steer.engines.api import as_engine
from lens_steer.eval.conditions import Condition
from lens_steer.eval.evaluate import evaluate
from lens_steer.eval.record import DataRecord, Invocation, RecordedSettings
from lens_steer.eval.results import SummaryRow, summarise
from lens_steer.eval.results_dir import (
    ITEMS_FILE, append_items, open_results_dir, read_items, record_invocation, write_summary,
)
from lens_steer.eval.sweep import BEST_RULE, best_steered
from lens_steer.method.derive_run import sigterm_interrupts
from lens_steer.prompts import DEFAULT_TEMPLATE, PromptTemplate
from lens_steer.storage import DirLock, StorageError

__all__ = ["DataSettings", "EvalRun", "RunOutcome", "RunSettings", "item_ids_sha256"]

N_BOOT = 2000
BOOT_SEED = 0


def item_ids_sha256(examples: Sequence[Example]) -> str:
    """sha256 of the items' ids in order: pins exactly which items a run evaluates."""
    return hashlib.sha256("\n".join(e.id for e in examples).encode()).hexdigest()


@dataclass(frozen=True)
class DataSettings:
    """Which items a run evaluates.

    Attributes:
        benchmarks: Names with optional subset and split, e.g. ``("gsm8k@train", "agieval")``.
        split: Split of GSM8K / MMLU / ARC unless given with ``@``.
        limit: Seeded subsample per benchmark. task_limit: Per AGIEval / BBL task (default ``limit``).
        seed: Seed of the subsample (and of nothing else).
        data_dir: Local benchmark copies (None: ``$LENS_STEER_DATA_DIR``, else the hub).
    """

    benchmarks: tuple[str, ...]
    split: str = "test"
    limit: int | None = None
    task_limit: int | None = None
    seed: int = 0
    data_dir: str | None = None

    def load(self) -> tuple[list[Example], list[str]]:
        """``(examples, benchmark names)``; see :func:`lens_steer.data.registry.expand_benchmarks`."""
        return expand_benchmarks(",".join(self.benchmarks), split=self.split, limit=self.limit,
                                 task_limit=self.task_limit, seed=self.seed, data_dir=self.data_dir)


@dataclass(frozen=True)
class RunSettings:
    """Everything an eval or sweep is run with.

    Attributes:
        command: ``"eval"`` or ``"sweep"`` (a sweep also records the best cell per mode).
        data: The items.
        conditions: Conditions to run (see :mod:`lens_steer.eval.conditions`).
        generation: Generation settings (the same for every condition).
        template: Prompt templates.
        chunk_size: Items generated and saved together, the unit of resumption (default: batch size).
        allow_other_model: Steer with a vector derived on another checkpoint.
    """

    command: str
    data: DataSettings
    conditions: tuple[Condition, ...]
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    template: PromptTemplate = DEFAULT_TEMPLATE
    chunk_size: int | None = None
    allow_other_model: bool = False

    def __post_init__(self) -> None:
        if self.command not in ("eval", "sweep"):
            raise ValueError(f"command must be 'eval' or 'sweep', got {self.command!r}")
        if not self.conditions:
            raise ValueError("a run needs at least one condition")
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")

    @property
    def modes(self) -> list[str]:
        """The steering modes among the conditions, in order."""
        return list(dict.fromkeys(c.mode for c in self.conditions if c.mode is not None))


@dataclass(frozen=True)
class RunOutcome:
    """What :meth:`EvalRun.run` did: whether it completed, the summary, the rows it added, the best cells."""

    completed: bool
    summary: list[SummaryRow]
    new_rows: int
    best: dict[str, SummaryRow | None] | None = None


class EvalRun:
    """An eval or sweep writing into ``out``, resumable: rerunning it continues where it stopped.

    Args:
        out: Results directory (created; an existing one is resumed if its settings agree).
        settings: The run's settings.
        model: A ``TransformerBridge`` or an engine.
        vector: The steering vector (required when a condition is steered).
        examples: Items, if already loaded (else ``settings.data.load()``).
        argv: The command line to record (default ``sys.argv[1:]``).
        load_seconds: Time spent loading the model and vector, recorded with the invocation.
    """

    def __init__(self, out, settings: RunSettings, model, vector=None, *, examples: Sequence[Example] | None = None,
                 benchmark_names: Sequence[str] | None = None, argv: Sequence[str] | None = None,
                 load_seconds: float = 0.0) -> None:
        if any(c.steered for c in settings.conditions) and vector is None:
            raise ValueError("steered conditions need a vector")
        self.out = Path(out)
        self.settings = settings
        self.engine = as_engine(model)
        self.vector = vector
        if examples is None:
            examples, benchmark_names = settings.data.load()
        self.examples = list(examples)
        self.benchmark_names = list(benchmark_names if benchmark_names is not None else settings.data.benchmarks)
        if not self.examples:
            raise ValueError("no items to evaluate")
        self.argv = list(sys.argv[1:] if argv is None else argv)
        self.load_seconds = load_seconds

    def recorded_settings(self) -> RecordedSettings:
        """The settings as ``run.json`` records them (compared on resume)."""
        st = self.settings
        data_dir = resolve_data_dir(st.data.data_dir)
        ids = item_ids_sha256(self.examples)
        vec = None
        if self.vector is not None:
            vec = self.vector.source if getattr(self.vector, "source", None) is not None else None
            if vec is None:
                raise ValueError("record a run's vector from a saved one: load it with SteeringVector.load(path)")
        return RecordedSettings(
            command=st.command, model=self.engine.info, dtype=self.engine.dtype_name, vector=vec,
            allow_other_model=st.allow_other_model, generation=st.generation, template=st.template,
            chunk_size=st.chunk_size or st.generation.batch_size,
            data=DataRecord(benchmarks=list(self.benchmark_names), split=st.data.split, limit=st.data.limit,
                            task_limit=st.data.task_limit, seed=st.data.seed,
                            source=str(data_dir.resolve()) if data_dir is not None else "hub",
                            n_items=len(self.examples), item_ids_sha256=ids))

    def run(self, *, progress: bool = True, log=None) -> RunOutcome:
        """Evaluate what is not done yet, then write ``summary.json``.

        Ctrl-C or SIGTERM stops it between chunks (``completed`` False; rerun to resume).

        Args:
            progress: Show a progress bar.
            log: Where to print one-line status messages (default ``sys.stderr``; None-like ``False`` mutes).
        """
        log = sys.stderr if log is None else log
        with DirLock(self.out, f"lens-steer {self.settings.command}") as lock:
            if lock.took_over and log:
                print(f"{self.out}: took over the lock of {lock.took_over}", file=log)
            return self._run(progress, log)

    def _run(self, progress: bool, log) -> RunOutcome:
        import torch

        st = self.settings
        done = open_results_dir(self.out, self.settings_json(), log=log)
        wanted = {(e.id, c.key) for e in self.examples for c in st.conditions}
        if log:
            print(f"{len(self.examples)} items x {len(st.conditions)} conditions: {len(wanted & done)} of "
                  f"{len(wanted)} already in {self.out}", file=log)
        added = 0
        start = time.perf_counter()

        def invocation(completed: bool) -> Invocation:
            return Invocation(started=started, argv=self.argv, device=self.engine.device_name,
                              torch_threads=torch.get_num_threads(), attention=self.engine.attention_kernel(),
                              load_seconds=round(self.load_seconds, 2), eval_seconds=round(time.perf_counter() - start, 2),
                              new_rows=added, completed=completed, engine=self.engine.name)

        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        index = record_invocation(self.out, invocation(False), st.conditions)

        def on_rows(rows):
            nonlocal added
            append_items(self.out / ITEMS_FILE, rows)
            added += len(rows)
            record_invocation(self.out, invocation(False), index=index)

        completed = False
        try:
            with sigterm_interrupts():
                evaluate(self.engine, self.examples, st.conditions, st.generation, self.vector, template=st.template,
                         done=done, on_rows=on_rows, chunk_size=st.chunk_size,
                         allow_other_model=st.allow_other_model, progress=progress)
            completed = True
        except KeyboardInterrupt:
            if log:
                print(f"lens-steer {st.command}: interrupted after {added} new rows; run the same command again to "
                      "resume", file=log)
        finally:
            # a second storage error while one is propagating (a full disk) must not hide the first
            with contextlib.suppress(StorageError) if sys.exc_info()[0] is not None else contextlib.nullcontext():
                record_invocation(self.out, invocation(completed), index=index)
        summary = summarise(read_items(self.out / ITEMS_FILE), n_boot=N_BOOT, seed=BOOT_SEED)
        extra: dict = {"complete": completed, "bootstrap": {"n_boot": N_BOOT, "seed": BOOT_SEED}}
        best = None
        if st.command == "sweep":
            best = {m: best_steered(summary, m) for m in st.modes}
            extra["best"] = {m: (s.to_dict() if s is not None else None) for m, s in best.items()}
            extra["best_rule"] = BEST_RULE
        write_summary(self.out, summary, **extra)
        return RunOutcome(completed=completed, summary=summary, new_rows=added, best=best)

    def settings_json(self) -> dict:
        """:meth:`recorded_settings` as the JSON object stored in ``run.json``."""
        return self.recorded_settings().to_dict()
