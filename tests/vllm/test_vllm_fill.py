"""The vLLM engine's steering machinery without vLLM: what the per-step fill decides (positions and effective
coefficients, from each request's tokens a chunk at a time) equals the bridge's reference
(:func:`lens_steer.engines.selection.coefficient_map`) bit for bit, under chunked prefill, a prefix served from the
cache and a recomputed request; the traced hook's operator slots compute exactly the bridge's operators
(:func:`lens_steer.engines.selection.apply_operator`) on the stream after the block, leave every other token bit for
bit as it was, and apply several steerings in plan order; a preset plan still adds its ``c·v`` row exactly. Runs in
every environment (no vLLM needed)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from lens_steer.compat.vllm import StepRequest
from lens_steer.engines.base import Steering
from lens_steer.engines.selection import ResolvedSpec, apply_operator, coefficient_map
from lens_steer.engines.steer_spec import parse_spec
from lens_steer.engines.vllm_plans import compile_plan, steering_salt
from lens_steer.engines.vllm_select import Selector
from lens_steer.engines.vllm_steer import EXTRA_KEY, _State
from lens_steer.models import ModelInfo

SPECS = ["continuous", "single", "at=last", "at=first:3", "at=window:2-7", "at=trigger:ab", "at=trigger:a|bcb,span=3",
         "at=region:a..b", "at=region:c..a,strength=step:1:3:2", "strength=linear:1:0:5",
         "at=window:1-9,strength=step:0.5:2:4", "at=prompt,strength=linear:2:0:4",
         "at=trigger:c,strength=linear:2:0:8,op=add-norm"]
TOKENS = {c: i for i, c in enumerate("abcd")}


@pytest.mark.parametrize("text", SPECS)
def test_the_step_fill_decides_what_the_bridge_decides(text):
    """Random sequences over a 4-token vocabulary (so triggers and markers occur often), computed in random chunks
    after a random cached prefix, decode steps one token at a time (mostly through the scalar path), sometimes
    restarting from an earlier position (a preempted request)."""
    rng = random.Random(hash(text) % 1000)
    spec = parse_spec(text)
    triggers = tuple(tuple(TOKENS[ch] for ch in t) for t in spec.at.triggers)
    markers = tuple(TOKENS[m] for m in spec.at.region) if spec.at.region else None
    for trial in range(60):
        coeff = rng.uniform(-5, 5)
        length = rng.randint(2, 40)
        n_prompt = rng.randint(1, length)
        tokens = [rng.randrange(4) for _ in range(length)]
        ids = torch.tensor([tokens])
        ref_sel, ref_e = coefficient_map(ResolvedSpec(spec, triggers, markers), coeff, ids, torch.ones_like(ids) > 0,
                                         n_prompt)
        selector = Selector(spec, coeff, triggers, markers)
        sel, e = np.zeros(length, dtype=bool), np.full(length, np.nan, dtype=np.float32)
        pos = first = rng.choice([0, 0, rng.randint(0, n_prompt - 1)])  # [0, first) served from the prefix cache
        while pos < length:
            n = 1 if pos >= n_prompt and rng.random() < 0.7 else rng.randint(1, length - pos)
            if n == 1 and rng.random() < 0.7:  # a decode step's scalar path
                one = selector.decide_one(np.array(tokens), n_prompt, pos, "req")
                sel[pos], e[pos] = one is not None, 0.0 if one is None else one
            else:
                sel[pos:pos + n], e[pos:pos + n] = selector.decide(np.array(tokens), n_prompt, pos, n, "req")
            pos = rng.randint(0, pos) if rng.random() < 0.1 and pos > 0 else pos + n  # sometimes recomputed
        assert np.array_equal(sel[first:], ref_sel[0, first:].numpy()), (trial, tokens, n_prompt)
        assert np.array_equal(e[first:], ref_e[0, first:].numpy()), (trial, tokens, n_prompt)


class _Block(torch.nn.Module):
    """A decoder layer returning what it was given: ``(hidden, residual)`` (``"sum"``) or the stream (``"whole"``)."""

    def forward(self, hidden, residual=None):
        return hidden if residual is None else (hidden, residual)


D = 16
INFO = ModelInfo("test", "LlamaForCausalLM", 2, D, "fp")


def _layer(n_slots: int = 2, convention: str = "sum") -> tuple[_State, torch.nn.Module]:
    state, block = _State(), _Block()
    state.install({0: block}, convention, d_model=D, max_tokens=32, dtype=torch.float32, device="cpu",
                  n_slots=n_slots)
    return state, block


def _register(state: _State, plans: list) -> list[dict]:
    extras = []
    for i, plan in enumerate(plans):
        state.add_plan(f"p{i}", compile_plan(plan, INFO, torch.float32, None, state.n_slots))
        extras.append({EXTRA_KEY: f"p{i}"})
    return extras


def _reference(plan, x: torch.Tensor, n_prompt: int, first: int) -> torch.Tensor:
    """The bridge's hooks on the stream ``x`` ``[n, d]`` at positions ``[first, first + n)``, in plan order."""
    for s in plan:
        ids = torch.zeros(1, first + len(x), dtype=torch.long)
        sel, e = coefficient_map(ResolvedSpec(s.spec), s.coeff, ids, ids >= 0, n_prompt)
        sel, e = sel[0, first:], e[0, first:]
        x = torch.where(sel[:, None], apply_operator(s.spec.op, x, e, s.vector.float()), x)
    return x


@pytest.mark.parametrize("convention", ["sum", "whole"])
def test_operator_slots_compute_the_bridge_operators_in_plan_order(convention):
    g = torch.Generator().manual_seed(0)
    v, w = torch.randn(D, generator=g), torch.randn(D, generator=g)
    plans = [(Steering(v, 0, 0.7, "op=clamp"), Steering(w, 0, 2.0, "at=first:3")),
             (Steering(w, 0, 2.0, "at=first:3"), Steering(v, 0, 0.7, "op=clamp")),
             (Steering(v, 0, 1.0, "at=window:1-4,op=ablate"),),
             (Steering(v, 0, 3.0, "strength=linear:1:0:4,op=add-norm"),),
             (Steering(w, 0, 5.0, "single"), Steering(v, 0, 0.5, "op=ablate")),
             ()]
    state, block = _layer(convention=convention)
    extras = _register(state, [p for p in plans if p])
    # one step: request 0 a prompt chunk, the others decode tokens at different generated positions
    step = [StepRequest(extras[0], 6, 2, 4), StepRequest(extras[1], 5, 6, 1), StepRequest(extras[2], 3, 5, 1),
            StepRequest(extras[3], 2, 4, 1), StepRequest(extras[4], 4, 0, 4), StepRequest({}, 3, 3, 1)]
    state.fill(step)
    n = sum(r.n for r in step)
    hidden, residual = torch.randn(n, D, generator=g), torch.randn(n, D, generator=g)
    with torch.no_grad():
        if convention == "sum":
            out_h, out_r = block(hidden, residual)
            out = out_h + out_r
            x = hidden + residual
        else:
            out = block(hidden[None])[0]
            x = hidden
    start = 0
    for plan, r in zip(plans, step):
        rows = slice(start, start + r.n)
        expected = _reference(plan, x[rows], r.n_prompt, r.first)
        changed = ~(expected == x[rows]).all(-1)
        assert torch.allclose(out[rows], expected, atol=1e-5, rtol=1e-5), plan
        if convention == "sum":  # tokens no slot touched keep hidden and residual bit for bit
            assert torch.equal(out_h[rows][~changed], hidden[rows][~changed])
            assert torch.equal(out_r[rows][~changed], residual[rows][~changed])
        else:
            assert torch.equal(out[rows][~changed], x[rows][~changed])
        start += r.n
    # the order matters: on request 1's decode token (generated token 1) add then clamp is not clamp then add
    assert not torch.allclose(out[4], _reference(plans[0], x[4:5], 5, 6)[0], atol=1e-3)
    state.clear()
    assert state.is_clean()


def test_a_preset_plan_adds_its_row_exactly():
    v = torch.randn(D, generator=torch.Generator().manual_seed(1))
    state, block = _layer()
    plans = [(Steering(v, 0, 3.0, "continuous"), Steering(v, 0, 2.0, "continuous")), (Steering(v, 0, 4.0, "single"),)]
    extras = _register(state, plans)
    assert all(not p.slots for p in state.plans.values())  # presets take the bank, never a slot
    state.fill([StepRequest(extras[0], 4, 4, 1), StepRequest(extras[1], 4, 2, 3)])
    hidden, residual = torch.randn(4, D), torch.randn(4, D)
    with torch.no_grad():
        out_h, out_r = block(hidden, residual)
    delta = 3.0 * v + 2.0 * v
    assert torch.equal(out_h[0], hidden[0] + delta) and torch.equal(out_h[1:3], hidden[1:3] + 4.0 * v)
    assert torch.equal(out_h[3], hidden[3]) and torch.equal(out_r, residual)
    # a preset-only plan keeps the salt it had before specs existed; any spec changes it
    wire = compile_plan(plans[0], INFO, torch.float32, None, 2)
    assert steering_salt(wire) != steering_salt(compile_plan((Steering(v, 0, 3.0, "at=all,op=add-norm"),), INFO,
                                                             torch.float32, None, 2))


def test_too_many_ordered_steerings_at_one_layer_are_refused_in_one_line():
    v = torch.ones(D)
    plan = tuple(Steering(v, 0, 1.0, "op=ablate") for _ in range(3))
    with pytest.raises(ValueError, match=r"^layer 0 has 3 steerings to apply in order .* at most 2 steerings"):
        compile_plan(plan, INFO, torch.float32, None, 2)
    with pytest.raises(ValueError, match="presets only"):
        compile_plan(plan[:1], INFO, torch.float32, None, 0)


def test_a_removed_plan_gives_its_rows_back_and_steers_nothing():
    """A server keeps plans across calls: registering one twice is a no-op, removing one zeroes and frees its preset
    and direction rows (the next plan takes them), and a step still naming a removed plan is left unsteered."""
    g = torch.Generator().manual_seed(1)
    v, w = torch.randn(D, generator=g), torch.randn(D, generator=g)
    state, block = _layer()
    first = compile_plan((Steering(v, 0, 2.0, "continuous"), Steering(w, 0, 1.0, "op=clamp")), INFO, torch.float32,
                         None, state.n_slots)
    state.add_plan("a", first)
    state.add_plan("a", first)  # idempotent: same rows, nothing taken twice
    rows, dirs = state.plans["a"].rows[0], state.plans["a"].slots[0][0][1]
    assert (rows, dirs) == (1, 1) and state.next_row[0] == 2 and state.next_dir[0] == 2
    state.remove_plan("a")
    assert "a" not in state.plans
    assert not block.lens_steer_bank[rows].any() and not block.lens_steer_dirs[dirs].any()
    state.fill([StepRequest({EXTRA_KEY: "a"}, 4, 0, 4)])  # a request that outlived its plan: untouched
    assert not block.lens_steer_idx.any() and not block.lens_steer_ops.any()
    state.add_plan("b", compile_plan((Steering(w, 0, 3.0, "continuous"), Steering(v, 0, 1.0, "op=ablate")), INFO,
                                     torch.float32, None, state.n_slots))
    assert state.plans["b"].rows[0] == rows and state.plans["b"].slots[0][0][1] == dirs  # the freed rows, reused
    assert torch.equal(block.lens_steer_bank[rows], 3.0 * w) and state.next_row[0] == 2
    state.remove_plan("b")
    state.remove_plan("b")  # removing twice is harmless
    state.clear()
    assert state.is_clean()
