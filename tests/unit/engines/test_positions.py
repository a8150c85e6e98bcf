"""Position kinds, strength schedules and operators on the bridge, with exact arithmetic: every pass of a generation
is recorded just before and just after the steering hook at the steered layer; positions outside the selection must
come out bit for bit as they went in, selected ones exactly as the operator's definition (a reference copy below)
computes them from what went in, with the selection and the coefficients worked out here from the tokens, not by
the library. KV cache on and off; batched equals unbatched with mixed specs; hooks removed after an exception; the
paper's presets unchanged."""

from __future__ import annotations

import pytest
import torch

from lens_steer.config import GenerationConfig
from lens_steer.engines.base import Steering
from lens_steer.engines.bridge import engine_for
from lens_steer.engines.hooks import attach
from lens_steer.engines.steer_spec import SpecError, parse_spec
from lens_steer.models import hf_model, resid_post_name
from lens_steer.prompts import encode_prompt

LAYER = 2
NEW = 12
QUESTIONS = ("Name a colour please.", "What is 2+2?")  # different lengths: the batch is left-padded


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def prompts(tiny):
    out = [encode_prompt(tiny.tokenizer, q, "direct") for q in QUESTIONS]
    assert len(out[0]) > len(out[1])  # the engine batches longest first: rows of a recorded pass are in this order
    return out


@pytest.fixture(scope="module")
def directions(tiny, prompts):
    """``random``: a seeded random direction; ``resid``: the mean residual of the first prompt at the layer (removing
    or clamping it changes the answer, where a random direction's component is too small to matter)."""
    name = resid_post_name(LAYER)
    with torch.inference_mode():
        _, cache = tiny.run_with_cache(torch.tensor([prompts[1]]), names_filter=[name], prepend_bos=False)
    return {"random": torch.randn(tiny.cfg.d_model, generator=torch.Generator().manual_seed(3)),
            "resid": cache[name][0].mean(0).clone()}


# ---------------------------------------------------------------- the definitions, written out independently

def _factor(strength, t: int | None) -> float:
    if strength.kind == "constant":
        return 1.0
    if t is None:
        return strength.start
    if strength.kind == "step":
        return strength.start if t < strength.n else strength.end
    return strength.start + (strength.end - strength.start) * min(t, strength.n) / strength.n


def _expected(spec, tok, row: list[int], real: list[bool], width: int) -> list[bool]:
    """Which columns of one row a spec steers, by its definition (loops over the row's tokens)."""
    at = spec.at
    out = []
    inside = False
    ids = {m: tok.convert_tokens_to_ids(m) for m in (at.region or ())}
    seqs = [tok.convert_tokens_to_ids(list(t)) for t in at.triggers]  # a character tokenizer: one token per char
    ends = []
    for c, token in enumerate(row):
        t = c - width if c >= width else None
        ends.append(any(c + 1 >= len(s) and all(real[c - len(s) + 1 + j] and row[c - len(s) + 1 + j] == s[j]
                                               for j in range(len(s))) for s in seqs))
        if at.kind == "all":
            sel = real[c]
        elif at.kind == "prompt":
            sel = real[c] and t is None
        elif at.kind == "last":
            sel = c == width - 1
        elif at.kind in ("first", "window"):
            sel = t is not None and at.start <= t < at.stop
        elif at.kind == "trigger":
            sel = t is not None and any(ends[max(0, c - at.span + 1):c + 1])
        else:
            sel = t is not None and inside and token != ids[at.region[1]]
            if real[c] and token == ids[at.region[0]]:
                inside = True
            elif real[c] and token == ids[at.region[1]]:
                inside = False
        out.append(bool(sel))
    return out


def _reference(op: str, x: torch.Tensor, e: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The operators' definitions (the library's docstring), for one pass's ``[batch, pos, d]`` input."""
    ev = e[..., None] * v
    if op == "add":
        return x + ev.to(x.dtype)
    xf = x.float()
    u = v / v.norm()
    if op == "add-norm":
        y = xf + ev
        return (y * (xf.norm(dim=-1, keepdim=True) / y.norm(dim=-1, keepdim=True))).to(x.dtype)
    proj = (xf @ u)[..., None]
    if op == "clamp":
        return (xf - proj * u + ev).to(x.dtype)
    return (xf - (e[..., None] * proj) * u).to(x.dtype)


def _record(store):
    return [(resid_post_name(LAYER), lambda x, hook: store.append(x.detach().clone()))]


def _run(tiny, prompts, steering, use_cache: bool):
    """Generate under ``steering`` with the layer's stream recorded just before and just after its hook."""
    engine = engine_for(tiny)
    before, after = [], []
    cfg = GenerationConfig(max_new_tokens=NEW, batch_size=len(prompts), use_cache=use_cache)
    with attach(tiny, _record(before)), engine.steering(steering), attach(tiny, _record(after)):
        gens = engine.generate(prompts, cfg, progress=False)
    return gens, before, after


CASES = [
    ("at=last", 4.0, "random"),
    ("at=first:4", 4.0, "random"),
    ("at=window:2-6", 4.0, "random"),
    ("at=trigger:x", 4.0, "random"),
    (r"at=trigger:\\x|aaa,span=2", 4.0, "random"),
    ("at=region:x..B", 4.0, "random"),
    ("strength=linear:1:0:6", 4.0, "random"),
    ("at=window:1-9,strength=step:0.5:2:4", 3.0, "random"),
    ("op=add-norm", 8.0, "random"),
    ("op=add-norm", -1.0, "resid"),
    ("op=clamp", 3.0, "random"),
    ("at=window:1-5,op=clamp", -1.0, "resid"),
    ("op=ablate", 1.0, "resid"),
    ("at=region:x..B,op=ablate", 1.0, "resid"),
    ("at=prompt,strength=linear:2:0:4,op=clamp", 2.0, "random"),
    ("at=trigger:x,strength=linear:2:0:8,op=add-norm", 6.0, "random"),
]


@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "no-cache"])
@pytest.mark.parametrize(("mode", "coeff", "direction"), CASES, ids=[c[0] for c in CASES])
def test_exact_arithmetic(tiny, prompts, directions, mode, coeff, direction, use_cache):
    tok = tiny.tokenizer
    v = directions[direction]
    steering = Steering(v, LAYER, coeff, mode)
    spec = steering.spec
    gens, before, after = _run(tiny, prompts, steering, use_cache)
    assert not any(g.stopped for g in gens) and all(len(g.response_ids) == NEW for g in gens)
    width = max(len(p) for p in prompts)
    pad = tok.pad_token_id
    rows = [[pad] * (width - len(p)) + list(p) + list(g.response_ids) for p, g in zip(prompts, gens)]
    real = [[False] * (width - len(p)) + [True] * (len(row) - width + len(p)) for p, row in zip(prompts, rows)]
    sel = torch.tensor([_expected(spec, tok, row, r, width) for row, r in zip(rows, real)])
    factors = torch.tensor([_factor(spec.strength, c - width if c >= width else None) for c in range(len(rows[0]))],
                           dtype=torch.float32)
    e = torch.where(sel, torch.tensor(coeff, dtype=torch.float32) * factors, torch.zeros(()))
    # the passes: the prompt, then one token each (cache) or the whole sequence so far (no cache)
    spans = [(0, width)] + [((width + k - 1) if use_cache else 0, width + k) for k in range(1, len(before))]
    assert len(before) == len(after) == NEW and spans[-1][1] == width + NEW - 1
    for (lo, hi), x, y in zip(spans, before, after):
        s, ek = sel[:, lo:hi], e[:, lo:hi]
        assert torch.equal(y[~s], x[~s])  # outside the selection: untouched, bit for bit
        assert torch.equal(y[s], _reference(spec.op, x, ek, v)[s])  # inside: exactly the operator's result
        if s.any():  # and the operator does what it says (to float tolerance)
            xs, ys, es, u = x[s], y[s], ek[s], v / v.norm()
            if spec.op == "add":
                assert torch.allclose(ys - xs, es[:, None] * v, atol=1e-5)
            elif spec.op == "add-norm":
                assert torch.allclose(ys.norm(dim=-1), xs.norm(dim=-1), rtol=1e-5)
            elif spec.op == "clamp":
                assert torch.allclose(ys @ u, es * v.norm(), atol=1e-4)
            else:
                assert torch.allclose(ys @ u, (1 - es) * (xs @ u), atol=1e-5)
    gen_sel = sel[:, width:width + NEW - 1]
    if spec.at.kind not in ("all", "prompt", "last"):
        assert gen_sel.any() and not gen_sel.all()  # a selection that means something
    unsteered = engine_for(tiny).generate(prompts, GenerationConfig(max_new_tokens=NEW, batch_size=2), progress=False)
    assert [g.response_ids for g in gens] != [g.response_ids for g in unsteered]  # the steering changed the output
    again = engine_for(tiny).generate(prompts, GenerationConfig(max_new_tokens=NEW, batch_size=2, use_cache=use_cache),
                                      steering=steering, progress=False)
    assert [g.response_ids for g in again] == [g.response_ids for g in gens]  # steering= is the same hooks


def test_cache_on_equals_cache_off_and_batched_equals_alone_with_mixed_specs(tiny, prompts, directions):
    v = directions["random"]
    specs = [Steering(v, LAYER, 4.0, "at=trigger:x,span=2"), Steering(v, LAYER, 4.0, "at=region:x..B"), None,
             Steering(v, LAYER, 3.0, "at=window:1-9,strength=step:0.5:2:4"), Steering(v, LAYER, 4.0, "single"),
             Steering(v, 1, 2.0, "op=clamp")]
    many = [prompts[i % 2] for i in range(len(specs))]
    engine = engine_for(tiny)
    out = {}
    for use_cache in (True, False):
        cfg = GenerationConfig(max_new_tokens=NEW, batch_size=4, use_cache=use_cache)
        out[use_cache] = [g.response_ids for g in engine.generate(many, cfg, steering=specs, progress=False)]
    alone = [engine.generate([p], GenerationConfig(max_new_tokens=NEW, batch_size=1), steering=s,
                             progress=False)[0].response_ids for p, s in zip(many, specs)]
    assert out[True] == out[False] == alone
    assert len({tuple(r) for r in alone}) >= 4  # the specs really differ
    # one spec over a padded batch of two prompts of different lengths equals each prompt alone
    for s in specs[:2]:
        batched = engine.generate(prompts, GenerationConfig(max_new_tokens=NEW, batch_size=2), steering=s,
                                  progress=False)
        assert [g.response_ids for g in batched] == [
            engine.generate([p], GenerationConfig(max_new_tokens=NEW), steering=s, progress=False)[0].response_ids
            for p in prompts]


def test_several_steerings_apply_in_plan_order(tiny, prompts, directions):
    """Two steerings at one layer: the second acts on what the first left, exactly (clamp then add differs from add
    then clamp)."""
    v, w = directions["random"], directions["resid"]
    clamp, add = Steering(w, LAYER, 0.5, "op=clamp"), Steering(v, LAYER, 2.0, "at=first:3")
    last = {}
    for order, plan in (("clamp, add", (clamp, add)), ("add, clamp", (add, clamp))):
        before, after = [], []
        with attach(tiny, _record(before)), engine_for(tiny).steering(plan), attach(tiny, _record(after)):
            engine_for(tiny).generate([prompts[1]], GenerationConfig(max_new_tokens=6), progress=False)
        for k, (x, y) in enumerate(zip(before, after)):  # pass k >= 1 holds generated token k - 1
            e_add = torch.full(x.shape[:2], 2.0 if 1 <= k <= 3 else 0.0)
            e_clamp = torch.full(x.shape[:2], 0.5)
            if order == "clamp, add":
                expected = _reference("add", _reference("clamp", x, e_clamp, w), e_add, v)
            else:
                expected = _reference("clamp", _reference("add", x, e_add, v), e_clamp, w)
            assert torch.equal(y, expected)
        last[order] = after[1]
    assert not torch.equal(last["clamp, add"], last["add, clamp"])


def test_generic_path_equals_the_presets(tiny, prompts, directions):
    """A schedule that is 1 everywhere takes the generic path (not the presets' hooks): on every real position it
    adds exactly what the paper's presets add, so the answers are the same tokens."""
    v = directions["random"]
    engine = engine_for(tiny)
    cfg = GenerationConfig(max_new_tokens=NEW, batch_size=2)
    for preset, generic in (("continuous", "strength=step:1:1:0"), ("single", "at=prompt,strength=step:1:1:0")):
        assert Steering(v, LAYER, 4.0, generic).spec.preset is None
        a = [g.response_ids for g in engine.generate(prompts, cfg, steering=Steering(v, LAYER, 4.0, preset),
                                                     progress=False)]
        b = [g.response_ids for g in engine.generate(prompts, cfg, steering=Steering(v, LAYER, 4.0, generic),
                                                     progress=False)]
        assert a == b
    assert Steering(v, LAYER, 4.0, "at=all").mode == "continuous"
    assert Steering(v, LAYER, 4.0, "at=prompt").key() == Steering(v, LAYER, 4.0, "single").key()


def test_first_token_logprobs_follow_the_positions(tiny, prompts, directions):
    """The prompt pass alone: generated-token kinds change nothing in it, exactly; the last prompt token does."""
    v = directions["random"]
    engine = engine_for(tiny)
    clean = engine.first_token_logprobs(prompts)
    assert engine.first_token_logprobs(prompts, steering=Steering(v, LAYER, 4.0, "at=first:4")) == clean
    assert engine.first_token_logprobs(prompts, steering=Steering(v, LAYER, 4.0, "at=trigger:x")) == clean
    assert engine.first_token_logprobs(prompts, steering=Steering(v, LAYER, 4.0, "at=last")) != clean


def _clean(tiny):
    return all(not hp.fwd_hooks for hp in tiny.hook_dict.values()) and not engine_for(tiny).single_steerers


def test_hooks_removed_after_an_exception(tiny, prompts, directions):
    v = directions["random"]
    engine = engine_for(tiny)
    ids = torch.tensor([prompts[0]])
    with torch.inference_mode():
        clean = tiny(ids)
    pre_hooks = len(hf_model(tiny)._forward_pre_hooks)
    for mode in ("at=trigger:x,span=2", "at=region:x..B,op=ablate", "strength=linear:1:0:4,op=add-norm"):
        with pytest.raises(RuntimeError, match="boom"):
            with engine.steering(Steering(v, LAYER, 4.0, mode)):
                engine.generate(prompts, GenerationConfig(max_new_tokens=3), progress=False)
                raise RuntimeError("boom")
        assert _clean(tiny) and len(hf_model(tiny)._forward_pre_hooks) == pre_hooks
    # an error inside a steered forward (no token ids to decide positions from) unwinds too
    with pytest.raises(RuntimeError, match="input token ids"):
        with engine.steering(Steering(v, LAYER, 4.0, "at=first:2")), torch.inference_mode():
            hf_model(tiny)(inputs_embeds=hf_model(tiny).get_input_embeddings()(ids))
    assert _clean(tiny) and len(hf_model(tiny)._forward_pre_hooks) == pre_hooks
    # a bad spec later in a plan attaches nothing at all (every spec is resolved first)
    with pytest.raises(SpecError, match="not made of the model's tokens"):
        with engine.steering((Steering(v, LAYER, 4.0, "at=first:2"), Steering(v, 1, 1.0, "at=trigger:é"))):
            pass
    assert _clean(tiny) and len(hf_model(tiny)._forward_pre_hooks) == pre_hooks
    with torch.inference_mode():
        assert torch.equal(tiny(ids), clean)


def test_token_sets_are_checked_against_the_tokenizer(tiny, directions):
    from lens_steer.engines.selection import resolve_spec

    tok = tiny.tokenizer
    resolved = resolve_spec(parse_spec(r"at=trigger:\n|Step|a\,b"), tok)
    assert resolved.triggers == tuple(tuple(tok.convert_tokens_to_ids(list(t))) for t in ("\n", "Step", "a,b"))
    assert resolve_spec(parse_spec("at=region:[..]"), tok).markers == tuple(tok.convert_tokens_to_ids(["[", "]"]))
    with pytest.raises(SpecError, match=r"^at: trigger 'é' is not made of the model's tokens"):
        resolve_spec(parse_spec("at=trigger:é"), tok)
    with pytest.raises(SpecError, match=r"^at: region marker '<think>' is not in the model's vocabulary \(it is 7 "):
        resolve_spec(parse_spec("at=region:<think>..</think>"), tok)
