"""Interactive entry points on a bridge or an engine: :func:`as_engine`, :func:`generate`, the
:func:`steer` context manager, and the fast-path settings of a bridge's engine."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from torch import Tensor

from lens_steer.config import GenerationConfig
from lens_steer.engines.base import Engine, Generation, ResidualSums, SteerMode, Steering
from lens_steer.engines.steer_spec import SteerSpec
from lens_steer.engines.bridge import BridgeEngine, engine_for
from lens_steer.engines.registry import open_engine

__all__ = [
    "as_engine",
    "attention_kernel",
    "fast_path_attention",
    "fast_forward",
    "fast_path_disabled",
    "fast_path_options",
    "fast_path_status",
    "generate",
    "open_engine",
    "set_fast_path",
    "steer",
]


def as_engine(model_or_engine) -> Engine:
    """The engine of a ``TransformerBridge`` (see :func:`~lens_steer.engines.bridge.engine_for`), or the
    engine itself."""
    if hasattr(model_or_engine, "original_model") and hasattr(model_or_engine, "blocks"):
        return engine_for(model_or_engine)
    if isinstance(model_or_engine, Engine):
        return model_or_engine
    raise TypeError(f"expected a TransformerBridge or an engine, got {type(model_or_engine).__name__}")


def bridge_engine(model_or_engine) -> BridgeEngine:
    """The :class:`BridgeEngine` of a bridge (or the engine itself); ``TypeError`` for another engine."""
    engine = as_engine(model_or_engine)
    if not isinstance(engine, BridgeEngine):
        raise TypeError(f"this needs the TransformerBridge engine, not {type(engine).__name__}")
    return engine


def generate(
    model,
    prompts: Sequence[Sequence[int]],
    config: GenerationConfig = GenerationConfig(),
    *,
    steering=None,
    residuals: ResidualSums | None = None,
    progress: bool = True,
    desc: str = "generating",
) -> list[Generation]:
    """Generate a response per prompt (token ids) on a bridge or an engine; see :meth:`Engine.generate`.

    Args:
        model: A ``TransformerBridge`` (active hooks, e.g. :func:`steer`, apply) or an engine.
        prompts: Token ids per prompt (e.g. from :func:`lens_steer.prompts.encode_prompt`).
        config: Generation settings.
        steering: Optional :class:`Steering` (one, a tuple, or one entry per prompt).
        residuals: Optional :class:`ResidualSums` to fill.
        progress: Show a progress bar.
        desc: Progress bar label.

    Returns:
        One :class:`Generation` per prompt, in input order, with ``text`` decoded.
    """
    return as_engine(model).generate(prompts, config, steering=steering, residuals=residuals, progress=progress,
                                     desc=desc)


@contextmanager
def steer(
    model,
    vector,
    layer: int,
    coeff: float,
    mode: SteerMode | str | SteerSpec = "continuous",
    *,
    allow_other_model: bool = False,
) -> Iterator[Tensor]:
    """Steer ``blocks.{layer}.hook_resid_post`` with ``coeff * vector[layer]`` inside the block (by default: add it
    at every position).

    For notebook use: every generation and forward pass of the bridge inside the block is
    steered (see :mod:`lens_steer.engines.steering` for the modes). Pipelines pass a
    :class:`Steering` to an engine instead; both install the same hooks.

    Threads: the block holds the bridge's lock, so another thread's ``generate`` or ``steer`` waits
    until the block ends (do not wait inside it for such a thread), and another thread's direct
    forward of the bridge inside it raises ``RuntimeError``.

    Args:
        model: A ``TransformerBridge``.
        vector: A ``SteeringVector`` or a ``[d_model]`` / ``[n_layers, d_model]`` tensor.
        layer: Block whose output is steered.
        coeff: Multiplier c (negative subtracts the direction).
        mode: ``"continuous"`` or ``"single"`` (the paper's), or where, when and how to steer: a
            :class:`~lens_steer.engines.steer_spec.SteerSpec` or its text (``"at=first:16,op=clamp"``).
        allow_other_model: Accept a vector derived on another checkpoint.

    Yields:
        The added tensor ``coeff * v`` (in the model's dtype).

    Example:
        >>> with steer(model, vec, layer=16, coeff=20.0, mode="single"):
        ...     out = generate(model, prompts, cfg)
    """
    with bridge_engine(model).steering(Steering(vector, layer, coeff, mode, allow_other_model)) as deltas:
        yield deltas[0]


def set_fast_path(model, enabled: bool = True, *, attention: str | None = None) -> None:
    """Allow (default) or forbid the fast path for a bridge, and choose its attention kernel.

    Args:
        model: A ``TransformerBridge`` (or its engine).
        enabled: Use the fast path when it applies.
        attention: ``"sdpa"`` (HF's fused kernel and default: outputs equal to an unwrapped HF
            model's, and to the bridge path's up to float rounding) or ``"eager"`` (the bridge's own
            attention math: bit-identical to the bridge path); ``None`` keeps the current choice.
    """
    bridge_engine(model).fast_path.set(enabled, attention=attention)


@contextmanager
def fast_path_options(model, *, enabled: bool | None = None, attention: str | None = None) -> Iterator[None]:
    """:func:`set_fast_path` for the length of a ``with`` block; the previous settings come back after it."""
    with bridge_engine(model).fast_path.options(enabled=enabled, attention=attention):
        yield


@contextmanager
def fast_path_disabled(model) -> Iterator[None]:
    """Use the bridge path for every call inside the block (restores the previous setting)."""
    with fast_path_options(model, enabled=False):
        yield


def fast_path_status(model) -> str | None:
    """Why a forward call of the bridge made now would take the bridge path, or ``None`` if fast."""
    return bridge_engine(model).fast_path.status()


def fast_path_attention(model) -> str:
    """The attention kernel the fast path runs for the bridge: ``"sdpa"`` (default) or ``"eager"``."""
    return bridge_engine(model).fast_path.attention_choice()


def attention_kernel(model) -> str:
    """The attention a hook-free forward runs now: ``"sdpa"``/``"eager"`` on the fast path, else
    ``"eager (bridge path)"``; for an engine, its own kernel description."""
    return as_engine(model).attention_kernel()


def fast_forward(model):
    """A callable running the bridge's HF forward, on the fast path when it applies (one per generation
    batch; see :meth:`lens_steer.engines.fastpath.FastPath.forward`)."""
    return bridge_engine(model).fast_path.forward()
