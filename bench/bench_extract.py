"""Activation extraction only (fixed texts, no generation): lens_steer vs steering-vectors vs repeng.

The same work for all: run every text of a contrast set (CoT prompt vs direct prompt of
the same question, rendered with the chat template) through the embedded model, read the
residual stream after every block at the last token, and reduce per layer: mean(pos) -
mean(neg) for lens_steer and steering-vectors (``mean_aggregator``); repeng's
``ControlVector.train`` reads the same activations (``output_hidden_states``) and then fits
a PCA per layer (the PCA of 2 x pairs rows of width 576 takes milliseconds).

Implementations, side by side in one process, alternating order, median over repeats:

* ``lens fast``        ``hooks.attach`` on ``blocks.{l}.hook_resid_post`` + ``engines.api.fast_forward`` (as ``collect``'s
                       two-pass reader; fast path, SDPA kernel (the default); batches sorted by length,
                       left padding)
* ``lens fast eager``  the same with eager attention (the bridge's math)
* ``lens bridge``      the same on the bridge path (fast path off)
* ``lens run_with_cache``  ``model.run_with_cache(names_filter=resid_post names)``, same batches
* ``steering-vectors`` ``train_steering_vector(..., aggregator=mean_aggregator(), read_token_index=-1)`` on an unwrapped HF model
* ``repeng``           ``ControlVector.train(method="pca_diff")`` on an unwrapped HF model: its
                       ``batched_get_hiddens`` (all hidden states, last token) + a PCA per layer

Run it in the bench venv (``bench/setup_bench_venv.sh``)::

    PYTHONPATH=. /tmp/lens-steer-bench-venv/bin/python bench/bench_extract.py
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Table, Timing, load_line, machine, median, peak_rss_mb, questions, reset_peak_rss, set_threads, timed  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=32, help="contrast pairs (2 texts each)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on a shared 2-core machine 2 threads stall ~16 ms per op)")
    p.add_argument("--json")
    args = p.parse_args(argv)
    set_threads(args.threads)

    import numpy as np

    if not hasattr(np, "float_"):  # repeng 0.4.0 names np.float_ (removed in NumPy 2) in annotations only
        np.float_ = np.float64
    import torch

    from lens_steer.engines.api import fast_forward, set_fast_path
    from lens_steer.engines.decoding import left_pad as _left_pad, plan_batches
    from lens_steer.engines.hooks import attach
    from lens_steer.models import load_hf, resid_post_name, wrap_model
    from lens_steer.prompts import render_prompt

    print("machine:", json.dumps(machine()))
    print(load_line())
    missing = []
    try:
        import steering_vectors
        from steering_vectors import mean_aggregator, train_steering_vector
    except ImportError as exc:
        steering_vectors = None
        missing.append(f"steering-vectors: {exc}")
    try:
        import repeng
        from repeng import ControlVector, DatasetEntry
        from repeng.extract import batched_get_hiddens
    except ImportError as exc:
        repeng = None
        missing.append(f"repeng: {exc}")
    for m in missing:
        print("  cannot run", m)

    plain, tok = load_hf()
    hf, tok_b = load_hf()
    model = wrap_model(hf, tok_b, "smollm2-135m-instruct")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    n_layers = int(model.cfg.n_layers)
    qs = questions(args.pairs)
    pos_texts = [render_prompt(tok, q.question, "cot") for q in qs]
    neg_texts = [render_prompt(tok, q.question, "direct") for q in qs]
    texts = pos_texts + neg_texts
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    n_tokens = sum(map(len, ids))
    bs = args.batch_size
    print(f"  {len(texts)} texts, {n_tokens} tokens, batch size {bs}")

    def lens_hooks(enabled: bool, attention: str = "sdpa"):
        def run():
            set_fast_path(model, enabled, attention=attention)
            last = torch.zeros(len(ids), n_layers, model.cfg.d_model)
            rows_now: list[int] = []

            def make(layer):
                def hook(x, hook):
                    last[rows_now, layer] = x[:, -1].float()
                return hook

            pad = model.tokenizer.pad_token_id
            try:
                with torch.inference_mode(), attach(model, [(resid_post_name(l), make(l)) for l in range(n_layers)]):
                    forward = fast_forward(model)
                    for rows in plan_batches([len(x) for x in ids], bs, 1 << 30):
                        batch_ids, mask = _left_pad([ids[i] for i in rows], pad, "cpu")
                        rows_now[:] = rows
                        forward(input_ids=batch_ids, attention_mask=mask,
                                position_ids=(mask.cumsum(-1) - 1).clamp(min=0), use_cache=False, logits_to_keep=1)
            finally:
                set_fast_path(model, True, attention="sdpa")
            half = len(qs)
            return last[:half].mean(0) - last[half:].mean(0)
        return run

    def lens_run_with_cache():
        names = [resid_post_name(l) for l in range(n_layers)]
        last = torch.zeros(len(ids), n_layers, model.cfg.d_model)
        with torch.inference_mode():
            for rows in plan_batches([len(x) for x in ids], bs, 1 << 30):
                batch_ids, mask = _left_pad([ids[i] for i in rows], model.tokenizer.pad_token_id, "cpu")
                _, cache = model.run_with_cache(batch_ids, attention_mask=mask, names_filter=names, prepend_bos=False)
                for l, n in enumerate(names):
                    last[rows, l] = cache[n][:, -1].float()
        half = len(qs)
        return last[:half].mean(0) - last[half:].mean(0)

    impls = {"lens fast": lens_hooks(True), "lens fast eager": lens_hooks(True, "eager"),
             "lens bridge": lens_hooks(False), "lens run_with_cache": lens_run_with_cache}
    if steering_vectors is not None:
        def sv():
            vec = train_steering_vector(plain, tok, list(zip(pos_texts, neg_texts)), layers=list(range(n_layers)),
                                        read_token_index=-1, aggregator=mean_aggregator(), batch_size=bs)
            return torch.stack([vec.layer_activations[l] for l in range(n_layers)])
        impls["steering-vectors"] = sv
    vectors: dict[str, torch.Tensor] = {}
    if repeng is not None:
        def rp_train():
            ControlVector.train(plain, tok, [DatasetEntry(a, b) for a, b in zip(pos_texts, neg_texts)],
                                hidden_layers=list(range(n_layers)), batch_size=bs, method="pca_diff")
            return None
        impls["repeng"] = rp_train
        # The mean difference of the activations repeng reads (untimed: its PCA direction is not a mean).
        strs = [s for pair in zip(pos_texts, neg_texts) for s in pair]
        h = batched_get_hiddens(plain, tok, strs[:4], list(range(n_layers)), bs)  # also warms the plain model up
        h = batched_get_hiddens(plain, tok, strs, list(range(n_layers)), bs)
        vectors["repeng"] = torch.stack([torch.from_numpy(h[l][::2].mean(0) - h[l][1::2].mean(0)) for l in range(n_layers)])

    with torch.inference_mode():  # warm the bridge up on both paths
        for enabled in (True, False):
            set_fast_path(model, enabled)
            fast_forward(model)(input_ids=torch.tensor([ids[0][:16]]))
        set_fast_path(model, True)

    times: dict[str, list[Timing]] = {k: [] for k in impls}
    peaks: dict[str, float] = {}
    for r in range(args.repeats):
        for name in (list(impls) if r % 2 == 0 else list(impls)[::-1]):
            reset_peak_rss()
            tm = Timing()
            with timed(tm):
                out = impls[name]()
            times[name].append(tm)
            peaks[name] = max(peaks.get(name, 0.0), peak_rss_mb())
            if out is not None:
                vectors[name] = out
            print(f"  round {r} {name:20s} wall {tm.wall:6.2f}s cpu {tm.cpu:6.2f}s", flush=True)

    def cpu(name):
        return median([x.cpu for x in times[name]])

    def wall(name):
        return median([x.wall for x in times[name]])

    base = "steering-vectors" if "steering-vectors" in times else None
    t = Table(["impl", "wall s", "CPU s", "texts/s (CPU)", "tokens/s (CPU)", "peak RSS MiB (process)",
               "CPU / steering-vectors", "wall / steering-vectors", "|v - v_lens| / |v_lens| (layers 0-28, 29)"])
    ref = vectors["lens fast"]
    for name in impls:
        diff = "-"
        if name in vectors:
            v = vectors[name]
            diff = f"{float((v[:-1] - ref[:-1]).norm() / ref[:-1].norm()):.1e}, {float((v[-1] - ref[-1]).norm() / ref[-1].norm()):.1e}"
        t.add(name, wall(name), cpu(name), len(texts) / cpu(name), n_tokens / cpu(name), peaks[name],
              (cpu(name) / cpu(base)) if base else "-", (wall(name) / wall(base)) if base else "-", diff)
    print()
    print(t.render())
    print("(steering-vectors/repeng tokenise the texts themselves and batch them in the given order; lens_steer"
          " batches by length. repeng's hidden state of the last layer is after the final norm. Peak RSS: process"
          " high-water mark during that call, both models resident.)")
    print(load_line())
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "table": t.rows}, indent=1))


if __name__ == "__main__":
    main()
