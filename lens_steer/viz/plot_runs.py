"""Figures of runs: the sweep heatmap, generation traces, ablations and the layer probe.
All return ``go.Figure``; nothing here writes files.
"""

from __future__ import annotations

import html

from collections.abc import Sequence

import plotly.graph_objects as go
from jaxtyping import Float
from plotly.subplots import make_subplots
from torch import Tensor

from lens_steer.analysis.probe import ProbeGrid
from lens_steer.analysis.trace import AblationResult, TraceResult
from lens_steer.viz.plotting_common import TEMPLATE, as_list, token_label, wrap_text

__all__ = [
    "plot_ablation",
    "plot_probe",
    "plot_sweep_heatmap",
    "plot_trace",
]


def plot_sweep_heatmap(
    layers: Sequence[int],
    coeffs: Sequence[float],
    values: Float[Tensor, "layer coeff"] | Sequence[Sequence[float]],
    metric_name: str,
    title: str | None = None,
) -> go.Figure:
    """Layer × coefficient heatmap of an evaluation metric (e.g. accuracy).

    Args:
        layers: Layer of each row.
        coeffs: Steering coefficient of each column (shown as categories, so
            uneven grids are evenly spaced).
        values: Metric per (layer, coefficient); NaN cells are left blank.
        metric_name: Metric name for the colour bar and hover.
        title: Figure title.

    Returns:
        A figure with one heatmap trace.

    Raises:
        ValueError: If ``values`` does not have shape ``[len(layers), len(coeffs)]``.
    """
    z = as_list(values) if isinstance(values, Tensor) else [list(r) for r in values]
    if len(z) != len(layers) or any(len(r) != len(coeffs) for r in z):
        raise ValueError(f"values must be [{len(layers)}, {len(coeffs)}]")
    xs = [f"{c:g}" for c in coeffs]
    text = [["" if v != v else f"{v:.3g}" for v in row] for row in z]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=xs,
            y=[str(layer) for layer in layers],
            text=text,
            texttemplate="%{text}",
            colorscale="Viridis",
            colorbar={"title": metric_name},
            hovertemplate="layer %{y}, coeff %{x}<br>" + metric_name + " %{z:.4g}<extra></extra>",
        )
    )
    fig.update_layout(
        title=title or f"{metric_name} by layer and steering coefficient",
        template=TEMPLATE,
        xaxis={"title": "coefficient", "type": "category"},
        yaxis={"title": "layer", "type": "category"},
    )
    return fig


def plot_trace(
    traces: Sequence[TraceResult],
    labels: Sequence[str] | None = None,
    prompt_tokens: int | None = None,
    title: str | None = None,
) -> go.Figure:
    """Per-token projection onto the direction through prompt and response, one line per trace.

    Positions are aligned at the prompt/response boundary: x = 0 is the first response
    token and prompt tokens have negative x, so prompts of different lengths line up
    where the response starts (marked by a vertical line).

    Args:
        traces: Outputs of :func:`lens_steer.analysis.projection_trace` (e.g. CoT and direct).
        labels: Legend names; default ``"<style> prompt (<n> tokens)"``.
        prompt_tokens: How many of the last prompt tokens to draw (x < 0); None draws the
            whole prompt, 0 none (the first positions of a chat prompt often have a far
            larger norm than the rest and can dominate the y axis).
        title: Figure title; a default naming the layer is used when None.

    Returns:
        A figure with one line trace per input trace.

    Raises:
        ValueError: If ``labels`` does not match ``traces`` or ``traces`` is empty.
    """
    if not traces:
        raise ValueError("no traces to plot")
    if labels is not None and len(labels) != len(traces):
        raise ValueError(f"{len(labels)} labels for {len(traces)} traces")
    fig = go.Figure()
    for i, tr in enumerate(traces):
        name = labels[i] if labels is not None else f"{tr.style} prompt ({tr.n_response} tokens)"
        start = 0 if prompt_tokens is None else max(tr.n_prompt - prompt_tokens, 0)
        xs = [p - tr.n_prompt for p in range(start, len(tr.tokens))]
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=as_list(tr.projections[start:]),
                mode="lines+markers",
                name=name,
                customdata=[token_label(t) for t in tr.tokens[start:]],
                hovertemplate="%{x}: %{customdata}<br>proj %{y:.3f}<extra>" + html.escape(name) + "</extra>",
                marker={"size": 4},
            )
        )
    fig.add_vline(x=-0.5, line_dash="dash", line_color="grey",
                  annotation_text="response starts", annotation_position="top right")
    fig.update_layout(
        title=title or f"Projection of hook_resid_post onto the CoT direction, layer {traces[0].layer}",
        template=TEMPLATE,
        xaxis_title="token position relative to the first response token",
        yaxis_title="projection onto unit direction",
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "xanchor": "left", "x": 0},
    )
    return fig


def plot_ablation(result: AblationResult, title: str | None = None) -> go.Figure:
    """Bar charts of mean response length, CoT-style rate and repetitive-loop rate per condition.

    Args:
        result: Output of :func:`lens_steer.analysis.direction_ablation`.
        title: Figure title; a default naming the ablated layers is used when None.

    Returns:
        A figure with three bar traces side by side (length with standard-error bars;
        CoT-style rate; rate of responses stuck in a loop), one bar per condition.
    """
    names = list(result.conditions)
    conds = [result.conditions[n] for n in names]
    n_q = len(result.question_ids)
    layers = result.layers
    if len(layers) > 2 and layers == list(range(layers[0], layers[-1] + 1)):
        where = f"layers {layers[0]}–{layers[-1]}"
    else:
        where = "layer" + ("s " if len(layers) > 1 else " ") + ", ".join(str(x) for x in layers)
    fig = make_subplots(rows=1, cols=3, horizontal_spacing=0.08, subplot_titles=[
        f"mean length (tokens, max {result.max_new_tokens})", "CoT-style rate", "repetitive-loop rate"])
    fig.add_trace(
        go.Bar(
            x=names,
            y=[c.mean_tokens for c in conds],
            error_y={"type": "data", "array": [c.sem_tokens for c in conds]},
            text=[f"{c.mean_tokens:.1f}" for c in conds],
            textposition="inside",
            insidetextanchor="middle",
            customdata=[[c.truncated_rate] for c in conds],
            hovertemplate="%{x}: %{y:.1f} tokens<br>cut at max: %{customdata[0]:.0%}<extra></extra>",
            name="mean tokens",
            marker_color="#4C78A8",
            showlegend=False,
        ),
        row=1, col=1,
    )
    for col, values, label, color in (
        (2, [c.cot_rate for c in conds], "CoT style", "#F58518"),
        (3, [c.repetitive_rate for c in conds], "repetitive loop", "#E45756"),
    ):
        fig.add_trace(
            go.Bar(
                x=names,
                y=values,
                text=[f"{v:.0%}" for v in values],
                textposition="outside",
                hovertemplate="%{x}: %{y:.1%} " + label + "<extra></extra>",
                name=label,
                marker_color=color,
                showlegend=False,
            ),
            row=1, col=col,
        )
        fig.update_yaxes(range=[0, 1.15], tickformat=".0%", row=1, col=col)
    top_len = max([c.mean_tokens + c.sem_tokens for c in conds] + [1.0])
    fig.update_yaxes(range=[0, top_len * 1.1], title_text="tokens", row=1, col=1)
    fig.update_layout(
        title=title or f"CoT prompts with the direction projected out at {where} (n={n_q} questions)",
        template=TEMPLATE,
    )
    return fig


def plot_probe(grid: ProbeGrid, question_index: int = 0, title: str | None = None) -> go.Figure:
    """Response length and CoT-style rate against steering size, with a slider over layers.

    Hovering a point of the length line shows the steered answer to question
    ``question_index`` in that cell. Needs no widget library: the slider is plotly's own.

    Args:
        grid: Output of :func:`lens_steer.analysis.probe_steering`.
        question_index: Question whose answer is shown in the hover text.
        title: Title prefix; the selected layer is appended.

    Returns:
        A figure with two traces per layer (length, CoT rate), one layer visible at a
        time, and a slider with one step per layer.

    Raises:
        IndexError: If ``question_index`` is out of range.
    """
    if not 0 <= question_index < len(grid.questions):
        raise IndexError(f"question_index {question_index} out of range for {len(grid.questions)} questions")
    base = title or f"Steering the {grid.prompt_style} prompt ({grid.mode})"
    mean_tokens, cot_rate = grid.mean_tokens(), grid.cot_rate()
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    for i, layer in enumerate(grid.layers):
        answers = [wrap_text(grid.responses[i][j][question_index], 70, 400) for j in range(len(grid.scales))]
        coeffs = grid.coeffs[i].tolist()
        fig.add_trace(go.Scatter(
            x=grid.scales, y=mean_tokens[i].tolist(), mode="lines+markers", name="mean tokens",
            visible=i == 0, customdata=[[c] for c in coeffs], hovertext=answers,
            hovertemplate=("size %{x:g} (c=%{customdata[0]:.2f}): %{y:.1f} tokens<br>"
                           "<i>answer to question " + str(question_index) + ":</i><br>%{hovertext}<extra></extra>"),
        ), secondary_y=False)
        fig.add_trace(go.Scatter(
            x=grid.scales, y=cot_rate[i].tolist(), mode="lines+markers", name="CoT-style rate",
            visible=i == 0, line={"dash": "dash"}, hovertemplate="size %{x:g}: %{y:.0%} CoT style<extra></extra>",
        ), secondary_y=True)
    n = len(grid.layers)
    steps = []
    for i, layer in enumerate(grid.layers):
        visible = [k // 2 == i for k in range(2 * n)]
        steps.append({"method": "update", "label": str(layer),
                      "args": [{"visible": visible}, {"title": f"{base}: layer {layer}"}]})
    fig.update_layout(
        title=f"{base}: layer {grid.layers[0]}",
        template=TEMPLATE,
        sliders=[{"active": 0, "currentvalue": {"prefix": "layer "}, "pad": {"t": 50}, "steps": steps}],
        xaxis_title="steering size (× mean residual norm)" if grid.relative else "coefficient",
        hovermode="closest",
    )
    top = max(float(mean_tokens.max()), 1.0)
    fig.update_yaxes(title_text="mean response tokens", range=[0, top * 1.1], secondary_y=False)
    fig.update_yaxes(title_text="CoT-style rate", range=[0, 1.05], tickformat=".0%", secondary_y=True)
    return fig
