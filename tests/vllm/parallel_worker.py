"""Run in its own process by test_vllm_parallel.py (one vLLM engine per process): build a
``VllmEngine`` on a model directory with the given parallel sizes and write what the test compares
with the bridge engine (identity, first-token log-probabilities plain and steered, residual means).

Usage: python tests/vllm/parallel_worker.py MODEL_DIR OUT.pt TP PP
"""

from __future__ import annotations

import sys

import torch


def main(model_dir: str, out: str, tp: int, pp: int) -> None:
    from lens_steer.config import GenerationConfig
    from lens_steer.engines.base import Steering
    from lens_steer.engines.vllm import VllmEngine
    from lens_steer.method.collect import collect_residual_means

    from parallel_common import LAYERS, SPEC_COEFF, prompts_for, steering_direction, token_specs

    engine = VllmEngine(model_dir, tensor_parallel_size=tp, pipeline_parallel_size=pp, max_num_batched_tokens=64)
    prompts = prompts_for(engine.tokenizer)
    direction = steering_direction(engine.info.d_model)
    result = {"info": engine.info.to_dict(), "workers": engine.workers, "logprobs": {}}
    for mode, coeff in ((None, 0.0), ("continuous", 20.0), ("single", 40.0)):
        steering = [Steering(direction, layer, coeff, mode) for layer in LAYERS] if mode else None
        steering = tuple(steering) if steering else None
        result["logprobs"][mode or "plain"] = engine.first_token_logprobs(prompts, steering=steering, top_k=10)
    res = collect_residual_means(engine, prompts, GenerationConfig(max_new_tokens=8), progress=False)
    result["means"], result["counts"] = res.means, res.counts
    result["responses"] = [g.response_ids for g in res.generations]
    # position kinds that read each request's tokens, at layers of both stages, both in one call
    specs = token_specs(engine.tokenizer, prompts, result["responses"])
    plans = [tuple(Steering(direction, layer, SPEC_COEFF, spec) for layer in LAYERS) for spec in specs for _ in prompts]
    gens = engine.generate(prompts * len(specs), GenerationConfig(max_new_tokens=8), steering=plans, progress=False)
    result["specs"] = {spec: [g.response_ids for g in gens[i * len(prompts):(i + 1) * len(prompts)]]
                       for i, spec in enumerate(specs)}
    torch.save(result, out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
