"""Residual means over generated tokens: fused = two-pass = a hand computation; batching invariance."""

import pytest
import torch

from lens_steer.method.collect import collect_residual_means
from lens_steer.config import GenerationConfig
from lens_steer.engines.api import generate
from lens_steer.engines.decoding import plan_batches
from lens_steer.models import resid_post_name
from lens_steer.prompts import encode_prompt

QUESTIONS = ("What is 2+2?", "Name three colours of the rainbow, please.", "Why?", "Count to five.")


@pytest.fixture(scope="module")
def prompts(tiny):
    return [encode_prompt(tiny.tokenizer, q, s) for q in QUESTIONS for s in ("cot", "direct")]


def _by_hand(model, prompt, response, positions):
    """Mean hook_resid_post over the chosen positions of one unpadded prompt+response pass."""
    ids = torch.tensor([list(prompt) + list(response)])
    names = [resid_post_name(layer) for layer in range(model.cfg.n_layers)]
    with torch.inference_mode():
        _, cache = model.run_with_cache(ids, names_filter=names, prepend_bos=False)
    sl = {"generated": slice(len(prompt), None), "prompt": slice(0, len(prompt)), "all": slice(None)}[positions]
    return torch.stack([cache[n][0, sl].mean(0) for n in names])


@pytest.mark.parametrize("positions", ["generated", "prompt", "all"])
def test_fused_equals_two_pass_equals_hand(tiny, prompts, positions):
    cfg = GenerationConfig(max_new_tokens=10, batch_size=3)
    fused = collect_residual_means(tiny, prompts, cfg, positions=positions, progress=False)
    two = collect_residual_means(tiny, prompts, cfg, positions=positions, method="two_pass", progress=False)
    assert [g.response_ids for g in fused.generations] == [g.response_ids for g in two.generations]
    assert torch.equal(fused.counts, two.counts)
    torch.testing.assert_close(fused.means, two.means, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fused.norms, two.norms, rtol=1e-4, atol=1e-4)
    for i in (0, 5):
        g = fused.generations[i]
        if positions == "generated" and not g.response_ids:
            continue
        torch.testing.assert_close(fused.means[i], _by_hand(tiny, prompts[i], g.response_ids, positions), rtol=1e-4, atol=1e-4)


def test_counts_follow_stop_tokens(tiny, prompts):
    cfg = GenerationConfig(max_new_tokens=10, batch_size=4)
    res = collect_residual_means(tiny, prompts, cfg, progress=False)
    assert res.counts.tolist() == [len(g.response_ids) for g in res.generations]
    assert res.means.shape == (len(prompts), tiny.cfg.n_layers, tiny.cfg.d_model)


def test_batched_equals_unbatched(tiny, prompts):
    one = collect_residual_means(tiny, prompts, GenerationConfig(max_new_tokens=10, batch_size=1), progress=False)
    many = collect_residual_means(tiny, prompts, GenerationConfig(max_new_tokens=10, batch_size=8), progress=False)
    assert [g.response_ids for g in one.generations] == [g.response_ids for g in many.generations]
    torch.testing.assert_close(one.means, many.means, rtol=1e-4, atol=1e-4)


def test_generate_batched_equals_unbatched_and_order(tiny, prompts):
    one = generate(tiny, prompts, GenerationConfig(max_new_tokens=8, batch_size=1), progress=False)
    many = generate(tiny, prompts, GenerationConfig(max_new_tokens=8, batch_size=5), progress=False)
    assert [g.response_ids for g in one] == [g.response_ids for g in many]
    assert [g.prompt_ids for g in many] == [list(p) for p in prompts]
    for g in many:
        assert tiny.tokenizer.eos_token_id not in g.response_ids
        assert len(g.response_ids) <= 8
        assert g.stopped or len(g.response_ids) == 8


def test_sampling_is_seeded(tiny, prompts):
    cfg = GenerationConfig(max_new_tokens=8, do_sample=True, temperature=1.5, top_p=0.9, seed=11)
    a = [g.response_ids for g in generate(tiny, prompts, cfg, progress=False)]
    b = [g.response_ids for g in generate(tiny, prompts, cfg, progress=False)]
    assert a == b


def test_bad_arguments(tiny, prompts):
    with pytest.raises(ValueError, match="positions"):
        collect_residual_means(tiny, prompts, positions="middle")
    with pytest.raises(ValueError, match="use_cache"):
        collect_residual_means(tiny, prompts, GenerationConfig(use_cache=False))
    with pytest.raises(ValueError, match="empty prompt"):
        generate(tiny, [[]], progress=False)
    with pytest.raises(ValueError, match="max_new_tokens"):
        GenerationConfig(max_new_tokens=0)


def test_plan_batches_respects_both_caps():
    lengths = [10, 1500, 480, 500, 90, 90, 600, 5]
    batches = plan_batches(lengths, batch_size=3, max_batch_tokens=1600)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert batches[0] == [1]  # too long to share a batch
    for b in batches:
        assert len(b) <= 3
        assert len(b) == 1 or max(lengths[i] for i in b) * len(b) <= 1600
        assert [lengths[i] for i in b] == sorted((lengths[i] for i in b), reverse=True)


def test_token_budget_does_not_change_results(tiny, prompts):
    small = generate(tiny, prompts, GenerationConfig(max_new_tokens=6, batch_size=8, max_batch_tokens=80), progress=False)
    big = generate(tiny, prompts, GenerationConfig(max_new_tokens=6, batch_size=8), progress=False)
    assert [g.response_ids for g in small] == [g.response_ids for g in big]
