"""The engine contract: every registered engine that can run here (other than the bridge, the reference), on a
tiny random model of each of the ten decoder architectures, checked against the bridge engine on the same
directory: identity and unsteered greedy equal; each steering mode changes the output and agrees with the
bridge (greedy tokens, first-token log-probabilities); single mode touches exactly the prompt positions (every
prefill here is chunked) and keeps doing so when a prefix cache serves the prompt; a mixed batch equals each
request alone; residual means for derivation match (the stream after every block is the bridge's
``blocks.{l}.hook_resid_post``); the engine is clean after an exception. Steering specs (:mod:`spec_cases`): every
position kind, strength schedule and operator, and several steerings at one layer in plan order, agree with the
bridge (greedy tokens, first-token log-probabilities) when all of them share one call (a mixed batch, every prefill
chunked, the prefix cache on), each changes the output, each request of that call equals the request alone, and
the token-reading ones (single, a trigger ending the prompt, a region opened in it) agree again when their prompts
are served from the prefix cache. A check an engine does not declare the
capability for (:mod:`lens_steer.engines.registry`) is skipped, naming it: a new engine passes this suite or
declares the capability absent. vLLM's cases carry the ``vllm`` mark (``make test-vllm``).

Every bridge result is computed before the architecture's engine starts, and the bridge is dropped: vLLM's
Transformers backend (OLMo 2) compiles Hugging Face's own model class in place, after which a Hugging Face
model of that class no longer runs in the process. One engine per architecture, shared by its tests and
closed after them."""

from __future__ import annotations

import gc
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from lens_steer.config import GenerationConfig
from lens_steer.engines.base import Steering
from lens_steer.engines.registry import CapabilityError, capabilities_of, engine_names, engine_spec, require

sys.path.insert(0, str(Path(__file__).resolve().parent))
from spec_cases import cached_names, mean_residual, spec_steerings  # noqa: E402
from tiny_models import ARCHITECTURES, N_LAYERS, make_tiny  # noqa: E402

ENGINE_OPTIONS = {"vllm": dict(max_num_batched_tokens=32, block_size=32,  # every prompt spans whole blocks and
                               kv_cache_memory_bytes=32 << 20)}          # is prefilled in chunks
"""Options each engine is opened with here (small steps, so every prefill is chunked)."""


def _engine_param(name: str):
    marks = [pytest.mark.vllm] if name == "vllm" else []
    reason = engine_spec(name).unavailable()
    if reason:
        marks.append(pytest.mark.skip(reason=reason))
    return pytest.param(name, marks=marks, id=name)


ENGINES = [_engine_param(n) for n in engine_names() if n != "bridge"]
"""Every registered engine but the reference."""


def needs(case, capability: str) -> None:
    """Skip a check the case's engine does not declare (naming the capability: a flag, ``steer:<mode>`` or any
    steering spec, ``steer:at=trigger:x,op=clamp``)."""
    try:
        require(case.engine, capability)
    except CapabilityError as err:
        pytest.skip(str(err))

LAYER = 1  # the middle block of three
STEP_TOKENS = 32  # tokens per engine step: every prompt is longer, so every prefill is chunked
CFG = GenerationConfig(max_new_tokens=8)
MODES = {None: 0.0, "continuous": 8.0, "single": 16.0}
QUESTIONS = ["What is 17 times 3?", "Name a prime above 50.", "Why is the sky blue?", "Sort 5, 2, 9, 1."]
LOGPROB_TOL = 1e-4  # fp32 on one machine; measured differences are ~2e-6


@dataclass
class Case:
    """One architecture: its vLLM engine, the prompts and direction, and the bridge's results."""

    arch: str
    engine: object
    prompts: list[list[int]]
    direction: torch.Tensor
    ref: dict = field(default_factory=dict)
    specs: dict = field(default_factory=dict)  # name -> Steering or plan (spec_cases.spec_steerings)
    runs: dict = field(default_factory=dict)  # the engine's results, computed once and shared by the tests


def steering(case: Case, mode: str | None, layer: int = LAYER, sign: float = 1.0):
    return Steering(sign * case.direction, layer, MODES[mode], mode) if mode else None


@dataclass
class Means:
    means: torch.Tensor  # [prompt, layer, d_model]
    counts: torch.Tensor
    norms: torch.Tensor


def residual_means(engine, case: Case, positions: str, mode: str | None = None) -> Means:
    """Residual means over ``positions`` while generating under ``mode`` (as derivation reads them)."""
    from lens_steer.engines.base import ResidualSums

    info = engine.info
    sums = ResidualSums(len(case.prompts), info.n_layers, info.d_model, positions)
    engine.generate(case.prompts, CFG, steering=steering(case, mode), residuals=sums, progress=False)
    return Means(*sums.means())


def _bridge_results(bridge, case: Case) -> dict:
    ref = {"info": bridge.info}
    for mode in MODES:
        s = steering(case, mode)
        ref["logprobs", mode] = bridge.first_token_logprobs(case.prompts, steering=s, top_k=5)
        ref["greedy", mode] = [g.response_ids for g in bridge.generate(case.prompts, CFG, steering=s, progress=False)]
    for positions, mode in (("all", None), ("generated", "single"), ("prompt", "single")):
        ref["residuals", positions, mode] = residual_means(bridge, case, positions, mode)
    case.specs = spec_steerings(bridge.tokenizer, case.prompts, ref["greedy", None], case.direction,
                                mean_residual(bridge, case.prompts[0]))
    for name, plan in case.specs.items():
        ref["greedy", name] = [g.response_ids for g in bridge.generate(case.prompts, CFG, steering=plan,
                                                                       progress=False)]
        ref["logprobs", name] = bridge.first_token_logprobs(case.prompts, steering=plan, top_k=5)
    return ref


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    return {arch: make_tiny(arch, tmp_path_factory.mktemp(arch)) for arch in ARCHITECTURES}


@pytest.fixture(scope="module", params=[(e, a) for e in ENGINES for a in ARCHITECTURES],
                ids=lambda p: f"{p[0].id if hasattr(p[0], 'id') else p[0]}-{p[1]}")
def case(request, tiny_dirs):
    from lens_steer.engines.bridge import BridgeEngine
    from lens_steer.models import load_model
    from lens_steer.prompts import encode_prompt

    engine_param, arch = request.param
    name = engine_param.values[0]
    for mark in engine_param.marks:  # a parametrised fixture does not apply its parameters' marks
        if mark.name == "skip":
            pytest.skip(mark.kwargs["reason"])
    path = str(tiny_dirs[arch])
    bridge = BridgeEngine(load_model(path))
    d_model = bridge.info.d_model
    case = Case(arch, None, [encode_prompt(bridge.tokenizer, q, "direct") for q in QUESTIONS],
                torch.nn.functional.normalize(torch.randn(d_model, generator=torch.Generator().manual_seed(1)), dim=0))
    assert min(map(len, case.prompts)) > STEP_TOKENS
    case.ref = _bridge_results(bridge, case)
    del bridge
    gc.collect()
    case.engine = engine_spec(name).open(path, **ENGINE_OPTIONS.get(name, {}))
    yield case
    close = getattr(type(case.engine), "close", None)  # engines holding processes or memory free them here
    if close is not None:
        close(case.engine)


def _logprob_gap(a, b) -> float:
    assert all(len(set(x) & set(y)) >= 4 for x, y in zip(a, b, strict=True))  # the same top tokens
    return max(max(abs(x[t] - y[t]) for t in set(x) & set(y)) for x, y in zip(a, b))


def _greedy(case: Case, mode) -> list[list[int]]:
    return [g.response_ids for g in case.engine.generate(case.prompts, CFG, steering=steering(case, mode),
                                                         progress=False)]


def test_unsteered_engine_matches_the_bridge(case):
    needs(case, "first_token_logprobs")
    assert case.engine.info == case.ref["info"]  # id, architecture, depth, width, embedding fingerprint
    gap = _logprob_gap(case.engine.first_token_logprobs(case.prompts, top_k=5), case.ref["logprobs", None])
    greedy = _greedy(case, None)
    same = sum(x == y for x, y in zip(greedy, case.ref["greedy", None]))
    print(f"{case.arch} plain: greedy {same}/{len(greedy)} equal to the bridge, first-token logprobs within {gap:.1e}")
    assert same == len(greedy) and gap <= LOGPROB_TOL


@pytest.mark.parametrize("mode", ["continuous", "single"])
def test_steering_changes_the_output_and_agrees_with_the_bridge(case, mode):
    needs(case, f"steer:{mode}")
    needs(case, "first_token_logprobs")
    lp = case.engine.first_token_logprobs(case.prompts, steering=steering(case, mode), top_k=5)
    gap = _logprob_gap(lp, case.ref["logprobs", mode])
    greedy = _greedy(case, mode)
    same = sum(x == y for x, y in zip(greedy, case.ref["greedy", mode]))
    changed = sum(x != y for x, y in zip(greedy, case.ref["greedy", None]))
    moved = _moved(case.ref["logprobs", None], lp)
    print(f"{case.arch} {mode} (layer {LAYER}, c={MODES[mode]}): greedy {same}/{len(greedy)} equal to the bridge, "
          f"first-token logprobs within {gap:.1e}; steering changed {changed}/{len(greedy)} responses, moved "
          f"first-token logprobs by up to {moved:.2f}")
    assert same == len(greedy) and gap <= LOGPROB_TOL
    assert changed >= 1 and moved > 0.05  # a steering the compiled graph skipped would fail here


def _moved(plain, steered) -> float:
    return max(max(abs(p[t] - q[t]) for t in set(p) & set(q)) if set(p) & set(q) else 10.0
               for p, q in zip(plain, steered))


def test_residual_means_match_the_bridge(case):
    """Unsteered, every position: the stream after each block is the bridge's ``hook_resid_post``."""
    needs(case, "residual_capture")
    a = residual_means(case.engine, case, "all")
    b = case.ref["residuals", "all", None]
    cos = torch.nn.functional.cosine_similarity(a.means, b.means, dim=-1)
    rel = ((a.norms - b.norms).abs() / b.norms).max().item()
    print(f"{case.arch}: residual means per layer, cosine to the bridge min {cos.min().item():.7f} "
          f"({len(case.prompts)} requests x {N_LAYERS} layers), mean norms within {rel:.1e}")
    assert torch.equal(a.counts, b.counts)
    assert cos.min() >= 0.9999 and rel <= 1e-4


def test_single_touches_exactly_the_prompt_positions(case):
    """Single steering under chunked prefill: at the prompt positions the stream after block ``LAYER`` is the
    unsteered one plus exactly ``c·v`` (blocks before it untouched); the response positions agree with the
    bridge's; a second run served from the prefix cache (salted by the steering) gives the same tokens."""
    needs(case, "steer:single")
    needs(case, "residual_capture")
    plain = residual_means(case.engine, case, "prompt")
    steered = residual_means(case.engine, case, "prompt", "single")
    shift = steered.means - plain.means
    delta = MODES["single"] * case.direction
    err = (shift[:, LAYER] - delta).abs().max().item()
    assert shift[:, :LAYER].abs().max().item() <= 1e-5 and err <= 1e-4 * delta.norm().item()
    gen = residual_means(case.engine, case, "generated", "single")
    ref = case.ref["residuals", "generated", "single"]
    assert torch.equal(gen.counts, ref.counts)
    cos = torch.nn.functional.cosine_similarity(gen.means, ref.means, dim=-1).min().item()
    first = _greedy(case, "single")
    again = _greedy(case, "single")
    cached = case.engine.last_cached_tokens if capabilities_of(case.engine).prefix_cache else None
    print(f"{case.arch} single: prompt positions shifted by c*v within {err:.1e} at layer {LAYER}; response "
          f"positions cosine to the bridge {cos:.7f}; prefix cache served "
          f"{'(no cache)' if cached is None else sum(cached)} prompt tokens on rerun")
    assert cos >= 0.9999
    assert again == first == case.ref["greedy", "single"]
    assert cached is None or sum(cached) > 0


def test_mixed_batch_equals_each_request_alone(case):
    plans = [None, steering(case, "continuous"), steering(case, "single"),
             (steering(case, "continuous", layer=0), steering(case, "single", layer=2, sign=-1.0))]
    mixed = case.engine.generate(case.prompts, CFG, steering=plans, progress=False)
    alone = [case.engine.generate([p], CFG, steering=s, progress=False)[0] for p, s in zip(case.prompts, plans)]
    assert [g.response_ids for g in mixed] == [g.response_ids for g in alone]
    assert mixed[1].response_ids == case.ref["greedy", "continuous"][1]


def test_engine_is_clean_after_an_exception(case):
    bad = [case.prompts[0], [10 ** 7] * 3]  # the second prompt's token is outside the vocabulary
    with pytest.raises(Exception):
        case.engine.generate(bad, CFG, steering=steering(case, "continuous"), progress=False)
    # nothing of the failed call's steering is left: unsteered and steered outputs are the bridge's again
    assert _greedy(case, None) == case.ref["greedy", None]
    assert _greedy(case, "continuous") == case.ref["greedy", "continuous"]


# ---------------------------------------------------------------- steering specs (spec_cases)

def _spec_requests(case: Case, names) -> tuple[list[list[int]], list]:
    """Every prompt under every named spec, in one list of requests (spec-major)."""
    return ([p for _ in names for p in case.prompts], [case.specs[n] for n in names for _ in case.prompts])


def _by_spec(values: list, names) -> dict:
    k = len(values) // len(names)
    return {n: values[i * k:(i + 1) * k] for i, n in enumerate(names)}


def _mixed_spec_call(case: Case) -> dict:
    """Every spec x every prompt in one ``generate`` call and one ``first_token_logprobs`` call (computed once)."""
    if "specs" not in case.runs:
        names = list(case.specs)
        prompts, plans = _spec_requests(case, names)
        gens = case.engine.generate(prompts, CFG, steering=plans, progress=False)
        lps = case.engine.first_token_logprobs(prompts, steering=plans, top_k=5)
        case.runs["specs"] = (_by_spec([g.response_ids for g in gens], names), _by_spec(lps, names))
    return case.runs["specs"]


def _needs_specs(case: Case) -> None:
    needs(case, "mixed_steering")
    needs(case, "first_token_logprobs")
    for plan in case.specs.values():
        for s in plan if isinstance(plan, tuple) else (plan,):
            needs(case, f"steer:{s.mode}")


def test_every_spec_agrees_with_the_bridge_in_one_mixed_call(case):
    """Each position kind, schedule and operator (and plans of several at one layer), all in one call: greedy
    tokens and first-token log-probabilities equal the bridge's, and each steering changed the output."""
    _needs_specs(case)
    greedy, logprobs = _mixed_spec_call(case)
    n = len(case.prompts)
    worst, agree = 0.0, 0
    for name in case.specs:
        same = sum(x == y for x, y in zip(greedy[name], case.ref["greedy", name]))
        gap = _logprob_gap(logprobs[name], case.ref["logprobs", name])
        changed = sum(x != y for x, y in zip(greedy[name], case.ref["greedy", None]))
        moved = _moved(case.ref["logprobs", None], logprobs[name])
        print(f"{case.arch} {name}: greedy {same}/{n} equal to the bridge, first-token logprobs within {gap:.1e}; "
              f"changed {changed}/{n} responses, moved first-token logprobs by up to {moved:.2f}")
        worst, agree = max(worst, gap), agree + same
        assert same == n and gap <= LOGPROB_TOL, name
        assert changed >= 1 or moved > 0.05, f"{name}: the steering changed nothing"
    print(f"{case.arch} specs: {agree}/{n * len(case.specs)} greedy responses equal to the bridge over "
          f"{len(case.specs)} specs in one call, first-token logprobs within {worst:.1e}")


def test_a_mixed_spec_call_equals_each_request_alone(case):
    _needs_specs(case)
    greedy, _ = _mixed_spec_call(case)
    names = list(case.specs)
    alone = {name: case.engine.generate([case.prompts[i % len(case.prompts)]], CFG, steering=case.specs[name],
                                        progress=False)[0].response_ids for i, name in enumerate(names)}
    same = sum(alone[name] == greedy[name][i % len(case.prompts)] for i, name in enumerate(names))
    print(f"{case.arch} specs: {same}/{len(names)} requests of the mixed call equal the request alone")
    assert same == len(names)


def test_token_reading_specs_agree_when_the_prefix_cache_serves_the_prompt(case):
    """Single mode, a trigger ending the prompt and a region opened in it, under chunked prefill: run again with
    their prompts' first blocks served from the prefix cache (salted by the spec), the answers stay the bridge's."""
    _needs_specs(case)
    needs(case, "prefix_cache")
    _mixed_spec_call(case)  # the first run, which fills the cache
    names = cached_names(case.specs)
    assert len(names) == 3
    prompts, plans = _spec_requests(case, names)
    greedy = _by_spec([g.response_ids for g in case.engine.generate(prompts, CFG, steering=plans, progress=False)],
                      names)
    cached = case.engine.last_cached_tokens
    same = sum(x == y for n in names for x, y in zip(greedy[n], case.ref["greedy", n]))
    print(f"{case.arch} {', '.join(names)}: prefix cache served {sum(cached)} of {sum(map(len, prompts))} prompt "
          f"tokens; greedy {same}/{len(prompts)} equal to the bridge")
    assert all(c > 0 for c in cached) and same == len(prompts)
