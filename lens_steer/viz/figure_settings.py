"""The effective settings of a figures run (defaults filled in), recorded beside the command as
typed in ``summary.json`` and the README; pure."""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["FigureSettings"]


@dataclass(frozen=True)
class FigureSettings:
    """What ``lens-steer figures`` (or a Python caller) ran with, every default resolved.

    Attributes:
        model: Model id or path the figures were made on. layer: Analysis layer.
        trace_question: Question of the projection trace ("" when skipped).
        ablation_questions: Questions ablated. ablation_file: Their file (None: packaged demo questions).
        ablation_layers: One entry per ablation figure: ``"all"`` or comma-separated layers.
        max_new_tokens / batch_size: Generation of the trace and ablations.
        top_k: Logit-lens tokens per end. n_splits: Split-half repetitions. seed: Seed of controls and draws.
        device / dtype: Where the model ran. allow_other_model: Vector from another checkpoint accepted.
    """

    model: str
    layer: int
    trace_question: str
    ablation_questions: int
    ablation_file: str | None
    ablation_layers: tuple[str, ...]
    max_new_tokens: int
    batch_size: int
    top_k: int
    n_splits: int
    seed: int
    device: str = "cpu"
    dtype: str = "float32"
    allow_other_model: bool = False

    def to_dict(self) -> dict:
        """JSON-ready form (the ``settings`` object of ``summary.json``)."""
        out = asdict(self)
        out["ablation_layers"] = list(self.ablation_layers)
        return out

    def lines(self) -> list[str]:
        """Markdown bullets for the README."""
        return [f"- {k.replace('_', ' ')}: {', '.join(v) if isinstance(v, list) else v}"
                for k, v in self.to_dict().items()]
