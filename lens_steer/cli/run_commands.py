"""Subcommands on results: ``eval`` and ``sweep`` (resumable runs, built as :class:`RunSettings` and run
by the library's :class:`EvalRun`) and ``report``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from lens_steer.cli.args import (
    SCHEDULE_HELP, add_generation_args, add_model_args, add_template_args, csv, generation_config, load_engine,
    locked, steering_mode, template,
)


def add_benchmark_args(p: argparse.ArgumentParser) -> None:
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


def add_results_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vector", type=Path, default=None, help="steering vector directory")
    p.add_argument("--allow-other-model", action="store_true", help="use a vector derived on another checkpoint")
    p.add_argument("--out", type=Path, required=True,
                   help="results directory (items.jsonl, summary.json, run.json); an existing one is resumed")


def _data_settings(args):
    from lens_steer.eval.run import DataSettings

    return DataSettings(benchmarks=tuple(csv(args.benchmarks)), split=args.split, limit=args.limit,
                        task_limit=args.task_limit, seed=args.seed,
                        data_dir=str(args.data_dir) if args.data_dir is not None else None)


def _load_with_vector(args):
    from lens_steer.method.vectors import SteeringVector

    generation_config(args)  # bad sampling settings are refused before the model loads
    start = time.perf_counter()
    engine = load_engine(args)
    vector = (SteeringVector.load(args.vector, model=engine, allow_other_model=args.allow_other_model)
              if args.vector is not None else None)
    return engine, vector, time.perf_counter() - start


def _run(args, command: str, engine, vector, conditions, load_seconds: float):
    """Run the eval or sweep through the library; print the table. Returns ``(exit code, outcome)``."""
    from lens_steer.eval.evaluate import check_conditions
    from lens_steer.eval.run import EvalRun, RunSettings
    from lens_steer.viz.report import format_table

    check_conditions(engine, conditions, vector, args.allow_other_model)  # before the results directory is touched
    data = _data_settings(args)
    examples, names = data.load()
    settings = RunSettings(command=command, data=data, conditions=tuple(conditions),
                           generation=generation_config(args), template=template(args), chunk_size=args.chunk_size,
                           allow_other_model=args.allow_other_model)
    run = EvalRun(args.out, settings, engine, vector, examples=examples, benchmark_names=names, argv=args.argv,
                  load_seconds=load_seconds)
    outcome = run.run(progress=not args.no_progress)
    print(format_table(outcome.summary))
    return (0 if outcome.completed else 130), outcome


def _eval_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    add_benchmark_args(p)
    add_generation_args(p, max_new_tokens=192)
    add_template_args(p)
    p.add_argument("--conditions", default="direct,cot,steered-continuous,steered-single",
                   help="comma list of plain, direct, cot, steered-continuous, steered-single")
    for mode in ("continuous", "single"):
        g = p.add_argument_group(f"steered-{mode}")
        g.add_argument(f"--layer-{mode}", type=int, default=None)
        size = g.add_mutually_exclusive_group()
        size.add_argument(f"--coeff-{mode}", type=float, default=None, help="absolute coefficient c")
        size.add_argument(f"--scale-{mode}", type=float, default=None,
                          help="||c v_l|| as a fraction of the mean residual norm at the layer")
    g = _schedule_args(p, "one steered condition per --schedule, at --layer with --coeff or --scale")
    g.add_argument("--layer", type=int, default=None, help="layer the --schedule conditions steer")
    size = g.add_mutually_exclusive_group()
    size.add_argument("--coeff", type=float, default=None, help="absolute coefficient c of the --schedule conditions")
    size.add_argument("--scale", type=float, default=None,
                      help="||c v_l|| as a fraction of the mean residual norm (not for op=ablate)")
    add_results_args(p)


def _schedule_args(p: argparse.ArgumentParser, what: str):
    """``--schedule`` (repeatable) and ``--steer-style``, in a group of their own (returned)."""
    g = p.add_argument_group(f"steering schedules ({what})")
    g.add_argument("--schedule", action="append", default=[], metavar="SPEC", help=SCHEDULE_HELP + " (repeatable)")
    g.add_argument("--steer-style", choices=["direct", "cot", "none"], default="direct",
                   help="prompt style the --schedule conditions steer (default direct, as the paper)")
    return g


def _schedules(args) -> list[str]:
    """The ``--schedule`` specs' canonical texts, checked before any model loads, also against what the engine
    declares it can apply (repeats dropped)."""
    from lens_steer.engines.registry import require_steering

    modes = list(dict.fromkeys(steering_mode(text, "--schedule") for text in args.schedule))
    require_steering(args.engine, modes, "--schedule")
    return modes


def _eval(args) -> int:
    from lens_steer.eval.conditions import Condition, steered_condition

    names = csv(args.conditions)
    schedules = _schedules(args)
    if schedules and (args.vector is None or args.layer is None or (args.coeff is None and args.scale is None)):
        raise ValueError("--schedule needs --vector, --layer and --coeff or --scale")
    engine, vector, load_seconds = _load_with_vector(args)
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
    conditions += [steered_condition(vector, mode, args.layer, coeff=args.coeff, scale=args.scale,
                                     style=args.steer_style) for mode in schedules]
    code, _ = _run(args, "eval", engine, vector, conditions, load_seconds)
    return code


def _sweep_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    add_benchmark_args(p)
    add_generation_args(p, max_new_tokens=160)
    add_template_args(p)
    p.add_argument("--layers", required=True, help="comma list of layers")
    p.add_argument("--modes", default=None, type=lambda s: csv(s),
                   help="comma list of the paper's modes, continuous and single (default: both, unless --schedule "
                        "is given)")
    _schedule_args(p, "each --schedule is one more grid axis value beside --modes, e.g. --schedule single "
                      "--schedule 'at=first:16' --schedule 'at=trigger:\\n\\n'; its sizes come from --coeffs or "
                      "--scales")
    grid = p.add_argument_group("grid (per mode, give coefficients or scales; --coeffs/--scales apply to every mode)")
    for flag in ("coeffs", "scales", "coeffs-continuous", "scales-continuous", "coeffs-single", "scales-single"):
        grid.add_argument(f"--{flag}", default=None, type=lambda s: csv(s, float))
    p.add_argument("--baselines", default="direct", help="unsteered conditions run too (comma list; '' for none)")
    p.add_argument("--heatmaps", type=Path, default=None, help="heatmap directory (default: OUT/heatmaps)")
    p.add_argument("--png", action=argparse.BooleanOptionalAction, default=True,
                   help="also write PNG heatmaps (needs kaleido>=1 and Chrome; skipped with a message if missing)")
    add_results_args(p)


def _sweep_grids(args, modes: list[str]) -> tuple[dict, dict]:
    coeffs, scales = {}, {}
    for mode in modes:
        preset = mode in ("continuous", "single")
        own_c, own_s = (getattr(args, f"coeffs_{mode}"), getattr(args, f"scales_{mode}")) if preset else (None, None)
        if own_c is not None and own_s is not None:
            raise ValueError(f"give --coeffs-{mode} or --scales-{mode}, not both")
        if own_c is None and own_s is None:
            if (args.coeffs is None) == (args.scales is None):
                own = f" (or --coeffs-{mode} / --scales-{mode})" if preset else ""
                raise ValueError(f"mode {mode} needs a grid: exactly one of --coeffs / --scales{own}")
            own_c, own_s = args.coeffs, args.scales
        if own_c is not None:
            coeffs[mode] = own_c
        else:
            scales[mode] = own_s
    return coeffs, scales


def _sweep(args) -> int:
    from lens_steer.eval.conditions import Condition, sweep_conditions

    presets = args.modes if args.modes is not None else ([] if args.schedule else ["continuous", "single"])
    bad = [m for m in presets if m not in ("continuous", "single")]
    if bad:
        raise ValueError(f"unknown mode(s) {bad}; expected continuous, single (give other specs with --schedule)")
    modes = list(dict.fromkeys(presets + _schedules(args)))
    if not modes:
        raise ValueError("sweep needs at least one mode: --modes or --schedule")
    if args.vector is None:
        raise ValueError("sweep needs --vector")
    coeffs, scales = _sweep_grids(args, modes)
    engine, vector, load_seconds = _load_with_vector(args)
    conditions = [Condition.baseline(b) for b in csv(args.baselines)]
    conditions += sweep_conditions(vector, csv(args.layers, int), modes, coeffs=coeffs, scales=scales,
                                   style=args.steer_style)
    code, outcome = _run(args, "sweep", engine, vector, conditions, load_seconds)
    _write_heatmaps(args, outcome.summary, {m: ("coeff" if m in coeffs else "scale") for m in modes})
    return code


def _write_heatmaps(args, summary, axes: dict) -> None:
    """The sweep's heatmaps, one file per benchmark, mode and metric; a spec's file is named by its slug (its text
    may hold characters a file name cannot)."""
    from dataclasses import replace

    from lens_steer.engines.steer_spec import as_spec
    from lens_steer.viz.figure_io import save_sweep_heatmaps

    slugs = {m: as_spec(m).slug() for m in axes}
    named = [replace(s, mode=slugs.get(s.mode, s.mode)) if s.mode is not None else s for s in summary]
    out = args.heatmaps or args.out / "heatmaps"
    paths, message = save_sweep_heatmaps(named, out, {slugs[m]: a for m, a in axes.items()}, png=args.png)
    if message:
        print(f"lens-steer sweep: {message}", file=sys.stderr)
    print(f"wrote {len(paths)} heatmap files to {out}", file=sys.stderr)


def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--eval", type=Path, required=True, help="results directory of `lens-steer eval`")
    p.add_argument("--sweep", type=Path, default=None, help="results directory of `lens-steer sweep`")
    p.add_argument("--out", type=Path, required=True, help="markdown file to write")
    p.add_argument("--copy-summaries", type=Path, default=None,
                   help="also copy summary.json and run.json of each run here (e.g. docs/results), cited in the doc")
    p.add_argument("--title", default=None)
    p.add_argument("--note", action="append", default=[],
                   help="a paragraph for the document's Notes section (repeatable; kept in the recorded command)")


def _report(args) -> int:
    import shlex

    from lens_steer.viz.report_io import write_report

    write_report(args.eval, args.out, sweep_dir=args.sweep, copy_summaries=args.copy_summaries,
                 command=shlex.join(["lens-steer", *args.argv]), title=args.title, notes=args.note)
    print(f"wrote {args.out}")
    return 0


COMMANDS = [
    ("eval", "run conditions (direct, cot, steered, ...) on benchmarks; resumable", _eval_args, locked("eval", _eval)),
    ("sweep", "grid search over layers x coefficients x modes (or steering schedules) on a dev subset; resumable",
     _sweep_args,
     locked("sweep", _sweep)),
    ("report", "write the markdown results document from eval/sweep directories", _report_args, _report),
]
