"""The notebook's layer-probing widget: a prompt, layer and size sliders, where to steer (the paper's modes and
every other position kind, with its argument), the operator and strength schedule, style and engine choices,
and a Run button that shows the unsteered and steered answers side by side with their projection
traces. Draws only: the Run button hands a :class:`~lens_steer.analysis.prompt_probe.ProbeRequest` to the
``run`` callable it was given (``lens_steer.notebook.probe_widget`` binds it to a model) and shows
:func:`probe_view` of the outcome. ipywidgets is imported only when a :class:`ProbeWidget` is built."""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import plotly.graph_objects as go

from lens_steer.analysis.prompt_probe import OPERATOR_CHOICES, SIZE_KINDS, ProbeOutcome, ProbeRequest, PromptProbe
from lens_steer.viz.figures import TRACE_PROMPT_TOKENS
from lens_steer.viz.plot_runs import plot_trace

__all__ = ["ProbeView", "ProbeWidget", "answers_html", "message_html", "plot_prompt_probe", "probe_view"]


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
    head = (f"<div>layer {result.layer}, {size}, <code>{html.escape(result.mode)}</code>, "
            f"{html.escape(result.style)} prompt, "
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


def probe_view(outcome: ProbeOutcome) -> ProbeView:
    """What the widget shows for an outcome: the answers and traces, or the one-line reason it did not run."""
    if outcome.result is None:
        return ProbeView(message_html(outcome.message), None, message=outcome.message)
    return ProbeView(answers_html(outcome.result), plot_prompt_probe(outcome.result), result=outcome.result)


def _figure_output(fig: go.Figure) -> dict:
    """An Output widget's display entry for a figure (plotly's own mimetype: no shell or browser needed)."""
    import plotly.io as pio

    return {"output_type": "display_data", "data": pio.renderers["plotly_mimetype"].to_mimebundle(fig.to_dict()),
            "metadata": {}}


class ProbeWidget:
    """The controls, the Run button and the output areas; shown by displaying it (or its ``ui``).

    ``run()`` is the button's handler: it hands the controls' :class:`~lens_steer.analysis.prompt_probe.ProbeRequest`
    to the ``run`` callable given and returns the :class:`ProbeView` it showed (also kept as ``view``).
    ``lens_steer.notebook.probe_widget(model, vector)`` builds one on a model.

    Args:
        run: Answers a request (e.g. :func:`~lens_steer.analysis.prompt_probe.probe_request` bound to a model).
        vector: The ``SteeringVector`` (for the scale <-> coefficient conversion; a tensor offers coefficients only).
        n_layers: The model's depth. engine_names: The engines offered. modes: Where to steer, the choices offered
            (the paper's modes and the other position kinds of
            :data:`~lens_steer.analysis.prompt_probe.POSITION_CHOICES`; those taking an argument read it from the
            text box next to them). operators: The operators offered (default: all).
        layer / prompt / size / size_kind / style: The controls' initial values. max_coeff: The coefficient range.
    """

    def __init__(self, run: Callable[[ProbeRequest], ProbeOutcome], vector, *, n_layers: int,
                 engine_names: Sequence[str], modes: Sequence[str], layer: int, prompt: str, size: float,
                 size_kind: str, style: str, max_coeff: float, operators: Sequence[str] = OPERATOR_CHOICES) -> None:
        import ipywidgets as w

        from lens_steer.prompts import PROMPT_STYLES

        self._run, self.vector = run, vector
        self.max_coeff = max_coeff
        self.view: ProbeView | None = None
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
        self.mode = w.Dropdown(options=list(modes), value=list(modes)[0], description="steer at")
        self.position_arg = w.Text(value="", placeholder="k / a-b / \\n\\n|Step / <think>..</think>",
                                   description="argument")
        self.op = w.Dropdown(options=list(operators), value=list(operators)[0], description="operator")
        self.strength = w.Text(value="", placeholder="constant, linear:1:0:32, step:1:0:8", description="strength")
        self.style = w.Dropdown(options=list(PROMPT_STYLES), value=style, description="prompt style")
        self.engine = w.Dropdown(options=list(engine_names), value=engine_names[0], description="engine")
        self.button = w.Button(description="Run", button_style="primary")
        self.button.on_click(self.run)
        self.answers = w.HTML()
        self.figure = w.Output()
        self.ui = w.VBox([self.prompt, w.HBox([self.layer, self.trace_layer]), w.HBox([self.size_kind, self.size]),
                          w.HBox([self.mode, self.position_arg]), w.HBox([self.op, self.strength]),
                          w.HBox([self.style, self.engine]), self.button, self.answers, self.figure])

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
                            engine=self.engine.value, trace_layer=self.trace_layer.value,
                            position_arg=self.position_arg.value, op=self.op.value, strength=self.strength.value)

    def run(self, _button=None) -> ProbeView:
        """Answer the current request and show it (the Run button's handler)."""
        self.answers.value = "<i>running...</i>"
        self.button.disabled = True
        try:
            view = probe_view(self._run(self.request()))
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
