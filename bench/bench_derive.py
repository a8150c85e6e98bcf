"""Derivation speed and memory: lens_steer's ``derive_cot_vector`` vs a plain-transformers baseline.

The baseline (:func:`plain_derive`) is what one would write without lens_steer: an
unwrapped HF model (``load_hf()``), the same prompts (``encode_prompt``), the same batches
(longest first, at most ``batch_size`` prompts and 8192 padded prompt tokens, as
lens_steer's default ``max_batch_tokens``), the same KV-cached greedy loop and PyTorch forward hooks on
``model.layers[l]`` summing the residual stream over the generated tokens; v = mean over
questions of mean(CoT) - mean(direct). Implementations measured side by side, each run in
its own subprocess (fresh model, peak RSS of that run only), alternating order:

* ``lens``        derive_cot_vector on the bridge (the default: fast path on, HF's SDPA kernel)
* ``lens_eager``  the same with ``LENS_STEER_FAST_PATH=eager`` (fast path with the bridge's eager math)
* ``lens_bridge`` the same with ``LENS_STEER_FAST_PATH=0`` (every pass through the bridge's components)
* ``plain``       the baseline, HF's default attention (sdpa)
* ``plain_eager`` the baseline with eager attention (the attention math the bridge uses)

Usage::

    python bench/bench_derive.py                       # N = 16, 64, 256 and a max-new-tokens sweep
    python bench/bench_derive.py --n 16 --tokens 32 --sweep ""   # quick check
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    Table,
    Timing,
    load_line,
    machine,
    median,
    peak_rss_mb,
    questions,
    reset_peak_rss,
    rss_mb,
    run_worker,
    set_threads,
    timed,
)

IMPLS = ("lens", "lens_eager", "lens_bridge", "plain", "plain_eager")
ENV = {"lens_bridge": {"LENS_STEER_FAST_PATH": "0"}, "lens_eager": {"LENS_STEER_FAST_PATH": "eager"},
       "lens": {"LENS_STEER_FAST_PATH": ""}}


# --------------------------------------------------------------------------- baseline
def plain_derive(hf, tok, qs, max_new_tokens: int, batch_size: int, max_batch_tokens: int = 8192):
    """The baseline derivation in plain transformers + PyTorch hooks.

    Returns:
        ``(v [n_layers, d_model], per-prompt response ids)``.
    """
    import torch
    from transformers import DynamicCache

    from lens_steer.prompts import encode_prompt

    prompts = [encode_prompt(tok, q.question, style) for q in qs for style in ("cot", "direct")]
    layers = hf.model.layers
    n_layers, d = len(layers), hf.config.hidden_size
    sums = torch.zeros(len(prompts), n_layers, d)
    counts = torch.zeros(len(prompts))
    stop = {tok.eos_token_id} | set(
        [hf.generation_config.eos_token_id] if isinstance(hf.generation_config.eos_token_id, int)
        else (hf.generation_config.eos_token_id or [])
    )
    stop_t = torch.tensor(sorted(i for i in stop if i is not None))
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    current = {"w": None, "acc": None}

    def make_hook(layer):
        def hook(module, args, output):
            if current["w"] is not None:
                h = output[0] if isinstance(output, tuple) else output
                current["acc"][:, layer] += torch.einsum("bpd,bp->bd", h.float(), current["w"])
        return hook

    handles = [layer.register_forward_hook(make_hook(i)) for i, layer in enumerate(layers)]
    responses: list[list[int]] = [[] for _ in prompts]
    # Longest first; a batch takes at most batch_size prompts and rows x width <= max_batch_tokens.
    batches: list[list[int]] = []
    for i in sorted(range(len(prompts)), key=lambda i: (-len(prompts[i]), i)):
        if batches and len(batches[-1]) < batch_size and len(prompts[batches[-1][0]]) * (len(batches[-1]) + 1) <= max_batch_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    try:
        with torch.inference_mode():
            for rows in batches:
                width = max(len(prompts[i]) for i in rows)
                ids = torch.full((len(rows), width), pad)
                mask = torch.zeros((len(rows), width), dtype=torch.long)
                for j, i in enumerate(rows):
                    ids[j, width - len(prompts[i]):] = torch.tensor(prompts[i])
                    mask[j, width - len(prompts[i]):] = 1
                pos = (mask.cumsum(-1) - 1).clamp(min=0)
                cache = DynamicCache()
                current["acc"], current["w"] = torch.zeros(len(rows), n_layers, d), None  # prompt: not counted
                logits = hf(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache,
                            use_cache=True, logits_to_keep=1).logits[:, -1]
                finished = torch.zeros(len(rows), dtype=torch.bool)
                n = torch.zeros(len(rows))
                last = pos[:, -1]
                for step in range(max_new_tokens):
                    nxt = logits.argmax(-1)
                    content = ~finished & ~torch.isin(nxt, stop_t)
                    finished |= ~content
                    for j in content.nonzero().flatten().tolist():
                        responses[rows[j]].append(int(nxt[j]))
                    if bool(finished.all()):
                        break
                    # Consume the token (also after the last step, for rows cut at max_new_tokens).
                    current["w"] = content.float()[:, None]
                    n += content.float()
                    mask = torch.cat([mask, torch.ones((len(rows), 1), dtype=mask.dtype)], 1)
                    last = last + 1
                    logits = hf(input_ids=torch.where(content, nxt, pad)[:, None], attention_mask=mask,
                                position_ids=last[:, None], past_key_values=cache, use_cache=True,
                                logits_to_keep=1).logits[:, -1]
                idx = torch.tensor(rows)
                sums[idx] += current["acc"]
                counts[idx] += n
    finally:
        for h in handles:
            h.remove()
    means = sums / counts.clamp(min=1)[:, None, None]
    ok = (counts[0::2] > 0) & (counts[1::2] > 0)
    v = (means[0::2] - means[1::2])[ok].mean(0)
    for r in responses:  # decode, as derive_cot_vector keeps the texts
        tok.decode(r, skip_special_tokens=True)
    return v, responses


# --------------------------------------------------------------------------- worker
def worker(spec: dict) -> dict:
    """Load, warm up, reset peak RSS, run one derivation, report."""
    import torch

    set_threads(spec.get("threads"))
    impl, n, t, bs = spec["impl"], spec["n"], spec["tokens"], spec["batch_size"]
    qs = questions(n)
    warm = questions(1, seed=1)
    if impl.startswith("plain"):
        from lens_steer.models import load_hf

        hf, tok = load_hf()
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        if impl == "plain_eager":
            hf.set_attn_implementation("eager")

        def run(q, tokens):
            v, responses = plain_derive(hf, tok, q, tokens, bs)
            return v, [tok.decode(r, skip_special_tokens=True) for r in responses], sum(map(len, responses))
    else:
        from lens_steer.method.derive import derive_cot_vector
        from lens_steer.config import GenerationConfig
        from lens_steer.models import load_model

        model = load_model()
        if impl in ("lens", "lens_eager"):
            from lens_steer.engines.api import fast_path_attention, fast_path_status

            assert fast_path_status(model) is None, fast_path_status(model)
            assert fast_path_attention(model) == ("eager" if impl == "lens_eager" else "sdpa")

        def run(q, tokens):
            vec = derive_cot_vector(model, q, generation=GenerationConfig(max_new_tokens=tokens, batch_size=bs),
                                    progress=False)
            return vec.directions, [r["response"] for r in vec.responses], sum(r["n_tokens"] for r in vec.responses)
    run(warm, 4)
    rss0 = rss_mb()
    exact_peak = reset_peak_rss()
    tm = Timing()
    with timed(tm):
        v, texts, gen_tokens = run(qs, t)
    path = Path(spec["out_dir"]) / f"{impl}-{n}-{t}.pt"
    torch.save({"v": v, "texts": texts}, path)
    return {"impl": impl, "n": n, "tokens": t, "wall": tm.wall, "cpu": tm.cpu, "gen_tokens": gen_tokens,
            "rss_before_mb": rss0, "peak_rss_mb": peak_rss_mb(), "peak_is_of_run": exact_peak,
            "threads": torch.get_num_threads(), "vector": str(path)}


# --------------------------------------------------------------------------- orchestration
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, nargs="+", default=[16, 64, 256], help="numbers of questions")
    p.add_argument("--tokens", type=int, default=64, help="max_new_tokens for the N scaling")
    p.add_argument("--tokens-256", type=int, default=32, help="max_new_tokens cap for N >= 256")
    p.add_argument("--sweep", default="16,32,64,128", help="max_new_tokens sweep at the smallest N ('' = none)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--impls", default=",".join(IMPLS))
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on a shared 2-core machine 2 threads stall ~16 ms per op; 0 = torch default)")
    p.add_argument("--skip-main", action="store_true", help="run only the --sweep configurations")
    p.add_argument("--json", help="also write all measurements here")
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return

    impls = [i for i in args.impls.split(",") if i]
    configs = [] if args.skip_main else [(n, args.tokens if n < 256 else args.tokens_256) for n in args.n]
    if args.sweep:
        configs += [(min(args.n), t) for t in map(int, args.sweep.split(",")) if (min(args.n), t) not in configs]
    print("configurations (N, max_new_tokens):", configs, "impls:", impls, "torch threads:", args.threads or "default")
    print("machine:", json.dumps(machine()))
    print(load_line())
    results = []
    script = Path(__file__).resolve()
    with tempfile.TemporaryDirectory() as out_dir:
        for n, t in configs:
            for r in range(args.repeats):
                order = impls if r % 2 == 0 else impls[::-1]
                for impl in order:
                    env = ENV.get(impl, {})
                    spec = {"impl": impl, "n": n, "tokens": t, "batch_size": args.batch_size,
                            "threads": args.threads, "out_dir": out_dir}
                    res = run_worker(script, spec, env)
                    res["load1"] = os.getloadavg()[0]
                    results.append(res)
                    print(f"  {impl:12s} N={n:4d} T={t:4d} wall {res['wall']:7.1f}s cpu {res['cpu']:7.1f}s "
                          f"peak {res['peak_rss_mb']:.0f} MiB (load {res['load1']:.1f})", flush=True)
            _compare(out_dir, n, t, impls, results)
    print()
    print(report(results, impls))
    print(load_line())
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "results": results}, indent=1))


def _compare(out_dir: str, n: int, t: int, impls: list[str], results: list[dict]) -> None:
    """Print how far the vectors and responses of the implementations agree."""
    import torch

    saved = {}
    for impl in impls:
        path = Path(out_dir) / f"{impl}-{n}-{t}.pt"
        if path.exists():
            saved[impl] = torch.load(path)
    for a, b in (("lens_eager", "lens_bridge"), ("lens_eager", "plain_eager"), ("lens", "plain"),
                 ("lens", "lens_bridge")):
        if a in saved and b in saved:
            va, vb = saved[a]["v"], saved[b]["v"]
            same = sum(x == y for x, y in zip(saved[a]["texts"], saved[b]["texts"]))
            print(f"  {a} vs {b}: vectors bit-identical {torch.equal(va, vb)}, |dv|/|v| "
                  f"{float((va - vb).norm() / vb.norm()):.2e}, identical responses {same}/{len(saved[b]['texts'])}")


def report(results: list[dict], impls: list[str]) -> str:
    """Markdown tables: per configuration, median wall/CPU per implementation and ratios to plain."""
    configs = sorted({(r["n"], r["tokens"]) for r in results})
    t = Table(["N", "max_new_tokens", "impl", "wall s", "CPU s", "questions/s", "gen tok/s",
               "peak RSS MiB", "peak - RSS at start", "wall / plain", "CPU / plain"])
    for n, tok in configs:
        rows = {i: [r for r in results if r["n"] == n and r["tokens"] == tok and r["impl"] == i] for i in impls}
        base = rows.get("plain")
        bw = median([r["wall"] for r in base]) if base else None
        bc = median([r["cpu"] for r in base]) if base else None
        for impl in impls:
            if not rows[impl]:
                continue
            w = median([r["wall"] for r in rows[impl]])
            c = median([r["cpu"] for r in rows[impl]])
            peak = max(r["peak_rss_mb"] for r in rows[impl])
            grow = max(r["peak_rss_mb"] - r["rss_before_mb"] for r in rows[impl])
            gen = rows[impl][0]["gen_tokens"]
            t.add(n, tok, impl, w, c, n / w, gen / w, peak, grow,
                  (w / bw) if bw else "-", (c / bc) if bc else "-")
    return t.render()


if __name__ == "__main__":
    main()
