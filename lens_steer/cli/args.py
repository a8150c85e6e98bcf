"""Argument groups shared by the subcommands, and the functions that turn parsed arguments into the
library's settings objects (the only place the argparse namespace is read for them)."""

from __future__ import annotations

import argparse
from pathlib import Path

from lens_steer.config import DTYPES, EMBEDDED_MODEL, GenerationConfig, torch_dtype
from lens_steer.prompts import DEFAULT_TEMPLATE, PromptTemplate


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=EMBEDDED_MODEL,
                   help=f"hub name, local HF directory, .gguf file, or {EMBEDDED_MODEL} (default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=list(DTYPES))
    p.add_argument("--engine", choices=["bridge", "vllm"], default="bridge",
                   help="bridge: TransformerLens (default); vllm: vLLM (`make setup-vllm`; generate, eval, sweep)")


def add_generation_args(p: argparse.ArgumentParser, max_new_tokens: int = 128) -> None:
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


def add_template_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("prompt templates ({question} is replaced by the question)")
    g.add_argument("--cot-template", default=None)
    g.add_argument("--direct-template", default=None)
    g.add_argument("--system", default=None, help="system message (default: the chat template's own)")


def add_question_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("questions")
    src = g.add_mutually_exclusive_group()
    src.add_argument("--questions", type=Path, help='JSONL file, one {"question": ...} per line')
    src.add_argument("--corpus", choices=["paper", "demo"], help="paper: BBL 3/task + MMLU dev 2/subject + GSM8K train 100")
    g.add_argument("--data-dir", type=Path, default=None,
                   help="local benchmark copies (default: $LENS_STEER_DATA_DIR, else the Hugging Face hub)")
    g.add_argument("--limit", type=int, default=None, help="use a seeded subsample of N questions")
    g.add_argument("--corpus-seed", type=int, default=0)


def csv(text: str, cast=str) -> list:
    """Comma-separated values, stripped, empty ones dropped."""
    return [cast(x.strip()) for x in text.split(",") if x.strip()]


def load_engine(args):
    """The engine named by ``--engine`` for ``--model --device --dtype``."""
    if getattr(args, "engine", "bridge") == "vllm":
        from lens_steer.engines.vllm import VllmEngine

        if args.device not in ("cpu", "cuda"):
            raise ValueError(f"--engine vllm places the model itself; --device {args.device} is not supported")
        return VllmEngine(args.model, dtype=args.dtype)
    from lens_steer.engines.api import as_engine

    return as_engine(load_bridge(args))


def require_bridge(args, command: str) -> None:
    """One clear line when a command that needs TransformerLens hooks is asked for another engine."""
    if getattr(args, "engine", "bridge") != "bridge":
        raise ValueError(f"`lens-steer {command}` runs on the bridge engine only so far (--engine {args.engine} "
                         "is supported by generate, eval and sweep)")


def load_bridge(args):
    """The model named by ``--model --device --dtype``, as a bridge."""
    from lens_steer.models import load_model

    return load_model(args.model, device=args.device, dtype=torch_dtype(args.dtype))


def generation_config(args) -> GenerationConfig:
    """``GenerationConfig`` from the generation arguments."""
    return GenerationConfig(max_new_tokens=args.max_new_tokens, do_sample=args.sample, temperature=args.temperature,
                            top_p=args.top_p, seed=args.seed, batch_size=args.batch_size,
                            max_batch_tokens=args.max_batch_tokens)


def template(args) -> PromptTemplate:
    """``PromptTemplate`` from the template arguments."""
    return PromptTemplate(cot=args.cot_template or DEFAULT_TEMPLATE.cot,
                          direct=args.direct_template or DEFAULT_TEMPLATE.direct,
                          none=DEFAULT_TEMPLATE.none, system=args.system)


def questions(args) -> list:
    """The questions of ``--questions`` / ``--corpus``, subsampled by ``--limit``."""
    from lens_steer.data import corpus
    from lens_steer.data.registry import subsample

    if args.questions is not None:
        items = corpus.load_questions_jsonl(args.questions)
    elif args.corpus == "paper":
        items = corpus.paper_corpus(data_dir=args.data_dir, seed=args.corpus_seed)
    elif args.corpus == "demo":
        items = corpus.load_questions_jsonl(corpus.demo_questions_path("derive"))
    else:
        raise SystemExit("error: give --questions FILE.jsonl or --corpus paper|demo")
    if args.limit is not None:
        items = subsample(items, args.limit, args.corpus_seed)
    return items
