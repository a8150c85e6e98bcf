"""PCA of per-question CoT vectors at one layer (``torch.linalg.svd``); pure tensor functions."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

__all__ = ["PCAResult", "alignment_with_direction", "pca_per_question"]

_EPS = 1e-12
_SIGN_TOL = 1e-6


@dataclass(frozen=True)
class PCAResult:
    """Principal components of the per-question vectors at one layer.

    Attributes:
        layer: The layer analysed.
        components: ``[k, d_model]`` unit-norm principal axes, ordered by variance.
        explained_variance_ratio: ``[k]`` fraction of the total (centred, or raw second
            moment when ``center=False``) sum of squares captured by each component.
        projections: ``[n_questions, k]`` coordinates of each (centred) vector on the
            components.
        mean: ``[d_model]`` mean per-question vector (the layer's CoT direction); it
            was subtracted before the SVD only when ``centered`` is true.
        centered: Whether the data were mean-centred.
    """

    layer: int
    components: Float[Tensor, "k d_model"]
    explained_variance_ratio: Float[Tensor, " k"]
    projections: Float[Tensor, "question k"]
    mean: Float[Tensor, " d_model"]
    centered: bool


def pca_per_question(
    per_question: Float[Tensor, "question layer d_model"],
    layer: int,
    n_components: int = 10,
    center: bool = True,
) -> PCAResult:
    """PCA of the per-question vectors v(q) at one layer.

    Computed from the thin SVD ``X = U S Vh`` of the (optionally centred) data
    matrix ``X`` ([n_questions, d_model]); components are the rows of ``Vh``.

    Sign convention (deterministic): each component is flipped so that its dot
    product with the mean per-question vector (the CoT direction) is positive,
    so PC1 points "towards CoT". When that dot product is negligible
    (|cos| < 1e-6, e.g. a component orthogonal to the mean) the component is
    instead flipped so its largest-magnitude loading is positive.

    Args:
        per_question: Per-question vectors for every layer.
        layer: Layer index to analyse.
        n_components: Number of components to keep; clipped to
            ``min(n_questions, d_model)``.
        center: Subtract the mean vector before the SVD. With ``center=False`` the
            first component tends to be the mean direction itself.

    Returns:
        A :class:`PCAResult`.
    """
    x = per_question[:, layer].float()
    mean = x.mean(0)
    xc = x - mean if center else x
    _, s, vh = torch.linalg.svd(xc, full_matrices=False)
    k = min(n_components, vh.shape[0])
    total = (s**2).sum().clamp_min(_EPS)
    comps = vh[:k].clone()

    mean_unit = mean / mean.norm().clamp_min(_EPS)
    dots = comps @ mean_unit
    argmax = comps.abs().argmax(dim=1)
    fallback = torch.sign(comps.gather(1, argmax[:, None]).squeeze(1))
    signs = torch.where(dots.abs() > _SIGN_TOL, torch.sign(dots), fallback)
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)
    comps = comps * signs[:, None]

    return PCAResult(
        layer=layer,
        components=comps,
        explained_variance_ratio=(s[:k] ** 2) / total,
        projections=xc @ comps.T,
        mean=mean,
        centered=center,
    )


def alignment_with_direction(
    pca: PCAResult, direction: Float[Tensor, " d_model"]
) -> Float[Tensor, " k"]:
    """Absolute cosine between each principal component and a given vector.

    Args:
        pca: Result of :func:`pca_per_question`.
        direction: Vector to compare against (e.g. the layer's CoT direction).

    Returns:
        ``|cos(PC_i, direction)|`` for each component.
    """
    d = direction.float().to(pca.components.device)
    return (pca.components @ (d / d.norm().clamp_min(_EPS))).abs()
