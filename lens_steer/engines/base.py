"""The engine interface every consumer uses: generate from token ids under a ``GenerationConfig``,
with steering given as data (:class:`Steering`) and an optional residual observer (:class:`ResidualSums`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from jaxtyping import Float
from torch import Tensor

from lens_steer.config import GenerationConfig
from lens_steer.engines.steer_spec import SteerSpec, as_spec
from lens_steer.models import ModelInfo

__all__ = [
    "POSITIONS",
    "STEER_MODES",
    "Engine",
    "Generation",
    "Positions",
    "ResidualSums",
    "SteerMode",
    "Steering",
    "SteeringPlan",
    "check_fits_context",
    "context_length_of",
    "normalise_steering",
]

SteerMode = Literal["continuous", "single"]
STEER_MODES: tuple[str, ...] = ("continuous", "single")
"""The paper's two modes, the presets of :class:`~lens_steer.engines.steer_spec.SteerSpec`."""
Positions = Literal["generated", "prompt", "all"]
POSITIONS: tuple[str, ...] = ("generated", "prompt", "all")


@dataclass(frozen=True, eq=False)
class Steering:
    """Steer the residual stream after block ``layer`` with ``coeff`` and ``vector[layer]``: where, when and how
    given by ``mode`` (by default the paper's: add ``coeff * vector[layer]`` at every position).

    Attributes:
        vector: A :class:`~lens_steer.method.vectors.SteeringVector`, a ``[d_model]`` tensor or a
            ``[n_layers, d_model]`` tensor.
        layer: Block whose output (``blocks.{layer}.hook_resid_post``) is steered.
        coeff: The multiplier c (negative subtracts the direction); must be finite.
        mode: ``"continuous"`` (every position of every forward pass) or ``"single"`` (only the prompt's
            positions), the paper's two modes; or a :class:`~lens_steer.engines.steer_spec.SteerSpec` or its
            compact text (``"at=first:16,op=clamp"``: see :mod:`lens_steer.engines.steer_spec`). Stored as the
            canonical text (a preset's name for the presets); :attr:`spec` holds the parsed spec.
        allow_other_model: Accept a vector derived on another checkpoint of the same shape.

    Example:
        >>> Steering(vec, 15, 2.0, "single")
        >>> Steering(vec, 15, 2.0, SteerSpec(Where.first(16), Strength.linear(1, 0, 16)))
        >>> Steering(vec, 15, 1.0, "at=trigger:\\n\\n,op=add-norm")
    """

    vector: Any
    layer: int
    coeff: float
    mode: SteerMode | str | SteerSpec = "continuous"
    allow_other_model: bool = False
    spec: SteerSpec = field(init=False, repr=False)

    def __post_init__(self) -> None:
        spec = as_spec(self.mode)
        object.__setattr__(self, "spec", spec)
        object.__setattr__(self, "mode", spec.text)
        if isinstance(self.layer, bool) or not isinstance(self.layer, int):
            raise IndexError(f"layer must be an int block index, got {self.layer!r}")
        if not math.isfinite(float(self.coeff)):
            raise ValueError(f"steering coefficient must be finite, got {self.coeff}")

    def key(self) -> tuple:
        """Identity for grouping requests that steer alike (the vector by object identity)."""
        return (id(self.vector), self.layer, float(self.coeff), self.mode, self.allow_other_model)


SteeringPlan = tuple[Steering, ...]
"""The steerings applied together to one request (empty: unsteered), in order: at each layer each steering
acts on the stream the one before it left; layers in forward order."""


def normalise_steering(
    steering: Steering | Sequence[Steering] | Sequence[Steering | Sequence[Steering] | None] | None, n_prompts: int
) -> list[SteeringPlan]:
    """One :data:`SteeringPlan` per prompt from the forms engines accept.

    ``None`` (no steering), one :class:`Steering` or a tuple of them (applied to every prompt), or a
    list with one entry per prompt (each ``None``, a :class:`Steering` or a sequence of them).
    """
    if steering is None:
        return [()] * n_prompts
    if isinstance(steering, Steering):
        return [(steering,)] * n_prompts
    items = list(steering)
    if isinstance(steering, tuple) and all(isinstance(s, Steering) for s in items):
        return [tuple(items)] * n_prompts
    if len(items) != n_prompts:
        raise ValueError(f"per-prompt steering needs one entry per prompt: got {len(items)} for {n_prompts} prompts "
                         "(pass a tuple to apply several steerings to every prompt)")
    out = []
    for entry in items:
        if entry is None:
            out.append(())
        elif isinstance(entry, Steering):
            out.append((entry,))
        elif all(isinstance(s, Steering) for s in entry):
            out.append(tuple(entry))
        else:
            raise TypeError(f"steering entries must be None, Steering or a sequence of Steering, got {entry!r}")
    return out


CONTEXT_FIELDS: tuple[str, ...] = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length",
                                   "n_ctx")
"""HF config fields that give a model's context length, in the order they are read."""


def context_length_of(config) -> int | None:
    """A model's context length (most positions it attends over) from its HF config, or ``None`` when the
    config (or its ``text_config``) names none of :data:`CONTEXT_FIELDS`."""
    for cfg in (config, getattr(config, "text_config", None)):
        for name in CONTEXT_FIELDS:
            value = getattr(cfg, name, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def check_fits_context(prompts: Sequence[Sequence[int]], max_new_tokens: int, context_length: int | None) -> None:
    """Refuse, before anything runs, prompts that with ``max_new_tokens`` exceed the model's context.

    A model run past its context length (its position embeddings) returns garbage, slowly.

    Args:
        prompts: Token ids per prompt.
        max_new_tokens: Tokens to generate after each prompt (0: the prompt alone must fit).
        context_length: The model's context length (:func:`context_length_of`); ``None`` skips the check.

    Raises:
        ValueError: one line naming the first prompt too long (1-based), its tokens, ``max_new_tokens``,
        the context length and how many other prompts are too long.
    """
    if context_length is None:
        return
    over = [i for i, p in enumerate(prompts) if len(p) + max_new_tokens > context_length]
    if not over:
        return
    i = over[0]
    size = f"{len(prompts[i])} tokens" + (f" + max_new_tokens {max_new_tokens}" if max_new_tokens else "")
    more = f" ({len(over) - 1} other prompts too)" if len(over) > 1 else ""
    raise ValueError(f"prompt {i + 1} of {len(prompts)} is too long for the model: {size} exceeds its context length "
                     f"of {context_length}{more}")


@dataclass
class Generation:
    """One prompt's generation.

    Attributes:
        prompt_ids: The prompt tokens.
        response_ids: Generated tokens before the first stop token (the stop token excluded).
        stopped: Whether a stop token ended the response (else it hit ``max_new_tokens``).
        text: ``response_ids`` decoded, special tokens skipped.
    """

    prompt_ids: list[int]
    response_ids: list[int]
    stopped: bool
    text: str = ""
    extra: dict = field(default_factory=dict)


class ResidualSums:
    """Running sums of the residual stream after every block, one row per prompt: the observer an
    engine fills while it generates (memory: one ``[n_prompts, n_layers, d_model]`` sum).

    Args:
        n_prompts / n_layers / d_model: Shape.
        positions: Which positions count: ``"generated"`` (response tokens, stop token excluded),
            ``"prompt"`` or ``"all"``.
    """

    def __init__(self, n_prompts: int, n_layers: int, d_model: int, positions: Positions = "generated") -> None:
        if positions not in POSITIONS:
            raise ValueError(f"unknown positions {positions!r}; expected one of {POSITIONS}")
        self.positions = positions
        self.sums = torch.zeros(n_prompts, n_layers, d_model, dtype=torch.float32)
        self.norm_sums = torch.zeros(n_prompts, n_layers, dtype=torch.float32)
        self.counts = torch.zeros(n_prompts, dtype=torch.float64)

    @property
    def counts_prompt(self) -> bool:
        """Whether prompt positions are counted."""
        return self.positions in ("prompt", "all")

    @property
    def counts_generated(self) -> bool:
        """Whether response positions are counted."""
        return self.positions in ("generated", "all")

    def add(self, rows: Sequence[int], sums: Tensor, norm_sums: Tensor, counts: Tensor) -> None:
        """Add a batch's sums ``[B, n_layers, d_model]``, norm sums ``[B, n_layers]`` and counts ``[B]``
        to the prompts ``rows``."""
        idx = torch.as_tensor(list(rows), dtype=torch.long)
        self.sums[idx] += sums.detach().to("cpu", torch.float32)
        self.norm_sums[idx] += norm_sums.detach().to("cpu", torch.float32)
        self.counts[idx] += counts.detach().to("cpu", torch.float64)

    def means(self) -> tuple[Float[Tensor, "prompt layer d_model"], Tensor, Float[Tensor, "prompt layer"]]:
        """``(means, counts, mean norms)``; a row with no counted position has zero means."""
        denom = self.counts.clamp(min=1).to(torch.float32)
        return self.sums / denom[:, None, None], self.counts.to(torch.long), self.norm_sums / denom[:, None]


@runtime_checkable
class Engine(Protocol):
    """What derivation, evaluation, sweeps, the demo and the CLI need from a model runtime.

    Implementations are registered by name with what they can do in :mod:`lens_steer.engines.registry`:
    :class:`lens_steer.engines.bridge.BridgeEngine` (TransformerLens bridge, the default) and
    :class:`lens_steer.engines.vllm.VllmEngine`.
    """

    name: str
    """Short engine name recorded in run records (``"bridge"``, ``"vllm"``)."""

    @property
    def info(self) -> ModelInfo:
        """The model's identity (id, architecture, depth, width, fingerprint)."""

    @property
    def tokenizer(self):
        """The model's tokenizer (prompts are encoded with it)."""

    @property
    def dtype_name(self) -> str:
        """Parameter dtype name, e.g. ``"float32"``."""

    @property
    def device_name(self) -> str:
        """Device, e.g. ``"cpu"``."""

    @property
    def context_length(self) -> int | None:
        """Most tokens (prompt + response) a request may span (None: unknown); longer requests are refused
        before they run (:func:`check_fits_context`)."""

    def attention_kernel(self) -> str:
        """The attention kernel a plain forward runs now (recorded with results)."""

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        config: GenerationConfig = GenerationConfig(),
        *,
        steering=None,
        residuals: ResidualSums | None = None,
        progress: bool = True,
        desc: str = "generating",
    ) -> list[Generation]:
        """One :class:`Generation` per prompt (token ids), in input order, with ``text`` decoded.

        ``steering``: see :func:`normalise_steering` (per-prompt steering allowed).
        ``residuals``: filled with the residual sums at every layer over its positions.
        """

    def first_token_logprobs(self, prompts: Sequence[Sequence[int]], *, steering=None, top_k: int = 20,
                             config: GenerationConfig = GenerationConfig()) -> list[dict[int, float]]:
        """The ``top_k`` log-probabilities of each prompt's first response token, steered as ``generate`` would
        steer it (engines that declare ``first_token_logprobs`` in the registry)."""
