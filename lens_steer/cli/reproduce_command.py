"""Subcommand ``reproduce``: the paper's whole pipeline on one model into one directory (see
:class:`lens_steer.reproduce.Reproduction`); parses the budget and its overrides, runs, prints the summary."""

from __future__ import annotations

import argparse
from pathlib import Path

from lens_steer.cli.args import add_model_args, add_template_args, csv, load_engine, template


def _count(text: str) -> int | None:
    """A size: a whole number, or ``all`` for no limit."""
    if text.strip().lower() == "all":
        return None
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a count >= 0 or 'all', got {text}")
    return value


def _floats(text: str) -> tuple[float, ...]:
    return tuple(csv(text, float))


def _names(text: str) -> tuple[str, ...]:
    return tuple(csv(text))


# (flag, stage, field, type, help) of the size overrides; unset flags keep the budget's value
_OVERRIDES = (
    ("--corpus-limit", "derive", "corpus_limit", _count, "derivation questions (a seeded draw; 'all': the whole corpus)"),
    ("--corpus-seed", "derive", "corpus_seed", int, "seed of the corpus draws"),
    ("--derive-max-new-tokens", "derive", "max_new_tokens", int, "response length of the derivation"),
    ("--chunk-questions", "derive", "chunk_questions", int, "questions per derivation checkpoint (0: none)"),
    ("--sweep-benchmarks", "sweep", "benchmarks", _names, "dev benchmarks of the sweep (e.g. gsm8k@train,mmlu@val)"),
    ("--sweep-limit", "sweep", "limit", _count, "sweep items per dev benchmark"),
    ("--sweep-max-new-tokens", "sweep", "max_new_tokens", int, "response length of the sweep"),
    ("--scales-continuous", "sweep", "scales_continuous", _floats, "continuous grid: sizes as fractions of |resid|"),
    ("--scales-single", "sweep", "scales_single", _floats, "single grid: sizes as fractions of |resid|"),
    ("--benchmarks", "eval", "benchmarks", _names, "benchmarks of the evaluation (AGIEval: its English tasks)"),
    ("--split", "eval", "split", str, "split of the evaluation's benchmarks"),
    ("--limit", "eval", "limit", _count, "evaluation items per benchmark ('all': whole test sets)"),
    ("--task-limit", "eval", "task_limit", _count, "evaluation items per AGIEval task"),
    ("--eval-max-new-tokens", "eval", "max_new_tokens", int, "response length of the evaluation"),
    ("--figure-layer", "figures", "layer", int, "analysis layer of the figures (default: the model's default layer)"),
    ("--ablation-questions", "figures", "ablation_questions", int, "questions of the figures' ablations"),
    ("--figure-max-new-tokens", "figures", "max_new_tokens", int, "response length of the figures' trace/ablations"),
    ("--n-splits", "figures", "n_splits", int, "split-half repetitions of the figures"),
)


def _reproduce_args(p: argparse.ArgumentParser) -> None:
    from lens_steer.reproduce.settings import BUDGETS, STAGES

    add_model_args(p)
    p.add_argument("--out", type=Path, required=True,
                   help="directory of every stage's output; rerunning reuses what is done and redoes what changed")
    p.add_argument("--budget", choices=sorted(BUDGETS), default=None,
                   help="quick: a smoke run in minutes; cpu: the embedded model's default (the committed docs/results "
                        "sizes, whole 286-question corpus); full: the paper's protocol (default for other models)")
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma list of the stages to run ({','.join(STAGES)})")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="local benchmark copies (default: $LENS_STEER_DATA_DIR, else the Hugging Face hub)")
    p.add_argument("--corpus", default=None, metavar="paper|demo|FILE.jsonl",
                   help="questions the vector is derived from (default: paper, the BBL + MMLU + GSM8K mix)")
    sizes = p.add_argument_group("sizes (each overrides the budget's value)")
    sizes.add_argument("--max-new-tokens", type=int, default=None,
                       help="response length of derive, sweep and eval at once (the per-stage flags win)")
    sizes.add_argument("--layers", default=None,
                       help="sweep layers: blocks (10,15,20) or fractions of the depth (30%%,50%%,70%%)")
    for flag, _, _, kind, help_text in _OVERRIDES:
        sizes.add_argument(flag, type=kind, default=None, help=help_text)
    add_template_args(p)
    g = p.add_argument_group("generation (greedy)")
    g.add_argument("--batch-size", type=int, default=16)
    g.add_argument("--max-batch-tokens", type=int, default=8192,
                   help="cap on rows x padded prompt length per batch (long prompts get smaller batches)")
    g.add_argument("--seed", type=int, default=0, help="seed of the benchmark draws and the figures' controls")
    p.add_argument("--no-presets", action="store_true",
                   help="do not evaluate the paper's own cells beside the sweep's choice (Llama 3 / Mistral)")
    p.add_argument("--png", action=argparse.BooleanOptionalAction, default=True,
                   help="also write PNG figures and heatmaps (needs kaleido>=1 and Chromium; skipped if missing)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _settings(args):
    from lens_steer.reproduce.settings import LayerGrid, ReproduceSettings, budget, default_budget

    changes: dict[str, dict] = {"derive": {}, "sweep": {}, "eval": {}, "figures": {"png": args.png}}
    if args.max_new_tokens is not None:
        for stage in ("derive", "sweep", "eval"):
            changes[stage]["max_new_tokens"] = args.max_new_tokens
    if args.corpus is not None:
        changes["derive"]["corpus"] = args.corpus
    if args.layers is not None:
        changes["sweep"]["layers"] = LayerGrid.parse(args.layers)
    for flag, stage, name, _, _ in _OVERRIDES:
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is not None:
            changes[stage][name] = value
    chosen = budget(args.budget or default_budget(args.model))
    return ReproduceSettings(
        model=args.model, device=args.device, dtype=args.dtype, engine=args.engine,
        budget=chosen.with_overrides(**changes),
        data_dir=str(args.data_dir) if args.data_dir is not None else None, batch_size=args.batch_size,
        max_batch_tokens=args.max_batch_tokens, seed=args.seed, template=template(args), stages=tuple(csv(args.stages)),
        presets=not args.no_presets)


def _reproduce(args) -> int:
    from lens_steer.reproduce import Reproduction
    from lens_steer.reproduce.record import stage_table
    from lens_steer.reproduce.selection import headline_table

    settings = _settings(args)
    reproduction = Reproduction(args.out, settings, argv=args.argv, progress=not args.no_progress,
                                engine_factory=lambda capture: load_engine(args, capture_residuals=capture))
    outcome = reproduction.run()
    print(stage_table(outcome.stages))
    if outcome.headline:
        print()
        print(headline_table(outcome.headline))
    print(f"\n{args.out}: {'complete' if outcome.completed else 'interrupted (run again to resume)'} "
          f"in {outcome.seconds:.1f} s")
    return 0 if outcome.completed else 130


COMMANDS = [
    ("reproduce", "the paper's whole pipeline (derive, sweep, select, eval, report, figures) into one directory; "
                  "cached and resumable", _reproduce_args, _reproduce),
]
