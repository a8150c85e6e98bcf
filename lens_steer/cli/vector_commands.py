"""Subcommands on vectors: ``derive``, ``generate``, ``info``, ``demo``, ``figures``."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from lens_steer.cli.args import (
    SCHEDULE_HELP, add_generation_args, add_model_args, add_question_args, add_template_args, check_steering_tokens,
    generation_config, load_engine, locked, questions, steering_mode, template,
)
from lens_steer.storage import json_text


def _derive_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    add_question_args(p)
    add_generation_args(p)
    add_template_args(p)
    p.add_argument("--positions", choices=["generated", "prompt", "all"], default="generated")
    p.add_argument("--method", choices=["fused", "two_pass"], default="fused",
                   help="fused: read activations while generating; two_pass: re-run prompt+response")
    p.add_argument("--chunk-questions", type=int, default=32,
                   help="questions per checkpointed chunk: a killed derive resumes from the last finished chunk "
                        "(0: one chunk, no checkpoints)")
    p.add_argument("--out", type=Path, required=True, help="directory to write the vector to")


def _derive(args) -> int:
    from lens_steer.method.derive_run import DeriveSettings, check_derivable, derive_into

    settings = DeriveSettings(template=template(args), generation=generation_config(args), positions=args.positions,
                              method=args.method, chunk_questions=args.chunk_questions)
    check_derivable(args.engine, args.method)
    items = questions(args)
    engine = load_engine(args, capture_residuals=True)
    try:
        vector = derive_into(args.out, engine, items, settings, progress=not args.no_progress)
    except KeyboardInterrupt:
        print(f"lens-steer derive: interrupted; run the same command again to resume from the last saved chunk "
              f"in {args.out}", file=sys.stderr)
        return 130
    print(vector.summary())
    print(f"saved to {args.out} ({vector.metadata.stats.wall_seconds} s)")
    return 0


# ---------------------------------------------------------------- generate
def _generate_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="a single question")
    src.add_argument("--questions", type=Path, help='JSONL file, one {"question": ...} per line')
    add_generation_args(p)
    add_template_args(p)
    p.add_argument("--prompt-style", choices=["direct", "cot", "none"], default="direct")
    p.add_argument("--vector", type=Path, default=None, help="steering vector directory")
    p.add_argument("--layer", type=int, default=None, help="layer to steer (with --vector)")
    p.add_argument("--coeff", type=float, default=None, help="steering coefficient (with --vector)")
    p.add_argument("--mode", default=None, metavar="SPEC", help="with --vector: " + SCHEDULE_HELP)
    p.add_argument("--allow-other-model", action="store_true", help="use a vector derived on another checkpoint")
    p.add_argument("--out", type=Path, default=None, help="JSONL output, written when all are done (default: stdout)")


def _generate(args) -> int:
    from lens_steer.engines.base import Steering
    from lens_steer.method.vectors import SteeringVector
    from lens_steer.prompts import encode_prompt
    from lens_steer.storage import atomic_write, storage_errors

    if args.vector is not None and (args.layer is None or args.coeff is None):
        raise ValueError("--vector needs --layer and --coeff")
    if args.vector is None:  # steering settings without a vector would be recorded for an unsteered run
        given = [flag for flag, used in (("--layer", args.layer is not None), ("--coeff", args.coeff is not None),
                                         ("--mode", args.mode is not None),
                                         ("--allow-other-model", args.allow_other_model)) if used]
        if given:
            raise ValueError(f"{', '.join(given)} steer only with --vector: give --vector DIR, or leave "
                             f"{'it' if len(given) == 1 else 'them'} out for unsteered generation")
    args.mode = steering_mode(args.mode or "continuous", "--mode")
    if args.out is not None:  # checked before any generation, so a bad --out loses nothing
        if args.out.is_dir() or args.out.name in ("", ".", ".."):
            raise ValueError(f"--out {args.out} is a directory: name the JSONL file to write")
        with storage_errors(args.out):
            args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.prompt is not None:
        items = [{"id": "prompt", "question": args.prompt}]
    else:
        from lens_steer.data.corpus import load_questions_jsonl

        items = [{"id": e.id, "question": e.question} for e in load_questions_jsonl(args.questions)]
    vector = SteeringVector.load(args.vector) if args.vector is not None else None
    steering = (Steering(vector, args.layer, args.coeff, args.mode, args.allow_other_model)  # checked before loading
                if vector is not None else None)
    generation = generation_config(args)  # checked before loading too
    if steering is not None:  # and what the engine declares it can apply
        from lens_steer.engines.registry import require_steering

        require_steering(args.engine, steering, "--mode")
    engine = load_engine(args)
    tok = engine.tokenizer
    if steering is not None:
        check_steering_tokens(steering, tok, "--mode")
    prompts = [encode_prompt(tok, it["question"], args.prompt_style, template(args)) for it in items]
    gens = engine.generate(prompts, generation, steering=steering, progress=not args.no_progress)
    lines = []
    for it, p, g in zip(items, prompts, gens):
        row = {"id": it["id"], "question": it["question"], "prompt_style": args.prompt_style,
               "prompt": tok.decode(p), "response": g.text, "n_tokens": len(g.response_ids),
               "stopped": g.stopped, "vector": str(args.vector) if vector is not None else None,
               "layer": args.layer, "coeff": args.coeff, "mode": args.mode if vector is not None else None}
        lines.append(json_text(row, indent=None) + "\n")
    if args.out is not None:
        atomic_write(args.out, "".join(lines))  # whole or not at all; a full disk is one line
    else:
        sys.stdout.write("".join(lines))
    return 0


# ---------------------------------------------------------------- info
def _info_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("vector", type=Path, help="steering vector directory")


def _info(args) -> int:
    from lens_steer.method.vectors import SteeringVector

    vector = SteeringVector.load(args.vector)
    print(vector.summary())
    print(json.dumps(vector.metadata.stats.to_dict(), indent=2))
    return 0


# ---------------------------------------------------------------- demo
def _demo_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--layer", type=int, default=None, help="default: 15 (of 30) for the embedded model, else n_layers // 2")
    p.add_argument("--scale", type=float, default=None, help="steering size as a fraction of the residual norm (default 0.15 continuous, 0.4 single)")
    p.add_argument("--no-progress", action="store_true")


def _demo(args) -> int:
    from lens_steer.demo import DemoSettings, run_demo

    return run_demo(DemoSettings(model=args.model, device=args.device, dtype=args.dtype, engine=args.engine,
                                 out=args.out,
                                 max_new_tokens=args.max_new_tokens, layer=args.layer, scale=args.scale,
                                 progress=not args.no_progress))


# ---------------------------------------------------------------- figures
def _figures_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vector", type=Path, required=True, help="steering vector directory")
    p.add_argument("--out", type=Path, default=Path("figures"), help="output directory (default: figures)")
    p.add_argument("--model", default=None, help="default: the model the vector was derived on")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--layer", type=int, default=None,
                   help="analysis layer for sources, PCA and the trace (default: 15 for the embedded model, else n_layers // 2)")
    p.add_argument("--trace-question", default=None,
                   help="question of the projection trace (default: the first packaged held-out demo question; '' skips)")
    p.add_argument("--ablation-questions", type=int, default=16,
                   help="number of questions answered with and without the direction (0 skips the ablation)")
    p.add_argument("--ablation-file", type=Path, default=None,
                   help="JSONL questions for the ablation (default: the 28 packaged demo questions, not in the paper corpus)")
    p.add_argument("--ablation-layers", action="append", default=None, metavar="all|L[,L...]",
                   help="layers to project the direction out at, 'all' or comma-separated; repeat for one ablation "
                        "figure each (default: 'all' and the analysis layer)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="generation limit of the trace and the ablation")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--top-k", type=int, default=10, help="logit-lens tokens per layer and end")
    p.add_argument("--n-splits", type=int, default=100, help="split-half repetitions")
    p.add_argument("--seed", type=int, default=0, help="seed of the random controls, half splits and question draw")
    p.add_argument("--png", action=argparse.BooleanOptionalAction, default=True,
                   help="also write static PNGs (needs kaleido>=1 and Chrome/Chromium; skipped with a message if missing)")
    p.add_argument("--plotlyjs", choices=["directory", "cdn", "inline"], default="directory",
                   help="HTML plotly.js: one shared plotly.min.js in --out (offline), the CDN, or inlined per file")
    p.add_argument("--allow-other-model", action="store_true", help="use a vector derived on another checkpoint")
    p.add_argument("--no-progress", action="store_true")


def _figures(args) -> int:
    from lens_steer.analysis.paper import resolve_figure_settings
    from lens_steer.config import torch_dtype
    from lens_steer.method.vectors import SteeringVector
    from lens_steer.models import load_model, n_layers
    from lens_steer.reproduce.figures import make_figures

    vector = SteeringVector.load(args.vector)
    model_name = args.model or vector.metadata.model_id
    model = load_model(model_name, device=args.device, dtype=torch_dtype(args.dtype))
    settings = resolve_figure_settings(
        model_name, n_layers(model), layer=args.layer, trace_question=args.trace_question,
        ablation_questions=args.ablation_questions, ablation_file=args.ablation_file,
        ablation_layers=args.ablation_layers, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
        top_k=args.top_k, n_splits=args.n_splits, seed=args.seed, device=args.device, dtype=args.dtype,
        allow_other_model=args.allow_other_model)
    start = time.perf_counter()
    run = make_figures(model, vector, settings, args.out, command=shlex.join(["lens-steer", *args.argv]),
                       png=args.png, plotlyjs=args.plotlyjs, progress=not args.no_progress, vector_dir=args.vector)
    report = run.written
    print(f"wrote {len(report.html)} HTML and {len(report.png)} PNG figures to {args.out} "
          f"in {time.perf_counter() - start:.1f} s")
    if args.png and report.png_missing:
        print(f"lens-steer figures: {report.png_message} (HTML written)", file=sys.stderr)
    for skipped in run.paper.analysis.skipped:
        print(f"lens-steer figures: skipped {skipped.group}: {skipped.reason}", file=sys.stderr)
    return 0


COMMANDS = [
    ("derive", "derive a CoT steering vector", _derive_args, locked("derive", _derive)),
    ("generate", "answer questions with or without a steering vector", _generate_args, _generate),
    ("info", "describe a saved steering vector", _info_args, _info),
    ("demo", "derive on the packaged demo questions and compare answers", _demo_args, _demo),
    ("figures", "regenerate every analysis figure of a vector as HTML and PNG, with a README", _figures_args,
     locked("figures", _figures)),
]
