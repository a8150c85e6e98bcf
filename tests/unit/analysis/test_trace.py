"""Projection trace and direction ablation on the tiny model: exact against direct computation."""

from __future__ import annotations

import pytest
import torch

from lens_steer.analysis import (
    ABLATION_CONDITIONS,
    AblationResult,
    direction_ablation,
    distinct_ngram_ratio,
    is_repetitive,
    projection_trace,
    random_direction_control,
)
from lens_steer.method.derive import derive_cot_vector
from lens_steer.config import GenerationConfig
from lens_steer.engines.api import generate
from lens_steer.engines.steering import ablate_direction
from lens_steer.models import resid_post_name
from lens_steer.prompts import encode_prompt
from lens_steer.eval.scoring import is_cot_style

LAYER = 2
CFG = GenerationConfig(max_new_tokens=6)
QUESTIONS = ["What is 2+2?", "Name a fruit.", "Why is the sky blue?"]


@pytest.fixture(scope="module")
def dirs(tiny) -> torch.Tensor:
    return torch.randn(tiny.cfg.n_layers, tiny.cfg.d_model, generator=torch.Generator().manual_seed(5))


@pytest.fixture(scope="module")
def vector(tiny):
    return derive_cot_vector(tiny, QUESTIONS, generation=CFG, progress=False)


def _resid(model, ids: list[int], layer: int) -> torch.Tensor:
    name = resid_post_name(layer)
    with torch.inference_mode():
        _, cache = model.run_with_cache(torch.tensor([ids]), names_filter=[name], prepend_bos=False)
    return cache[name][0].float()


@pytest.mark.parametrize("style", ["cot", "direct"])
def test_trace_equals_direct_projection(tiny, dirs, style):
    tr = projection_trace(tiny, QUESTIONS[0], dirs, LAYER, style, CFG)
    prompt = encode_prompt(tiny.tokenizer, QUESTIONS[0], style)
    gen = generate(tiny, [prompt], CFG, progress=False)[0]
    assert tr.token_ids == prompt + gen.response_ids
    assert tr.n_prompt == len(prompt) and tr.n_response == len(gen.response_ids)
    assert tr.response == gen.text and tr.stopped == gen.stopped
    assert tr.style == style and tr.layer == LAYER
    assert len(tr.tokens) == len(tr.token_ids) == tr.projections.shape[0]
    assert tr.tokens[: tr.n_prompt] == [tiny.tokenizer.decode([i]) for i in prompt]
    unit = dirs[LAYER] / dirs[LAYER].norm()
    expected = _resid(tiny, tr.token_ids, LAYER) @ unit
    assert torch.allclose(tr.projections, expected, atol=1e-5)
    assert torch.equal(tr.response_projections, tr.projections[tr.n_prompt:])
    assert torch.equal(tr.prompt_projections, tr.projections[: tr.n_prompt])
    assert tr.response_tokens == tr.tokens[tr.n_prompt:]


def test_trace_accepts_vector_row_and_1d(tiny, vector):
    a = projection_trace(tiny, QUESTIONS[1], vector, LAYER, "cot", CFG)
    b = projection_trace(tiny, QUESTIONS[1], vector.directions[LAYER] * 3.0, LAYER, "cot", CFG)
    assert a.token_ids == b.token_ids
    assert torch.allclose(a.projections, b.projections, atol=1e-5)  # unit direction: scale-free


def test_trace_under_ablation_is_zero(tiny, dirs):
    clean = projection_trace(tiny, QUESTIONS[0], dirs, LAYER, "cot", CFG)
    with ablate_direction(tiny, dirs, LAYER):
        ablated = projection_trace(tiny, QUESTIONS[0], dirs, LAYER, "cot", CFG)
    assert clean.projections.abs().max() > 1e-2
    assert torch.allclose(ablated.projections, torch.zeros_like(ablated.projections), atol=1e-4)


def test_trace_bad_layer_raises(tiny, dirs):
    with pytest.raises(IndexError):
        projection_trace(tiny, QUESTIONS[0], dirs, 9, "cot", CFG)


def test_ablation_matches_manual_generation(tiny, dirs):
    res = direction_ablation(tiny, QUESTIONS, dirs, [1, LAYER], CFG, control_seed=3)
    assert isinstance(res, AblationResult)
    assert list(res.conditions) == list(ABLATION_CONDITIONS)
    assert res.layers == [1, LAYER] and res.control_seed == 3 and res.max_new_tokens == CFG.max_new_tokens
    assert res.question_ids == ["q0", "q1", "q2"] and res.questions == QUESTIONS
    prompts = [encode_prompt(tiny.tokenizer, q, "cot") for q in QUESTIONS]
    expected = {"baseline": generate(tiny, prompts, CFG, progress=False)}
    with ablate_direction(tiny, dirs, [1, LAYER]):
        expected["ablated"] = generate(tiny, prompts, CFG, progress=False)
    with ablate_direction(tiny, random_direction_control(dirs, 3), [1, LAYER]):
        expected["random"] = generate(tiny, prompts, CFG, progress=False)
    for name, gens in expected.items():
        cond = res.conditions[name]
        assert cond.n_tokens == [len(g.response_ids) for g in gens]
        assert cond.responses == [g.text for g in gens]
        assert cond.cot_style == [is_cot_style(g.text) for g in gens]
        assert cond.stopped == [g.stopped for g in gens]
        assert cond.repetitive == [is_repetitive(g.response_ids) for g in gens]
        assert cond.mean_tokens == pytest.approx(sum(cond.n_tokens) / 3)
        assert 0.0 <= cond.cot_rate <= 1.0 and 0.0 <= cond.truncated_rate <= 1.0
    # ablating a random direction in a 64-d space must change something on this tiny model
    assert res.conditions["ablated"].responses != res.conditions["baseline"].responses
    summary = res.summary()
    assert set(summary) == set(ABLATION_CONDITIONS) and summary["baseline"]["n"] == 3
    rows = res.per_question()
    assert len(rows) == 3 and rows[0]["id"] == "q0" and "ablated_n_tokens" in rows[0]


def test_repetition_measures():
    assert distinct_ngram_ratio([1, 2, 3, 4]) == 1.0 and distinct_ngram_ratio([]) == 1.0
    assert distinct_ngram_ratio([7] * 30) == pytest.approx(1 / 28)
    assert distinct_ngram_ratio([1, 2] * 10, n=2) == pytest.approx(2 / 19)
    assert is_repetitive([5] * 30) and is_repetitive([1, 2, 3] * 10)
    assert not is_repetitive(list(range(30))) and not is_repetitive([5] * 10)


def test_ablation_defaults_and_inputs(tiny, vector, dirs):
    res = direction_ablation(tiny, QUESTIONS[:2], vector, None, CFG, control=False)
    assert res.layers == list(range(tiny.cfg.n_layers))
    assert list(res.conditions) == ["baseline", "ablated"] and res.control_seed is None
    one = direction_ablation(tiny, QUESTIONS[:1], dirs[LAYER], LAYER, CFG, control=False)
    assert one.layers == [LAYER] and len(one.conditions["ablated"].n_tokens) == 1
    with pytest.raises(ValueError, match="no questions"):
        direction_ablation(tiny, [], dirs, LAYER, CFG)
    with pytest.raises(IndexError):
        direction_ablation(tiny, QUESTIONS[:1], dirs, [7], CFG)
    with pytest.raises(ValueError, match="do not fit"):
        direction_ablation(tiny, QUESTIONS[:1], dirs[:2], LAYER, CFG)
    assert not tiny.hook_dict[resid_post_name(LAYER)].fwd_hooks  # nothing left attached


def test_probe_steering_grid_matches_steer(tiny, vector):
    from lens_steer.analysis import probe_steering
    from lens_steer.engines.api import steer
    from lens_steer.viz.plotting import plot_probe

    grid = probe_steering(tiny, vector, QUESTIONS[:2], [1, LAYER], [0.0, 0.5], CFG)
    assert grid.n_tokens.shape == (2, 2, 2) and grid.cot_style.shape == (2, 2, 2)
    assert grid.coeffs[:, 0].tolist() == [0.0, 0.0]
    assert grid.coeffs[1, 1].item() == pytest.approx(vector.coeff_for_scale(LAYER, 0.5))
    prompts = [encode_prompt(tiny.tokenizer, q, "direct") for q in QUESTIONS[:2]]
    with steer(tiny, vector, LAYER, grid.coeffs[1, 1].item()):
        gens = generate(tiny, prompts, CFG, progress=False)
    assert grid.responses[1][1] == [g.text for g in gens]
    assert grid.n_tokens[1, 1].tolist() == [len(g.response_ids) for g in gens]
    assert grid.responses[0][0] == grid.responses[1][0]  # the unsteered column is shared
    assert grid.mean_tokens().shape == (2, 2) and grid.cot_rate().shape == (2, 2)
    fig = plot_probe(grid, question_index=1)
    assert len(fig.data) == 4 and [t.visible for t in fig.data] == [True, True, False, False]
    steps = fig.layout.sliders[0].steps
    assert [s.label for s in steps] == ["1", "2"] and steps[1].args[0]["visible"] == [False, False, True, True]
    raw = probe_steering(tiny, vector, QUESTIONS[:1], [LAYER], [2.0], CFG, relative=False, mode="single")
    assert raw.coeffs.tolist() == [[2.0]] and raw.mode == "single"
    with pytest.raises(IndexError):
        plot_probe(raw, question_index=3)


@pytest.mark.parametrize("mode", ["continuous", "single", "at=window:2-5,strength=linear:1:0:3",
                                  "at=trigger:x,span=2,op=clamp"])
def test_trace_records_the_effective_coefficient_per_position(tiny, dirs, mode):
    """Traced under a steering, the trace follows the steered answer and records e = c × factor at each position it
    steers (0 elsewhere), as the engine applied it."""
    from lens_steer.engines.api import steer
    from lens_steer.engines.base import Steering

    cfg = GenerationConfig(max_new_tokens=10)
    steering = Steering(dirs, LAYER, 3.0, mode)
    tr = projection_trace(tiny, QUESTIONS[0], dirs, LAYER, "direct", cfg, steering=steering)
    with steer(tiny, dirs, LAYER, 3.0, mode):
        same = projection_trace(tiny, QUESTIONS[0], dirs, LAYER, "direct", cfg)
    assert tr.token_ids == same.token_ids and torch.equal(tr.projections, same.projections)
    assert same.coefficients is None and tr.coefficients.shape == tr.projections.shape
    n, ids = tr.n_prompt, tr.token_ids
    expected = []
    for p in range(len(ids)):
        t = p - n
        if mode == "continuous":
            expected.append(3.0)
        elif mode == "single":
            expected.append(3.0 if t < 0 else 0.0)
        elif mode.startswith("at=window"):
            expected.append(3.0 * (1 - min(t, 3) / 3) if 2 <= t < 5 else 0.0)
        else:
            x = tiny.tokenizer.convert_tokens_to_ids("x")
            expected.append(3.0 if t >= 0 and x in ids[max(0, p - 1):p + 1] else 0.0)
    assert tr.coefficients.tolist() == pytest.approx(expected, abs=1e-6)
    if mode.startswith("at=trigger"):
        assert 0 < sum(e != 0 for e in expected) < tr.n_response
    unsteered = projection_trace(tiny, QUESTIONS[0], dirs, LAYER, "direct", cfg)
    assert unsteered.token_ids != tr.token_ids
