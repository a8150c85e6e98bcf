"""The layer-probing widget: a request answered (analysis.prompt_probe.probe_request), drawn (probe_view), and the
ipywidgets UI, driven without a browser, on the tiny model (notebook.probe_widget) and on no model at all."""

from __future__ import annotations

import html

import plotly.graph_objects as go
import pytest

from lens_steer.analysis.prompt_probe import ProbeOutcome, ProbeRequest, probe_prompt, probe_request
from lens_steer.config import GenerationConfig
from lens_steer.engines.api import as_engine
from lens_steer.engines.menu import EngineMenu, EngineUnavailableError
from lens_steer.method.derive import derive_cot_vector
from lens_steer.notebook import probe_widget
from lens_steer.viz.probe_widget import ProbeWidget, answers_html, plot_prompt_probe, probe_view

CFG = GenerationConfig(max_new_tokens=8)
PROMPT = "What is 3+4?"


@pytest.fixture(scope="module")
def vector(tiny):
    return derive_cot_vector(tiny, ["What is 2+2?", "Name a fruit.", "Why is the sky blue?"], generation=CFG,
                             progress=False)


@pytest.fixture
def menu(tiny):
    def no_vllm():
        raise EngineUnavailableError("vLLM is not importable (ModuleNotFoundError: No module named 'vllm')")

    return EngineMenu({"bridge": as_engine(tiny), "vllm": no_vllm})


def test_view_shows_both_answers_lengths_and_traces(tiny, vector, menu):
    view = probe_view(probe_request(tiny, vector, menu, ProbeRequest(PROMPT, 1, 3.0, "scale"), CFG))
    res = view.result
    assert view.message == "" and res is not None and res.scale == 3.0
    for answer in (res.unsteered, res.steered):
        assert html.escape(answer.text) in view.html
        assert f"{answer.n_tokens} tokens" in view.html
    assert view.html.index("unsteered") < view.html.index("<b>steered</b>")
    assert isinstance(view.figure, go.Figure) and len(view.figure.data) == 2
    assert [len(t.y) for t in view.figure.data] == [
        min(a.trace.n_prompt, 24) + a.n_tokens for a in (res.unsteered, res.steered)]


def test_view_coefficient_request_matches_the_callback(tiny, vector, menu):
    view = probe_view(probe_request(tiny, vector, menu, ProbeRequest(PROMPT, 2, 4.0, "coeff", mode="single",
                                                                    trace_layer=3), CFG))
    direct = probe_prompt(tiny, vector, PROMPT, 2, 4.0, mode="single", trace_layer=3, generation=CFG)
    assert view.result.coeff == 4.0 and view.result.scale is None and view.result.trace_layer == 3
    assert view.result.steered.response_ids == direct.steered.response_ids
    assert answers_html(direct) == view.html


@pytest.mark.parametrize(("request_", "needle"), [
    (ProbeRequest("", 1, 0.3), "enter a prompt"),
    (ProbeRequest(PROMPT, 40, 0.3), "layer 40 is out of range"),
    (ProbeRequest(PROMPT, 1, 0.3, "percent"), "unknown size kind 'percent'"),
    (ProbeRequest(PROMPT, 1, 0.3, engine="vllm"), "vLLM is not importable"),
    (ProbeRequest(PROMPT, 1, 0.3, engine="tpu"), "unknown engine 'tpu'"),
])
def test_view_gives_the_message_for_bad_input(tiny, vector, menu, request_, needle):
    outcome = probe_request(tiny, vector, menu, request_, CFG)
    assert outcome.result is None and needle in outcome.message
    view = probe_view(outcome)
    assert needle in view.message and "\n" not in view.message
    assert view.figure is None and view.result is None
    assert html.escape(view.message) in view.html


def test_plot_without_traces_is_none(tiny, vector):
    res = probe_prompt(tiny, vector, PROMPT, 1, 1.0, trace=False, engine=as_engine(tiny), generation=CFG)
    assert plot_prompt_probe(res) is None


def test_widget_run_button_fills_the_output(tiny, vector, menu):
    pytest.importorskip("ipywidgets")
    ui = probe_widget(tiny, vector, engines=menu, generation=CFG, layer=1, prompt=PROMPT, scale=0.5)
    assert ui.layer.max == tiny.cfg.n_layers - 1 and ui.size_kind.value == "scale" and ui.size.value == 0.5
    assert ui.engine.options == ("bridge", "vllm") and ui.answers.value == "" and ui.figure.outputs == ()
    ui.size.value = 0.9
    ui.button.click()  # runs the on_click handler, as the browser would
    assert ui.view is not None and ui.view.message == "" and ui.view.result.scale == 0.9
    assert ui.answers.value == ui.view.html and "tokens" in ui.answers.value
    assert len(ui.figure.outputs) == 1 and "application/vnd.plotly.v1+json" in ui.figure.outputs[0]["data"]
    assert not ui.button.disabled

    ui.engine.value = "vllm"
    view = ui.run()
    assert "vLLM is not importable" in ui.answers.value and view.message and ui.figure.outputs == ()

    ui.engine.value = "bridge"
    ui.prompt.value = "  "
    ui.run()
    assert "enter a prompt" in ui.answers.value


def test_widget_size_kind_converts_the_value(tiny, vector, menu):
    pytest.importorskip("ipywidgets")
    ui = probe_widget(tiny, vector, engines=menu, generation=CFG, layer=1, scale=0.5, max_coeff=1000.0)
    unit = vector.coeff_for_scale(1, 1.0)
    ui.size_kind.value = "coeff"
    assert ui.size.max == 1000.0 and ui.size.value == pytest.approx(0.5 * unit, rel=1e-3)
    assert ui.request().size_kind == "coeff"
    ui.size_kind.value = "scale"
    assert ui.size.max == 1.0 and ui.size.value == pytest.approx(0.5, abs=0.01)
    tensor_ui = probe_widget(tiny, vector.directions, engines={"bridge": as_engine(tiny)}, layer=1)
    assert tensor_ui.size_kind.options == (("coefficient", "coeff"),) and tensor_ui.size.max == 10.0
    assert "application/vnd.jupyter.widget-view+json" in ui._repr_mimebundle_()


def test_widget_draws_whatever_its_run_callable_answers(vector):
    """The widget needs no model: it hands the request to ``run`` and shows the outcome."""
    pytest.importorskip("ipywidgets")
    asked = []

    def run(request):
        asked.append(request)
        return ProbeOutcome(message=f"no model here (layer {request.layer}, {request.engine})")

    ui = ProbeWidget(run, vector, n_layers=4, engine_names=["a", "b"], modes=("continuous", "single"), layer=2,
                     prompt=PROMPT, size=0.5, size_kind="scale", style="cot", max_coeff=5.0)
    assert ui.layer.max == 3 and ui.engine.options == ("a", "b") and ui.style.value == "cot"
    ui.engine.value = "b"
    view = ui.run()
    assert asked == [ProbeRequest(PROMPT, 2, 0.5, "scale", "continuous", "cot", "b", None)]
    assert view.message == "no model here (layer 2, b)" and view.figure is None and view.result is None
    assert ui.answers.value == view.html and html.escape(view.message) in view.html and ui.figure.outputs == ()


def test_position_and_operator_choices(tiny, vector, menu):
    """A request's position choice (with its argument), operator and strength make one steering spec; the probe's
    steered trace records its effective coefficient at each position."""
    from lens_steer.analysis.prompt_probe import request_mode

    req = ProbeRequest(PROMPT, 1, 2.0, "coeff", mode="window", position_arg="1-4", op="clamp",
                       strength="linear:1:0:3")
    assert request_mode(req) == "at=window:1-4,strength=linear:1:0:3,op=clamp"
    assert request_mode(ProbeRequest(PROMPT, 1, 2.0, mode="single", op="ablate")) == "at=prompt,op=ablate"
    assert request_mode(ProbeRequest(PROMPT, 1, 2.0)) == "continuous"
    view = probe_view(probe_request(tiny, vector, menu, req, CFG))
    res = view.result
    assert view.message == "" and res.mode == "at=window:1-4,strength=linear:1:0:3,op=clamp"
    assert "<code>at=window:1-4,strength=linear:1:0:3,op=clamp</code>" in view.html
    coeffs = res.steered.trace.coefficients
    n = res.steered.trace.n_prompt
    assert res.unsteered.trace.coefficients is None
    assert coeffs[:n + 1].abs().sum() == 0 and coeffs[n + 4:].abs().sum() == 0  # window [1, 4) of generated tokens
    assert coeffs[n + 1:n + 4].tolist() == pytest.approx([2 * 2 / 3, 2 * 1 / 3, 0.0])  # linear 1 -> 0 over 3 tokens


@pytest.mark.parametrize(("request_", "needle"), [
    (ProbeRequest(PROMPT, 1, 1.0, "coeff", mode="first"), "position first needs an argument: K"),
    (ProbeRequest(PROMPT, 1, 1.0, "coeff", mode="window", position_arg="5-3"), "at: window 5-3 is empty"),
    (ProbeRequest(PROMPT, 1, 1.0, "coeff", op="mul"), "op: unknown operator 'mul'"),
    (ProbeRequest(PROMPT, 1, 1.0, "coeff", mode="trigger", position_arg="é"), "at: trigger 'é' is not made of"),
    (ProbeRequest(PROMPT, 1, 1.0, "coeff", mode="region", position_arg="<think>..</think>"),
     "region marker '<think>' is not in the model's vocabulary"),
    (ProbeRequest(PROMPT, 1, 0.3, "scale", op="ablate"), "op=ablate takes a coefficient"),
    (ProbeRequest(PROMPT, 1, 1.0, "coeff", mode="last", engine="vllm"), "vLLM is not importable"),
])
def test_bad_position_choices_give_one_line(tiny, vector, menu, request_, needle):
    outcome = probe_request(tiny, vector, menu, request_, CFG)
    assert outcome.result is None and needle in outcome.message and "\n" not in outcome.message


def test_an_engine_that_does_not_declare_a_kind_is_refused(tiny, vector, presets_only):
    """The answering engine's declared capabilities are checked (an engine declaring only the paper's modes)."""
    from lens_steer.analysis.prompt_probe import ProbeInputError

    class Named:
        name = presets_only
        tokenizer = tiny.tokenizer

    with pytest.raises(ProbeInputError, match=r"^the presets-only engine cannot steer the last prompt token \(at=last\)"):
        probe_prompt(tiny, vector, PROMPT, 1, 1.0, mode="at=last", engine=Named(), generation=CFG)


def test_widget_offers_positions_and_operators(tiny, vector, menu):
    pytest.importorskip("ipywidgets")
    ui = probe_widget(tiny, vector, engines=menu, generation=CFG, layer=1, prompt=PROMPT, coeff=2.0)
    assert ui.mode.options == ("continuous", "single", "last", "first", "window", "trigger", "region")
    assert ui.op.options == ("add", "add-norm", "clamp", "ablate")
    ui.mode.value, ui.position_arg.value, ui.op.value = "trigger", "x|B", "add-norm"
    assert ui.request().mode == "trigger" and ui.request().position_arg == "x|B"
    view = ui.run()
    assert view.message == "" and view.result.mode == "at=trigger:x|B,op=add-norm"
    ui.mode.value, ui.position_arg.value = "first", ""
    assert "position first needs an argument" in ui.run().message
