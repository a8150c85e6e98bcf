"""The notebook's layer-probing widget: a prompt, layer and size sliders, mode, style and engine choices,
and a Run button that shows the unsteered and steered answers side by side with their projection
traces. :func:`probe_view` is the whole callback (tested without a browser); ipywidgets is imported
only when :func:`probe_widget` builds the controls."""

from __future__ import annotations

import html
import math
from collections.abc import Mapping
from dataclasses import dataclass

import plotly.graph_objects as go

from lens_steer.analysis.prompt_probe import ProbeInputError, PromptProbe, probe_prompt
from lens_steer.engines.menu import EngineMenu, EngineUnavailableError, engine_menu
from lens_steer.viz.figures import TRACE_PROMPT_TOKENS
from lens_steer.viz.plot_runs import plot_trace

__all__ = ["ProbeRequest", "ProbeView", "ProbeWidget", "answers_html", "plot_prompt_probe", "probe_view",
           "probe_widget"]

SIZE_KINDS: tuple[str, ...] = ("scale", "coeff")
"""How the size slider is read: a fraction of the layer's mean residual norm, or the raw coefficient c."""


@dataclass(frozen=True)
class ProbeRequest:
    """What the widget's controls ask for.

    Attributes:
        prompt: Question text. layer: Steered block. size: The slider's value, read as ``size_kind``.
        size_kind: ``"scale"`` or ``"coeff"`` (see :data:`SIZE_KINDS`). mode: ``"continuous"`` or
        ``"single"``. style: Prompt style. engine: Engine name in the menu. trace_layer: Block the
        traces read (None: the steered layer).
    """

    prompt: str
    layer: int
    size: float
    size_kind: str = "scale"
    mode: str = "continuous"
    style: str = "direct"
    engine: str = "bridge"
    trace_layer: int | None = None


@dataclass(frozen=True)
class ProbeView:
    """What the widget shows after a run.

    Attributes:
        html: The two answers side by side (or the message). figure: The traces, or None.
        message: The one-line reason a request could not run ("" when it ran). result: The probe, when it ran.
    """

    html: str
    figure: go.Figure | None
    message: str = ""
    result: PromptProbe | None = None


def _answer_column(title: str, text: str, n_tokens: int, stopped: bool, max_new_tokens: int) -> str:
    cut = "" if stopped else f", cut at {max_new_tokens}"
    return (f'<div style="flex:1;min-width:0"><b>{html.escape(title)}</b> &middot; {n_tokens} tokens{cut}'
            f'<pre style="white-space:pre-wrap;margin:4px 0">{html.escape(text)}</pre></div>')


def answers_html(result: PromptProbe) -> str:
    """The unsteered and steered answers side by side with their lengths, the settings above them."""
    size = f"c = {result.coeff:.4g}" + ("" if result.scale is None else f" (scale {result.scale:g})")
    head = (f"<div>layer {result.layer}, {size}, {html.escape(result.mode)}, {html.escape(result.style)} prompt, "
            f"engine {html.escape(result.engine)}: <b>{'answer changed' if result.changed else 'answer unchanged'}"
            "</b></div>")
    cols = [_answer_column(name, a.text, a.n_tokens, a.stopped, result.max_new_tokens)
            for name, a in (("unsteered", result.unsteered), ("steered", result.steered))]
    notes = "".join(f"<div><i>note: {html.escape(n)}</i></div>" for n in result.notes)
    if any(a.trace_matches is False for a in (result.unsteered, result.steered)):
        notes += "<div><i>note: a trace (run on the bridge) followed other tokens than this engine's answer</i></div>"
    return head + '<div style="display:flex;gap:16px;align-items:flex-start">' + "".join(cols) + "</div>" + notes


def message_html(message: str) -> str:
    """A one-line message in place of the answers."""
    return f'<div style="color:#b00020">{html.escape(message)}</div>'


def plot_prompt_probe(result: PromptProbe) -> go.Figure | None:
    """The projection traces of both answers (:func:`~lens_steer.viz.plot_runs.plot_trace`), or None without traces."""
    traces = [result.unsteered.trace, result.steered.trace]
    if any(t is None for t in traces):
        return None
    labels = [f"unsteered ({result.unsteered.n_tokens} tokens)",
              f"steered at layer {result.layer}, c={result.coeff:.3g} ({result.steered.n_tokens} tokens)"]
    return plot_trace(traces, labels, prompt_tokens=TRACE_PROMPT_TOKENS,
                      title=f"Projection onto the CoT direction at layer {result.trace_layer}: unsteered vs steered")


def probe_view(model, vector, engines: EngineMenu, request: ProbeRequest, generation=None) -> ProbeView:
    """Run one request (the widget's Run button): the answers and traces, or the one-line reason it cannot run.

    Args:
        model: A ``TransformerBridge`` (traces; the ``bridge`` engine).
        vector: A ``SteeringVector``.
        engines: The engines offered (:func:`~lens_steer.engines.menu.engine_menu`).
        request: The controls' values.
        generation: A :class:`~lens_steer.config.GenerationConfig`.

    Returns:
        A :class:`ProbeView`; ``message`` is set (and nothing ran) for bad input or an engine that
        cannot start.
    """
    try:
        if request.size_kind not in SIZE_KINDS:
            raise ProbeInputError(f"unknown size kind {request.size_kind!r}; choose one of {', '.join(SIZE_KINDS)}")
        coeff = request.size if request.size_kind == "coeff" else None
        scale = request.size if request.size_kind == "scale" else None
        engine = engines.get(request.engine)
        result = probe_prompt(model, vector, request.prompt, request.layer, coeff, scale=scale,
                              mode=request.mode, style=request.style, engine=engine, generation=generation,
                              trace_layer=request.trace_layer)
    except (ProbeInputError, EngineUnavailableError) as exc:
        return ProbeView(message_html(str(exc)), None, message=str(exc))
    return ProbeView(answers_html(result), plot_prompt_probe(result), result=result)


def _figure_output(fig: go.Figure) -> dict:
    """An Output widget's display entry for a figure (plotly's own mimetype: no shell or browser needed)."""
    import plotly.io as pio

    return {"output_type": "display_data", "data": pio.renderers["plotly_mimetype"].to_mimebundle(fig.to_dict()),
            "metadata": {}}


class ProbeWidget:
    """The controls, the Run button and the output areas; shown by displaying it (or its ``ui``).

    Built by :func:`probe_widget`. ``run()`` is the button's handler and returns the :class:`ProbeView`
    it showed (also kept as ``view``).
    """

    def __init__(self, model, vector, engines: EngineMenu, generation, *, layer: int, prompt: str, size: float,
                 size_kind: str, style: str, max_coeff: float) -> None:
        import ipywidgets as w

        from lens_steer.engines.base import STEER_MODES
        from lens_steer.prompts import PROMPT_STYLES

        self.model, self.vector, self.engines, self.generation = model, vector, engines, generation
        self.max_coeff = max_coeff
        self.view: ProbeView | None = None
        n_layers = int(model.cfg.n_layers)
        wide = w.Layout(width="95%")
        self.prompt = w.Textarea(value=prompt, placeholder="a question", description="prompt", layout=wide)
        self.layer = w.IntSlider(value=layer, min=0, max=n_layers - 1, description="layer")
        self.trace_layer = w.Dropdown(options=[("steered layer", None)] + [(str(i), i) for i in range(n_layers)],
                                      value=None, description="trace at")
        kinds = SIZE_KINDS if getattr(vector, "resid_norm", None) is not None else ("coeff",)
        self.size_kind = w.ToggleButtons(options=[("scale", "scale"), ("coefficient", "coeff")][-len(kinds):],
                                         value=size_kind, description="size as")
        self.size = w.FloatSlider(description=size_kind)
        self._set_range(size_kind, size)
        self.size_kind.observe(self._kind_changed, names="value")
        self.mode = w.ToggleButtons(options=list(STEER_MODES), value="continuous", description="mode")
        self.style = w.Dropdown(options=list(PROMPT_STYLES), value=style, description="prompt style")
        self.engine = w.Dropdown(options=engines.names, value=engines.names[0], description="engine")
        self.button = w.Button(description="Run", button_style="primary")
        self.button.on_click(self.run)
        self.answers = w.HTML()
        self.figure = w.Output()
        self.ui = w.VBox([self.prompt, w.HBox([self.layer, self.trace_layer]), w.HBox([self.size_kind, self.size]),
                          w.HBox([self.mode, self.style, self.engine]), self.button, self.answers, self.figure])

    def _unit_coeff(self) -> float | None:
        """The c of scale 1 at the chosen layer, or None when it cannot be computed there."""
        try:
            c = self.vector.coeff_for_scale(self.layer.value, 1.0)
        except (AttributeError, ValueError, IndexError):
            return None
        return c if math.isfinite(c) and c > 0 else None

    def _set_range(self, kind: str, value: float) -> None:
        top = 1.0 if kind == "scale" else self.max_coeff
        self.size.description = kind
        self.size.min, self.size.max = -top, top  # symmetric: the new min is always below the old max
        self.size.step = top / 100
        self.size.value = max(-top, min(top, value))

    def _kind_changed(self, change) -> None:
        unit = self._unit_coeff()
        old = self.size.value
        if unit is None:
            new = 0.0
        else:
            new = old * unit if change["new"] == "coeff" else old / unit
        self._set_range(change["new"], new)

    def request(self) -> ProbeRequest:
        """The controls' current values."""
        return ProbeRequest(prompt=self.prompt.value, layer=self.layer.value, size=self.size.value,
                            size_kind=self.size_kind.value, mode=self.mode.value, style=self.style.value,
                            engine=self.engine.value, trace_layer=self.trace_layer.value)

    def run(self, _button=None) -> ProbeView:
        """Answer the current request and show it (the Run button's handler)."""
        self.answers.value = "<i>running...</i>"
        self.button.disabled = True
        try:
            view = probe_view(self.model, self.vector, self.engines, self.request(), self.generation)
        except Exception as exc:  # a bug, not bad input: say so in the widget, then let it propagate
            self.answers.value = message_html(f"failed: {type(exc).__name__}: {str(exc)[:300]}")
            raise
        finally:
            self.button.disabled = False
        self.view = view
        self.answers.value = view.html
        self.figure.outputs = () if view.figure is None else (_figure_output(view.figure),)
        return view

    def _repr_mimebundle_(self, **kwargs):
        return self.ui._repr_mimebundle_(**kwargs)


def probe_widget(
    model,
    vector,
    *,
    engines: EngineMenu | Mapping | None = None,
    model_name: str | None = None,
    generation=None,
    layer: int | None = None,
    prompt: str = "",
    scale: float = 0.3,
    coeff: float | None = None,
    style: str = "direct",
    max_coeff: float | None = None,
) -> ProbeWidget:
    """Build the layer-probing widget; display the returned object (last expression of a cell).

    Args:
        model: A ``TransformerBridge``.
        vector: A ``SteeringVector``.
        engines: An :class:`~lens_steer.engines.menu.EngineMenu` or a name -> engine (or factory) mapping;
            default: the bridge, and vLLM built when first chosen (:func:`~lens_steer.engines.menu.engine_menu`).
        model_name: What the default vLLM entry loads (default: the name the bridge was loaded from).
        generation: A :class:`~lens_steer.config.GenerationConfig`.
        layer: Initial layer (default: the middle block).
        prompt: Initial prompt text.
        scale: Initial size as a fraction of the residual norm (ignored when ``coeff`` is given).
        coeff: Initial raw coefficient instead of a scale (always so for a vector without residual norms).
        style: Initial prompt style.
        max_coeff: Range of the coefficient slider (default: scale 1 at the initial layer, else 10).

    Returns:
        A :class:`ProbeWidget`.
    """
    n_layers = int(model.cfg.n_layers)
    layer = n_layers // 2 if layer is None else layer
    if engines is None:
        engines = engine_menu(model, model_name)
    elif not isinstance(engines, EngineMenu):
        engines = EngineMenu(engines)
    has_norms = getattr(vector, "resid_norm", None) is not None
    if max_coeff is None:
        unit = vector.coeff_for_scale(layer, 1.0) if has_norms and 0 <= layer < n_layers else float("nan")
        max_coeff = float(math.ceil(unit)) if math.isfinite(unit) and unit > 0 else 10.0
    kind = "coeff" if coeff is not None or not has_norms else "scale"
    size = coeff if coeff is not None else (scale if has_norms else 0.0)
    return ProbeWidget(model, vector, engines, generation, layer=layer, prompt=prompt, size=float(size),
                       size_kind=kind, style=style, max_coeff=max_coeff)
