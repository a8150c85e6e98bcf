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
                            top_p=args.top_p, seed=args.seed, batch_size=args.batch_size)


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


COMMANDS: list[Command] = [
    ("derive", "derive a CoT steering vector", _derive_args, _derive),
    ("generate", "answer questions with or without a steering vector", _generate_args, _generate),
    ("info", "describe a saved steering vector", _info_args, _info),
    ("demo", "derive on the packaged demo questions and compare answers", _demo_args, _demo),
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
