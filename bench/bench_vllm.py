"""Bridge engine vs vLLM engine through the real code paths, side by side: eval, sweep, derive.

Each engine runs in its own subprocess (one vLLM engine per process) and does, in order:

* eval (``EvalRun``): the same GSM8K test items x direct, cot, steered-continuous, steered-single;
* sweep (``EvalRun``, command ``sweep``): GSM8K train items x direct + a grid of layers x scales x
  both modes (``--sweep-layers`` x ``--sweep-scales`` x 2 cells);
* derive (``derive_cot_vector``): the paper corpus (286 questions, 572 generations) or its first
  ``--derive-n`` questions.

Printed: wall seconds of each (engine start reported apart), generated tokens per second, the ratio
vLLM / bridge, responses equal between engines, the derived vectors' per-layer cosine, and the vLLM
engine's steering overhead (the same prompts unsteered and steered, one call each, interleaved, the
prefix cache emptied before every call).

Usage::

    python bench/bench_vllm.py --n 32 --tokens 128          # needs `make setup-vllm` and ../shared/data
    python bench/bench_vllm.py --skip derive,sweep          # eval only
    python bench/bench_vllm.py --model qwen2.5-coder-0.5b-instruct --n 16 --derive-n 32 --skip sweep
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Table, load_line, median, parse_or_work, run_worker  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def worker(spec: dict) -> dict:
    import torch

    from lens_steer.config import GenerationConfig
    from lens_steer.engines.base import Steering
    from lens_steer.eval import Condition, DataSettings, RunSettings, steered_condition, sweep_conditions
    from lens_steer.method.vectors import SteeringVector, VectorMetadata
    from lens_steer.prompts import encode_prompt

    start = time.perf_counter()
    if spec["engine"] == "vllm":
        from lens_steer.engines.vllm import VllmEngine

        engine = VllmEngine(spec["model"], max_num_batched_tokens=spec["step_tokens"])
    else:
        from lens_steer.engines.bridge import BridgeEngine
        from lens_steer.models import load_model

        engine = BridgeEngine(load_model(spec["model"]))
    load_s = time.perf_counter() - start
    info = engine.info
    g = torch.Generator().manual_seed(0)
    meta = VectorMetadata(model_id=info.model_id, model_fingerprint=info.fingerprint, n_layers=info.n_layers,
                          d_model=info.d_model, corpus_hash="bench")
    tmp = Path(tempfile.mkdtemp())
    vec = SteeringVector(directions=torch.randn(info.n_layers, info.d_model, generator=g), metadata=meta,
                         resid_norm=torch.full((info.n_layers,), 10.0))
    vec = SteeringVector.load(vec.save(tmp / "vec"))
    gen = GenerationConfig(max_new_tokens=spec["tokens"], batch_size=spec["batch"])
    result = {"engine": spec["engine"], "load_s": load_s}
    if "eval" not in spec["skip"]:
        conditions = (Condition.baseline("direct"), Condition.baseline("cot"),
                      steered_condition(vec, "continuous", 15, scale=0.1), steered_condition(vec, "single", 15, scale=1.0))
        settings = RunSettings(command="eval", data=DataSettings(("gsm8k",), limit=spec["n"], data_dir=spec["data_dir"]),
                               conditions=conditions, generation=gen, chunk_size=spec["chunk"] or None)
        result["eval"] = _timed_run(tmp / "eval", settings, engine, vec)
    if "sweep" not in spec["skip"]:
        cells = sweep_conditions(vec, spec["sweep_layers"], ["continuous", "single"],
                                 scales={"continuous": spec["sweep_scales"],
                                         "single": [10 * s for s in spec["sweep_scales"]]})
        settings = RunSettings(command="sweep", data=DataSettings(("gsm8k",), split="train", limit=spec["sweep_n"],
                                                                  data_dir=spec["data_dir"]),
                               conditions=(Condition.baseline("direct"), *cells),
                               generation=GenerationConfig(max_new_tokens=spec["sweep_tokens"], batch_size=spec["batch"]),
                               chunk_size=spec["chunk"] or None)
        result["sweep"] = _timed_run(tmp / "sweep", settings, engine, vec)
        result["sweep"]["cells"] = len(cells)
    if "derive" not in spec["skip"]:
        from lens_steer.data.corpus import paper_corpus
        from lens_steer.method.derive import derive_cot_vector

        qs = paper_corpus(spec["data_dir"])[:spec["derive_n"]]
        t0 = time.perf_counter()
        v = derive_cot_vector(engine, qs, generation=GenerationConfig(max_new_tokens=spec["derive_tokens"],
                                                                      batch_size=spec["derive_batch"]), progress=False)
        wall = time.perf_counter() - t0
        path = v.save(Path(spec["out"]) / f"derived-{spec['engine']}")
        st = v.metadata.stats
        result["derive"] = {"wall_s": wall, "questions": len(qs), "path": str(path),
                            "tokens": round((st.mean_tokens_cot + st.mean_tokens_direct) * len(qs))}
    if spec["engine"] == "vllm" and "steer" not in spec["skip"] and spec.get("steer_repeats"):
        result["steer_overhead"] = _steer_overhead(engine, spec, vec, gen)
    return result


def _steer_overhead(engine, spec: dict, vec, gen) -> dict:
    """Seconds and generated tokens of the same direct prompts unsteered and steered, one call each,
    the labels interleaved ``spec["steer_repeats"]`` times. The prefix cache is emptied before every
    call: otherwise an unsteered call would find its prompts cached by the previous unsteered one while
    a steered call (salted by its steering) computes them, which is not the steering's cost. At c = 0
    the whole steering path runs (plans, per-step index fill, bank rows) but adds zeros, so responses
    equal the unsteered ones and the time difference is the mechanism's cost alone."""
    from lens_steer.engines.base import Steering
    from lens_steer.eval import DataSettings
    from lens_steer.prompts import encode_prompt

    examples, _ = DataSettings(("gsm8k",), limit=spec["n"], data_dir=spec["data_dir"]).load()
    prompts = [encode_prompt(engine.tokenizer, e.question, "direct") for e in examples]
    direction = vec.directions[15] / vec.directions[15].norm()
    labels = {"unsteered": None,
              "continuous-c0": Steering(direction, 15, 0.0, "continuous"),
              "single-c0": Steering(direction, 15, 0.0, "single"),
              "continuous": Steering(direction, 15, 4.0, "continuous"),
              "single": Steering(direction, 15, 20.0, "single")}
    times: dict[str, list] = {k: [] for k in labels}
    engine.generate(prompts[:4], gen, progress=False)  # warm-up outside the timing
    for _ in range(spec["steer_repeats"]):
        for label, steer in labels.items():
            engine.llm.reset_prefix_cache()
            t = time.perf_counter()
            gens = engine.generate(prompts, gen, steering=steer, progress=False)
            times[label].append([time.perf_counter() - t, sum(len(x.response_ids) for x in gens)])
    return times


def _timed_run(out: Path, settings, engine, vec) -> dict:
    from lens_steer.eval import EvalRun
    from lens_steer.eval.results_dir import read_items

    t0 = time.perf_counter()
    run = EvalRun(out, settings, engine, vec).run(progress=False, log=False)
    wall = time.perf_counter() - t0
    rows = read_items(out / "items.jsonl")
    return {"wall_s": wall, "rows": run.new_rows, "tokens": sum(r.n_tokens for r in rows),
            "responses": {f"{r.id}|{r.condition}": r.response for r in rows}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct",
                   help="model of both engines (e.g. qwen2.5-coder-0.5b-instruct after `make setup-qwen`)")
    p.add_argument("--n", type=int, default=32, help="GSM8K test items of the eval")
    p.add_argument("--tokens", type=int, default=128, help="new tokens of the eval")
    p.add_argument("--sweep-n", type=int, default=8, help="GSM8K train items of the sweep")
    p.add_argument("--sweep-tokens", type=int, default=64)
    p.add_argument("--sweep-layers", default="10,15,20", help="comma-separated")
    p.add_argument("--sweep-scales", default="0.05,0.1", help="continuous scales (single: 10x)")
    p.add_argument("--derive-n", type=int, default=286, help="paper-corpus questions to derive from")
    p.add_argument("--derive-tokens", type=int, default=96)
    p.add_argument("--derive-batch", type=int, default=8, help="bridge batch size of the derive (the CLI default)")
    p.add_argument("--batch", type=int, default=16, help="bridge batch size of eval and sweep")
    p.add_argument("--chunk", type=int, default=0, help="items per resumable chunk (default: batch)")
    p.add_argument("--step-tokens", type=int, default=2048, help="vLLM max_num_batched_tokens")
    p.add_argument("--steer-repeats", type=int, default=3, help="interleaved repeats of the steering-overhead calls")
    p.add_argument("--skip", default="", help="comma-separated of eval,sweep,derive,steer (steer: the vLLM "
                   "engine's steering overhead on --n GSM8K test prompts)")
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--out", default=str(REPO / "runs" / "bench" / "vllm"), help="derived vectors go here")
    args = parse_or_work(p, worker)
    if args is None:
        return
    spec = {"model": args.model, "n": args.n, "tokens": args.tokens, "batch": args.batch, "chunk": args.chunk,
            "step_tokens": args.step_tokens, "data_dir": args.data_dir, "sweep_n": args.sweep_n,
            "sweep_tokens": args.sweep_tokens, "sweep_layers": [int(x) for x in args.sweep_layers.split(",")],
            "sweep_scales": [float(x) for x in args.sweep_scales.split(",")], "derive_n": args.derive_n,
            "derive_tokens": args.derive_tokens, "derive_batch": args.derive_batch, "out": args.out,
            "steer_repeats": args.steer_repeats,
            "skip": [x for x in args.skip.split(",") if x]}
    res = {e: run_worker(Path(__file__), {**spec, "engine": e}) for e in ("bridge", "vllm")}
    print(load_line())
    print("engine start s: " + ", ".join(f"{e} {r['load_s']:.1f}" for e, r in res.items()))
    table = Table(["job", "engine", "wall s", "rows", "generated tokens", "tok/s", "vs bridge", "equal responses"])
    for job in ("eval", "sweep", "derive"):
        if job not in res["bridge"]:
            continue
        base = res["bridge"][job]["tokens"] / res["bridge"][job]["wall_s"]
        for e, r in res.items():
            j = r[job]
            rate = j["tokens"] / j["wall_s"]
            a, b = res["bridge"][job].get("responses"), j.get("responses")
            equal = f"{sum(a[k] == b.get(k) for k in a)}/{len(a)}" if a and b else ""
            label = f"{job} ({j['cells']} cells)" if "cells" in j else job
            table.add(label, e, j["wall_s"], j.get("rows", j.get("questions")), int(j["tokens"]), rate, rate / base, equal)
    if table.rows:
        print(table.render())
    if "derive" in res["bridge"]:
        import torch

        from lens_steer.method.vectors import SteeringVector

        a, b = (SteeringVector.load(res[e]["derive"]["path"]) for e in ("bridge", "vllm"))
        cos = torch.nn.functional.cosine_similarity(a.directions, b.directions, dim=-1)
        print(f"derived vectors ({res['vllm']['derive']['questions']} questions): per-layer cosine vllm vs bridge "
              f"min {cos.min().item():.5f}, mean {cos.mean().item():.5f}")
    if "steer_overhead" in res["vllm"]:
        st = res["vllm"]["steer_overhead"]
        print(f"vLLM steering overhead ({spec['n']} GSM8K direct prompts, {spec['tokens']} new tokens, one call per "
              f"label, labels interleaved x{spec['steer_repeats']}, prefix cache emptied before each call): "
              f"median tok/s, slowdown = unsteered rate / steered rate")
        rates = {k: median([t / s for s, t in v]) for k, v in st.items()}
        table = Table(["steering", "median tok/s", "runs", "slowdown vs unsteered", "same tokens as unsteered"])
        for k, v in st.items():
            table.add(k, rates[k], len(v), rates["unsteered"] / rates[k],
                      "yes" if all(t == st["unsteered"][0][1] for _, t in v) else "no (steered lengths differ)")
        print(table.render())

if __name__ == "__main__":
    main()
