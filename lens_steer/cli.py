"""The ``lens-steer`` command line: one function per subcommand; ``main(argv=None)``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from lens_steer.models import EMBEDDED_MODEL

Command = tuple[str, str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=EMBEDDED_MODEL,
                   help=f"hub name, local HF directory, .gguf file, or {EMBEDDED_MODEL} (default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])


def _add_generation_args(p: argparse.ArgumentParser, max_new_tokens: int = 128) -> None:
    g = p.add_argument_group("generation")
    g.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    g.add_argument("--batch-size", type=int, default=8)
    g.add_argument("--max-batch-tokens", type=int, default=8192,
                   help="cap on rows x padded prompt length per batch (long prompts get smaller batches)")
    g.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _add_template_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("prompt templates ({question} is replaced by the question)")
    g.add_argument("--cot-template", default=None)
    g.add_argument("--direct-template", default=None)
    g.add_argument("--system", default=None, help="system message (default: the chat template's own)")


def _add_question_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("questions")
    src = g.add_mutually_exclusive_group()
    src.add_argument("--questions", type=Path, help='JSONL file, one {"question": ...} per line')
    src.add_argument("--corpus", choices=["paper", "demo"], help="paper: BBL 3/task + MMLU dev 2/subject + GSM8K train 100")
    g.add_argument("--data-dir", type=Path, default=None,
                   help="local benchmark copies (default: $LENS_STEER_DATA_DIR, else the Hugging Face hub)")
    g.add_argument("--limit", type=int, default=None, help="use a seeded subsample of N questions")
    g.add_argument("--corpus-seed", type=int, default=0)


def _dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def _load(args):
    from lens_steer.models import load_model

    return load_model(args.model, device=args.device, dtype=_dtype(args.dtype))


def _generation_config(args):
    from lens_steer.generate import GenerationConfig

    return GenerationConfig(max_new_tokens=args.max_new_tokens, do_sample=args.sample, temperature=args.temperature,
                            top_p=args.top_p, seed=args.seed, batch_size=args.batch_size,
                            max_batch_tokens=args.max_batch_tokens)


def _template(args):
    from lens_steer.prompts import DEFAULT_TEMPLATE, PromptTemplate

    return PromptTemplate(
        cot=args.cot_template or DEFAULT_TEMPLATE.cot,
        direct=args.direct_template or DEFAULT_TEMPLATE.direct,
        none=DEFAULT_TEMPLATE.none,
        system=args.system,
    )


def _questions(args) -> list:
    from lens_steer import corpus

    if args.questions is not None:
        items = corpus.load_questions_jsonl(args.questions)
    elif args.corpus == "paper":
        items = corpus.paper_corpus(data_dir=args.data_dir, seed=args.corpus_seed)
    elif args.corpus == "demo":
        items = corpus.load_questions_jsonl(demo_questions_path("derive"))
    else:
        raise SystemExit("error: give --questions FILE.jsonl or --corpus paper|demo")
    if args.limit is not None:
        from lens_steer.benchmarks import subsample

        items = subsample(items, args.limit, args.corpus_seed)
    return items


def demo_questions_path(split: str) -> Path:
    """Path of the packaged demo questions (``derive`` or ``heldout``)."""
    return Path(__file__).parent / "data" / f"demo_{split}.jsonl"


# ---------------------------------------------------------------- derive
def _derive_args(p: argparse.ArgumentParser) -> None:
    _add_model_args(p)
    _add_question_args(p)
    _add_generation_args(p)
    _add_template_args(p)
    p.add_argument("--positions", choices=["generated", "prompt", "all"], default="generated")
    p.add_argument("--method", choices=["fused", "two_pass"], default="fused",
                   help="fused: read activations while generating; two_pass: re-run prompt+response")
    p.add_argument("--out", type=Path, required=True, help="directory to write the vector to")


def _derive(args) -> int:
    from lens_steer.derive import derive_cot_vector

    questions = _questions(args)
    model = _load(args)
    start = time.perf_counter()
    vector = derive_cot_vector(model, questions, template=_template(args), generation=_generation_config(args),
                               positions=args.positions, method=args.method, progress=not args.no_progress)
    vector.metadata.stats["wall_seconds"] = round(time.perf_counter() - start, 2)
    vector.save(args.out)
    print(vector.summary())
    print(f"saved to {args.out} ({vector.metadata.stats['wall_seconds']} s)")
    return 0


# ---------------------------------------------------------------- generate
def _generate_args(p: argparse.ArgumentParser) -> None:
    _add_model_args(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="a single question")
    src.add_argument("--questions", type=Path, help='JSONL file, one {"question": ...} per line')
    _add_generation_args(p)
    _add_template_args(p)
    p.add_argument("--prompt-style", choices=["direct", "cot", "none"], default="direct")
    p.add_argument("--vector", type=Path, default=None, help="steering vector directory")
    p.add_argument("--layer", type=int, default=None)
    p.add_argument("--coeff", type=float, default=None)
    p.add_argument("--mode", choices=["continuous", "single"], default="continuous")
    p.add_argument("--allow-other-model", action="store_true", help="use a vector derived on another checkpoint")
    p.add_argument("--out", type=Path, default=None, help="JSONL output (default: stdout)")


def _generate(args) -> int:
    from contextlib import nullcontext

    from lens_steer.generate import generate
    from lens_steer.inject import steer
    from lens_steer.prompts import encode_prompt
    from lens_steer.vectors import SteeringVector

    if args.vector is not None and (args.layer is None or args.coeff is None):
        raise SystemExit("error: --vector needs --layer and --coeff")
    if args.prompt is not None:
        items = [{"id": "prompt", "question": args.prompt}]
    else:
        from lens_steer.corpus import load_questions_jsonl

        items = [{"id": e.id, "question": e.question} for e in load_questions_jsonl(args.questions)]
    vector = SteeringVector.load(args.vector) if args.vector is not None else None
    model = _load(args)
    template = _template(args)
    prompts = [encode_prompt(model.tokenizer, it["question"], args.prompt_style, template) for it in items]
    ctx = (steer(model, vector, args.layer, args.coeff, args.mode, allow_other_model=args.allow_other_model)
           if vector is not None else nullcontext())
    with ctx:
        gens = generate(model, prompts, _generation_config(args), progress=not args.no_progress)
    out = open(args.out, "w") if args.out else sys.stdout
    try:
        for it, p, g in zip(items, prompts, gens):
            row = {"id": it["id"], "question": it["question"], "prompt_style": args.prompt_style,
                   "prompt": model.tokenizer.decode(p), "response": g.text, "n_tokens": len(g.response_ids),
                   "stopped": g.stopped, "vector": str(args.vector) if vector is not None else None,
                   "layer": args.layer, "coeff": args.coeff, "mode": args.mode if vector is not None else None}
            out.write(json.dumps(row) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    return 0


# ---------------------------------------------------------------- info
def _info_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("vector", type=Path, help="steering vector directory")


def _info(args) -> int:
    from lens_steer.vectors import SteeringVector

    vector = SteeringVector.load(args.vector)
    print(vector.summary())
    print(json.dumps(vector.metadata.stats, indent=2))
    return 0


# ---------------------------------------------------------------- demo
def _demo_args(p: argparse.ArgumentParser) -> None:
    _add_model_args(p)
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--layer", type=int, default=None, help="default: 15 (of 30) for the embedded model, else n_layers // 2")
    p.add_argument("--scale", type=float, default=None, help="steering size as a fraction of the residual norm (default 0.15 continuous, 0.4 single)")
    p.add_argument("--no-progress", action="store_true")


def _demo(args) -> int:
    from lens_steer.demo import run_demo

    return run_demo(args)


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


def _figures_command(args, model_name: str, layer: int, trace_question: str, ablation_sets: list[str]) -> str:
    """The effective command line, every option explicit, for the README."""
    import shlex

    argv = ["lens-steer", "figures", "--vector", str(args.vector), "--out", str(args.out), "--model", model_name,
            "--layer", str(layer), "--trace-question", trace_question,
            "--ablation-questions", str(args.ablation_questions)]
    if args.ablation_file is not None:
        argv += ["--ablation-file", str(args.ablation_file)]
    for spec in ablation_sets:
        argv += ["--ablation-layers", spec]
    argv += ["--max-new-tokens", str(args.max_new_tokens),
             "--batch-size", str(args.batch_size), "--top-k", str(args.top_k), "--n-splits", str(args.n_splits),
             "--seed", str(args.seed), "--png" if args.png else "--no-png", "--plotlyjs", args.plotlyjs]
    if args.device != "cpu" or args.dtype != "float32":
        argv += ["--device", args.device, "--dtype", args.dtype]
    if args.allow_other_model:
        argv.append("--allow-other-model")
    return shlex.join(argv)


def _figures(args) -> int:
    from lens_steer.benchmarks import subsample
    from lens_steer.corpus import load_questions_jsonl
    from lens_steer.figure_io import write_paper_figures
    from lens_steer.figures import paper_figures
    from lens_steer.generate import GenerationConfig
    from lens_steer.models import check_layer, load_model, n_layers
    from lens_steer.prompts import PromptTemplate
    from lens_steer.vectors import SteeringVector

    vector = SteeringVector.load(args.vector)
    model_name = args.model or vector.metadata.model_id
    model = load_model(model_name, device=args.device, dtype=_dtype(args.dtype))
    vector.check_compatible(model, allow_other_model=args.allow_other_model)
    layer = args.layer if args.layer is not None else (15 if model_name == EMBEDDED_MODEL else n_layers(model) // 2)
    check_layer(model, layer)
    trace_question = args.trace_question
    if trace_question is None:
        trace_question = load_questions_jsonl(demo_questions_path("heldout"))[0].question
    ablation_sets = args.ablation_layers or ["all", str(layer)]
    ablation_layers = [None if spec.strip() == "all" else [check_layer(model, int(x)) for x in spec.split(",") if x.strip()]
                       for spec in ablation_sets]
    questions = []
    if args.ablation_questions > 0:
        pool = (load_questions_jsonl(args.ablation_file) if args.ablation_file is not None else
                load_questions_jsonl(demo_questions_path("derive")) + load_questions_jsonl(demo_questions_path("heldout")))
        questions = subsample(pool, args.ablation_questions, args.seed)
    template = PromptTemplate(**vector.metadata.templates) if vector.metadata.templates else None
    generation = GenerationConfig(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    start = time.perf_counter()
    paper = paper_figures(model, vector, layer, trace_question=trace_question or None, ablation_questions=questions,
                          ablation_layers=ablation_layers, generation=generation, template=template, k=args.top_k,
                          seed=args.seed, n_splits=args.n_splits, progress=not args.no_progress)
    meta = vector.metadata
    info = {"directory": str(args.vector), "model": meta.model_id, "fingerprint": meta.model_fingerprint,
            "layers x d_model": f"{meta.n_layers} x {meta.d_model}", "questions": len(meta.question_ids),
            "corpus sha256": meta.corpus_hash, "positions": meta.positions, "created": meta.created,
            "generation": json.dumps(meta.generation)}
    command = _figures_command(args, model_name, layer, trace_question, ablation_sets)
    report = write_paper_figures(paper, args.out, command=command, vector_info=info, png=args.png,
                                 plotlyjs=args.plotlyjs)
    print(f"wrote {len(report.html)} HTML and {len(report.png)} PNG figures to {args.out} "
          f"in {time.perf_counter() - start:.1f} s")
    if args.png and len(report.png) < len(report.html):
        print(f"lens-steer figures: {report.png_message} (HTML written)", file=sys.stderr)
    for name, reason in paper.skipped.items():
        print(f"lens-steer figures: skipped {name}: {reason}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------- eval / sweep / report
def _add_benchmark_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("benchmarks")
    g.add_argument("--benchmarks", required=True,
                   help="comma list of gsm8k, mmlu[:subject], arc, agieval[:task], bbl[:task], each with an optional "
                        "@split (e.g. gsm8k@train,mmlu@val); agieval and bbl expand to one benchmark per task")
    g.add_argument("--split", default="test", help="split of GSM8K / MMLU / ARC unless given with @ (default: test)")
    g.add_argument("--limit", type=int, default=None, help="seeded subsample of N items per benchmark (--seed)")
    g.add_argument("--task-limit", type=int, default=None, help="items per AGIEval / BBL task (default: --limit)")
    g.add_argument("--data-dir", type=Path, default=None,
                   help="local benchmark copies (default: $LENS_STEER_DATA_DIR, else the Hugging Face hub)")
    g.add_argument("--chunk-size", type=int, default=None,
                   help="items generated and saved together, the unit of resumption (default: --batch-size)")


def _add_results_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vector", type=Path, default=None, help="steering vector directory")
    p.add_argument("--allow-other-model", action="store_true", help="use a vector derived on another checkpoint")
    p.add_argument("--out", type=Path, required=True,
                   help="results directory (items.jsonl, summary.json, run.json); an existing one is resumed")


def _csv(text: str, cast=str) -> list:
    return [cast(x.strip()) for x in text.split(",") if x.strip()]


def _load_examples(args) -> tuple[list, list[str]]:
    from lens_steer.benchmarks import AGIEVAL_MC_TASKS, BBL_TASKS, load_benchmark

    tasks = {"agieval": AGIEVAL_MC_TASKS, "bbl": BBL_TASKS}
    examples, names = [], []
    for spec in _csv(args.benchmarks):
        name, _, split = spec.partition("@")
        for full in ([f"{name}:{t}" for t in tasks[name]] if name in tasks else [name]):
            base = full.partition(":")[0]
            limit = args.task_limit if base in tasks and args.task_limit is not None else args.limit
            examples += load_benchmark(full, split or (None if base in tasks else args.split), args.data_dir, limit,
                                       args.seed)
            names.append(full + (f"@{split}" if split else ""))
    if not examples:
        raise ValueError(f"no items in --benchmarks {args.benchmarks!r}")
    return examples, names


def _vector_info(path: Path, vector) -> dict:
    from lens_steer.vectors import CONFIG_FILE

    config = json.loads((path / CONFIG_FILE).read_text())
    return {"path": str(path.resolve()), "model_id": vector.metadata.model_id,
            "corpus_hash": vector.metadata.corpus_hash, "tensors_sha256": config.get("tensors_sha256"),
            "n_questions": len(vector.metadata.question_ids)}


def _run_settings(args, command: str, model, vector, examples, names) -> dict:
    import hashlib

    from lens_steer.benchmarks import resolve_data_dir
    from lens_steer.models import describe

    data_dir = resolve_data_dir(args.data_dir)
    ids = hashlib.sha256("\n".join(e.id for e in examples).encode()).hexdigest()
    return {
        "command": command,
        "model": describe(model),
        "dtype": args.dtype,
        "vector": _vector_info(args.vector, vector) if vector is not None else None,
        "allow_other_model": args.allow_other_model,
        "generation": _generation_config(args).to_dict(),
        "template": _template(args).to_dict(),
        "chunk_size": args.chunk_size or args.batch_size,
        "data": {"benchmarks": names, "split": args.split, "limit": args.limit, "task_limit": args.task_limit,
                 "seed": args.seed, "source": str(data_dir.resolve()) if data_dir is not None else "hub",
                 "n_items": len(examples), "item_ids_sha256": ids},
    }


def _run_evaluation(args, command: str, model, vector, examples, names, conditions, load_seconds: float):
    """Evaluate into ``args.out`` (resuming it), write the summary, print the table. Returns (code, summary)."""
    from datetime import datetime, timezone

    import torch

    from lens_steer.evaluate import (
        ITEMS_FILE, append_items, evaluate, open_results_dir, read_items, record_invocation, summarise, write_summary,
    )
    from lens_steer.fastpath import attention_kernel
    from lens_steer.report import format_table

    settings = _run_settings(args, command, model, vector, examples, names)
    done = open_results_dir(args.out, settings)
    wanted = {(e.id, c.key) for e in examples for c in conditions}
    print(f"{len(examples)} items x {len(conditions)} conditions: {len(wanted & done)} of {len(wanted)} already in "
          f"{args.out}", file=sys.stderr)
    added = []
    start = time.perf_counter()

    def invocation(completed: bool) -> dict:
        return {"eval_seconds": round(time.perf_counter() - start, 2), "new_rows": len(added), "completed": completed}

    index = record_invocation(args.out, {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "argv": sys.argv[1:],
        "device": str(args.device), "torch_threads": torch.get_num_threads(), "attention": attention_kernel(model),
        "load_seconds": round(load_seconds, 2),
        **invocation(False)}, conditions)

    def on_rows(rows):
        append_items(args.out / ITEMS_FILE, rows)
        added.extend(rows)
        record_invocation(args.out, invocation(False), index=index)

    completed = False
    previous = _interrupt_on_sigterm()
    try:
        evaluate(model, examples, conditions, _generation_config(args), vector, template=_template(args), done=done,
                 on_rows=on_rows, chunk_size=args.chunk_size, allow_other_model=args.allow_other_model,
                 progress=not args.no_progress)
        completed = True
    except KeyboardInterrupt:
        print(f"lens-steer {command}: interrupted after {len(added)} new rows; run the same command again to resume",
              file=sys.stderr)
    finally:
        _restore_sigterm(previous)
        record_invocation(args.out, invocation(completed), index=index)
    summary = summarise(read_items(args.out / ITEMS_FILE))
    extra = {"complete": completed, "bootstrap": {"n_boot": 2000, "seed": 0}}
    if command == "sweep":
        from lens_steer.evaluate import best_steered

        extra["best"] = {m: best_steered(summary, m) for m in args.modes}
        extra["best_rule"] = "max accuracy on 'all' (pooled), then CoT-style rate, then smaller |coeff|, then lower layer"
    write_summary(args.out, summary, **extra)
    print(format_table(summary))
    return (0 if completed else 130), summary


def _interrupt_on_sigterm():
    """Make SIGTERM raise KeyboardInterrupt (a background job ignores SIGINT), so `kill PID` stops a
    run between chunks' writes as cleanly as Ctrl-C. Returns the previous handler (None off the main thread)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    return signal.signal(signal.SIGTERM, handler)


def _restore_sigterm(previous) -> None:
    import signal

    if previous is not None:
        signal.signal(signal.SIGTERM, previous)


def _load_with_vector(args):
    from lens_steer.vectors import SteeringVector

    start = time.perf_counter()
    model = _load(args)
    vector = (SteeringVector.load(args.vector, model=model, allow_other_model=args.allow_other_model)
              if args.vector is not None else None)
    return model, vector, time.perf_counter() - start


def _eval_args(p: argparse.ArgumentParser) -> None:
    _add_model_args(p)
    _add_benchmark_args(p)
    _add_generation_args(p, max_new_tokens=192)
    _add_template_args(p)
    p.add_argument("--conditions", default="direct,cot,steered-continuous,steered-single",
                   help="comma list of plain, direct, cot, steered-continuous, steered-single")
    for mode in ("continuous", "single"):
        g = p.add_argument_group(f"steered-{mode}")
        g.add_argument(f"--layer-{mode}", type=int, default=None)
        size = g.add_mutually_exclusive_group()
        size.add_argument(f"--coeff-{mode}", type=float, default=None, help="absolute coefficient c")
        size.add_argument(f"--scale-{mode}", type=float, default=None,
                          help="||c v_l|| as a fraction of the mean residual norm at the layer")
    _add_results_args(p)


def _eval(args) -> int:
    from lens_steer.evaluate import Condition, steered_condition

    names = _csv(args.conditions)
    model, vector, load_seconds = _load_with_vector(args)
    conditions = []
    for name in names:
        if not name.startswith("steered-"):
            conditions.append(Condition.baseline(name))
            continue
        mode = name.removeprefix("steered-")
        if mode not in ("continuous", "single"):
            raise ValueError(f"unknown condition {name!r}")
        layer, coeff, scale = (getattr(args, f"{k}_{mode}") for k in ("layer", "coeff", "scale"))
        if vector is None or layer is None or (coeff is None and scale is None):
            raise ValueError(f"condition {name} needs --vector, --layer-{mode} and --coeff-{mode} or --scale-{mode}")
        conditions.append(steered_condition(vector, mode, layer, coeff=coeff, scale=scale))
    examples, bench_names = _load_examples(args)
    code, _ = _run_evaluation(args, "eval", model, vector, examples, bench_names, conditions, load_seconds)
    return code


def _sweep_args(p: argparse.ArgumentParser) -> None:
    _add_model_args(p)
    _add_benchmark_args(p)
    _add_generation_args(p, max_new_tokens=160)
    _add_template_args(p)
    p.add_argument("--layers", required=True, help="comma list of layers")
    p.add_argument("--modes", default="continuous,single", type=lambda s: _csv(s))
    grid = p.add_argument_group("grid (per mode, give coefficients or scales; --coeffs/--scales apply to every mode)")
    for flag in ("coeffs", "scales", "coeffs-continuous", "scales-continuous", "coeffs-single", "scales-single"):
        grid.add_argument(f"--{flag}", default=None, type=lambda s: _csv(s, float))
    p.add_argument("--baselines", default="direct", help="unsteered conditions run too (comma list; '' for none)")
    p.add_argument("--heatmaps", type=Path, default=None, help="heatmap directory (default: OUT/heatmaps)")
    p.add_argument("--png", action=argparse.BooleanOptionalAction, default=True,
                   help="also write PNG heatmaps (needs kaleido>=1 and Chrome; skipped with a message if missing)")
    _add_results_args(p)


def _sweep_grids(args) -> tuple[dict, dict]:
    coeffs, scales = {}, {}
    for mode in args.modes:
        own_c, own_s = getattr(args, f"coeffs_{mode}"), getattr(args, f"scales_{mode}")
        if own_c is not None and own_s is not None:
            raise ValueError(f"give --coeffs-{mode} or --scales-{mode}, not both")
        if own_c is None and own_s is None:
            if (args.coeffs is None) == (args.scales is None):
                raise ValueError(f"mode {mode} needs a grid: exactly one of --coeffs / --scales (or --coeffs-{mode} / "
                                 f"--scales-{mode})")
            own_c, own_s = args.coeffs, args.scales
        if own_c is not None:
            coeffs[mode] = own_c
        else:
            scales[mode] = own_s
    return coeffs, scales


def _sweep(args) -> int:
    from lens_steer.evaluate import Condition, sweep_conditions

    bad = [m for m in args.modes if m not in ("continuous", "single")]
    if bad:
        raise ValueError(f"unknown mode(s) {bad}; expected continuous, single")
    if args.vector is None:
        raise ValueError("sweep needs --vector")
    coeffs, scales = _sweep_grids(args)
    model, vector, load_seconds = _load_with_vector(args)
    conditions = [Condition.baseline(b) for b in _csv(args.baselines)]
    conditions += sweep_conditions(vector, _csv(args.layers, int), args.modes, coeffs=coeffs, scales=scales)
    examples, bench_names = _load_examples(args)
    code, summary = _run_evaluation(args, "sweep", model, vector, examples, bench_names, conditions, load_seconds)
    axes = {m: ("coeff" if m in coeffs else "scale") for m in args.modes}
    paths = _save_heatmaps(summary, args.heatmaps or args.out / "heatmaps", axes, png=args.png)
    print(f"wrote {len(paths)} heatmap files to {args.heatmaps or args.out / 'heatmaps'}", file=sys.stderr)
    return code


def _save_heatmaps(summary, out: Path, axes: dict, png: bool = True) -> list[Path]:
    """Write accuracy and CoT-style heatmaps per benchmark and mode as HTML, and as PNG when ``png`` and
    kaleido with Chrome work (one browser session; a failure prints one line and keeps the HTML)."""
    from lens_steer.evaluate import sweep_grid
    from lens_steer.figure_io import export_pngs, write_html
    from lens_steer.figures import FigureSpec
    from lens_steer.plotting import plot_sweep_heatmap

    out.mkdir(parents=True, exist_ok=True)
    written, specs = [], []
    benchmarks = sorted({s["benchmark"] for s in summary if s["mode"] is not None})
    for bench in benchmarks:
        for mode, axis in axes.items():
            for metric, label in (("accuracy", "accuracy"), ("cot_style_rate", "CoT-style rate")):
                layers, cols, grid = sweep_grid(summary, mode, metric, benchmark=bench, axis=axis)
                if not layers:
                    continue
                title = f"{label}, steered-{mode}, {bench}"
                fig = plot_sweep_heatmap(layers, cols, grid, label, title=title)
                fig.update_xaxes(title="scale (x mean residual norm)" if axis == "scale" else "coefficient")
                fig.update_traces(zmin=0.0, zmax=1.0)  # rates: one colour scale for every heatmap
                name = f"{bench.replace(':', '_')}-{mode}-{metric}"
                written.append(write_html(fig, out / f"{name}.html", "cdn"))
                specs.append(FigureSpec(name, title, title, fig, width=700, height=500))
    if png and specs:
        try:
            pngs, failed = export_pngs(specs, out)
        except RuntimeError as exc:  # kaleido or Chrome missing: the HTML is enough
            print(f"lens-steer sweep: PNG heatmaps skipped ({exc})", file=sys.stderr)
        else:
            written += pngs
            if failed:
                print(f"lens-steer sweep: PNG export failed for {', '.join(failed)}", file=sys.stderr)
    return written


def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--eval", type=Path, required=True, help="results directory of `lens-steer eval`")
    p.add_argument("--sweep", type=Path, default=None, help="results directory of `lens-steer sweep`")
    p.add_argument("--out", type=Path, required=True, help="markdown file to write")
    p.add_argument("--copy-summaries", type=Path, default=None,
                   help="also copy summary.json and run.json of each run here (e.g. docs/results), cited in the doc")
    p.add_argument("--title", default=None)
    p.add_argument("--note", action="append", default=[],
                   help="a paragraph for the document's Notes section (repeatable; kept in the recorded command)")


def _read_run(path: Path) -> tuple[dict, list]:
    from lens_steer.evaluate import RUN_FILE, SUMMARY_FILE, read_items, summarise

    if not (path / RUN_FILE).is_file():
        raise FileNotFoundError(f"{path} is not a results directory: {RUN_FILE} is missing")
    run = json.loads((path / RUN_FILE).read_text())
    if (path / SUMMARY_FILE).is_file():
        summary = json.loads((path / SUMMARY_FILE).read_text())
    else:
        summary = {"summary": summarise(read_items(path))}
    return run, summary


def _report(args) -> int:
    import os
    import shlex
    import shutil

    from lens_steer.evaluate import RUN_FILE, SUMMARY_FILE
    from lens_steer.report import results_markdown

    eval_run, eval_summary = _read_run(args.eval)
    sweep_run = sweep_summary = None
    if args.sweep is not None:
        sweep_run, sweep_summary = _read_run(args.sweep)
    sources = []
    for tag, path in (("eval", args.eval), ("sweep", args.sweep)):
        if path is None:
            continue
        if args.copy_summaries is not None:
            args.copy_summaries.mkdir(parents=True, exist_ok=True)
            for name in (SUMMARY_FILE, RUN_FILE):
                dest = args.copy_summaries / f"{tag}-{name}"
                shutil.copyfile(path / name, dest)
                sources.append(str(dest))
        else:
            sources.append(str(path / SUMMARY_FILE))
    heatmaps = []
    if args.sweep is not None and (args.sweep / "heatmaps").is_dir():
        found = sorted((args.sweep / "heatmaps").glob("all-*.*")) or sorted((args.sweep / "heatmaps").glob("*.*"))
        for src in found:
            if args.copy_summaries is not None:
                dest = args.copy_summaries / f"sweep-{src.name}"
                shutil.copyfile(src, dest)
                src = dest
            heatmaps.append(os.path.relpath(src, args.out.parent))
    text = results_markdown(
        eval_run, eval_summary["summary"], sweep_run=sweep_run,
        sweep_summary=sweep_summary["summary"] if sweep_summary else None,
        sweep_best=sweep_summary.get("best") if sweep_summary else None, heatmaps=heatmaps, sources=sources,
        command=shlex.join(["lens-steer", "report", *_report_argv(args)]),
        title=args.title, notes=args.note, vector_config=_vector_config(eval_run))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


def _vector_config(run: dict) -> dict | None:
    """The metadata of the run's steering vector, when its directory is still there."""
    from lens_steer.vectors import CONFIG_FILE

    vec = run.get("settings", {}).get("vector") or {}
    path = Path(vec.get("path", "")) / CONFIG_FILE
    if not vec or not path.is_file():
        return None
    return json.loads(path.read_text()).get("metadata")


def _report_argv(args) -> list[str]:
    argv = ["--eval", str(args.eval)]
    if args.sweep is not None:
        argv += ["--sweep", str(args.sweep)]
    argv += ["--out", str(args.out)]
    if args.copy_summaries is not None:
        argv += ["--copy-summaries", str(args.copy_summaries)]
    if args.title:
        argv += ["--title", args.title]
    for note in args.note:
        argv += ["--note", note]
    return argv


COMMANDS: list[Command] = [
    ("derive", "derive a CoT steering vector", _derive_args, _derive),
    ("generate", "answer questions with or without a steering vector", _generate_args, _generate),
    ("info", "describe a saved steering vector", _info_args, _info),
    ("demo", "derive on the packaged demo questions and compare answers", _demo_args, _demo),
    ("figures", "regenerate every analysis figure of a vector as HTML and PNG, with a README", _figures_args, _figures),
    ("eval", "run conditions (direct, cot, steered, ...) on benchmarks; resumable", _eval_args, _eval),
    ("sweep", "grid search over layers x coefficients x modes on a dev subset; resumable", _sweep_args, _sweep),
    ("report", "write the markdown results document from eval/sweep directories", _report_args, _report),
]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="lens-steer", description="Chain-of-thought steering vectors with TransformerLens.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text, add_args, run in COMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_args(p)
        p.set_defaults(run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (errors in inputs print one line and return 2)."""
    from lens_steer.models import ModelLoadError
    from lens_steer.vectors import ModelMismatchError, VectorFileError

    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (ModelLoadError, VectorFileError, ModelMismatchError, FileNotFoundError, IndexError, KeyError, ValueError) as exc:
        print(f"lens-steer {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
