"""The vLLM engine on a tiny random model of each of the ten decoder architectures it steers, checked
against the bridge engine on the same directory: identity and unsteered greedy equal; each steering mode
changes the output and agrees with the bridge (greedy tokens, first-token log-probabilities); single mode
touches exactly the prompt positions (every prefill here is chunked) and keeps doing so when the prefix
cache serves the prompt; a mixed batch equals each request alone; residual means for derivation match
(the stream after every block is the bridge's ``blocks.{l}.hook_resid_post``); the engine is clean after an
exception. An architecture it cannot steer is refused in one line before any engine starts.

Every bridge result is computed before the architecture's vLLM engine starts, and the bridge is dropped:
vLLM's Transformers backend (OLMo 2) compiles Hugging Face's own model class in place, after which a
Hugging Face model of that class no longer runs in the process. One engine per architecture, shared by
its tests and closed after them."""

from __future__ import annotations

import gc
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from lens_steer.config import GenerationConfig
from lens_steer.engines.base import Steering
from lens_steer.engines.vllm import vllm_available

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_models import ARCHITECTURES, N_LAYERS, make_tiny  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.skipif(bool(vllm_available()), reason=vllm_available() or "ok")]

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
    return ref


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    return {arch: make_tiny(arch, tmp_path_factory.mktemp(arch)) for arch in ARCHITECTURES}


@pytest.fixture(scope="module", params=ARCHITECTURES)
def case(request, tiny_dirs):
    from lens_steer.engines.bridge import BridgeEngine
    from lens_steer.engines.vllm import VllmEngine
    from lens_steer.models import load_model
    from lens_steer.prompts import encode_prompt

    arch, path = request.param, str(tiny_dirs[request.param])
    bridge = BridgeEngine(load_model(path))
    d_model = bridge.info.d_model
    case = Case(arch, None, [encode_prompt(bridge.tokenizer, q, "direct") for q in QUESTIONS],
                torch.nn.functional.normalize(torch.randn(d_model, generator=torch.Generator().manual_seed(1)), dim=0))
    assert min(map(len, case.prompts)) > STEP_TOKENS
    case.ref = _bridge_results(bridge, case)
    del bridge
    gc.collect()
    case.engine = VllmEngine(path, max_num_batched_tokens=STEP_TOKENS, block_size=32,  # prompts span whole blocks
                            kv_cache_memory_bytes=32 << 20)
    yield case
    case.engine.close()


def _logprob_gap(a, b) -> float:
    assert all(len(set(x) & set(y)) >= 4 for x, y in zip(a, b, strict=True))  # the same top tokens
    return max(max(abs(x[t] - y[t]) for t in set(x) & set(y)) for x, y in zip(a, b))


def _greedy(case: Case, mode) -> list[list[int]]:
    return [g.response_ids for g in case.engine.generate(case.prompts, CFG, steering=steering(case, mode),
                                                         progress=False)]


def test_unsteered_engine_matches_the_bridge(case):
    assert case.engine.info == case.ref["info"]  # id, architecture, depth, width, embedding fingerprint
    gap = _logprob_gap(case.engine.first_token_logprobs(case.prompts, top_k=5), case.ref["logprobs", None])
    greedy = _greedy(case, None)
    same = sum(x == y for x, y in zip(greedy, case.ref["greedy", None]))
    print(f"{case.arch} plain: greedy {same}/{len(greedy)} equal to the bridge, first-token logprobs within {gap:.1e}")
    assert same == len(greedy) and gap <= LOGPROB_TOL


@pytest.mark.parametrize("mode", ["continuous", "single"])
def test_steering_changes_the_output_and_agrees_with_the_bridge(case, mode):
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
    cached = case.engine.last_cached_tokens
    print(f"{case.arch} single: prompt positions shifted by c*v within {err:.1e} at layer {LAYER}; response "
          f"positions cosine to the bridge {cos:.7f}; prefix cache served {sum(cached)} prompt tokens on rerun")
    assert cos >= 0.9999
    assert sum(cached) > 0 and again == first == case.ref["greedy", "single"]


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
    assert case.engine.steering_is_clean()
    assert _greedy(case, None) == case.ref["greedy", None]


def test_an_architecture_it_cannot_steer_is_refused_in_one_line(tmp_path, capsys):
    from transformers import GPT2Config

    from lens_steer.cli import main
    from lens_steer.engines.vllm import VllmEngine

    GPT2Config(n_layer=2, n_embd=128, n_head=2, architectures=["GPT2LMHeadModel"]).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="cannot steer GPT2LMHeadModel") as err:
        VllmEngine(str(tmp_path))
    assert "\n" not in str(err.value) and all(a in str(err.value) for a in ARCHITECTURES)
    assert main(["generate", "--engine", "vllm", "--model", str(tmp_path), "--prompt", "hi"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "cannot steer GPT2LMHeadModel" in lines[0]


def test_a_vllm_outside_the_tested_range_is_refused_in_one_line():
    from lens_steer.compat import require
    from lens_steer.compat import vllm as vllm_compat

    with pytest.raises(ImportError, match=r"tested with vllm>=0\.32,<0\.33, but vllm 0\.34\.0") as err:
        require("vllm", vllm_compat.SUPPORTED, version="0.34.0")
    assert "\n" not in str(err.value)
    from packaging.specifiers import SpecifierSet

    assert vllm_compat.VERSION is not None and vllm_compat.VERSION in SpecifierSet(vllm_compat.SUPPORTED)


def test_the_v2_model_runner_is_refused_in_one_line(monkeypatch):
    from lens_steer.compat import vllm as vllm_compat

    monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", "1")
    with pytest.raises(ValueError, match="V1 model runner only"):
        vllm_compat.runner_environment()
    monkeypatch.delenv("VLLM_USE_V2_MODEL_RUNNER")
    assert vllm_compat.runner_environment().get("VLLM_USE_V2_MODEL_RUNNER", "0") == "0"
