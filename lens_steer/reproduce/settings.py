"""The settings of ``lens-steer reproduce``: one frozen dataclass per stage, the budgets (quick, cpu,
full) that fill them, and the run's own settings; pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace

from lens_steer.config import EMBEDDED_MODEL, GenerationConfig
from lens_steer.prompts import DEFAULT_TEMPLATE, PromptTemplate

__all__ = ["BUDGETS", "STAGES", "Budget", "DeriveStage", "EvalStage", "FigureStage", "LayerGrid",
           "ReproduceSettings", "SweepStage", "budget", "default_budget"]

STAGES: tuple[str, ...] = ("derive", "sweep", "select", "eval", "report", "figures")
"""The stages, in the order they run."""


@dataclass(frozen=True)
class LayerGrid:
    """The sweep's layers: block indices, or fractions of the model's depth (so one grid fits any model).

    Attributes:
        values: Block indices (``relative`` False) or fractions in [0, 1] of ``n_layers``.
        relative: Whether ``values`` are fractions.
    """

    values: tuple[float, ...]
    relative: bool = False

    def __post_init__(self) -> None:
        if not self.values:
            raise ValueError("the sweep needs at least one layer")
        if self.relative and not all(0.0 <= v <= 1.0 for v in self.values):
            raise ValueError(f"layer fractions must lie in 0%..100%, got {self.text()}")
        if not self.relative and not all(float(v).is_integer() and v >= 0 for v in self.values):
            raise ValueError(f"layers must be block indices (0, 1, ...), got {self.text()}")

    @classmethod
    def parse(cls, text: str) -> LayerGrid:
        """``"10,15,20"`` (blocks) or ``"30%,50%,70%"`` (fractions of the depth); not both kinds at once."""
        parts = [p.strip() for p in text.split(",") if p.strip()]
        pct = [p.endswith("%") for p in parts]
        if any(pct) and not all(pct):
            raise ValueError(f"give layers as block indices or as percentages of the depth, not both: {text!r}")
        try:
            if all(pct) and parts:
                return cls(tuple(float(p[:-1]) / 100 for p in parts), relative=True)
            return cls(tuple(int(p) for p in parts))
        except ValueError as exc:
            if "layer" in str(exc):
                raise
            raise ValueError(f"layers: expected e.g. 10,15,20 or 30%,50%,70%, got {text!r}") from None

    def resolve(self, n_layers: int) -> tuple[int, ...]:
        """The block indices for a model of ``n_layers`` blocks (fractions rounded half up), sorted, unique.

        Raises:
            IndexError: a block index outside the model.
        """
        if self.relative:
            layers = {min(n_layers - 1, int(v * n_layers + 0.5)) for v in self.values}
        else:
            layers = {int(v) for v in self.values}
            bad = sorted(x for x in layers if x >= n_layers)
            if bad:
                raise IndexError(f"sweep layers {bad} are out of range: the model has layers 0..{n_layers - 1}")
        return tuple(sorted(layers))

    def text(self) -> str:
        """As typed on the command line."""
        if self.relative:
            return ",".join(f"{100 * v:.4g}%" for v in self.values)
        return ",".join(str(int(v)) for v in self.values)


@dataclass(frozen=True)
class DeriveStage:
    """Deriving the vector (``lens-steer derive``): which questions, and how their responses are generated.

    Attributes:
        corpus: ``"paper"`` (the paper's BBL + MMLU + GSM8K mix), ``"demo"`` (the packaged questions) or
            the path of a JSONL question file.
        corpus_limit: Seeded subsample of N questions (None: all). corpus_seed: Seed of corpus draws.
        max_new_tokens: Response length. positions / method: See :func:`~lens_steer.method.derive.derive_cot_vector`.
        chunk_questions: Questions per checkpointed chunk (the unit of resumption).
    """

    corpus: str = "paper"
    corpus_limit: int | None = None
    corpus_seed: int = 0
    max_new_tokens: int = 96
    positions: str = "generated"
    method: str = "fused"
    chunk_questions: int = 32


@dataclass(frozen=True)
class SweepStage:
    """The grid search on dev splits (``lens-steer sweep``).

    Attributes:
        benchmarks: Dev benchmarks with their splits. limit: Items per benchmark (None: all).
        max_new_tokens: Response length. layers: Layers swept.
        scales_continuous / scales_single: Steering sizes as fractions of the mean residual norm.
        baselines: Unsteered conditions run on the same items.
    """

    benchmarks: tuple[str, ...] = ("gsm8k@train", "mmlu@val")
    limit: int | None = 16
    max_new_tokens: int = 128
    layers: LayerGrid = LayerGrid((1 / 3, 1 / 2, 2 / 3), relative=True)
    scales_continuous: tuple[float, ...] = (0.05, 0.1, 0.2)
    scales_single: tuple[float, ...] = (0.3, 0.6, 1.0)
    baselines: tuple[str, ...] = ("direct", "cot")


@dataclass(frozen=True)
class EvalStage:
    """The evaluation on test subsets (``lens-steer eval``) of the unsteered and the selected conditions.

    Attributes:
        benchmarks: Benchmarks (AGIEval expands to its English tasks). split: Their split.
        limit: Items per benchmark (None: all). task_limit: Items per AGIEval task (None: ``limit``).
        max_new_tokens: Response length. baselines: Unsteered conditions.
    """

    benchmarks: tuple[str, ...] = ("gsm8k", "mmlu", "arc", "agieval")
    split: str = "test"
    limit: int | None = 100
    task_limit: int | None = 20
    max_new_tokens: int = 128
    baselines: tuple[str, ...] = ("direct", "cot")


@dataclass(frozen=True)
class FigureStage:
    """The analysis figures of the vector (``lens-steer figures``).

    Attributes:
        layer: Analysis layer (None: the model's default). ablation_questions: Questions ablated.
        max_new_tokens: Generation of the trace and ablations. n_splits: Split-half repetitions.
        top_k: Logit-lens tokens. png: Also write PNGs (when kaleido and a Chromium are there).
    """

    layer: int | None = None
    ablation_questions: int = 16
    max_new_tokens: int = 128
    n_splits: int = 100
    top_k: int = 10
    png: bool = True


@dataclass(frozen=True)
class Budget:
    """The sizes of every stage, named (``quick``, ``cpu``, ``full``; ``"<name> with overrides"`` once changed)."""

    name: str
    derive: DeriveStage
    sweep: SweepStage
    eval: EvalStage
    figures: FigureStage

    def with_overrides(self, **stages: Mapping) -> Budget:
        """This budget with fields of some stages replaced, e.g. ``with_overrides(sweep={"limit": 8})``.

        Raises:
            ValueError: an unknown stage or field.
        """
        out = self
        for stage, changes in stages.items():
            if stage not in ("derive", "sweep", "eval", "figures"):
                raise ValueError(f"unknown stage {stage!r}")
            current = getattr(self, stage)
            bad = sorted(set(changes) - {f.name for f in fields(current)})
            if bad:
                raise ValueError(f"the {stage} stage has no setting(s) {bad}")
            changed = {k: v for k, v in changes.items() if getattr(current, k) != v}
            if changed:
                out = replace(out, **{stage: replace(current, **changed)})
        return out if out == self else replace(out, name=f"{self.name} with overrides")


_FULL_LAYERS = LayerGrid((0.3, 0.4, 0.5, 0.6, 0.7), relative=True)

BUDGETS: dict[str, Budget] = {
    "quick": Budget(
        "quick", DeriveStage(corpus_limit=24, max_new_tokens=48),
        SweepStage(limit=4, max_new_tokens=48, layers=LayerGrid((1 / 3, 2 / 3), relative=True),
                   scales_continuous=(0.1, 0.2), scales_single=(0.3, 0.6)),
        EvalStage(limit=4, task_limit=1, max_new_tokens=48),
        FigureStage(ablation_questions=4, max_new_tokens=48, n_splits=20)),
    "cpu": Budget("cpu", DeriveStage(), SweepStage(), EvalStage(), FigureStage()),
    "full": Budget(
        "full", DeriveStage(max_new_tokens=256),
        SweepStage(limit=64, max_new_tokens=256, layers=_FULL_LAYERS, scales_continuous=(0.025, 0.05, 0.1, 0.2, 0.4),
                   scales_single=(0.15, 0.3, 0.6, 1.0, 2.0)),
        EvalStage(limit=None, task_limit=None, max_new_tokens=256),
        FigureStage(max_new_tokens=256)),
}
"""``quick``: a smoke run in minutes. ``cpu``: the embedded model's default, the sizes of the committed
``docs/results`` run, on the whole 286-question corpus. ``full``: the paper's protocol (whole test sets),
the default for every other model."""


def default_budget(model: str) -> str:
    """``"cpu"`` for the embedded model, ``"full"`` for any other."""
    return "cpu" if model == EMBEDDED_MODEL else "full"


def budget(name: str) -> Budget:
    """The budget called ``name`` (one of :data:`BUDGETS`)."""
    if name not in BUDGETS:
        raise ValueError(f"unknown budget {name!r}; expected one of {sorted(BUDGETS)}")
    return BUDGETS[name]


@dataclass(frozen=True)
class ReproduceSettings:
    """Everything ``lens-steer reproduce`` runs with.

    Attributes:
        model / device / dtype / engine: What to load and on which registered engine
            (:func:`~lens_steer.engines.registry.engine_names`).
        budget: The sizes of every stage.
        data_dir: Local benchmark copies (None: ``$LENS_STEER_DATA_DIR``, else the hub).
        batch_size / max_batch_tokens: Batching of every generating stage (greedy decoding throughout).
        seed: Seed of the benchmark subsamples and the figures' random controls.
        template: Prompt templates.
        stages: The stages to run (the others are left as they are).
        presets: Evaluate the paper's own cells beside the sweep's choice when the model has them.
    """

    model: str = EMBEDDED_MODEL
    device: str = "cpu"
    dtype: str = "float32"
    engine: str = "bridge"
    budget: Budget = field(default_factory=lambda: BUDGETS["cpu"])
    data_dir: str | None = None
    batch_size: int = 16
    max_batch_tokens: int = 8192
    seed: int = 0
    template: PromptTemplate = DEFAULT_TEMPLATE
    stages: tuple[str, ...] = STAGES
    presets: bool = True

    def __post_init__(self) -> None:
        bad = [s for s in self.stages if s not in STAGES]
        if bad:
            raise ValueError(f"unknown stage(s) {bad}; expected some of {', '.join(STAGES)}")
        from lens_steer.engines.registry import engine_spec, require

        engine_spec(self.engine)  # a known engine
        if "derive" in self.stages:
            require(self.engine, "residual_capture", "the derive stage")
            if self.budget.derive.method == "two_pass":
                require(self.engine, "reread_residuals", "the two_pass method")

    def generation(self, max_new_tokens: int) -> GenerationConfig:
        """The generation settings of a stage that generates ``max_new_tokens`` at most."""
        return GenerationConfig(max_new_tokens=max_new_tokens, seed=self.seed, batch_size=self.batch_size,
                                max_batch_tokens=self.max_batch_tokens)

    def to_dict(self) -> dict:
        """JSON-ready form (recorded in ``reproduce.json``)."""
        out = asdict(self)
        out["template"] = self.template.to_dict()
        return out
