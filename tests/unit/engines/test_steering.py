"""Injection arithmetic, hook removal, single vs continuous with and without a KV cache."""

import pytest
import torch

from lens_steer.config import GenerationConfig
from lens_steer.engines.api import generate
from lens_steer.engines.bridge import engine_for
from lens_steer.engines.hooks import attach
from lens_steer.engines.api import steer
from lens_steer.engines.steering import ablate_direction
from lens_steer.models import resid_post_name
from lens_steer.prompts import encode_prompt

LAYER, COEFF = 2, 3.5


def _run_with_resid(model, ids):
    """Logits and every layer's hook_resid_post for one forward pass."""
    names = [resid_post_name(layer) for layer in range(model.cfg.n_layers)]
    with torch.inference_mode():
        logits, cache = model.run_with_cache(ids, names_filter=names, prepend_bos=False)
    return logits, [cache[n].clone() for n in names]


@pytest.fixture(scope="module")
def ids(tiny):
    return torch.tensor([encode_prompt(tiny.tokenizer, "What is 12 plus 30?", "direct")])


@pytest.fixture(scope="module")
def v(tiny):
    return torch.randn(tiny.cfg.d_model, generator=torch.Generator().manual_seed(3))


def test_continuous_adds_exactly_at_layer(tiny, ids, v):
    clean_logits, clean = _run_with_resid(tiny, ids)
    with steer(tiny, v, LAYER, COEFF) as delta:
        steered_logits, steered = _run_with_resid(tiny, ids)
    assert torch.equal(delta, COEFF * v)
    for layer in range(LAYER):
        assert torch.equal(steered[layer], clean[layer])  # earlier layers untouched
    assert torch.equal(steered[LAYER], clean[LAYER] + COEFF * v)  # exactly clean + c*v
    assert not torch.allclose(steered[LAYER + 1], clean[LAYER + 1])
    after_logits, _ = _run_with_resid(tiny, ids)
    assert torch.equal(after_logits, clean_logits)  # bit for bit after exit
    assert not torch.equal(steered_logits, clean_logits)


def test_hooks_removed_after_exception(tiny, ids, v):
    clean_logits, _ = _run_with_resid(tiny, ids)
    for mode in ("continuous", "single"):
        with pytest.raises(RuntimeError, match="boom"):
            with steer(tiny, v, LAYER, COEFF, mode):
                _run_with_resid(tiny, ids)
                raise RuntimeError("boom")
        assert all(not hp.fwd_hooks for hp in tiny.hook_dict.values())
        assert torch.equal(_run_with_resid(tiny, ids)[0], clean_logits)
    assert not engine_for(tiny).single_steerers and not any(k.startswith("_lens_steer") for k in tiny.__dict__)


def test_nesting_adds_both_and_unwinds(tiny, ids, v):
    clean_logits, clean = _run_with_resid(tiny, ids)
    w = torch.randn_like(v)
    with steer(tiny, v, LAYER, COEFF):
        with steer(tiny, w, LAYER, -1.0):
            _, both = _run_with_resid(tiny, ids)
        _, outer = _run_with_resid(tiny, ids)
    assert torch.equal(both[LAYER], clean[LAYER] + COEFF * v + -1.0 * w)
    assert torch.equal(outer[LAYER], clean[LAYER] + COEFF * v)
    assert torch.equal(_run_with_resid(tiny, ids)[0], clean_logits)


def test_bad_inputs_attach_nothing(tiny, v):
    with pytest.raises(IndexError, match="out of range"):
        with steer(tiny, v, 99, 1.0):
            pass
    with pytest.raises(ValueError, match="width"):
        with steer(tiny, torch.zeros(65), 0, 1.0):
            pass
    with pytest.raises(ValueError, match="layers"):
        with steer(tiny, torch.zeros(7, 64), 0, 1.0):
            pass
    with pytest.raises(ValueError, match="NaN"):
        with steer(tiny, torch.full((64,), float("nan")), 0, 1.0):
            pass
    with pytest.raises(ValueError, match="mode"):
        with steer(tiny, v, 0, 1.0, mode="sometimes"):
            pass
    with pytest.raises(KeyError, match="no hook point"):
        with attach(tiny, [("blocks.0.hook_resid_posst", lambda x, hook: x)]):
            pass
    assert all(not hp.fwd_hooks for hp in tiny.hook_dict.values())


def _record_layer(model, store):
    def rec(x, hook):
        store.append(x.detach().clone())
    return [(resid_post_name(LAYER), rec)]


@pytest.mark.parametrize("mode", ["continuous", "single"])
def test_cache_on_equals_cache_off(tiny, v, mode):
    prompts = [encode_prompt(tiny.tokenizer, q, "direct") for q in ("What is 2+2?", "Name a colour.")]
    outs = {}
    for use_cache in (True, False):
        cfg = GenerationConfig(max_new_tokens=12, batch_size=2, use_cache=use_cache)
        with steer(tiny, v, LAYER, 4.0, mode):
            outs[use_cache] = [g.response_ids for g in generate(tiny, prompts, cfg, progress=False)]
    assert outs[True] == outs[False]
    plain = [g.response_ids for g in generate(tiny, prompts, GenerationConfig(max_new_tokens=12, batch_size=2), progress=False)]
    assert outs[True] != plain  # the steering changed something


def test_single_touches_only_the_prompt_pass(tiny, v):
    prompt = encode_prompt(tiny.tokenizer, "What is 2+2?", "direct")
    before, after = [], []
    with attach(tiny, _record_layer(tiny, before)):
        with steer(tiny, v, LAYER, 4.0, "single") as delta:
            with attach(tiny, _record_layer(tiny, after)):
                generate(tiny, [prompt], GenerationConfig(max_new_tokens=6), progress=False)
    assert len(before) == len(after) >= 2
    assert torch.equal(after[0], before[0] + delta)  # prompt pass: every position steered
    for b, a in zip(before[1:], after[1:]):
        assert b.shape[1] == 1 and torch.equal(a, b)  # decode steps: nothing added


def test_single_resets_per_batch(tiny, v):
    """Prompts of different lengths in separate batches each get their whole prompt steered."""
    prompts = [encode_prompt(tiny.tokenizer, q, "direct") for q in ("Hi?", "A much longer question, is it not?")]
    cfg1 = GenerationConfig(max_new_tokens=5, batch_size=1)
    with steer(tiny, v, LAYER, 4.0, "single"):
        together = [g.response_ids for g in generate(tiny, prompts, cfg1, progress=False)]
    alone = []
    for p in prompts:
        with steer(tiny, v, LAYER, 4.0, "single"):
            alone.append(generate(tiny, [p], cfg1, progress=False)[0].response_ids)
    assert together == alone


def test_continuous_steers_every_decode_step(tiny, v):
    prompt = encode_prompt(tiny.tokenizer, "What is 2+2?", "direct")
    before, after = [], []
    with attach(tiny, _record_layer(tiny, before)):
        with steer(tiny, v, LAYER, 4.0) as delta:
            with attach(tiny, _record_layer(tiny, after)):
                generate(tiny, [prompt], GenerationConfig(max_new_tokens=6), progress=False)
    assert len(before) >= 2
    for b, a in zip(before, after):
        assert torch.equal(a, b + delta)


def test_ablation_projects_out(tiny, ids, v):
    _, clean = _run_with_resid(tiny, ids)
    with ablate_direction(tiny, v, LAYER):
        _, ablated = _run_with_resid(tiny, ids)
    unit = v / v.norm()
    assert torch.allclose(ablated[LAYER] @ unit, torch.zeros(ids.shape[1]), atol=1e-4)
    assert torch.allclose(ablated[LAYER], clean[LAYER] - (clean[LAYER] @ unit)[..., None] * unit, atol=1e-5)
    assert torch.equal(ablated[LAYER - 1], clean[LAYER - 1])
    with pytest.raises(ValueError, match="zero"):
        with ablate_direction(tiny, torch.zeros(64), 0):
            pass
