"""Write a :class:`~lens_steer.method.vectors.SteeringVector` in the formats other programs read:
a llama.cpp / repeng control-vector GGUF, lm-evaluation-harness' ``steered`` ``.pt`` and a
steering-vectors ``.pt``. Layer names follow :mod:`lens_steer.interop.convention`.

All three add at every position, so they carry *continuous* steering only. Where a format has no
coefficient of its own (GGUF, steering-vectors) the directions are written scaled by ``coeff``; lm-eval
keeps ``coeff`` in its ``steering_coefficient``.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from lens_steer._version import __version__
from lens_steer.interop.convention import gguf_tensor_name, lm_eval_hookpoint
from lens_steer.storage import atomic_file, atomic_write, storage_errors

__all__ = ["EXPORT_FORMATS", "ExportResult", "check_output", "export_layers", "export_vector", "scaled_directions"]

GGUF_ARCH = "controlvector"


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_vector` wrote.

    Attributes:
        path: The file. format: Its format. layers: lens_steer layers written. coeff: The coefficient
        (multiplied into the directions, or stored, see the module docstring). notes: Things the
        reader of the file should know (left-out layers, how to select layers there).
    """

    path: Path
    format: str
    layers: tuple[int, ...]
    coeff: float
    notes: tuple[str, ...] = ()


def _provenance(vector, layers: Sequence[int], coeff: float) -> dict:
    meta = vector.metadata
    src = vector.source
    return {"model_id": meta.model_id, "model_fingerprint": meta.model_fingerprint, "n_layers": meta.n_layers,
            "d_model": meta.d_model, "layers": list(layers), "coeff": coeff, "lens_steer_version": __version__,
            "vector_sha256": None if src is None else src.tensors_sha256, "hook_name": meta.hook_name}


def export_layers(vector, fmt: str, layers: Sequence[int] | None) -> tuple[list[int], list[str]]:
    """The layers to write and notes about the choice.

    ``None`` means every layer with a non-zero direction (without block 0 for GGUF). Explicit layers
    are checked: none at all, out of range, block 0 in a GGUF or an all-zero direction raise
    ``ValueError`` / ``IndexError``.
    """
    if layers is not None and not list(layers):
        raise ValueError("no layers given: name at least one layer (or leave layers out for every non-zero direction)")
    n = vector.n_layers
    nonzero = [layer for layer in range(n) if bool(vector.directions[layer].abs().sum() > 0)]
    notes = []
    if layers is None:
        chosen = [layer for layer in nonzero if not (fmt == "gguf" and layer == 0)]
        if fmt == "gguf" and 0 in nonzero:
            notes.append("block 0 left out: llama.cpp control vectors have no direction for block 0")
        if not chosen:
            raise ValueError("this vector has no non-zero direction to export")
    else:
        chosen = []
        for layer in layers:
            if not isinstance(layer, int) or not 0 <= layer < n:
                raise IndexError(f"layer {layer!r} is out of range: this vector has layers 0..{n - 1}")
            if fmt == "gguf":
                gguf_tensor_name(layer)  # refuses block 0 with the reason
            if layer not in nonzero:
                raise ValueError(f"the direction at layer {layer} is all zeros: exporting it would steer nothing")
            if layer not in chosen:
                chosen.append(layer)
    if len(chosen) > 1:
        notes.append(f"{len(chosen)} layers written; a reader that applies the whole file steers all of them at once")
    return chosen, notes


def scaled_directions(vector, fmt: str, layers: Sequence[int] | None, coeff: float
                      ) -> tuple[dict[int, torch.Tensor], list[str]]:
    """``{layer: coeff·v_layer}`` (float32, CPU) for the layers :func:`export_layers` chooses, and its notes.

    Raises:
        ValueError: a non-finite ``coeff``, or one whose ``c·v`` (or ``c`` itself) overflows float32, the
            precision every format here stores and its reader steers in.
    """
    coeff = float(coeff)
    if not math.isfinite(coeff):
        raise ValueError(f"coefficient must be finite, got {coeff}")
    if not math.isfinite(float(torch.tensor(coeff, dtype=torch.float32))):
        largest = torch.finfo(torch.float32).max
        raise ValueError(f"coefficient {coeff:g} is too large for float32 (largest {largest:.4g}), which these files store")
    chosen, notes = export_layers(vector, fmt, layers)
    scaled = {}
    for layer in chosen:
        direction = vector.directions[layer].detach().float().cpu()
        scaled[layer] = coeff * direction
        if not torch.isfinite(scaled[layer]).all():
            raise ValueError(f"coefficient {coeff:g} times the direction at layer {layer} (largest |v| "
                             f"{direction.abs().max().item():.4g}) overflows float32: use a smaller coefficient")
    return scaled, notes


def _write_gguf(vector, path: Path, scaled: dict[int, torch.Tensor], coeff: float, **_) -> list[str]:
    import gguf
    import numpy as np

    with atomic_file(path) as tmp:
        writer = gguf.GGUFWriter(str(tmp), GGUF_ARCH)
        writer.add_string(f"{GGUF_ARCH}.model_hint", vector.metadata.model_id)
        writer.add_uint32(f"{GGUF_ARCH}.layer_count", len(scaled))  # as repeng writes it: directions in the file
        prov = _provenance(vector, list(scaled), coeff)
        for key in ("model_id", "model_fingerprint", "hook_name", "lens_steer_version"):
            writer.add_string(f"lens_steer.{key}", str(prov[key]))
        if prov["vector_sha256"]:
            writer.add_string("lens_steer.vector_sha256", prov["vector_sha256"])
        writer.add_float32("lens_steer.coeff", coeff)
        writer.add_uint32("lens_steer.n_layers", vector.n_layers)
        for layer, direction in scaled.items():
            writer.add_tensor(gguf_tensor_name(layer), direction.numpy().astype(np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return [f"llama.cpp: --control-vector {path} (or --control-vector-scaled {path} S; "
            "--control-vector-layer-range A B to steer a subset)"]


def _write_lm_eval(vector, path: Path, scaled: dict[int, torch.Tensor], coeff: float,
                   hookpoint: str = "layers.{layer}", **_) -> list[str]:
    layers = list(scaled)  # lm-eval keeps c as its coefficient: the unscaled directions are written
    prov = _provenance(vector, layers, coeff)
    config = {lm_eval_hookpoint(layer, hookpoint): {
        "steering_vector": vector.directions[layer].detach().float().cpu().clone(),
        "steering_coefficient": coeff, "action": "add", "bias": None, "head_index": None,
        "lens_steer": {**prov, "layer": layer}} for layer in layers}
    buf = io.BytesIO()
    torch.save(config, buf)
    atomic_write(path, buf.getvalue())
    return [f"lm-eval: --model steered --model_args pretrained=MODEL,steer_path={path}"]


def _write_steering_vectors(vector, path: Path, scaled: dict[int, torch.Tensor], coeff: float, **_) -> list[str]:
    data = {"layer_activations": scaled, "layer_type": "decoder_block",
            "lens_steer": _provenance(vector, list(scaled), coeff)}
    buf = io.BytesIO()
    torch.save(data, buf)
    atomic_write(path, buf.getvalue())
    return ["steering-vectors: d = torch.load(path); SteeringVector(d['layer_activations'], d['layer_type'])"]


EXPORT_FORMATS: dict[str, Callable[..., list[str]]] = {
    "gguf": _write_gguf,
    "lm-eval": _write_lm_eval,
    "steering-vectors": _write_steering_vectors,
}
"""Format name → writer ``(vector, path, {layer: coeff·v_layer}, coeff, **options) -> notes``."""


def _check_hookpoints(template: str, layers: Sequence[int]) -> None:
    """``template`` gives one distinct lm-eval hookpoint per layer (else ``ValueError``)."""
    seen: dict[str, int] = {}
    for layer in layers:
        try:
            name = lm_eval_hookpoint(layer, template)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"hookpoint template {template!r} is not valid ({type(exc).__name__}: {exc}): "
                             "it may use {layer} only, e.g. layers.{layer}") from None
        if name in seen:
            raise ValueError(f"hookpoint template {template!r} gives {name!r} for both layer {seen[name]} and layer "
                             f"{layer}: put {{layer}} in it, e.g. layers.{{layer}}")
        seen[name] = layer


def check_output(vector, path: str | Path, *, overwrite: bool = False) -> Path:
    """Refuse an output file that would destroy something: a directory, any path inside the directory
    ``vector`` was loaded from (its own files are the export's input), or an existing file unless
    ``overwrite``. Returns ``path``.

    Raises:
        ValueError: with the reason, in one line.
    """
    path = Path(path)
    if not path.name or path.name in (".", "..") or path.is_dir():
        raise ValueError(f"{path} is a directory: name the file to write (in it, or elsewhere)")
    src = getattr(vector, "source", None)
    if src is not None and src.path:
        vdir = Path(src.path).resolve()
        target = (path.parent.resolve() / path.name).resolve()  # a symlink followed to what it names
        inside = vdir == target or vdir in target.parents
        if not inside and path.exists() and vdir.is_dir():  # a hard link to one of its files
            inside = any(f.is_file() and os.path.samefile(f, path) for f in vdir.iterdir())
        if inside:
            raise ValueError(f"{path} is in the input vector's directory {vdir}: exporting there would overwrite the "
                             "vector or mix another file into it; write it elsewhere")
    if path.exists() and not overwrite:
        raise ValueError(f"{path} exists; not overwriting it (pass --force, or overwrite=True, to replace it)")
    return path


def export_vector(vector, path: str | Path, fmt: str, *, layers: Sequence[int] | None = None, coeff: float = 1.0,
                  hookpoint: str = "layers.{layer}", overwrite: bool = False) -> ExportResult:
    """Write ``vector`` for another program.

    Args:
        vector: A ``SteeringVector``.
        path: Output file (written atomically; missing parent folders are created).
        fmt: ``"gguf"`` (llama.cpp, repeng), ``"lm-eval"`` or ``"steering-vectors"``.
        layers: lens_steer layers to write (default: every non-zero one; block 0 never in a GGUF).
        coeff: Steering coefficient c: the file then steers like lens_steer's continuous ``c·v``.
        hookpoint: lm-eval hookpoint template (``layers.{layer}`` for Llama-family models).
        overwrite: Replace an existing file (never one of the input vector's own, see :func:`check_output`).

    Raises:
        ValueError: unknown format, non-finite coefficient or ``c·v`` overflowing float32, no layers, block 0
            in a GGUF, an all-zero direction, a bad hookpoint template, an output :func:`check_output` refuses.
        IndexError: a layer out of range. StorageError: the file could not be written.
    """
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r}: choose one of {', '.join(EXPORT_FORMATS)}")
    scaled, notes = scaled_directions(vector, fmt, layers, coeff)
    if fmt == "lm-eval":
        _check_hookpoints(hookpoint, list(scaled))
    coeff = float(coeff)
    path = check_output(vector, path, overwrite=overwrite)
    with storage_errors(path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
    notes += EXPORT_FORMATS[fmt](vector, path, scaled, coeff, hookpoint=hookpoint)
    notes.append("continuous steering only: these readers add at every position (lens_steer's single mode has no "
                 "counterpart)")
    return ExportResult(path=path, format=fmt, layers=tuple(scaled), coeff=coeff, notes=tuple(notes))
