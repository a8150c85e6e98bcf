"""Subcommands that move vectors between lens_steer and other programs: ``export``, ``import``."""

from __future__ import annotations

import argparse
from pathlib import Path

from lens_steer.cli.args import csv, locked
from lens_steer.config import DTYPES, EMBEDDED_MODEL


def _export_args(p: argparse.ArgumentParser) -> None:
    from lens_steer.interop.export import EXPORT_FORMATS

    p.add_argument("--vector", type=Path, required=True, help="steering vector directory")
    p.add_argument("--format", choices=list(EXPORT_FORMATS), required=True,
                   help="gguf: llama.cpp --control-vector and repeng; lm-eval: `--model steered` steer_path; "
                        "steering-vectors: a .pt of layer_activations")
    p.add_argument("--out", type=Path, required=True,
                   help="output file (an existing one only with --force; never a file of the input vector)")
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    p.add_argument("--layers", default=None, metavar="L[,L...]",
                   help="lens_steer layers to write (default: every non-zero direction; never block 0 in a GGUF)")
    p.add_argument("--coeff", type=float, default=1.0,
                   help="steering coefficient c (multiplied into the directions; lm-eval stores it as its coefficient)")
    p.add_argument("--hookpoint", default="layers.{layer}", help="lm-eval hookpoint template (default layers.{layer})")


def _export(args) -> int:
    from lens_steer.interop.export import export_vector
    from lens_steer.method.vectors import SteeringVector
    from lens_steer.models import layer_span

    layers = None if args.layers is None else _layer_list(args.layers)
    vector = SteeringVector.load(args.vector)
    result = export_vector(vector, args.out, args.format, layers=layers, coeff=args.coeff, hookpoint=args.hookpoint,
                           overwrite=args.force)
    print(f"wrote {result.path} ({result.format}, layers {layer_span(list(result.layers))}, c={result.coeff:g})")
    for note in result.notes:
        print(f"  {note}")
    return 0


def _layer_list(text: str) -> list[int]:
    """``--layers L[,L...]`` as ints; ``ValueError`` naming what is wrong (nothing given, not a number)."""
    try:
        layers = csv(text, int)
    except ValueError:
        raise ValueError(f"--layers {text!r}: give layer numbers separated by commas, e.g. --layers 10,15") from None
    if not layers:
        raise ValueError(f"--layers {text!r} names no layer: give L[,L...], or leave --layers out for every "
                         "non-zero direction")
    return layers


def _import_args(p: argparse.ArgumentParser) -> None:
    from lens_steer.interop.imports import IMPORT_FORMATS

    p.add_argument("--from", dest="source", type=Path, required=True,
                   help="a control-vector .gguf (llama.cpp, repeng), or a steering-vectors / lm-eval .pt")
    p.add_argument("--format", choices=list(IMPORT_FORMATS), default=None, help="default: from the file")
    p.add_argument("--model", default=EMBEDDED_MODEL, help="the model the vector is for (its depth and width are checked)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=list(DTYPES))
    p.add_argument("--allow-other-model", action="store_true",
                   help="accept a lens_steer export of another model of the same shape")
    p.add_argument("--out", type=Path, required=True, help="directory to write the lens_steer vector to")


def _import(args) -> int:
    from lens_steer.config import torch_dtype
    from lens_steer.interop.imports import import_vector, read_source
    from lens_steer.models import load_model, model_info

    foreign = read_source(args.source, args.format)  # a bad file fails before the model loads
    info = model_info(load_model(args.model, device=args.device, dtype=torch_dtype(args.dtype)))
    vector = import_vector(foreign, info, allow_other_model=args.allow_other_model)
    vector.save(args.out)
    print(vector.summary())
    print(f"saved to {args.out}")
    return 0


COMMANDS = [
    ("export", "write a vector for llama.cpp, lm-evaluation-harness, steering-vectors or repeng", _export_args,
     _export),
    ("import", "read a llama.cpp / repeng / steering-vectors / lm-eval vector into a lens_steer vector",
     _import_args, locked("import", _import)),
]
