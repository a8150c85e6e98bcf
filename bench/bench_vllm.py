"""Eval throughput, bridge engine vs vLLM engine, through the real harness (``EvalRun``), side by side.

Each engine runs in its own subprocess (one vLLM engine per process): the same GSM8K test items x
direct, cot, steered-continuous, steered-single, the same greedy settings, a fresh results directory.
Printed: wall seconds of the eval (model load excluded, engine start reported apart), generated
tokens per second, and the ratio vLLM / bridge. The vLLM worker also times the same prompts
unsteered and steered in one call each (steering overhead), and counts responses equal to the
bridge engine's.

Usage::

    python bench/bench_vllm.py --n 32 --tokens 128          # needs `make setup-vllm` and ../shared/data
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Table, load_line, machine, run_worker  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def worker(spec: dict) -> dict:
    import torch

    from lens_steer.config import GenerationConfig
    from lens_steer.engines.base import Steering
    from lens_steer.eval import Condition, DataSettings, EvalRun, RunSettings, steered_condition
    from lens_steer.method.vectors import SteeringVector, VectorMetadata
    from lens_steer.prompts import encode_prompt

    start = time.perf_counter()
    if spec["engine"] == "vllm":
        from lens_steer.engines.vllm import VllmEngine

        engine = VllmEngine(max_num_batched_tokens=spec["step_tokens"])
    else:
        from lens_steer.engines.bridge import BridgeEngine
        from lens_steer.models import load_model

        engine = BridgeEngine(load_model())
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
    conditions = (Condition.baseline("direct"), Condition.baseline("cot"),
                  steered_condition(vec, "continuous", 15, scale=0.1), steered_condition(vec, "single", 15, scale=1.0))
    settings = RunSettings(command="eval", data=DataSettings(("gsm8k",), limit=spec["n"], data_dir=spec["data_dir"]),
                           conditions=conditions, generation=gen, chunk_size=spec["chunk"] or None)
    t0 = time.perf_counter()
    out = EvalRun(tmp / "run", settings, engine, vec).run(progress=False, log=False)
    eval_s = time.perf_counter() - t0
    tokens = sum(s.mean_tokens * s.n for s in out.summary if s.benchmark == "gsm8k")
    result = {"engine": spec["engine"], "load_s": load_s, "eval_s": eval_s, "tokens": tokens,
              "rows": out.new_rows,
              "responses": {f"{r.id}|{r.condition}": r.response for r in __import__(
                  "lens_steer.eval.results_dir", fromlist=["read_items"]).read_items(tmp / "run" / "items.jsonl")}}
    if spec["engine"] == "vllm":
        examples, _ = settings.data.load()
        prompts = [encode_prompt(engine.tokenizer, e.question, "direct") for e in examples]
        direction = vec.directions[15] / vec.directions[15].norm()
        times = {}
        for label, steer in (("unsteered", None), ("continuous", Steering(direction, 15, 4.0, "continuous")),
                             ("unsteered2", None), ("single", Steering(direction, 15, 20.0, "single"))):
            t = time.perf_counter()
            gens = engine.generate(prompts, gen, steering=steer, progress=False)
            times[label] = (time.perf_counter() - t, sum(len(x.response_ids) for x in gens))
        result["steer"] = times
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=32, help="GSM8K test items")
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--batch", type=int, default=16, help="bridge batch size")
    p.add_argument("--chunk", type=int, default=0, help="items per resumable chunk (default: batch)")
    p.add_argument("--step-tokens", type=int, default=2048, help="vLLM max_num_batched_tokens")
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    print("machine:", json.dumps(machine()))
    print(load_line())
    spec = {"n": args.n, "tokens": args.tokens, "batch": args.batch, "chunk": args.chunk,
            "step_tokens": args.step_tokens, "data_dir": args.data_dir}
    res = {e: run_worker(Path(__file__), {**spec, "engine": e}) for e in ("bridge", "vllm")}
    print(load_line())
    table = Table(["engine", "engine start s", "eval wall s", "rows", "generated tokens", "tok/s", "vs bridge"])
    base = res["bridge"]["tokens"] / res["bridge"]["eval_s"]
    for e, r in res.items():
        rate = r["tokens"] / r["eval_s"]
        table.add(e, r["load_s"], r["eval_s"], r["rows"], int(r["tokens"]), rate, rate / base)
    print(table.render())
    a, b = res["bridge"]["responses"], res["vllm"]["responses"]
    print(f"responses equal, vllm vs bridge: {sum(a[k] == b.get(k) for k in a)}/{len(a)}")
    st = res["vllm"]["steer"]
    base_rate = (st["unsteered"][1] + st["unsteered2"][1]) / (st["unsteered"][0] + st["unsteered2"][0])
    for mode in ("continuous", "single"):
        secs, toks = st[mode]
        print(f"vllm {mode}: {toks / secs:.1f} tok/s vs unsteered {base_rate:.1f} "
              f"(slowdown {base_rate / (toks / secs):.3f}; lengths differ under steering, so per-token rates)")


if __name__ == "__main__":
    main()
