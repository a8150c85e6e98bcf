"""The vLLM engine's steering overhead per generated token, by position kind, side by side in one run.

One engine (default operator slots) generates the same GSM8K direct prompts under each label, one call per label,
the labels interleaved (ABC CBA ...) ``--repeats`` times, the prefix cache emptied before every call (else an
unsteered call would find its prompts cached by the previous one while a steered call, salted by its steering,
computes them). The ``-c0`` labels steer with c = 0: the whole path runs (plan registration, the per-step fill that
decides positions from each request's tokens, the buffers and the in-graph slots) but changes nothing, so every
label generates the same tokens and the time difference is the mechanism's cost alone. Labels:

* ``unsteered``; ``continuous-c0`` (the paper's preset: the bank row at every token);
* ``trigger-c0``: ``at=trigger:TEXT`` (SEAL-style step boundaries: the newline tokens), span 1;
* ``region-c0``: ``at=region:OPEN..CLOSE`` opened in the prompt (the chat template's last role marker), so every
  generated token is inside and steered;
* ``add-norm-c0``: ``op=add-norm`` at every position (an operator slot at every token);
* ``continuous``, ``trigger``, ``region``: c > 0 (the answers change; tokens per second still comparable).

A second engine built with ``steer_slots=0`` (the presets-only graph, no operator slots) runs ``unsteered`` and
``continuous-c0`` too (``--skip-baseline`` leaves it out): what the slots cost every request, steered or not.

Usage::

    python bench/bench_vllm_steer.py --n 32 --tokens 128 --repeats 3     # needs `make setup-vllm`, ../shared/data
    python bench/bench_vllm_steer.py --n 4 --tokens 16 --repeats 1       # a smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Table, load_line, median, parse_or_work, run_worker  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LAYER = 15


def _labels(engine, direction) -> dict:
    """label -> steering, for the embedded model's tokenizer (trigger texts and region markers are its tokens)."""
    from lens_steer.engines.base import Steering
    from lens_steer.engines.steer_spec import SteerSpec, Where

    tok = engine.tokenizer
    vocab = tok.get_vocab()
    opener, closer = next(((a, b) for a, b in (("<|im_start|>", "<|im_end|>"), ("<start_of_turn>", "<end_of_turn>"))
                           if a in vocab and b in vocab), (None, None))
    trigger = SteerSpec(Where.trigger("\n"))
    region = SteerSpec(Where.between(opener, closer)) if opener else None

    def s(spec, c):
        return Steering(direction, LAYER, c, spec)

    labels = {"unsteered": None, "continuous-c0": s("continuous", 0.0), "trigger-c0": s(trigger, 0.0),
              "region-c0": s(region, 0.0) if region else None, "add-norm-c0": s("op=add-norm", 0.0),
              "continuous": s("continuous", 4.0), "trigger": s(trigger, 8.0),
              "region": s(region, 4.0) if region else None}
    return {k: v for k, v in labels.items() if v is not None or k == "unsteered"}


def worker(spec: dict) -> dict:
    import torch

    from lens_steer.config import GenerationConfig
    from lens_steer.engines.vllm import VllmEngine
    from lens_steer.eval import DataSettings
    from lens_steer.prompts import encode_prompt

    start = time.perf_counter()
    engine = VllmEngine(spec["model"], max_num_batched_tokens=spec["step_tokens"], steer_slots=spec["slots"])
    load_s = time.perf_counter() - start
    examples, _ = DataSettings(("gsm8k",), limit=spec["n"], data_dir=spec["data_dir"]).load()
    prompts = [encode_prompt(engine.tokenizer, e.question, "direct") for e in examples]
    v = torch.randn(engine.info.d_model, generator=torch.Generator().manual_seed(0))
    labels = _labels(engine, v / v.norm())
    if spec["slots"] == 0:
        labels = {k: labels[k] for k in ("unsteered", "continuous-c0")}
    gen = GenerationConfig(max_new_tokens=spec["tokens"])
    engine.generate(prompts[:4], gen, progress=False)  # warm-up outside the timing
    times: dict[str, list] = {k: [] for k in labels}
    names = list(labels)
    for r in range(spec["repeats"]):
        for label in (names if r % 2 == 0 else names[::-1]):
            engine.llm.reset_prefix_cache()
            steps = _steps(engine)
            t = time.perf_counter()
            gens = engine.generate(prompts, gen, steering=labels[label], progress=False)
            wall = time.perf_counter() - t
            times[label].append([wall, sum(len(g.response_ids) for g in gens), _steps(engine) - steps,
                                 [g.response_ids for g in gens] if r == 0 else None])
    engine.close()
    return {"load_s": load_s, "slots": spec["slots"], "times": times,
            "modes": {k: (s.mode if s is not None else "-") for k, s in labels.items()}}


def _steps(engine) -> int:
    """Engine steps that wrote steering buffers so far (in-process workers only; -1 elsewhere)."""
    from lens_steer.engines.vllm_steer import STATE

    return STATE.steps_steered if engine.workers == 1 else -1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--n", type=int, default=32, help="GSM8K test items (direct prompts), all in one call per label")
    p.add_argument("--tokens", type=int, default=128, help="new tokens per request")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats of every label")
    p.add_argument("--step-tokens", type=int, default=2048, help="vLLM max_num_batched_tokens")
    p.add_argument("--slots", type=int, default=2, help="operator slots per layer of the measured engine")
    p.add_argument("--skip-baseline", action="store_true", help="leave out the steer_slots=0 engine")
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    args = parse_or_work(p, worker)
    if args is None:
        return
    spec = {"model": args.model, "n": args.n, "tokens": args.tokens, "repeats": args.repeats,
            "step_tokens": args.step_tokens, "data_dir": args.data_dir}
    res = run_worker(Path(__file__), {**spec, "slots": args.slots})
    base = None if args.skip_baseline else run_worker(Path(__file__), {**spec, "slots": 0})
    print(load_line())
    print(f"engine start s: {res['load_s']:.1f}" + (f" (steer_slots=0: {base['load_s']:.1f})" if base else ""))
    print(f"vLLM steering overhead per generated token ({args.n} GSM8K direct prompts, {args.tokens} new tokens, one "
          f"call per label, labels interleaved x{args.repeats}, prefix cache emptied before each call; median tok/s)")
    rate = {k: median([t / s for s, t, *_ in v]) for k, v in res["times"].items()}
    plain = res["times"]["unsteered"][0][3]
    table = Table(["label", "spec", "median tok/s", "runs", "steered steps", "vs unsteered", "vs continuous-c0",
                   "same tokens as unsteered"])
    for k, v in res["times"].items():
        same = "yes" if v[0][3] == plain else "no (steered)"
        table.add(k, res["modes"][k], rate[k], len(v), v[0][2], rate["unsteered"] / rate[k],
                  rate["continuous-c0"] / rate[k], same)
    if base:
        for k, v in base["times"].items():
            r = median([t / s for s, t, *_ in v])
            table.add(f"{k} (steer_slots=0)", base["modes"][k], r, len(v), v[0][2], rate["unsteered"] / r,
                      rate["continuous-c0"] / r, "yes" if v[0][3] == plain else "no")
    print(table.render())
    print("vs X = X's tok/s / this label's tok/s (1.05 = 5 % slower per token); the steer_slots=0 rows are another "
          "engine (the presets-only graph): their 'vs unsteered' below 1 is what the slots cost every request")


if __name__ == "__main__":
    main()
