"""Steered generation speed: continuous and single injection vs unsteered, batch 1 and 16.

One process, one model; the conditions run interleaved (ABC CBA ...) and every number is
reported as the median and the best of the repeats. Throughput is split with a forward pre-hook and hook on the HF
model (outside the blocks, so the fast path still applies): *decode tok/s* counts rows x
KV-cached steps over the time from the first decode step to the end of the batch;
*prefill s* is the prompt pass. Each condition is run on the fast path (SDPA, the
default), the fast path with eager attention, and the bridge path (fast path off).

Usage::

    python bench/bench_steer.py                 # batch 1 and 16, 32 new tokens, 5 repeats
    python bench/bench_steer.py --batches 1 --tokens 16 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Table, load_line, machine, median, questions, set_threads  # noqa: E402

PATHS = {"fast": ("sdpa", True), "fast_eager": ("eager", True), "bridge": ("sdpa", False)}
MODES = ("unsteered", "continuous", "single")


class _Clock:
    """Times the prompt pass and the decode steps of every batch via hooks on the HF model."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, float, float, float, int, int]] = []
        self._start = (0.0, 0.0)

    def pre(self, module, args, kwargs):
        self._start = (time.perf_counter(), time.process_time())

    def post(self, module, args, kwargs, output):
        ids = kwargs["input_ids"]
        self.calls.append((*self._start, time.perf_counter(), time.process_time(), ids.shape[0], ids.shape[1]))

    def summary(self) -> dict:
        """Prefill wall time; decode wall and CPU time (first decode step to end of batch) and token-steps."""
        prefill, decode_time, decode_cpu, decode_tokens, steps = 0.0, 0.0, 0.0, 0, 0
        first = None  # (wall, cpu) at the start of the batch's first decode step
        for i, (w0, c0, w1, c1, rows, width) in enumerate(self.calls):
            if width > 1 or i == 0:  # a prompt pass starts a batch
                if first is not None:
                    decode_time += self.calls[i - 1][2] - first[0]
                    decode_cpu += self.calls[i - 1][3] - first[1]
                first = None
                prefill += w1 - w0
            else:
                if first is None:
                    first = (w0, c0)
                decode_tokens += rows
                steps += 1
        if first is not None:
            decode_time += self.calls[-1][2] - first[0]
            decode_cpu += self.calls[-1][3] - first[1]
        return {"prefill": prefill, "decode_time": decode_time, "decode_cpu": decode_cpu,
                "decode_tokens": decode_tokens, "steps": steps}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--layer", type=int, default=15)
    p.add_argument("--coeff", type=float, default=4.0)
    p.add_argument("--paths", default=",".join(PATHS))
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on a shared 2-core machine 2 threads stall ~16 ms per op)")
    p.add_argument("--json")
    args = p.parse_args(argv)
    set_threads(args.threads)

    import torch

    from lens_steer.config import GenerationConfig
    from lens_steer.engines.api import fast_path_status, generate, set_fast_path, steer
    from lens_steer.engines.hooks import attach_forward_pre_hook
    from lens_steer.models import hf_model, load_model
    from lens_steer.prompts import encode_prompt

    print("machine:", json.dumps(machine()))
    print(load_line())
    model = load_model()
    hf = hf_model(model)
    gsm = [q for q in questions(286) if q.source == "gsm8k"]
    prompts_all = [encode_prompt(model.tokenizer, q.question, "cot") for q in gsm]
    direction = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    direction = direction / direction.norm()

    results = []
    for batch in args.batches:
        prompts = prompts_all[:batch]
        cfg = GenerationConfig(max_new_tokens=args.tokens, batch_size=batch)
        generate(model, prompts[:1], GenerationConfig(max_new_tokens=2), progress=False)  # warm-up

        def make(path: str, mode: str):
            attention, enabled = PATHS[path]

            def run() -> dict:
                set_fast_path(model, enabled, attention=attention)
                clock = _Clock()
                handle = hf.register_forward_hook(clock.post, with_kwargs=True)
                try:
                    with attach_forward_pre_hook(hf, clock.pre):
                        t0 = time.perf_counter()
                        if mode == "unsteered":
                            status = fast_path_status(model)
                            gens = generate(model, prompts, cfg, progress=False)
                        else:
                            with steer(model, direction, args.layer, args.coeff, mode=mode):
                                status = fast_path_status(model)
                                gens = generate(model, prompts, cfg, progress=False)
                        wall = time.perf_counter() - t0
                finally:
                    handle.remove()
                    set_fast_path(model, True, attention="sdpa")
                return {"batch": batch, "path": path, "mode": mode, "wall": wall, "fast": status is None,
                        "content_tokens": sum(len(g.response_ids) for g in gens), **clock.summary()}

            return run

        fns = {(path, mode): make(path, mode) for path in args.paths.split(",") for mode in MODES}
        for r in range(args.repeats):
            for key in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
                res = fns[key]()
                results.append(res)
                print(f"  b={batch:2d} {key[0]:9s} {key[1]:10s} wall {res['wall']:6.2f}s prefill {res['prefill']:5.2f}s "
                      f"decode {res['decode_tokens'] / max(res['decode_time'], 1e-9):6.1f} tok/s "
                      f"({res['decode_tokens'] / max(res['decode_cpu'], 1e-9):6.1f} per CPU-s) "
                      f"steps {res['steps']} fast={res['fast']}", flush=True)
    print()
    print(report(results))
    print(load_line())
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "results": results}, indent=1))


def report(results: list[dict]) -> str:
    """Per batch and path: decode rates (median and best of the repeats) and slowdowns vs unsteered.

    On a shared machine contention only ever adds time, so the best repeat is the least
    disturbed estimate; the median is shown beside it.
    """
    t = Table(["batch", "path", "mode", "decode tok/s (wall, median)", "decode tok / CPU-s (median)",
               "decode tok / CPU-s (best)", "prefill s", "steps", "slowdown (CPU, median)", "slowdown (CPU, best)",
               "slowdown (wall, median)"])
    keys = sorted({(r["batch"], r["path"]) for r in results}, key=lambda k: (k[0], list(PATHS).index(k[1])))
    for batch, path in keys:
        rows = {m: [r for r in results if r["batch"] == batch and r["path"] == path and r["mode"] == m] for m in MODES}
        wall = {m: median([r["decode_tokens"] / r["decode_time"] for r in rows[m]]) for m in MODES if rows[m]}
        cpu = {m: median([r["decode_tokens"] / r["decode_cpu"] for r in rows[m]]) for m in MODES if rows[m]}
        best = {m: max(r["decode_tokens"] / r["decode_cpu"] for r in rows[m]) for m in MODES if rows[m]}
        for m in MODES:
            if not rows[m]:
                continue
            t.add(batch, path, m, wall[m], cpu[m], best[m], median([r["prefill"] for r in rows[m]]),
                  median([r["steps"] for r in rows[m]]), cpu["unsteered"] / cpu[m], best["unsteered"] / best[m],
                  wall["unsteered"] / wall[m])
    return t.render() + "\n(slowdown = unsteered decode rate / this rate; > 1: steering costs time)"


if __name__ == "__main__":
    main()
