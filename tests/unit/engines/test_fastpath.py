"""The fast path (HF layers + routed residual hook points) is bit-identical to the bridge path with
the eager kernel, within rounding with the default SDPA one, fires every residual hook, and gives way
to the bridge path whenever any other hook is attached."""

import copy

import pytest
import torch
from transformers import DynamicCache

import lens_steer.engines.api as fastpath
from lens_steer.engines.bridge import engine_for
import lens_steer.engines.fastpath as fastpath_module
from lens_steer.engines.fastpath import FAST_PATH_ENV, VERIFIED_ARCHITECTURES
from lens_steer.method.collect import collect_residual_means
from lens_steer.engines.api import fast_forward, fast_path_disabled, fast_path_status, set_fast_path
from lens_steer.config import GenerationConfig
from lens_steer.engines.api import generate
from lens_steer.engines.hooks import attach
from lens_steer.engines.api import steer
from lens_steer.models import hf_model, resid_post_name
from lens_steer.prompts import encode_prompt
from conftest import make_tiny_bridge, make_tiny_hf, make_tiny_tokenizer

QUESTIONS = ("What is 2+2?", "Name three colours of the rainbow, please.", "Why?", "Count to five.")


@pytest.fixture(autouse=True)
def eager_kernel(monkeypatch):
    """Bit-identity with the bridge path holds for the eager kernel; tests of the default unset this."""
    monkeypatch.setenv(FAST_PATH_ENV, "eager")


@pytest.fixture(scope="module")
def prompts(tiny):
    return [encode_prompt(tiny.tokenizer, q, s) for q in QUESTIONS for s in ("cot", "direct")]


@pytest.fixture(scope="module")
def batch():
    """A left-padded batch: (ids, mask, positions)."""
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11], [0, 0, 0, 12, 13, 14, 15]])
    mask = (ids != 0).long()
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def _logits(model, ids, mask, positions, *, fast: bool):
    """Prompt-pass logits at real positions and one KV-cached step, on the chosen path."""
    forward = fast_forward(model)
    with torch.inference_mode():
        if fast:
            assert fast_path_status(model) is None
            return _two_passes(forward, ids, mask, positions)
        with fast_path_disabled(model):
            return _two_passes(fast_forward(model), ids, mask, positions)


def _two_passes(forward, ids, mask, positions):
    cache = DynamicCache()
    a = forward(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True).logits
    step = torch.tensor([[20], [21]])
    b = forward(input_ids=step, attention_mask=torch.cat([mask, torch.ones_like(step)], 1),
                position_ids=positions[:, -1:] + 1, past_key_values=cache, use_cache=True).logits
    return a[mask.bool()], b


def _both_paths(model, fn):
    """``fn()`` on the fast path and on the bridge path."""
    assert fast_path_status(model) is None
    fast = fn()
    with fast_path_disabled(model):
        assert fast_path_status(model) is not None
        slow = fn()
    return fast, slow


def test_logits_bit_identical(tiny, batch):
    fast = _logits(tiny, *batch, fast=True)
    slow = _logits(tiny, *batch, fast=False)
    for f, s in zip(fast, slow):
        assert torch.equal(f, s)


def test_layer_list_restored_and_nothing_registered(tiny, batch):
    hf = hf_model(tiny)
    n_params, n_modules = len(list(tiny.parameters())), len(list(tiny.modules()))
    _logits(tiny, *batch, fast=True)
    assert hf.model.layers is tiny.blocks
    assert len(list(tiny.parameters())) == n_params and len(list(tiny.modules())) == n_modules
    state = engine_for(tiny).fast_path._state()
    shared = {id(p) for p in tiny.parameters()}
    assert all(id(p) in shared for p in state.layers.parameters())  # no weight copies


def test_residual_hooks_fire_with_the_same_values(tiny, batch):
    ids, mask, positions = batch
    names = [f"blocks.{l}.hook_resid_{w}" for l in range(tiny.cfg.n_layers) for w in ("pre", "post")]

    def record():
        seen = {}

        def rec(x, hook):
            seen.setdefault(hook.name, []).append(x.clone())

        with attach(tiny, [(n, rec) for n in names]), torch.inference_mode():
            fast_forward(tiny)(input_ids=ids, attention_mask=mask, position_ids=positions)
        return seen

    fast, slow = _both_paths(tiny, record)
    assert set(fast) == set(slow) and len(fast) == len(names)
    for key in slow:
        assert len(fast[key]) == len(slow[key]) == 1
        assert torch.equal(fast[key][0][mask.bool()], slow[key][0][mask.bool()])


def test_residual_hook_edits_apply(tiny, batch):
    ids, mask, positions = batch

    def run():
        with attach(tiny, [(resid_post_name(1), lambda x, hook: x * 3.0),
                           ("blocks.2.hook_resid_pre", lambda x, hook: x - 1.0)]), torch.inference_mode():
            return fast_forward(tiny)(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    fast, slow = _both_paths(tiny, run)
    assert torch.equal(fast[mask.bool()], slow[mask.bool()])
    with torch.inference_mode():
        clean = fast_forward(tiny)(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    assert not torch.equal(fast[mask.bool()], clean[mask.bool()])


@pytest.mark.parametrize("method", ["fused", "two_pass"])
def test_residual_means_and_generations_identical(tiny, prompts, method):
    cfg = GenerationConfig(max_new_tokens=10, batch_size=3)
    fast, slow = _both_paths(tiny, lambda: collect_residual_means(tiny, prompts, cfg, method=method, progress=False))
    assert [g.response_ids for g in fast.generations] == [g.response_ids for g in slow.generations]
    assert torch.equal(fast.counts, slow.counts)
    assert torch.equal(fast.means, slow.means)
    assert torch.equal(fast.norms, slow.norms)


@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("mode", ["continuous", "single"])
def test_steered_generations_identical(tiny, prompts, mode, use_cache):
    v = torch.randn(tiny.cfg.d_model, generator=torch.Generator().manual_seed(3))
    cfg = GenerationConfig(max_new_tokens=10, batch_size=3, use_cache=use_cache)

    def run():
        with steer(tiny, v, layer=1, coeff=4.0, mode=mode):
            return [g.response_ids for g in generate(tiny, prompts, cfg, progress=False)]
    fast, slow = _both_paths(tiny, run)
    assert fast == slow
    assert fast != [g.response_ids for g in generate(tiny, prompts, cfg, progress=False)]


@pytest.mark.parametrize("name", ["blocks.1.attn.hook_pattern", "blocks.0.mlp.hook_out", "blocks.2.ln1.hook_normalized",
                                  "blocks.3.hook_attn_out", "blocks.0.hook_resid_mid", "blocks.1.hook_mlp_in"])
def test_other_hook_points_select_the_bridge_path_and_fire(tiny, prompts, name):
    calls = []
    with attach(tiny, [(name, lambda x, hook: calls.append(hook.name))]):
        reason = fast_path_status(tiny)
        assert reason is not None and "hook is attached" in reason
        generate(tiny, prompts[:2], GenerationConfig(max_new_tokens=3), progress=False)
    if name != "blocks.1.hook_mlp_in":  # fires only with cfg.use_hook_mlp_in
        assert calls
    assert fast_path_status(tiny) is None


def test_pytorch_hook_inside_a_block_selects_the_bridge_path(tiny):
    handle = tiny.blocks[0].attn.original_component.q_proj.register_forward_hook(lambda *a: None)
    try:
        assert "blocks.0" in fast_path_status(tiny)
    finally:
        handle.remove()
    handle = torch.nn.modules.module.register_module_forward_hook(lambda *a: None)
    try:
        assert "global" in fast_path_status(tiny)
    finally:
        handle.remove()
    assert fast_path_status(tiny) is None


def test_hooks_outside_the_blocks_keep_the_fast_path_and_fire(tiny, prompts):
    calls = []
    with attach(tiny, [("hook_embed", lambda x, hook: calls.append(hook.name)),
                       ("ln_final.hook_normalized", lambda x, hook: calls.append(hook.name))]):
        assert fast_path_status(tiny) is None
        generate(tiny, prompts[:1], GenerationConfig(max_new_tokens=2), progress=False)
    assert "embed.hook_out" in calls and "ln_final.hook_normalized" in calls  # hook_embed is an alias


def test_hook_added_between_calls_switches_path(tiny, batch):
    """A KV cache filled on one path is continued on the other: same logits as all-bridge."""
    ids, mask, positions = batch
    step = torch.tensor([[20], [21]])
    step_kwargs = dict(attention_mask=torch.cat([mask, torch.ones_like(step)], 1), position_ids=positions[:, -1:] + 1)
    with torch.inference_mode():
        forward, cache = fast_forward(tiny), DynamicCache()
        forward(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True)
        pattern = []
        with attach(tiny, [("blocks.0.attn.hook_pattern", lambda x, hook: pattern.append(1))]):
            mixed = forward(input_ids=step, past_key_values=cache, use_cache=True, **step_kwargs).logits
        assert pattern == [1]
        _, reference = _logits(tiny, ids, mask, positions, fast=False)
    assert torch.equal(mixed, reference)


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_exception_in_a_hook_restores_the_model(tiny, batch, attention):
    ids, mask, positions = batch

    def boom(x, hook):
        raise RuntimeError("boom")

    with fastpath.fast_path_options(tiny, attention=attention), attach(tiny, [(resid_post_name(2), boom)]):
        assert fast_path_status(tiny) is None
        with pytest.raises(RuntimeError, match="boom"), torch.inference_mode():
            fast_forward(tiny)(input_ids=ids, attention_mask=mask, position_ids=positions)
    assert hf_model(tiny).model.layers is tiny.blocks
    assert hf_model(tiny).config._attn_implementation == "eager"
    assert all(not p.fwd_hooks for p in tiny.hook_dict.values())


def test_replaced_parameter_is_picked_up(batch):
    model, _ = make_tiny_bridge(2)
    _logits(model, *batch, fast=True)  # builds the copies
    linear = model.blocks[1].mlp.original_component.down_proj.original_component
    linear.weight = torch.nn.Parameter(linear.weight.detach() * 1.5)
    with torch.no_grad():
        model.blocks[0].attn.original_component.q_proj.original_component.weight.mul_(0.5)  # in place: shared
    fast = _logits(model, *batch, fast=True)
    slow = _logits(model, *batch, fast=False)
    for f, s in zip(fast, slow):
        assert torch.equal(f, s)


def test_switches(tiny, monkeypatch):
    with fastpath.fast_path_options(tiny, enabled=False, attention="sdpa"):
        assert "disabled" in fast_path_status(tiny) and fastpath.fast_path_attention(tiny) == "sdpa"
    assert fast_path_status(tiny) is None and fastpath.fast_path_attention(tiny) == "eager"
    assert not any(k.startswith("_lens_steer") for k in tiny.__dict__)  # no state hung on the bridge
    monkeypatch.setenv(FAST_PATH_ENV, "0")
    assert FAST_PATH_ENV in fast_path_status(tiny)
    monkeypatch.delenv(FAST_PATH_ENV)
    tiny.cfg.use_attn_result = True
    try:
        assert "use_attn_result" in fast_path_status(tiny)
    finally:
        tiny.cfg.use_attn_result = False
    assert fast_path_status(tiny) is None


def _tiny_of(arch: str, dtype=torch.float32):
    import transformers

    from lens_steer.models import wrap_model

    tok = make_tiny_tokenizer()
    config_cls = getattr(transformers, arch.replace("ForCausalLM", "Config"))
    cfg = config_cls(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    hf = getattr(transformers, arch)(cfg).eval().to(dtype)
    return wrap_model(hf, tok, f"tiny-{arch}")


@pytest.mark.parametrize("arch", sorted(VERIFIED_ARCHITECTURES))
def test_verified_architectures_are_bit_identical(arch, batch):
    model = _tiny_of(arch)
    fast = _logits(model, *batch, fast=True)
    slow = _logits(model, *batch, fast=False)
    for f, s in zip(fast, slow):
        assert torch.equal(f, s)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_bit_identical(dtype, batch):
    hf, tok = make_tiny_hf(0)
    from lens_steer.models import wrap_model

    model = wrap_model(hf.to(dtype), tok, "tiny-half")
    fast = _logits(model, *batch, fast=True)
    slow = _logits(model, *batch, fast=False)
    for f, s in zip(fast, slow):
        assert torch.equal(f, s)


def test_unlisted_architecture_is_verified_on_a_hook_free_call(monkeypatch):
    monkeypatch.setattr(fastpath_module, "VERIFIED_ARCHITECTURES", frozenset())
    model, _ = make_tiny_bridge(3)
    with attach(model, [(resid_post_name(0), lambda x, hook: None)]):
        assert "not verified" in fast_path_status(model)
    assert fast_path_status(model) is None
    assert engine_for(model).fast_path._state().verified is True


def test_unlisted_architecture_that_differs_keeps_the_bridge_path(monkeypatch):
    monkeypatch.setattr(fastpath_module, "VERIFIED_ARCHITECTURES", frozenset())
    model, _ = make_tiny_bridge(4)
    state = engine_for(model).fast_path._state()
    # Make the rebuilt layers differ from the bridge: give layer 0 its own (perturbed) weight.
    attn = state.layers[0].self_attn
    attn.o_proj = copy.deepcopy(attn.o_proj)
    with torch.no_grad():
        attn.o_proj.weight.add_(1.0)
    assert "differ" in fast_path_status(model)


def test_sdpa_kernel_matches_hf_sdpa_and_bridge_within_rounding(batch, prompts):
    model, reference = make_tiny_bridge(5)
    reference.set_attn_implementation("sdpa")
    ids, mask, positions = batch
    eager = _logits(model, *batch, fast=True)
    set_fast_path(model, attention="sdpa")
    assert fastpath.fast_path_attention(model) == "sdpa"
    sdpa = _logits(model, *batch, fast=True)
    with torch.inference_mode():
        hf_sdpa = reference(input_ids=ids, attention_mask=mask, position_ids=positions).logits[mask.bool()]
    torch.testing.assert_close(sdpa[0], hf_sdpa, rtol=1e-5, atol=1e-5)  # HF's own SDPA mask and kernel
    for s, e in zip(sdpa, eager):
        torch.testing.assert_close(s, e, rtol=1e-5, atol=1e-5)
    assert hf_model(model).config._attn_implementation == "eager"  # the bridge keeps its kernel
    cfg = GenerationConfig(max_new_tokens=8, batch_size=3)
    fast, slow = _both_paths(model, lambda: collect_residual_means(model, prompts, cfg, progress=False))
    assert [g.response_ids for g in fast.generations] == [g.response_ids for g in slow.generations]
    torch.testing.assert_close(fast.means, slow.means, rtol=1e-4, atol=1e-5)


def test_attention_setting_is_validated(tiny, monkeypatch):
    with pytest.raises(ValueError, match="unknown attention"):
        set_fast_path(tiny, attention="flash")
    assert fastpath.fast_path_attention(tiny) == "eager"
    monkeypatch.setenv(FAST_PATH_ENV, "sdpa")
    assert fastpath.fast_path_attention(tiny) == "sdpa" and fast_path_status(tiny) is None
    monkeypatch.delenv(FAST_PATH_ENV)
    assert fastpath.fast_path_attention(tiny) == "sdpa" and fastpath.attention_kernel(tiny) == "sdpa"  # default
    with fastpath.fast_path_options(tiny, attention="eager"):
        assert fastpath.attention_kernel(tiny) == "eager"
    with fast_path_disabled(tiny):
        assert fastpath.attention_kernel(tiny) == "eager (bridge path)"


def test_default_kernel_is_eager_where_sdpa_cannot_express_the_model(monkeypatch):
    """Gemma 2 soft-caps attention logits, which SDPA would drop: its default stays eager."""
    monkeypatch.delenv(FAST_PATH_ENV)
    model = _tiny_of("Gemma2ForCausalLM")
    assert model.original_model.config.attn_logit_softcapping is not None
    assert fastpath.fast_path_attention(model) == "eager"
    with pytest.raises(ValueError, match="SDPA"):
        set_fast_path(model, attention="sdpa")


def test_default_sdpa_generates_like_the_bridge_path(tiny, prompts, monkeypatch):
    monkeypatch.delenv(FAST_PATH_ENV)
    cfg = GenerationConfig(max_new_tokens=8, batch_size=3)
    fast, slow = _both_paths(tiny, lambda: collect_residual_means(tiny, prompts, cfg, progress=False))
    assert [g.response_ids for g in fast.generations] == [g.response_ids for g in slow.generations]
    torch.testing.assert_close(fast.means, slow.means, rtol=1e-4, atol=1e-5)


def test_hf_output_capture_hooks_keep_the_fast_path_and_outputs_take_the_bridge(batch):
    """run_with_cache makes transformers install its (idle) output-capture hooks for good; a call
    asking for hidden states is served by the bridge path, whose layers carry those hooks."""
    model, _ = make_tiny_bridge(6)
    ids, mask, positions = batch
    with torch.inference_mode():
        _, cache = model.run_with_cache(ids[:1], names_filter=[resid_post_name(0)], prepend_bos=False)
    assert fast_path_status(model) is None
    fast = _logits(model, *batch, fast=True)
    slow = _logits(model, *batch, fast=False)
    assert all(torch.equal(f, s) for f, s in zip(fast, slow))
    with torch.inference_mode():
        out = fast_forward(model)(input_ids=ids, attention_mask=mask, position_ids=positions, output_hidden_states=True)
        with fast_path_disabled(model):
            ref = fast_forward(model)(input_ids=ids, attention_mask=mask, position_ids=positions, output_hidden_states=True)
    assert len(out.hidden_states) == model.cfg.n_layers + 1
    assert all(torch.equal(a, b) for a, b in zip(out.hidden_states, ref.hidden_states))
