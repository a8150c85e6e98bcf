"""Argument groups shared by the subcommands, and the functions that turn parsed arguments into the
library's settings objects (the only place the argparse namespace is read for them)."""

from __future__ import annotations

import argparse
from pathlib import Path

from lens_steer.config import DTYPES, EMBEDDED_MODEL, GenerationConfig
from lens_steer.engines.registry import engine_names, engine_spec
from lens_steer.models.files import NAMED_MODELS
from lens_steer.prompts import DEFAULT_TEMPLATE, PromptTemplate


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=EMBEDDED_MODEL,
                   help="hub name, local HF directory, .gguf file, or a named offline model: "
                        + "; ".join(f"{m.name} ({m.title}; {m.install})" for m in NAMED_MODELS.values())
                        + f" (default {EMBEDDED_MODEL})")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=list(DTYPES))
    p.add_argument("--engine", choices=list(engine_names()), default="bridge",
                   help="; ".join(f"{n}: {engine_spec(n).description}" for n in engine_names()))
    v = p.add_argument_group("vLLM engine (--engine vllm)")
    v.add_argument("--tensor-parallel-size", type=int, default=1, help="GPUs per model replica that split each layer")
    v.add_argument("--pipeline-parallel-size", type=int, default=1, help="stages that split the layers (e.g. nodes)")
    v.add_argument("--distributed-executor-backend", choices=["mp", "ray"], default=None,
                   help="vLLM's executor for several workers: mp (one node, default) or ray (several nodes)")
    v.add_argument("--gpu-memory-utilization", type=float, default=None,
                   help="fraction of device memory vLLM reserves (on CPU: of RAM; default 0.85 GPU, 0.3 CPU)")


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


SCHEDULE_HELP = (
    "where, when and how to steer: a preset, continuous (every position; the paper's default) or single (the "
    "prompt's positions), or comma-separated items: at=all|prompt|last|first:K|window:A-B|trigger:TEXT[|TEXT...]|"
    "region:OPEN..CLOSE (first K / generated tokens [A,B) / the last token of each occurrence of a trigger, "
    "span=N for N tokens from it / generated tokens between two marker tokens); "
    "strength=constant|linear:FROM:TO:N|step:BEFORE:AFTER:K (a factor on the coefficient over generated tokens); "
    "op=add|add-norm|clamp|ablate (add c*v; add then rescale to the norm before; set the projection on v to c|v|; "
    "remove c times the component along v). In texts \\n is a newline and a backslash escapes , | and '.'. "
    "Examples: single; 'at=first:16'; 'at=window:4-20,strength=linear:1:0:16'; 'at=trigger:\\n\\n|Step'; "
    "'at=region:<think>..</think>,op=add-norm'; 'single,op=ablate'; 'op=clamp'")
"""``--help`` of every flag that takes a steering spec (see :mod:`lens_steer.engines.steer_spec`)."""


def steering_mode(text: str, flag: str) -> str:
    """The canonical text of a steering spec given on the command line; ``ValueError`` naming the flag and the
    field otherwise (checked before any model loads)."""
    from lens_steer.engines.steer_spec import SpecError, mode_text

    try:
        return mode_text(text)
    except SpecError as exc:
        raise ValueError(f"{flag} {text!r}: {exc}") from None


def check_steering_tokens(steering, tokenizer, flag: str) -> None:
    """Refuse, naming the flag, a trigger or region marker of ``steering`` that is not the model's tokens."""
    from lens_steer.engines.selection import resolve_spec
    from lens_steer.engines.steer_spec import SpecError

    try:
        resolve_spec(steering.spec, tokenizer)
    except SpecError as exc:
        raise ValueError(f"{flag} {steering.mode!r}: {exc}") from None


def csv(text: str, cast=str) -> list:
    """Comma-separated values, stripped, empty ones dropped."""
    return [cast(x.strip()) for x in text.split(",") if x.strip()]


_ENGINE_OPTIONS = (("tensor_parallel_size", 1), ("pipeline_parallel_size", 1), ("distributed_executor_backend", None),
                   ("gpu_memory_utilization", None))
"""The engine options the CLI offers as flags (``--tensor-parallel-size`` ...) and their defaults; a flag left at
its default is not passed, so an engine that does not take it is not bothered."""


def engine_options(args) -> dict:
    """The engine options given on the command line (those not at their default).

    Raises:
        ValueError: a flag the chosen engine does not take (naming the flag and the engines that do).
    """
    from lens_steer.engines.registry import engine_names, engine_spec

    given = {name: getattr(args, name) for name, default in _ENGINE_OPTIONS if getattr(args, name, default) != default}
    kind = getattr(args, "engine", "bridge")
    bad = [name for name in given if name not in engine_spec(kind).options]
    if bad:
        takers = [n for n in engine_names() if set(bad) <= set(engine_spec(n).options)]
        flags = ", ".join("--" + name.replace("_", "-") for name in bad)
        raise ValueError(f"{flags} {'apply' if len(bad) > 1 else 'applies'} to "
                         f"{' or '.join(f'--engine {n}' for n in takers) or 'no engine'} only, not --engine {kind}")
    return given


def load_engine(args, *, capture_residuals: bool = False):
    """The engine named by ``--engine`` for ``--model --device --dtype`` and the engine options (see
    :func:`lens_steer.engines.registry.open_engine`; an option the engine does not take is one line)."""
    from lens_steer.engines.registry import open_engine

    return open_engine(getattr(args, "engine", "bridge"), args.model, device=args.device, dtype=args.dtype,
                       capture_residuals=capture_residuals, **engine_options(args))


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
    from lens_steer.data.corpus import load_corpus

    if args.questions is None and args.corpus is None:
        raise ValueError("give --questions FILE.jsonl or --corpus paper|demo")
    return load_corpus(args.questions if args.questions is not None else args.corpus, data_dir=args.data_dir,
                       limit=args.limit, seed=args.corpus_seed)


def locked(command: str, run):
    """``run(args)`` holding the writer lock of ``args.out`` from the start, so a second writer is refused
    before any model loads (see :class:`lens_steer.storage.DirLock`); a dead holder's lock is taken over
    with a note on stderr."""

    def run_locked(args) -> int:
        import sys

        from lens_steer.storage import DirLock

        with DirLock(args.out, f"lens-steer {command}") as lock:
            if lock.took_over:
                print(f"{args.out}: took over the lock of {lock.took_over}", file=sys.stderr)
            return run(args)

    run_locked.__name__ = run.__name__
    return run_locked
