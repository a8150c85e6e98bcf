"""Served throughput (``lens-steer serve``'s HTTP server over the bridge engine) against in-process
``generate`` on the same prompts, side by side in one run.

The same engine object serves both: first ``engine.generate`` on every prompt in one call (each prompt with
its steering: a third unsteered, a third continuous, a third single-mode), then the server on localhost with
1, 8 and 32 concurrent clients sending the same prompts as token ids to ``/v1/completions`` (greedy). Clients
are threads with one keep-alive ``http.client`` connection each (cheaper than the ``openai`` client, so the
client threads take little of the CPU the model needs). Each measurement runs ``--repeats`` times, interleaved,
after one untimed pass of each (the first batch shapes are slow); the best run is reported. Printed: wall seconds, generated tokens per second,
the ratio served / in-process, how many served answers equal the in-process ones, and how the batcher
gathered requests (engine calls, mean prompts per call).

Usage::

    python bench/bench_serve.py                                  # embedded model, 32 prompts x 64 tokens
    python bench/bench_serve.py --n 8 --tokens 8 --clients 1,8   # a quick smoke run
"""

from __future__ import annotations

import argparse
import http.client
import json
import queue
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Table, interleaved, load_line, machine  # noqa: E402


def _prompts(tokenizer, n: int) -> list[list[int]]:
    from lens_steer.data.corpus import load_corpus
    from lens_steer.prompts import encode_prompt

    qs = [e.question for e in load_corpus("demo")]
    return [encode_prompt(tokenizer, qs[i % len(qs)] + (f" ({i // len(qs)})" if i >= len(qs) else ""), "direct")
            for i in range(n)]


def _random_vector(engine, out: Path):
    """A seeded random unit direction per layer, saved and served as ``rand`` (throughput does not depend on
    what the direction means)."""
    import torch

    from lens_steer.method.vectors import SteeringVector, VectorMetadata

    info = engine.info
    g = torch.Generator().manual_seed(0)
    directions = torch.randn(info.n_layers, info.d_model, generator=g)
    directions = directions / directions.norm(dim=-1, keepdim=True)
    meta = VectorMetadata(model_id=info.model_id, model_fingerprint=info.fingerprint, n_layers=info.n_layers,
                          d_model=info.d_model, corpus_hash="bench")
    return SteeringVector(directions=directions, metadata=meta).save(out / "rand")


def _served(url: str, jobs: list[tuple[int, dict]], clients: int) -> tuple[float, dict[int, dict]]:
    """Send every job from ``clients`` threads; ``(wall seconds, {job index: response body})``."""
    host, port = url.removeprefix("http://").split(":")
    todo: queue.Queue = queue.Queue()
    for job in jobs:
        todo.put(job)
    answers: dict[int, dict] = {}
    errors: list[str] = []

    def client() -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=600)
        while True:
            try:
                i, body = todo.get_nowait()
            except queue.Empty:
                break
            conn.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            payload = json.loads(resp.read())
            if resp.status != 200:
                errors.append(f"{resp.status}: {payload}")
            answers[i] = payload
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed, e.g. {errors[0]}")
    return wall, answers


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--n", type=int, default=32, help="prompts per measurement")
    p.add_argument("--tokens", type=int, default=64, help="max new tokens per prompt")
    p.add_argument("--clients", default="1,8,32", help="concurrent clients, comma list")
    p.add_argument("--max-batch", type=int, default=32, help="server: most prompts per engine call")
    p.add_argument("--batch-window-ms", type=float, default=5.0)
    p.add_argument("--coeff", type=float, default=2.0, help="coefficient of the steered prompts (unit directions)")
    p.add_argument("--repeats", type=int, default=2, help="runs of each measurement, interleaved (best reported)")
    args = p.parse_args(argv)

    from lens_steer.config import GenerationConfig
    from lens_steer.engines.registry import open_engine
    from lens_steer.serve import ServeApp, ServeSettings, load_served_vectors, make_server, serve_in_thread
    from lens_steer.serve.steering_spec import parse_steering_text

    print("machine:", json.dumps(machine()))
    print(load_line())
    start = time.perf_counter()
    engine = open_engine("bridge", args.model)
    print(f"model {args.model} loaded in {time.perf_counter() - start:.1f} s")
    tmp = Path(tempfile.mkdtemp())
    vectors = load_served_vectors([f"rand={_random_vector(engine, tmp)}"], engine.info)
    layer = engine.info.n_layers // 2
    specs = ["none", f"rand:{layer}:coeff={args.coeff}", f"rand:{layer}:coeff={args.coeff}:single"]
    app = ServeApp(engine, vectors, ServeSettings(model_name="bench", max_tokens=args.tokens, max_batch=args.max_batch,
                                                  batch_window_ms=args.batch_window_ms))
    levels = [int(c) for c in args.clients.split(",") if c.strip()]
    prompts = _prompts(engine.tokenizer, args.n)
    steer = [specs[i % len(specs)] for i in range(args.n)]
    plans = [app.resolve(parse_steering_text(s), "request").plan for s in steer]
    config = GenerationConfig(max_new_tokens=args.tokens, batch_size=args.max_batch)

    server = make_server(app, "127.0.0.1", 0, log_requests=False)
    serve_in_thread(server)
    jobs = [(i, {"model": "bench", "prompt": prompts[i], "max_tokens": args.tokens, "steering": steer[i]})
            for i in range(args.n)]
    local = engine.generate(prompts, config, steering=plans, progress=False)  # warm-up (first shapes are slow)
    _served(server.url, jobs, max(levels))

    def in_process() -> dict:
        start = time.perf_counter()
        gens = engine.generate(prompts, config, steering=plans, progress=False)
        wall = time.perf_counter() - start
        return {"wall": wall, "tokens": sum(len(g.response_ids) for g in gens), "calls": 1,
                "equal": sum(g.text == ref.text for g, ref in zip(gens, local))}

    def served(clients: int):
        def run() -> dict:
            calls_before = app.batcher.stats.calls
            wall, answers = _served(server.url, jobs, clients)
            return {"wall": wall, "tokens": sum(a["usage"]["completion_tokens"] for a in answers.values()),
                    "calls": app.batcher.stats.calls - calls_before,
                    "equal": sum(answers[i]["choices"][0]["text"] == local[i].text for i in range(args.n))}
        return run

    try:
        runs = interleaved({"in-process": in_process} | {c: served(c) for c in levels}, args.repeats)
    finally:
        server.shutdown()
        server.server_close()
        app.close()
    best = {name: min(rs, key=lambda r: r["wall"]) for name, rs in runs.items()}
    local_tps = best["in-process"]["tokens"] / best["in-process"]["wall"]
    table = Table(["clients", "requests", "wall s (best)", "tokens/s", "served / in-process", "answers equal",
                   "engine calls", "prompts / call"])
    for name, r in best.items():
        tps = r["tokens"] / r["wall"]
        table.add(name, args.n, r["wall"], tps, tps / local_tps, f"{min(x['equal'] for x in runs[name])}/{args.n}",
                  r["calls"], args.n / r["calls"])
    print(f"\n{args.n} prompts x up to {args.tokens} tokens, steering {' / '.join(specs)} in turn; "
          f"in-process: one generate call; best of {args.repeats} interleaved runs each, after a warm-up\n")
    print(table.render())
    print("\n" + load_line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
