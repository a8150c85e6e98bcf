"""Figures of the vector itself: cosine across layers, split-half stability, per-source cosine, PCA.
All return ``go.Figure``; nothing here writes files.
"""

from __future__ import annotations

import html

from collections.abc import Sequence

import plotly.graph_objects as go
import torch
from jaxtyping import Float
from plotly.subplots import make_subplots
from torch import Tensor

from lens_steer.analysis.pca import PCAResult
from lens_steer.analysis.similarity import SourceCosineResult
from lens_steer.viz.plotting_common import COSINE_SCALE, TEMPLATE, as_list, wrap_text

__all__ = [
    "plot_explained_variance",
    "plot_layer_cosine",
    "plot_pca_scatter",
    "plot_source_cosine",
    "plot_split_half",
]


def plot_layer_cosine(
    matrix: Float[Tensor, "layer layer"],
    title: str = "Cosine similarity of CoT directions across layers",
) -> go.Figure:
    """Heatmap of a layer × layer cosine matrix.

    Args:
        matrix: Output of :func:`lens_steer.analysis.layer_cosine_matrix`.
        title: Figure title.

    Returns:
        A figure with one heatmap trace.
    """
    n = matrix.shape[0]
    fig = go.Figure(
        go.Heatmap(
            z=as_list(matrix),
            x=list(range(n)),
            y=list(range(n)),
            zmin=-1,
            zmax=1,
            colorscale=COSINE_SCALE,
            colorbar={"title": "cosine"},
            hovertemplate="layer %{y} vs %{x}: %{z:.3f}<extra></extra>",
        )
    )
    fig.update_layout(
        title=title, template=TEMPLATE, xaxis_title="layer", yaxis_title="layer",
        yaxis_autorange="reversed",
    )
    return fig


def plot_split_half(
    stability: Float[Tensor, " layer"],
    norms: Float[Tensor, " layer"] | None = None,
    resid_norms: Float[Tensor, " layer"] | None = None,
    title: str = "Split-half stability of the CoT direction",
) -> go.Figure:
    """Split-half cosine per layer, optionally with the direction's norm on a second axis.

    Args:
        stability: Output of :func:`lens_steer.analysis.split_half_stability`.
        norms: Optional ``‖v_l‖`` per layer, drawn on the right axis.
        resid_norms: Optional typical residual-stream norm per layer; with ``norms``
            the ratio ``‖v_l‖ / resid_norms_l`` is drawn on the left (0-1) axis.
        title: Figure title.

    Returns:
        A figure with one line for stability plus one per optional series.
    """
    layers = list(range(stability.shape[0]))
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(
        go.Scatter(x=layers, y=as_list(stability), mode="lines+markers", name="split-half cosine"),
        secondary_y=False,
    )
    if norms is not None:
        fig.add_trace(
            go.Scatter(x=layers, y=as_list(norms), mode="lines", name="‖v‖", line={"dash": "dash"}),
            secondary_y=True,
        )
        if resid_norms is not None:
            # dimensionless and well below 1: drawn on the left (0-1) axis, where it stays
            # readable, instead of beside ‖v‖ whose scale grows by orders of magnitude.
            ratio = norms.float() / resid_norms.float().clamp_min(1e-12)
            fig.add_trace(
                go.Scatter(
                    x=layers, y=as_list(ratio), mode="lines+markers", name="‖v‖ / ‖resid‖",
                    line={"dash": "dot"}, marker={"size": 4},
                ),
                secondary_y=False,
            )
    fig.update_layout(title=title, template=TEMPLATE, xaxis_title="layer")
    left = "cos(mean A, mean B)" + (" ; ‖v‖/‖resid‖" if norms is not None and resid_norms is not None else "")
    fig.update_yaxes(title_text=left, range=[-0.05, 1.05], secondary_y=False)
    if norms is not None:
        fig.update_yaxes(title_text="norm", secondary_y=True)
    return fig


def plot_source_cosine(result: SourceCosineResult, title: str | None = None) -> go.Figure:
    """Heatmap of cosines between per-source mean vectors; within-source cosine in hover.

    Args:
        result: Output of :func:`lens_steer.analysis.cosine_by_source`.
        title: Figure title; a default naming the layer is used when None.

    Returns:
        A figure with one heatmap trace.
    """
    counts = result.counts.tolist()
    labels = [f"{s} (n={int(c)})" for s, c in zip(result.sources, counts, strict=True)]
    within = as_list(result.within)
    text = [[f"{v:.2f}" for v in row] for row in as_list(result.between)]
    custom = [[within[i]] * len(labels) for i in range(len(labels))]
    fig = go.Figure(
        go.Heatmap(
            z=as_list(result.between),
            x=labels,
            y=labels,
            zmin=-1,
            zmax=1,
            colorscale=COSINE_SCALE,
            text=text,
            texttemplate="%{text}",
            customdata=custom,
            colorbar={"title": "cosine"},
            hovertemplate=(
                "%{y} vs %{x}: %{z:.3f}<br>within %{y}: %{customdata:.3f}<extra></extra>"
            ),
        )
    )
    fig.update_layout(
        title=title or f"Cosine between per-source mean vectors (layer {result.layer})",
        template=TEMPLATE, xaxis_title="source", yaxis_title="source", yaxis_autorange="reversed",
    )
    return fig


def plot_pca_scatter(
    pca: PCAResult,
    sources: Sequence[str],
    questions: Sequence[str] | None = None,
    components: tuple[int, int] = (0, 1),
    title: str | None = None,
) -> go.Figure:
    """Scatter of per-question vectors on two principal components, one trace per source.

    Args:
        pca: Output of :func:`lens_steer.analysis.pca_per_question`.
        sources: Source of each question (colours the points).
        questions: Question texts for hover (truncated and wrapped); None omits them.
        components: Zero-based indices of the components on x and y.
        title: Figure title; a default naming the layer is used when None.

    Returns:
        A figure with one scatter trace per distinct source.

    Raises:
        ValueError: If lengths disagree or a component index is out of range.
    """
    n = pca.projections.shape[0]
    if len(sources) != n or (questions is not None and len(questions) != n):
        raise ValueError("sources/questions must have one entry per projected question")
    cx, cy = components
    k = pca.projections.shape[1]
    if not (0 <= cx < k and 0 <= cy < k):
        raise ValueError(f"components {components} out of range for k={k}")
    evr = as_list(pca.explained_variance_ratio)
    proj = pca.projections.detach().cpu().float()
    fig = go.Figure()
    for name in dict.fromkeys(sources):
        idx = [i for i, s in enumerate(sources) if s == name]
        hover = [
            f"<b>{html.escape(name)}</b> #{i}<br>" + (wrap_text(questions[i]) if questions else "")
            for i in idx
        ]
        fig.add_trace(
            go.Scatter(
                x=proj[idx, cx].tolist(),
                y=proj[idx, cy].tolist(),
                mode="markers",
                name=name,
                hovertext=hover,
                hovertemplate="%{hovertext}<extra></extra>",
                marker={"size": 7, "opacity": 0.8},
            )
        )
    fig.update_layout(
        title=title or f"Per-question CoT vectors, layer {pca.layer}",
        template=TEMPLATE,
        xaxis_title=f"PC{cx + 1} ({evr[cx]:.1%})",
        yaxis_title=f"PC{cy + 1} ({evr[cy]:.1%})",
        legend_title="source",
    )
    return fig


def plot_explained_variance(pca: PCAResult, title: str | None = None) -> go.Figure:
    """Bar chart of explained variance ratio per component with the cumulative line.

    Args:
        pca: Output of :func:`lens_steer.analysis.pca_per_question`.
        title: Figure title; a default naming the layer is used when None.

    Returns:
        A figure with a bar trace and a cumulative line trace.
    """
    evr = pca.explained_variance_ratio.detach().cpu().float()
    pcs = [f"PC{i + 1}" for i in range(evr.shape[0])]
    fig = go.Figure(
        [
            go.Bar(x=pcs, y=evr.tolist(), name="explained variance ratio"),
            go.Scatter(
                x=pcs, y=torch.cumsum(evr, 0).tolist(), mode="lines+markers", name="cumulative"
            ),
        ]
    )
    fig.update_layout(
        title=title or f"PCA explained variance, layer {pca.layer}",
        template=TEMPLATE, xaxis_title="component", yaxis_title="fraction of variance",
        yaxis_range=[0, 1.05],
    )
    return fig
