"""Figures of the logit lens: token groups against random directions, the top-k token table, and
projection traces. All return ``go.Figure``; nothing here writes files.
"""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go
from jaxtyping import Float
from plotly.colors import hex_to_rgb, qualitative
from plotly.subplots import make_subplots
from torch import Tensor

from lens_steer.analysis.logit_lens import LogitLensResult
from lens_steer.analysis.token_set_lens import LensMetric, TokenSetLens
from lens_steer.viz.plotting_common import TEMPLATE, as_list, token_label

__all__ = [
    "plot_logit_lens",
    "plot_projection_trace",
    "plot_token_set_lens",
]

_GROUP_COLOURS = qualitative.D3


def _token_hover(result: TokenSetLens, group: int, metric: LensMetric) -> list[str]:
    """Per layer, the group's tokens with their score and rank (hover text of the direction's line)."""
    members = [t for t, g in enumerate(result.token_set.group_of) if g == group]
    value = result.group_values(metric)[:, group]
    out = []
    for layer in range(result.n_layers):
        rows = [f"{token_label(result.token_set.texts[t])}: {result.scores[layer, t]:.2f} "
                f"(rank {int(result.ranks[layer, t])})" for t in members]
        summary = "mean score" if metric == "score" else "geometric mean rank"
        out.append(f"{summary} {value[layer]:.4g}<br>" + "<br>".join(rows))
    return out


def _log_ticks(top: int) -> list[int]:
    """1, 2, 5, 10, 20, 50, ... up to ``top``: labelled ticks of a log rank axis (no unlabelled minor digits)."""
    ticks, decade = [], 1
    while decade <= top:
        ticks += [m * decade for m in (1, 2, 5) if m * decade <= top]
        decade *= 10
    return ticks


def plot_token_set_lens(
    result: TokenSetLens,
    metrics: Sequence[LensMetric] = ("score", "rank"),
    title: str | None = None,
) -> go.Figure:
    """Each token group's mean lens score (and geometric mean rank) per layer, against a band from random directions.

    One panel per metric, x = layer. Per group: the CoT direction's line (hover lists each token's
    score and rank), the random directions' mean (dotted) and their quantile band (shaded). Ranks
    are drawn on a reversed log axis, so up means promoted in both panels.

    Args:
        result: Output of :func:`lens_steer.analysis.token_set_lens`.
        metrics: Panels, top to bottom: ``"score"`` and/or ``"rank"``.
        title: Figure title.

    Returns:
        A figure with four scatter traces per group and metric (band edge, band, random mean,
        direction), in that order.

    Raises:
        ValueError: If ``metrics`` is empty or holds an unknown metric.
    """
    if not metrics:
        raise ValueError("metrics must name at least one of 'score', 'rank'")
    layers = list(range(result.n_layers))
    low_q, high_q = result.quantiles
    panel = {"score": "mean lens score (logit) of each group",
             "rank": f"geometric mean rank among {result.d_vocab:,} tokens (1 = top, log scale)"}
    fig = make_subplots(rows=len(metrics), cols=1, shared_xaxes=True, vertical_spacing=0.1,
                        subplot_titles=[panel[m] if m in panel else m for m in metrics])
    for row, metric in enumerate(metrics, start=1):
        values = result.group_values(metric)
        low, mean, high = result.band(metric)
        for g, name in enumerate(result.token_set.groups):
            colour = _GROUP_COLOURS[g % len(_GROUP_COLOURS)]
            fill = "rgba({}, {}, {}, 0.15)".format(*hex_to_rgb(colour))
            legend = {"legendgroup": name, "showlegend": row == 1}
            fig.add_trace(go.Scatter(x=layers, y=as_list(high[:, g]), mode="lines", line={"width": 0},
                                     hoverinfo="skip", legendgroup=name, showlegend=False), row=row, col=1)
            fig.add_trace(go.Scatter(
                x=layers, y=as_list(low[:, g]), mode="lines", line={"width": 0}, fill="tonexty", fillcolor=fill,
                name=f"{name}: random directions {low_q:.0%}–{high_q:.0%}", hoverinfo="skip", **legend),
                row=row, col=1)
            fig.add_trace(go.Scatter(
                x=layers, y=as_list(mean[:, g]), mode="lines", line={"color": colour, "dash": "dot", "width": 2},
                name=f"{name}: random mean", hovertemplate=f"layer %{{x}}: %{{y:.4g}}<extra>{name}, random "
                                                           f"mean ({result.n_random})</extra>", **legend),
                row=row, col=1)
            fig.add_trace(go.Scatter(
                x=layers, y=as_list(values[:, g]), mode="lines+markers", line={"color": colour, "width": 3},
                marker={"size": 6}, name=f"{name}: CoT direction", text=_token_hover(result, g, metric),
                hovertemplate=f"layer %{{x}}<br>%{{text}}<extra>{name}</extra>", **legend), row=row, col=1)
        axis = {"title_text": "rank" if metric == "rank" else "mean score"}
        if metric == "rank":
            axis |= {"type": "log", "autorange": "reversed", "tickvals": _log_ticks(result.d_vocab),
                     "tickformat": "~s", "minor": {"showgrid": False}}
        fig.update_yaxes(row=row, col=1, **axis)
    fig.update_xaxes(title_text="layer", row=len(metrics), col=1)
    fig.update_xaxes(dtick=max(1, result.n_layers // 15))
    fig.update_layout(
        title=title or (f"Logit lens of the CoT direction: token groups vs {result.n_random} random directions "
                        "of equal norm"),
        template=TEMPLATE, height=380 * len(metrics) + 160,
        legend={"orientation": "h", "yanchor": "top", "y": -0.1, "xanchor": "left", "x": 0},
    )
    return fig


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
