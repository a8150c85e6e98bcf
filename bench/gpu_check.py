"""GPU check for when a device is lent: a Llama-3-8B-shaped model with random weights (bf16), bridge
engine vs vLLM engine on the same prompts, and vLLM's steering overhead — one run, under 10 minutes.

The device has no hub access and takes at most 64 MiB of files, so nothing is downloaded: the model
is a config alone (Llama-3-8B's shapes: 32 layers, d_model 4096, 32 heads, 8 KV heads, MLP 14336,
vocabulary 128256) with the embedded model's tokenizer. vLLM builds random weights from it
(``load_format="dummy"``); the bridge engine gets its own random weights (``from_config`` on the
GPU). The two models therefore differ: this measures throughput, not agreement (agreement is
tested on the embedded model on CPU, ``make test-vllm``). Random weights rarely emit a stop token, so
every response runs to ``--tokens``.

Each engine runs in its own process. Printed: engine start, generated tokens per second for
direct + cot + steered-continuous + steered-single prompts (one ``generate`` per condition on the
bridge, one call for all on vLLM: what ``EvalRun`` does with each), the ratio, and vLLM's
unsteered vs steered rates.

Needs on the device: torch with CUDA, transformers, transformer-lens, vLLM (CUDA build), and a
tokenizer directory (``--tokenizer``; the embedded one saved with ``save_pretrained``, ~4 MB). A
missing vLLM is reported in one line and the bridge half still runs. (This workplace's device has
torch and transformers but no vLLM, whose CUDA wheel is far over the 64 MiB a call may carry.)

Usage::

    bash bench/gpu_check.sh                   # = python bench/gpu_check.py --n 64 --tokens 128
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Table, run_worker  # noqa: E402

LLAMA3_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192, rope_theta=500000.0,
                 rms_norm_eps=1e-5, tie_word_embeddings=False)


TINY = dict(LLAMA3_8B, hidden_size=256, intermediate_size=512, num_hidden_layers=20, num_attention_heads=4,
            num_key_value_heads=2)
"""``--dry-run``'s shapes: the same script on a CPU in a minute (20 layers so the steered layers exist)."""


def make_dir(path: Path, tokenizer: str | None, shapes: dict = LLAMA3_8B) -> Path:
    from transformers import AutoTokenizer, LlamaConfig

    if tokenizer is None:  # the embedded model's (needs its GGUF: not on a bare device; see --tokenizer)
        from lens_steer.models import embedded_hf_dir

        tokenizer = str(embedded_hf_dir())
    tok = AutoTokenizer.from_pretrained(tokenizer)
    LlamaConfig(**shapes, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                torch_dtype="bfloat16", architectures=["LlamaForCausalLM"]).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def prompts(tokenizer, n: int) -> list[list[list[int]]]:
    from lens_steer.data.corpus import demo_questions_path, load_questions_jsonl
    from lens_steer.prompts import encode_prompt

    qs = load_questions_jsonl(demo_questions_path("derive")) + load_questions_jsonl(demo_questions_path("heldout"))
    qs = [qs[i % len(qs)] for i in range(n)]
    return [[encode_prompt(tokenizer, q.question, style) for q in qs] for style in ("direct", "cot")]


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _hf_generate_rate(hf, tok, prompts_ids: list[list[int]], tokens: int) -> tuple[float, int]:
    """Plain transformers ``generate`` (greedy, left-padded, one batch) on the same weights before the
    bridge wraps them: seconds and generated tokens, after a short warm-up."""
    import torch

    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    width = max(map(len, prompts_ids))
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts_ids], device=hf.device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts_ids], device=hf.device)
    kw = dict(do_sample=False, pad_token_id=pad, eos_token_id=None)
    with torch.no_grad():
        hf.generate(ids[:4], attention_mask=mask[:4], max_new_tokens=8, min_new_tokens=8, **kw)
        _sync()
        t = time.perf_counter()
        out = hf.generate(ids, attention_mask=mask, max_new_tokens=tokens, min_new_tokens=tokens, **kw)
        _sync()
    return time.perf_counter() - t, int((out.shape[1] - width) * out.shape[0])


def worker(spec: dict) -> dict:
    import torch

    from lens_steer.config import GenerationConfig
    from lens_steer.engines.base import Steering

    path = Path(spec["dir"])
    t0 = time.perf_counter()
    if spec["engine"] == "vllm":
        from lens_steer.engines.vllm import VllmEngine, vllm_available

        if vllm_available():
            return {"engine": "vllm", "skipped": vllm_available()}
        engine = VllmEngine(str(path), dtype="bfloat16", load_format="dummy", max_model_len=2048,
                            gpu_memory_utilization=0.85)
    else:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        from lens_steer.engines.bridge import BridgeEngine
        from lens_steer.models import wrap_model

        torch.manual_seed(0)
        with torch.device(spec["device"]):
            hf = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path), torch_dtype=torch.bfloat16)
        tok = AutoTokenizer.from_pretrained(path)
        hf_rate = _hf_generate_rate(hf.eval(), tok, prompts(tok, spec["n"])[0], spec["tokens"])
        t0 = time.perf_counter()
        engine = BridgeEngine(wrap_model(hf, tok, str(path)))
    start_s = time.perf_counter() - t0
    direct, cot = prompts(engine.tokenizer, spec["n"])
    d = engine.info.d_model
    v = torch.randn(d, generator=torch.Generator().manual_seed(0))
    v = v / v.norm()
    cont, single = Steering(v, 13, 1.0, "continuous"), Steering(v, 16, 20.0, "single")
    cfg = GenerationConfig(max_new_tokens=spec["tokens"], batch_size=spec["batch"], max_batch_tokens=1 << 20)
    engine.generate(direct[:4], GenerationConfig(max_new_tokens=8), progress=False)  # warm-up
    out = {"engine": spec["engine"], "start_s": start_s}
    t = time.perf_counter()
    if getattr(engine, "mixed_batches", False):
        gens = engine.generate(direct + cot + direct + direct, cfg, progress=False,
                               steering=[None] * (2 * len(direct)) + [cont] * len(direct) + [single] * len(direct))
    else:
        gens = []
        for ps, st in ((direct, None), (cot, None), (direct, cont), (direct, single)):
            gens += engine.generate(ps, cfg, steering=st, progress=False)
    out["eval_s"], out["eval_tokens"] = time.perf_counter() - t, sum(len(g.response_ids) for g in gens)
    if spec["engine"] == "bridge":
        out["hf_generate"] = hf_rate
    for label, st in (("unsteered", None), ("continuous", cont), ("single", single)):  # steering overhead
        t = time.perf_counter()
        gens = engine.generate(direct, cfg, steering=st, progress=False)
        out[label] = (time.perf_counter() - t, sum(len(g.response_ids) for g in gens))
    cuda = spec["device"] == "cuda"
    out["gpu"] = torch.cuda.get_device_name(0) if cuda else "cpu (dry run)"
    out["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=64, help="questions per condition")
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--batch", type=int, default=64, help="bridge batch size")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the embedded model's); on a "
                   "device, carry one saved here with AutoTokenizer.save_pretrained (about 4 MB)")
    p.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU: check the script, no GPU")
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    import torch

    if not torch.cuda.is_available() and not args.dry_run:
        raise SystemExit("gpu_check: no CUDA device here (--dry-run checks the script on a CPU)")
    shapes = TINY if args.dry_run else LLAMA3_8B
    path = make_dir(Path(tempfile.mkdtemp()) / "llama3-8b-shaped", args.tokenizer, shapes)
    spec = {"dir": str(path), "n": args.n, "tokens": args.tokens, "batch": args.batch,
            "device": "cpu" if args.dry_run else "cuda"}
    res = {}
    for e in ("bridge", "vllm"):
        try:
            res[e] = run_worker(Path(__file__), {**spec, "engine": e}, timeout=420)
        except Exception as exc:  # noqa: BLE001 - report and go on with the other engine
            res[e] = {"engine": e, "skipped": str(exc).splitlines()[0][:300]}
    print(f"gpu: {next((r['gpu'] for r in res.values() if 'gpu' in r), '?')}; {args.n} questions x 4 conditions, "
          f"{args.tokens} new tokens, bf16, {'tiny shapes (dry run)' if args.dry_run else 'Llama-3-8B shapes'}, random weights")
    table = Table(["engine", "start s", "eval s", "tokens", "tok/s", "vs bridge", "peak GiB (torch)"])
    base = None
    for e, r in res.items():
        if "skipped" in r:
            print(f"{e}: not run ({r['skipped']})")
            continue
        rate = r["eval_tokens"] / r["eval_s"]
        base = base or rate
        table.add(e, r["start_s"], r["eval_s"], r["eval_tokens"], rate, rate / base, r["peak_gib"])
    print(table.render())
    hf = res.get("bridge", {}).get("hf_generate")
    if hf:
        r = res["bridge"]
        plain = r["unsteered"][1] / r["unsteered"][0]
        print(f"plain transformers generate, same weights, direct prompts in one batch: {hf[1] / hf[0]:.0f} tok/s; "
              f"bridge unsteered on the same prompts: {plain:.0f} tok/s (bridge / transformers {plain / (hf[1] / hf[0]):.3f})")
    for e, r in res.items():
        if "unsteered" not in r:
            continue
        plain = r["unsteered"][1] / r["unsteered"][0]
        for mode in ("continuous", "single"):
            rate = r[mode][1] / r[mode][0]
            print(f"{e} {mode}: {rate:.0f} tok/s vs unsteered {plain:.0f} (slowdown {plain / rate:.3f})")


if __name__ == "__main__":
    main()
