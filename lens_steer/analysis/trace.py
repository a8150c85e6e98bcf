"""Projection of residual streams onto a CoT direction.

Pure tensor helpers live here; model-running functions (per-token projection
trace of a generated response, direction ablation) are to be added alongside.
"""

from __future__ import annotations

from jaxtyping import Float
from torch import Tensor

__all__ = ["projection_onto_direction"]

_EPS = 1e-12


def projection_onto_direction(
    resid: Float[Tensor, "pos d_model"], direction: Float[Tensor, " d_model"]
) -> Float[Tensor, " pos"]:
    """Scalar projection of each residual vector onto the unit direction.

    Args:
        resid: Residual stream vectors, one per position (leading batch dims
            are also accepted and preserved).
        direction: Direction to project onto; normalised internally.

    Returns:
        ``resid @ direction / ‖direction‖`` for each position.

    Raises:
        ValueError: If ``direction`` is (numerically) zero.
    """
    d = direction.to(device=resid.device, dtype=resid.dtype)
    norm = d.norm()
    if norm < _EPS:
        raise ValueError("direction has zero norm")
    return resid @ (d / norm)
