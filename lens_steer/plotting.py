"""Turn analysis results into ``plotly.graph_objects.Figure`` objects; never writes files."""

from __future__ import annotations

import html
import textwrap
import unicodedata
from collections.abc import Sequence

import plotly.graph_objects as go
import torch
from jaxtyping import Float
from plotly.subplots import make_subplots
from torch import Tensor

from lens_steer.analysis.logit_lens import LogitLensResult
from lens_steer.analysis.pca import PCAResult
from lens_steer.analysis.probe import ProbeGrid
from lens_steer.analysis.similarity import SourceCosineResult
from lens_steer.analysis.trace import AblationResult, TraceResult

__all__ = [
    "TEMPLATE",
    "plot_ablation",
    "plot_explained_variance",
    "plot_layer_cosine",
    "plot_logit_lens",
    "plot_pca_scatter",
    "plot_probe",
    "plot_projection_trace",
    "plot_source_cosine",
    "plot_split_half",
    "plot_sweep_heatmap",
    "plot_trace",
]

TEMPLATE = "plotly_white"
_COSINE_SCALE = "RdBu_r"


def _list(x: Tensor | Sequence[float]) -> list:
    """Plain Python list from a tensor or sequence (plotly-friendly)."""
    if isinstance(x, Tensor):
        return x.detach().cpu().float().tolist()
    return list(x)


def _visible_char(c: str) -> str:
    """A control character as its Unicode "control picture" (or ``\\xNN``); others unchanged."""
    code = ord(c)
    if code < 0x20:
        return chr(0x2400 + code)
    if code == 0x7F:
        return "␡"
    if unicodedata.category(c) == "Cc":
        return f"\\x{code:02x}"
    return c


def _token_label(tok: str) -> str:
    """Make a token string visible and HTML-safe (spaces, newlines, tabs, other control
    characters, angle brackets). Control characters must go: plotly.js fails to draw cell
    text holding e.g. a form feed."""
    tok = tok.replace(" ", "␣").replace("\n", "↵").replace("\t", "⇥")
    tok = "".join(_visible_char(c) for c in tok)
    return html.escape(tok) if tok else "∅"


def _wrap(text: str, width: int = 60, max_chars: int = 300) -> str:
    """Truncate and wrap a question for hover text (lines joined with ``<br>``)."""
    text = " ".join(text.split())
    if len(text) > max_chars:
        text = text[: max_chars - 1] + "…"
    return "<br>".join(html.escape(line) for line in textwrap.wrap(text, width)) or "(empty)"


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
            z=_list(matrix),
            x=list(range(n)),
            y=list(range(n)),
            zmin=-1,
            zmax=1,
            colorscale=_COSINE_SCALE,
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
        go.Scatter(x=layers, y=_list(stability), mode="lines+markers", name="split-half cosine"),
        secondary_y=False,
    )
    if norms is not None:
        fig.add_trace(
            go.Scatter(x=layers, y=_list(norms), mode="lines", name="‖v‖", line={"dash": "dash"}),
            secondary_y=True,
        )
        if resid_norms is not None:
            # dimensionless and well below 1: drawn on the left (0-1) axis, where it stays
            # readable, instead of beside ‖v‖ whose scale grows by orders of magnitude.
            ratio = norms.float() / resid_norms.float().clamp_min(1e-12)
            fig.add_trace(
                go.Scatter(
                    x=layers, y=_list(ratio), mode="lines+markers", name="‖v‖ / ‖resid‖",
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
    within = _list(result.within)
    text = [[f"{v:.2f}" for v in row] for row in _list(result.between)]
    custom = [[within[i]] * len(labels) for i in range(len(labels))]
    fig = go.Figure(
        go.Heatmap(
            z=_list(result.between),
            x=labels,
            y=labels,
            zmin=-1,
            zmax=1,
            colorscale=_COSINE_SCALE,
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
    evr = _list(pca.explained_variance_ratio)
    proj = pca.projections.detach().cpu().float()
    fig = go.Figure()
    for name in dict.fromkeys(sources):
        idx = [i for i, s in enumerate(sources) if s == name]
        hover = [
            f"<b>{html.escape(name)}</b> #{i}<br>" + (_wrap(questions[i]) if questions else "")
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


def _lens_heatmap(
    result: LogitLensResult, layers: list[int], which: str, coloraxis: str
) -> go.Heatmap:
    """One layer × rank heatmap of lens scores with token strings as cell text."""
    ids = result.top_ids if which == "top" else result.bottom_ids
    scores = result.top_scores if which == "top" else result.bottom_scores
    tokens = result.top_tokens if which == "top" else result.bottom_tokens
    text = [[_token_label(t) for t in tokens[layer]] for layer in layers]
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
                y=_list(proj),
                mode="lines+markers",
                name=name,
                customdata=[_token_label(t) for t in toks],
                hovertemplate="%{x}: %{customdata}<br>proj %{y:.3f}<extra>" + name + "</extra>",
                marker={"size": 4},
            )
        )
    fig.update_layout(
        title=title, template=TEMPLATE, xaxis_title="generated token index",
        yaxis_title="projection onto unit direction",
    )
    return fig


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
    z = _list(values) if isinstance(values, Tensor) else [list(r) for r in values]
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
                y=_list(tr.projections[start:]),
                mode="lines+markers",
                name=name,
                customdata=[_token_label(t) for t in tr.tokens[start:]],
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
        answers = [_wrap(grid.responses[i][j][question_index], 70, 400) for j in range(len(grid.scales))]
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
