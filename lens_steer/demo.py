"""The main job of ``make demo``: derive on the packaged questions, then compare answers.

Prints, for held-out questions, the direct answer, the CoT-prompted answer, and the direct
prompt steered continuously and once (single), with response lengths.
"""

from __future__ import annotations

import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

from lens_steer.config import EMBEDDED_MODEL, GenerationConfig, default_layer
from lens_steer.storage import write_json

__all__ = ["DemoSettings", "run_demo"]


@dataclass(frozen=True)
class DemoSettings:
    """Settings of the demo (``lens-steer demo``).

    Attributes:
        model / device / dtype: What to load. engine: ``"bridge"`` or ``"vllm"``.
        out: Output directory (vector and ``demo.json``).
        max_new_tokens: Generation limit. layer: Steered layer (default: :func:`default_layer`).
        scale: Steering size as a fraction of the residual norm (default 0.15 continuous, 0.4 single).
        progress: Show progress bars.
    """

    model: str = EMBEDDED_MODEL
    device: str = "cpu"
    dtype: str = "float32"
    engine: str = "bridge"
    out: Path = Path("runs/demo")
    max_new_tokens: int = 128
    layer: int | None = None
    scale: float | None = None
    progress: bool = True


def _short(text: str, width: int = 100, lines: int = 4) -> str:
    wrapped = textwrap.wrap(" ".join(text.split()), width) or [""]
    more = " ..." if len(wrapped) > lines else ""
    return "\n".join("      " + w for w in wrapped[:lines]) + more


def run_demo(args: DemoSettings) -> int:
    """Run the demo (see ``lens-steer demo --help``): derive, then compare answers. Returns 0."""
    from lens_steer.data.corpus import demo_questions_path, load_questions_jsonl
    from lens_steer.engines.api import open_engine
    from lens_steer.engines.base import Steering
    from lens_steer.method.derive import derive_cot_vector
    from lens_steer.prompts import encode_prompt

    t0 = time.perf_counter()
    engine = open_engine(args.engine, args.model, device=args.device, dtype=args.dtype, capture_residuals=True)
    t_load = time.perf_counter() - t0
    derive_qs = load_questions_jsonl(demo_questions_path("derive"))
    heldout = load_questions_jsonl(demo_questions_path("heldout"))
    cfg = GenerationConfig(max_new_tokens=args.max_new_tokens, batch_size=8)
    progress = args.progress

    t1 = time.perf_counter()
    vector = derive_cot_vector(engine, derive_qs, generation=cfg, progress=progress)
    t_derive = time.perf_counter() - t1
    out = Path(args.out)
    vector.save(out / "vector")
    print(vector.summary())
    print(f"derived from {len(derive_qs)} questions in {t_derive:.1f} s; saved to {out / 'vector'}\n")

    layer = args.layer if args.layer is not None else default_layer(args.model, engine.info.n_layers)
    scales = {"continuous": args.scale or 0.15, "single": args.scale or 0.4}
    coeffs = {mode: vector.coeff_for_scale(layer, s) for mode, s in scales.items()}
    tok = engine.tokenizer
    direct = [encode_prompt(tok, q.question, "direct") for q in heldout]
    cot = [encode_prompt(tok, q.question, "cot") for q in heldout]
    t2 = time.perf_counter()
    runs = {"direct": engine.generate(direct, cfg, progress=progress, desc="direct"),
            "cot": engine.generate(cot, cfg, progress=progress, desc="cot")}
    for mode in ("continuous", "single"):
        runs[f"steered-{mode}"] = engine.generate(direct, cfg, steering=Steering(vector, layer, coeffs[mode], mode),
                                                  progress=progress, desc=f"steered-{mode}")
    t_compare = time.perf_counter() - t2

    print(f"steering at layer {layer}: continuous c={coeffs['continuous']:.2f} "
          f"({scales['continuous']:.2f} x residual norm), single c={coeffs['single']:.2f} ({scales['single']:.2f} x)")
    rows = []
    for i, q in enumerate(heldout):
        print(f"\nQ{i + 1}. {' '.join(q.question.split())}")
        for name, gens in runs.items():
            g = gens[i]
            print(f"  [{name}] {len(g.response_ids)} tokens{'' if g.stopped else ' (cut at max-new-tokens)'}")
            print(_short(g.text))
            rows.append({"id": q.id, "condition": name, "n_tokens": len(g.response_ids), "response": g.text})
    print("\nmean response length (tokens):")
    means = {name: sum(len(g.response_ids) for g in gens) / len(gens) for name, gens in runs.items()}
    for name, m in means.items():
        print(f"  {name:<20} {m:6.1f}")
    total = time.perf_counter() - t0
    print(f"\ntimings: load {t_load:.1f} s, derive {t_derive:.1f} s, compare {t_compare:.1f} s, total {total:.1f} s")
    summary = {"layer": layer, "coeffs": coeffs, "scales": scales, "mean_tokens": means,
               "seconds": {"load": t_load, "derive": t_derive, "compare": t_compare, "total": total}}
    write_json(out / "demo.json", {"summary": summary, "responses": rows})
    print(f"wrote {out / 'demo.json'}")
    return 0
