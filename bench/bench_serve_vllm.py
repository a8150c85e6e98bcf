"""Served throughput of ``lens-steer serve --engine vllm`` (vLLM's OpenAI server and async engine with the steering
gate) against the in-process vLLM engine on the same prompts and steerings, side by side in one run.

Both engines are up for the whole run, each with the same KV-cache share: the in-process
:class:`~lens_steer.engines.vllm.VllmEngine` in this process and the server in a child process (one engine per
process). In-process: one ``generate`` call with every prompt (a third unsteered, a third continuous, a third
single-mode). Served: the same prompts as token ids to ``/v1/completions`` (greedy) from 1, 8 and 32 concurrent
clients (threads with one keep-alive ``http.client`` connection each). Each measurement runs ``--repeats`` times,
interleaved, after one untimed pass of each; the best run is reported: wall seconds, generated tokens per second,
served / in-process, and how many served answers equal the in-process ones. Target (issue 29): at 32 clients the
server reaches at least 80 % of in-process throughput.

Usage::

    .venv-vllm/bin/python bench/bench_serve_vllm.py                        # embedded model, 32 prompts x 64 tokens
    .venv-vllm/bin/python bench/bench_serve_vllm.py --n 8 --tokens 8 --clients 1,8 --repeats 1   # smoke run
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import _prompts, _random_vector, _served  # noqa: E402
from common import Table, interleaved, load_line, machine  # noqa: E402


def _start_server(model: str, vector: Path, tokens: int, memory: float) -> tuple[subprocess.Popen, str]:
    cli = str(Path(sys.executable).with_name("lens-steer"))
    proc = subprocess.Popen([cli, "serve", "--engine", "vllm", "--model", model, "--served-model-name", "bench",
                             "--vector", f"rand={vector}", "--port", "0", "--max-tokens", str(tokens),
                             "--gpu-memory-utilization", str(memory), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:
        if line.startswith("lens-steer serve: "):
            if " on " not in line:
                raise RuntimeError(line.strip())
            return proc, line.split(" on ", 1)[1].split("/v1", 1)[0]
    raise RuntimeError(f"the server exited ({proc.wait()}) before it listened")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--n", type=int, default=32, help="prompts per measurement")
    p.add_argument("--tokens", type=int, default=64, help="max new tokens per prompt")
    p.add_argument("--clients", default="1,8,32", help="concurrent clients, comma list")
    p.add_argument("--coeff", type=float, default=2.0, help="coefficient of the steered prompts (unit directions)")
    p.add_argument("--memory", type=float, default=0.15, help="each engine's KV-cache share of RAM (CPU)")
    p.add_argument("--repeats", type=int, default=3, help="runs of each measurement, interleaved (best reported)")
    args = p.parse_args(argv)

    from lens_steer.config import GenerationConfig
    from lens_steer.engines.vllm import VllmEngine
    from lens_steer.serve.steering_spec import parse_steering_text, resolve_steering
    from lens_steer.serve.vectors import load_served_vectors

    print("machine:", json.dumps(machine()))
    print(load_line())
    start = time.perf_counter()
    engine = VllmEngine(args.model, gpu_memory_utilization=args.memory)
    print(f"in-process engine started in {time.perf_counter() - start:.1f} s")
    tmp = Path(tempfile.mkdtemp())
    vector_dir = _random_vector(engine, tmp)
    start = time.perf_counter()
    proc, url = _start_server(args.model, vector_dir, args.tokens, args.memory)
    print(f"server started in {time.perf_counter() - start:.1f} s at {url}")
    try:
        vectors = {n: sv.vector for n, sv in load_served_vectors([f"rand={vector_dir}"], engine.info).items()}
        layer = engine.info.n_layers // 2
        specs = ["none", f"rand:{layer}:coeff={args.coeff}", f"rand:{layer}:coeff={args.coeff}:single"]
        steer = [specs[i % len(specs)] for i in range(args.n)]
        plans = [resolve_steering(parse_steering_text(s), vectors, info=engine.info, dtype=engine_dtype(engine),
                                  engine="vllm").plan for s in steer]
        prompts = _prompts(engine.tokenizer, args.n)
        config = GenerationConfig(max_new_tokens=args.tokens, batch_size=args.n)
        jobs = [(i, {"model": "bench", "prompt": prompts[i], "max_tokens": args.tokens, "steering": steer[i]})
                for i in range(args.n)]
        levels = [int(c) for c in args.clients.split(",") if c.strip()]
        local = engine.generate(prompts, config, steering=plans, progress=False)  # warm-up
        _served(url, jobs, max(levels))

        def in_process() -> dict:
            t0 = time.perf_counter()
            gens = engine.generate(prompts, config, steering=plans, progress=False)
            return {"wall": time.perf_counter() - t0, "tokens": sum(len(g.response_ids) for g in gens),
                    "equal": sum(g.text == ref.text for g, ref in zip(gens, local))}

        def served(clients: int):
            def run() -> dict:
                wall, answers = _served(url, jobs, clients)
                return {"wall": wall, "tokens": sum(a["usage"]["completion_tokens"] for a in answers.values()),
                        "equal": sum(answers[i]["choices"][0]["text"] == local[i].text for i in range(args.n))}
            return run

        runs = interleaved({"in-process": in_process} | {c: served(c) for c in levels}, args.repeats)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
        engine.close()
    best = {name: min(rs, key=lambda r: r["wall"]) for name, rs in runs.items()}
    local_tps = best["in-process"]["tokens"] / best["in-process"]["wall"]
    table = Table(["clients", "requests", "wall s (best)", "tokens/s", "served / in-process", "answers equal"])
    for name, r in best.items():
        tps = r["tokens"] / r["wall"]
        table.add(name, args.n, r["wall"], tps, tps / local_tps, f"{min(x['equal'] for x in runs[name])}/{args.n}")
    print(f"\n{args.n} prompts x up to {args.tokens} tokens, steering {' / '.join(specs)} in turn; in-process: one "
          f"generate call on the vLLM engine; best of {args.repeats} interleaved runs each, after a warm-up\n")
    print(table.render())
    print("\n" + load_line())
    return 0


def engine_dtype(engine):
    from lens_steer.config import torch_dtype

    return torch_dtype(engine.dtype_name)


if __name__ == "__main__":
    sys.exit(main())
