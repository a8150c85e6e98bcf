"""probe_prompt on the tiny model: one prompt unsteered and steered, lengths, traces and input errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lens_steer.analysis.prompt_probe import ProbeInputError, probe_prompt
from lens_steer.analysis.trace import projection_trace
from lens_steer.config import GenerationConfig
from lens_steer.engines.api import as_engine, generate, steer
from lens_steer.engines.base import Steering
from lens_steer.method.derive import derive_cot_vector
from lens_steer.prompts import encode_prompt

LAYER = 1
CFG = GenerationConfig(max_new_tokens=8)
QUESTIONS = ["What is 2+2?", "Name a fruit.", "Why is the sky blue?"]
PROMPT = "What is 3+4?"


@pytest.fixture(scope="module")
def vector(tiny):
    return derive_cot_vector(tiny, QUESTIONS, generation=CFG, progress=False)


class Relay:
    """Another engine (not the bridge's own object) answering through the bridge: the non-bridge path."""

    name = "relay"

    def __init__(self, inner) -> None:
        self.inner = inner
        self.calls = 0

    @property
    def tokenizer(self):
        return self.inner.tokenizer

    def generate(self, prompts, config, **kwargs):
        self.calls += 1
        return self.inner.generate(prompts, config, **kwargs)


def test_zero_coefficient_leaves_the_answer_and_trace_unchanged(tiny, vector):
    res = probe_prompt(tiny, vector, PROMPT, LAYER, 0.0, generation=CFG)
    assert res.unsteered.response_ids == res.steered.response_ids and not res.changed
    assert res.unsteered.text == res.steered.text
    assert torch.allclose(res.unsteered.trace.projections, res.steered.trace.projections, atol=1e-5)
    assert res.coeff == 0.0 and res.scale is None and res.engine == "bridge"


@pytest.mark.parametrize("mode", ["continuous", "single"])
def test_large_coefficient_changes_the_answer(tiny, vector, mode):
    coeff = vector.coeff_for_scale(LAYER, 3.0)
    res = probe_prompt(tiny, vector, PROMPT, LAYER, coeff, mode=mode, generation=CFG)
    assert res.changed and res.steered.text != res.unsteered.text
    # the same steering through the engine directly gives the same tokens
    ids = encode_prompt(tiny.tokenizer, PROMPT, "direct")
    direct = as_engine(tiny).generate([ids], CFG, steering=Steering(vector, LAYER, coeff, mode), progress=False)[0]
    assert res.steered.response_ids == direct.response_ids


def test_lengths_are_token_counts(tiny, vector):
    res = probe_prompt(tiny, vector, PROMPT, LAYER, scale=2.0, generation=CFG)
    ids = encode_prompt(tiny.tokenizer, PROMPT, "direct")
    plain = generate(tiny, [ids], CFG, progress=False)[0]
    assert res.unsteered.n_tokens == len(plain.response_ids) == len(res.unsteered.response_ids)
    assert res.unsteered.response_ids == plain.response_ids and res.unsteered.stopped == plain.stopped
    for answer in (res.unsteered, res.steered):
        assert answer.n_tokens == answer.trace.n_response
        assert 0 < answer.n_tokens <= CFG.max_new_tokens
        assert answer.stopped or answer.n_tokens == CFG.max_new_tokens
    assert res.coeff == pytest.approx(vector.coeff_for_scale(LAYER, 2.0)) and res.scale == 2.0


@pytest.mark.parametrize("mode", ["continuous", "single"])
def test_trace_has_one_projection_per_position_and_shows_the_steering(tiny, vector, mode):
    coeff = 5.0
    res = probe_prompt(tiny, vector, PROMPT, LAYER, coeff, mode=mode, generation=CFG)
    for answer in (res.unsteered, res.steered):
        tr = answer.trace
        assert tr.layer == LAYER == res.trace_layer and tr.style == "direct"
        assert len(tr.tokens) == len(tr.token_ids) == tr.projections.shape[0] == tr.n_prompt + answer.n_tokens
        assert answer.trace_matches
    # at the steered layer every prompt position moves by exactly c·‖v‖ along v (in both modes)
    shift = res.steered.trace.prompt_projections - res.unsteered.trace.prompt_projections
    expected = coeff * vector.directions[LAYER].norm()
    assert torch.allclose(shift, expected.expand_as(shift), atol=1e-4)
    # and the unsteered trace is the plain projection trace
    plain = projection_trace(tiny, PROMPT, vector, LAYER, "direct", CFG)
    assert torch.equal(plain.projections, res.unsteered.trace.projections)
    with steer(tiny, vector, LAYER, coeff, mode):
        steered = projection_trace(tiny, PROMPT, vector, LAYER, "direct", CFG)
    assert torch.equal(steered.projections, res.steered.trace.projections)


def test_trace_below_the_steered_layer_is_untouched_on_the_prompt(tiny, vector):
    res = probe_prompt(tiny, vector, PROMPT, 2, 5.0, trace_layer=0, generation=CFG)
    assert res.trace_layer == 0 and res.steered.trace.layer == 0
    assert torch.equal(res.steered.trace.prompt_projections, res.unsteered.trace.prompt_projections)


def test_another_engine_answers_and_the_bridge_traces(tiny, vector):
    relay = Relay(as_engine(tiny))
    coeff = vector.coeff_for_scale(LAYER, 3.0)
    res = probe_prompt(tiny, vector, PROMPT, LAYER, coeff, engine=relay, generation=CFG)
    bridge = probe_prompt(tiny, vector, PROMPT, LAYER, coeff, generation=CFG)
    assert relay.calls == 1 and res.engine == "relay"
    assert res.unsteered.response_ids == bridge.unsteered.response_ids
    assert res.steered.response_ids == bridge.steered.response_ids
    assert res.unsteered.trace_matches and res.steered.trace_matches
    untraced = probe_prompt(tiny, vector, PROMPT, LAYER, coeff, engine=relay, trace=False, generation=CFG)
    assert untraced.steered.trace is None and untraced.steered.trace_matches is None and untraced.trace_layer is None
    assert untraced.steered.response_ids == bridge.steered.response_ids


def test_a_huge_steering_is_noted(tiny, vector):
    res = probe_prompt(tiny, vector, PROMPT, LAYER, scale=50.0, generation=CFG)
    assert any("residual norm" in n for n in res.notes)
    assert "note:" in res.describe() and "steered (" in res.describe()


def test_describe_names_settings_and_lengths(tiny, vector):
    res = probe_prompt(tiny, vector, PROMPT, LAYER, 0.0, generation=CFG)
    text = res.describe()
    assert f"layer {LAYER}" in text and "answer unchanged" in text
    assert f"unsteered ({res.unsteered.n_tokens} tokens" in text


def _uncovered(vector):
    dirs = vector.directions.clone()
    dirs[LAYER] = 0
    return dataclasses.replace(vector, directions=dirs)


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"prompt": "   "}, "enter a prompt"),
    ({"layer": 99}, "layer 99 is out of range: this model has layers 0..3"),
    ({"layer": -1}, "out of range"),
    ({"mode": "sideways"}, "unknown steering mode 'sideways'"),
    ({"style": "shouty"}, "unknown prompt style 'shouty'"),
    ({"coeff": None}, "not neither"),
    ({"scale": 0.5}, "not both"),
    ({"coeff": float("nan")}, "finite number"),
    ({"trace_layer": 7}, "out of range"),
])
def test_bad_input_gives_one_clear_line(tiny, vector, kwargs, needle):
    args = {"prompt": PROMPT, "layer": LAYER, "coeff": 1.0} | kwargs
    with pytest.raises(ProbeInputError, match=needle) as info:
        probe_prompt(tiny, vector, args.pop("prompt"), args.pop("layer"), args.pop("coeff"), generation=CFG, **args)
    assert "\n" not in str(info.value)


def test_a_layer_the_vector_does_not_cover(tiny, vector):
    holed = _uncovered(vector)
    for size in ({"coeff": 2.0}, {"scale": 0.5}):
        with pytest.raises(ProbeInputError, match=f"direction at layer {LAYER} is all zeros"):
            probe_prompt(tiny, holed, PROMPT, LAYER, generation=CFG, **size)
    with pytest.raises(ProbeInputError, match="no direction at trace layer 1"):
        probe_prompt(tiny, holed, PROMPT, 2, 1.0, trace_layer=LAYER, generation=CFG)


def test_scale_needs_residual_norms_and_vector_must_fit(tiny, tiny_pair, vector):
    with pytest.raises(ProbeInputError, match="no residual norms recorded"):
        probe_prompt(tiny, vector.directions, PROMPT, LAYER, scale=0.5, generation=CFG)
    other, _ = tiny_pair
    with pytest.raises(ProbeInputError, match="allow_other_model"):
        probe_prompt(other, vector, PROMPT, LAYER, 1.0, generation=CFG)
    ok = probe_prompt(tiny, vector.directions, PROMPT, LAYER, 1.0, generation=CFG)  # a plain tensor with a coeff
    assert ok.steered.trace is not None
