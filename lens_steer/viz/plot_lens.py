"""Figures of the logit lens: the direction read through the unembedding, and projection traces.
All return ``go.Figure``; nothing here writes files.
"""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go
from jaxtyping import Float
from plotly.subplots import make_subplots
from torch import Tensor

from lens_steer.analysis.logit_lens import LogitLensResult
from lens_steer.viz.plotting_common import TEMPLATE, as_list, token_label

__all__ = [
    "plot_logit_lens",
    "plot_projection_trace",
]


def _lens_heatmap(
    result: LogitLensResult, layers: list[int], which: str, coloraxis: str
) -> go.Heatmap:
    """One layer × rank heatmap of lens scores with token strings as cell text."""
    ids = result.top_ids if which == "top" else result.bottom_ids
    scores = result.top_scores if which == "top" else result.bottom_scores
    tokens = result.top_tokens if which == "top" else result.bottom_tokens
    text = [[token_label(t) for t in tokens[layer]] for layer in layers]
    return go.Heatmap(
        z=[scores[layer].tolist() for layer in layers],
        x=list(range(1, result.k + 1)),
        y=[str(layer) for layer in layers],
        text=text,
        texttemplate="%{text}",
        customdata=[ids[layer].tolist() for layer in layers],
        coloraxis=coloraxis,
        hovertemplate=(
            "layer %{y}, rank %{x}<br>%{text} (id %{customdata})<br>score %{z:.3f}<extra></extra>"
        ),
    )


def plot_logit_lens(
    result: LogitLensResult,
    layers: Sequence[int] | None = None,
    control: LogitLensResult | None = None,
    which: str = "top",
    labels: tuple[str, str] = ("CoT direction", "random control"),
    title: str | None = None,
) -> go.Figure:
    """Layer × rank table of the tokens each direction promotes, coloured by score.

    With ``control`` the control result is drawn side by side on a shared colour
    scale (random controls have matched norms, so the scores are comparable).

    Args:
        result: Output of :func:`lens_steer.analysis.direction_logit_lens`.
        layers: Layers (rows) to show; all by default.
        control: Optional second result (e.g. on :func:`random_direction_control`).
        which: ``"top"`` (promoted) or ``"bottom"`` (suppressed) tokens.
        labels: Panel titles for the result and the control.
        title: Figure title.

    Returns:
        A figure with one heatmap trace, or two when ``control`` is given.

    Raises:
        ValueError: If ``which`` is unknown.
    """
    if which not in ("top", "bottom"):
        raise ValueError(f"which must be 'top' or 'bottom', got {which!r}")
    rows = list(range(result.n_layers)) if layers is None else list(layers)
    title = title or f"Logit lens of CoT directions ({which}-{result.k} tokens)"
    height = max(300, 28 * len(rows) + 150)
    if control is None:
        fig = go.Figure(_lens_heatmap(result, rows, which, "coloraxis"))
    else:
        fig = make_subplots(rows=1, cols=2, subplot_titles=list(labels), shared_yaxes=True,
                            horizontal_spacing=0.03)
        fig.add_trace(_lens_heatmap(result, rows, which, "coloraxis"), row=1, col=1)
        fig.add_trace(_lens_heatmap(control, rows, which, "coloraxis"), row=1, col=2)
        fig.update_xaxes(title_text="rank")
    fig.update_layout(
        title=title,
        template=TEMPLATE,
        height=height,
        coloraxis={"colorscale": "Viridis", "colorbar": {"title": "score"}},
        yaxis={"title": "layer", "autorange": "reversed", "type": "category"},
    )
    if control is None:
        fig.update_layout(xaxis_title="rank")
    return fig


def plot_projection_trace(
    tokens_a: Sequence[str],
    proj_a: Float[Tensor, " pos_a"],
    tokens_b: Sequence[str],
    proj_b: Float[Tensor, " pos_b"],
    labels: tuple[str, str] = ("CoT prompt", "direct prompt"),
    title: str = "Projection onto the CoT direction per generated token",
) -> go.Figure:
    """Per-token projection onto a direction for two responses, with token hover.

    Args:
        tokens_a: Token strings of the first response.
        proj_a: Projection per token of the first response.
        tokens_b: Token strings of the second response.
        proj_b: Projection per token of the second response.
        labels: Legend names of the two lines.
        title: Figure title.

    Returns:
        A figure with two line traces.

    Raises:
        ValueError: If a token list and its projections differ in length.
    """
    fig = go.Figure()
    for toks, proj, name in ((tokens_a, proj_a, labels[0]), (tokens_b, proj_b, labels[1])):
        if len(toks) != proj.shape[0]:
            raise ValueError(f"{name}: {len(toks)} tokens but {proj.shape[0]} projections")
        fig.add_trace(
            go.Scatter(
                x=list(range(len(toks))),
                y=as_list(proj),
                mode="lines+markers",
                name=name,
                customdata=[token_label(t) for t in toks],
                hovertemplate="%{x}: %{customdata}<br>proj %{y:.3f}<extra>" + name + "</extra>",
                marker={"size": 4},
            )
        )
    fig.update_layout(
        title=title, template=TEMPLATE, xaxis_title="generated token index",
        yaxis_title="projection onto unit direction",
    )
    return fig
