"""The hardware limit: measured matmul GFLOP/s and memory bandwidth, the decode tokens/s they allow
for the embedded 135M model at batch 1 and 16, and how close lens_steer and plain HF get.

Roofline per decode step at batch B and context C (fp32):
  compute  B * (2 * N_matmul + 4 * n_layers * C * d_model) FLOP / peak GFLOP/s
  memory   (4 * N_matmul + B * C * kv_bytes_per_token) bytes / bandwidth
  bound    tok/s = B / max(compute, memory)
N_matmul counts the weights every step multiplies (all but the embedding lookup; the tied
unembedding is read once for the last position). The measured rates are taken side by
side in this run at the same context: plain HF (sdpa), plain HF (eager), lens_steer's
fast path (SDPA, the default), fast path with eager attention, and the bridge path.

Usage::

    python bench/bench_limits.py
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Table, load_line, machine, median, set_threads  # noqa: E402


def gflops(m: int, k: int, n: int, seconds: float = 1.0) -> float:
    """Sustained fp32 GFLOP/s of an (m x k) @ (k x n) matmul."""
    import torch

    a, b = torch.randn(m, k), torch.randn(k, n)
    out = torch.empty(m, n)
    torch.mm(a, b, out=out)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        torch.mm(a, b, out=out)
        reps += 1
    return 2 * m * k * n * reps / (time.perf_counter() - t0) / 1e9


def bandwidth(gib: float = 1.0, seconds: float = 1.0) -> dict:
    """Memory bandwidth in GB/s: tensor copy (read + write) and sum (read only)."""
    import torch

    n = int(gib * 2**30 / 4)
    src, dst = torch.ones(n), torch.empty(n)
    dst.copy_(src)
    out = {}
    for name, fn, bytes_moved in (("copy", lambda: dst.copy_(src), 8 * n), ("read", lambda: src.sum(), 4 * n)):
        fn()
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            fn()
            reps += 1
        out[name] = bytes_moved * reps / (time.perf_counter() - t0) / 1e9
    return out


def decode_rate(make_forward, vocab: int, batch: int, context: int, steps: int) -> float:
    """Tokens/s of ``steps`` KV-cached greedy steps after a ``context``-token prompt."""
    import torch
    from transformers import DynamicCache

    forward = make_forward()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(100, vocab, (batch, context), generator=gen)
    mask = torch.ones_like(ids)
    cache = DynamicCache()
    with torch.inference_mode():
        logits = forward(input_ids=ids, attention_mask=mask, past_key_values=cache, use_cache=True, logits_to_keep=1).logits
        t0 = time.perf_counter()
        for _ in range(steps):
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            mask = torch.cat([mask, torch.ones_like(nxt)], 1)
            logits = forward(input_ids=nxt, attention_mask=mask, past_key_values=cache, use_cache=True,
                             logits_to_keep=1).logits
        return batch * steps / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts for the kernel rates")
    p.add_argument("--model-threads", type=int, default=1, help="threads for the model decode rates")
    p.add_argument("--context", type=int, default=256)
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json")
    args = p.parse_args(argv)

    print("machine:", json.dumps(machine()))
    print(load_line())
    kernels = {}
    for th in args.threads:
        set_threads(th)
        kernels[th] = {
            "gemm_2048": gflops(2048, 2048, 2048),
            "gemm_16x576x1536": gflops(16, 576, 1536),
            "gemv_1x576x1536": gflops(1, 576, 1536),
            **{f"bw_{k}": v for k, v in bandwidth().items()},
        }
        print(f"  threads={th}: " + ", ".join(f"{k} {v:.1f}" for k, v in kernels[th].items()), flush=True)

    set_threads(args.model_threads)
    from lens_steer.engines.api import fast_forward, set_fast_path
    from lens_steer.models import load_hf, wrap_model

    plain, tok = load_hf()
    plain_eager, _ = load_hf()
    plain_eager.set_attn_implementation("eager")
    hf, tok2 = load_hf()
    model = wrap_model(hf, tok2, "smollm2-135m-instruct")
    cfg = plain.config
    n_layers, d, vocab = cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size
    head_dim = getattr(cfg, "head_dim", None) or d // cfg.num_attention_heads
    n_all = sum(p.numel() for p in plain.parameters())
    n_matmul = n_all - (0 if cfg.tie_word_embeddings else vocab * d)  # embedding rows are looked up, not multiplied
    kv_per_token = n_layers * 2 * cfg.num_key_value_heads * head_dim * 4
    print(f"  model: {n_all / 1e6:.1f}M parameters, {n_matmul / 1e6:.1f}M multiplied per token, "
          f"KV cache {kv_per_token / 1024:.1f} KiB/token, context {args.context}")

    def lens(enabled: bool, attention: str = "eager"):
        def make():
            set_fast_path(model, enabled, attention=attention)
            return fast_forward(model)  # the path is chosen here and checked per call, as in generate()
        return make

    impls = {"plain (sdpa)": lambda: plain, "plain (eager)": lambda: plain_eager, "lens fast (eager)": lens(True),
             "lens fast (sdpa)": lens(True, "sdpa"), "lens bridge": lens(False)}
    peak_flops = max(k["gemm_2048"] for k in kernels.values()) * 1e9
    peak_bw = max(k["bw_read"] for k in kernels.values()) * 1e9
    ctx = args.context + args.steps // 2
    table = Table(["batch", "impl", "decode tok/s", "bound tok/s", "% of bound", "/ plain (sdpa)"])
    for batch in (1, 16):
        flop = batch * (2 * n_matmul + 4 * n_layers * ctx * d)
        byts = 4 * n_matmul + batch * ctx * kv_per_token
        bound = batch / max(flop / peak_flops, byts / peak_bw)
        print(f"  batch {batch}: compute {flop / peak_flops * 1e3:.1f} ms/step, memory {byts / peak_bw * 1e3:.1f} ms/step "
              f"-> bound {bound:.0f} tok/s", flush=True)
        rates: dict[str, list[float]] = {k: [] for k in impls}
        for r in range(args.repeats):
            for name in (list(impls) if r % 2 == 0 else list(impls)[::-1]):
                rates[name].append(decode_rate(impls[name], vocab, batch, args.context, args.steps))
        base = median(rates["plain (sdpa)"])
        for name in impls:
            rate = median(rates[name])
            table.add(batch, name, rate, bound, 100 * rate / bound, rate / base)
            print(f"    {name:18s} {rate:7.1f} tok/s", flush=True)
    print()
    print(f"peak fp32 GEMM {peak_flops / 1e9:.1f} GFLOP/s, read bandwidth {peak_bw / 1e9:.1f} GB/s")
    print(table.render())
    print(load_line())
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "kernels": kernels, "table": table.rows}, indent=1))


if __name__ == "__main__":
    main()
