"""Logit lens on steering directions: tokens each layer's direction promotes or suppresses; pure."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

__all__ = [
    "LogitLensResult",
    "NormKind",
    "direction_logit_lens",
    "lens_scores",
    "random_direction_control",
    "random_directions",
    "token_overlap",
]

NormKind = Literal["rms", "layer", "none"]
Decoder = Callable[[int], str] | Sequence[str]


@dataclass(frozen=True)
class LogitLensResult:
    """Top and bottom tokens of each layer's direction under the unembedding.

    Attributes:
        top_ids: ``[layer, k]`` token ids with the highest scores, best first.
        top_scores: ``[layer, k]`` their scores.
        top_tokens: ``layer`` lists of ``k`` decoded strings matching ``top_ids``.
        bottom_ids: ``[layer, k]`` token ids with the lowest scores, most negative first.
        bottom_scores: ``[layer, k]`` their scores.
        bottom_tokens: ``layer`` lists of ``k`` decoded strings matching ``bottom_ids``.
        norm_kind: How the final norm was applied (see :func:`direction_logit_lens`).
        include_bias: Whether ``b_U`` was added to the scores.
        scores: ``[layer, d_vocab]`` full score matrix, or None unless requested.
    """

    top_ids: Int[Tensor, "layer k"]
    top_scores: Float[Tensor, "layer k"]
    top_tokens: list[list[str]]
    bottom_ids: Int[Tensor, "layer k"]
    bottom_scores: Float[Tensor, "layer k"]
    bottom_tokens: list[list[str]]
    norm_kind: str
    include_bias: bool
    scores: Float[Tensor, "layer d_vocab"] | None = None

    @property
    def n_layers(self) -> int:
        """Number of layers (rows)."""
        return self.top_ids.shape[0]

    @property
    def k(self) -> int:
        """Number of tokens kept at each end."""
        return self.top_ids.shape[1]


def _decode_all(ids: Tensor, decode: Decoder | None) -> list[list[str]]:
    """Decode a ``[layer, k]`` id tensor to nested lists of strings."""
    rows = ids.tolist()
    if decode is None:
        return [[f"<{i}>" for i in row] for row in rows]
    if callable(decode):
        return [[decode(int(i)) for i in row] for row in rows]
    return [[decode[i] for i in row] for row in rows]


def lens_scores(
    directions: Float[Tensor, "*batch d_model"],
    W_U: Float[Tensor, "d_model d_vocab"],
    norm_weight: Float[Tensor, " d_model"] | None = None,
    norm_kind: NormKind = "rms",
) -> Float[Tensor, "*batch d_vocab"]:
    """Scores of every token under each direction: the norm treatment of
    :func:`direction_logit_lens`, then ``W_U`` (no bias), in float32.

    Args:
        directions: Directions with any leading batch shape.
        W_U: Unembedding matrix.
        norm_weight: Final norm's elementwise gain γ, or None for ones.
        norm_kind: ``"rms"``, ``"layer"`` or ``"none"``.

    Returns:
        ``directions``' leading shape with ``d_vocab`` last, on ``W_U``'s device.

    Raises:
        ValueError: On an unknown ``norm_kind``.
    """
    if norm_kind not in ("rms", "layer", "none"):
        raise ValueError(f"norm_kind must be 'rms', 'layer' or 'none', got {norm_kind!r}")
    u = directions.to(device=W_U.device, dtype=W_U.dtype)
    if norm_kind == "layer":
        u = u - u.mean(dim=-1, keepdim=True)
    if norm_kind != "none" and norm_weight is not None:
        u = u * norm_weight.to(device=u.device, dtype=u.dtype)
    return (u @ W_U).float()


def direction_logit_lens(
    directions: Float[Tensor, "layer d_model"],
    W_U: Float[Tensor, "d_model d_vocab"],
    b_U: Float[Tensor, " d_vocab"] | None = None,
    norm_weight: Float[Tensor, " d_model"] | None = None,
    norm_kind: NormKind = "rms",
    k: int = 10,
    decode: Decoder | None = None,
    include_bias: bool = False,
    return_scores: bool = False,
) -> LogitLensResult:
    """Project each layer's direction through the final norm's gain and the unembedding.

    Norm treatment. A direction is a difference of mean residual states, not a
    residual state, so the final norm is NOT applied as a whole. Exactly:

    * ``"rms"`` (RMSNorm): ``u = γ ⊙ v``.
    * ``"layer"`` (LayerNorm): ``u = γ ⊙ (v - mean_d(v))``, i.e. LayerNorm's
      centring across ``d_model`` followed by the gain.
    * ``"none"``: ``u = v`` (``norm_weight`` is ignored).

    ``γ`` is ``norm_weight``; when it is None (e.g. the gain was folded into
    ``W_U``) it is taken as all ones. The RMS / standard-deviation division is
    dropped: for a fixed layer it multiplies all logits by one positive
    constant, so it cannot change the ranking. LayerNorm's own bias β is also
    dropped (direction-independent). Scores are ``u @ W_U``; ``b_U`` is added
    only when ``include_bias`` is true, since it is the same for every
    direction (and, because the scale was dropped, mixing it in makes the
    scores depend on ‖v‖).

    Args:
        directions: One direction per layer.
        W_U: Unembedding matrix.
        b_U: Unembedding bias; required only when ``include_bias`` is true.
        norm_weight: Final norm's elementwise gain γ, or None for ones.
        norm_kind: ``"rms"``, ``"layer"`` or ``"none"`` as above.
        k: Number of top and of bottom tokens to keep per layer.
        decode: Token id -> string, either a callable or a list indexed by id;
            None gives ``"<id>"`` placeholders.
        include_bias: Add ``b_U`` to the scores.
        return_scores: Keep the full ``[layer, d_vocab]`` score matrix.

    Returns:
        A :class:`LogitLensResult`.

    Raises:
        ValueError: On an unknown ``norm_kind``, ``include_bias`` without ``b_U``,
            or ``k`` outside ``[1, d_vocab]``.
    """
    if include_bias and b_U is None:
        raise ValueError("include_bias=True needs b_U")
    d_vocab = W_U.shape[1]
    if not 1 <= k <= d_vocab:
        raise ValueError(f"k must be in [1, {d_vocab}], got {k}")

    scores = lens_scores(directions, W_U, norm_weight, norm_kind)
    if include_bias:
        scores = scores + b_U.to(scores.device).float()

    top = scores.topk(k, dim=-1, largest=True)
    bottom = scores.topk(k, dim=-1, largest=False)
    return LogitLensResult(
        top_ids=top.indices.cpu(),
        top_scores=top.values.cpu(),
        top_tokens=_decode_all(top.indices, decode),
        bottom_ids=bottom.indices.cpu(),
        bottom_scores=bottom.values.cpu(),
        bottom_tokens=_decode_all(bottom.indices, decode),
        norm_kind=norm_kind,
        include_bias=include_bias,
        scores=scores.cpu() if return_scores else None,
    )


def random_direction_control(
    directions: Float[Tensor, "layer d_model"], seed: int
) -> Float[Tensor, "layer d_model"]:
    """Random Gaussian directions with the same per-layer L2 norms, as a lens control.

    Args:
        directions: Real directions whose per-layer norms are matched.
        seed: Seed for the CPU generator (results do not depend on device).

    Returns:
        Tensor of the same shape, dtype and device as ``directions``.
    """
    draw = random_directions(directions, 1, torch.Generator().manual_seed(seed))[0]
    return draw.to(device=directions.device, dtype=directions.dtype)


def random_directions(
    directions: Float[Tensor, "layer d_model"], n: int, generator: torch.Generator
) -> Float[Tensor, "n layer d_model"]:
    """``n`` random Gaussian directions per layer, each scaled to that layer's L2 norm.

    Args:
        directions: Real directions whose per-layer norms are matched.
        n: Draws per layer.
        generator: A seeded CPU generator (consumed; results do not depend on device).

    Returns:
        A float32 CPU tensor; draw ``i`` is one direction per layer.

    Raises:
        ValueError: If ``n`` < 1.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    noise = torch.randn((n, *directions.shape), generator=generator, dtype=torch.float32)
    noise = noise / noise.norm(dim=-1, keepdim=True)
    return noise * directions.detach().float().norm(dim=-1, keepdim=True).cpu()


def token_overlap(
    result_a: LogitLensResult,
    result_b: LogitLensResult,
    which: Literal["top", "bottom"] = "top",
) -> Float[Tensor, " layer"]:
    """Fraction of shared token ids between two lens results, per layer.

    Args:
        result_a: First result.
        result_b: Second result with the same number of layers.
        which: Compare the ``"top"`` or the ``"bottom"`` token sets.

    Returns:
        ``|A_l ∩ B_l| / min(k_a, k_b)`` for each layer ``l``.

    Raises:
        ValueError: If the layer counts differ or ``which`` is unknown.
    """
    if which not in ("top", "bottom"):
        raise ValueError(f"which must be 'top' or 'bottom', got {which!r}")
    if result_a.n_layers != result_b.n_layers:
        raise ValueError(f"layer counts differ: {result_a.n_layers} vs {result_b.n_layers}")
    ids_a = result_a.top_ids if which == "top" else result_a.bottom_ids
    ids_b = result_b.top_ids if which == "top" else result_b.bottom_ids
    denom = min(ids_a.shape[1], ids_b.shape[1])
    out = [
        len(set(a.tolist()) & set(b.tolist())) / denom for a, b in zip(ids_a, ids_b, strict=True)
    ]
    return torch.tensor(out, dtype=torch.float32)
