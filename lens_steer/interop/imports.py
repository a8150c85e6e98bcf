"""Read steering vectors made by other programs into a :class:`~lens_steer.method.vectors.SteeringVector`
for a given model: llama.cpp / repeng control-vector GGUFs, steering-vectors and lm-eval ``.pt`` files,
and live ``steering_vectors.SteeringVector`` / ``repeng.ControlVector`` objects.

An imported vector has directions only (zeros at the layers the source does not cover), no per-question
vectors, and records where it came from in ``metadata.stats.imported``. Layers follow
:mod:`lens_steer.interop.convention`; files are checked the way their own readers check them.
"""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import Tensor

from lens_steer._version import __version__
from lens_steer.interop.convention import gguf_layer
from lens_steer.method.metadata import DerivationStats, ImportOrigin
from lens_steer.method.vectors import ModelMismatchError, SteeringVector, VectorFileError, VectorMetadata, _info_of
from lens_steer.storage import read_bytes

__all__ = ["IMPORT_FORMATS", "ForeignVector", "from_object", "import_vector", "read_gguf", "read_source",
           "read_torch_file"]

IMPORT_FORMATS = ("gguf", "steering-vectors", "lm-eval")


@dataclass(frozen=True)
class ForeignVector:
    """Directions read from another program, before they are fitted to a model.

    Attributes:
        directions: lens_steer layer → ``[d_model]`` float32 direction (already scaled by any coefficient
            the source carries). format: Where it came from (``gguf``, ``steering-vectors``, ``lm-eval``,
            ``repeng``). origin: Provenance for the metadata (path, sha256, model hint, ...).
    """

    directions: dict[int, Tensor]
    format: str
    origin: dict = field(default_factory=dict)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _field_value(reader, key: str):
    f = reader.get_field(key)
    if f is None:
        return None
    try:
        return f.contents()
    except Exception:  # older gguf: decode the last part by hand
        part = f.parts[-1]
        return bytes(part).decode("utf-8") if part.dtype.kind == "u" and part.itemsize == 1 else part.tolist()[0]


def read_gguf(path: str | Path) -> ForeignVector:
    """A llama.cpp control vector (as repeng's ``export_gguf`` and :func:`~lens_steer.interop.export_vector`
    write it), checked with llama.cpp's rules: tensors ``direction.<int>`` with int > 0, F32, 1-D, one length.

    Raises:
        VectorFileError: missing, corrupt or not a control vector, with the reason.
    """
    import gguf
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise VectorFileError(f"no control-vector file at {path}")
    raw = read_bytes(path)  # no permission: StorageError, one line
    try:
        reader = gguf.GGUFReader(path)
    except Exception as exc:  # gguf raises ValueError, struct.error, IndexError ... on a bad file
        raise VectorFileError(f"{path} is not a readable GGUF file: {type(exc).__name__}: {exc}") from exc
    arch = _field_value(reader, "general.architecture")
    if arch is not None and arch != "controlvector":
        raise VectorFileError(f"{path} is a GGUF of architecture {arch!r}, not a control vector")
    if not reader.tensors:
        raise VectorFileError(f"{path} holds no direction tensors")
    directions: dict[int, Tensor] = {}
    width = None
    for t in reader.tensors:
        try:
            layer = gguf_layer(t.name)
        except ValueError as exc:
            raise VectorFileError(f"{path}: {exc}") from exc
        if t.tensor_type != gguf.GGMLQuantizationType.F32:
            raise VectorFileError(f"{path}: tensor {t.name} is {t.tensor_type.name}, llama.cpp reads F32 only")
        if len(t.shape) != 1:
            raise VectorFileError(f"{path}: tensor {t.name} has shape {tuple(int(d) for d in t.shape)}, not 1-D")
        if width is not None and int(t.n_elements) != width:
            raise VectorFileError(f"{path}: tensor {t.name} has {int(t.n_elements)} values, the others {width}")
        width = int(t.n_elements)
        if layer in directions:
            raise VectorFileError(f"{path}: two tensors name layer {layer} (one is {t.name}); which one llama.cpp "
                                  "would use is not defined: keep one")
        directions[layer] = torch.from_numpy(np.array(t.data, dtype=np.float32).reshape(-1))
    origin = {"path": str(path.resolve()), "sha256": _sha256(raw),
              "model_hint": _field_value(reader, "controlvector.model_hint")}
    for key in ("model_id", "model_fingerprint", "coeff", "vector_sha256"):
        value = _field_value(reader, f"lens_steer.{key}")
        if value is not None:
            origin[f"lens_steer_{key}"] = value
    return ForeignVector(directions, "gguf", origin)


_HOOKPOINT = re.compile(r"(?:.*\.)?(?:layers|h|blocks)\.([0-9]+)")


def read_torch_file(path: str | Path) -> ForeignVector:
    """A steering-vectors (``{"layer_activations": {layer: tensor}, "layer_type": ...}``) or lm-eval
    (``{hookpoint: {"steering_vector", "steering_coefficient", "action": "add"}}``) ``.pt`` file, loaded
    with ``weights_only=True`` (tensors and plain values only)."""
    path = Path(path)
    if not path.is_file():
        raise VectorFileError(f"no vector file at {path}")
    raw = read_bytes(path)  # no permission: StorageError, one line
    try:
        data = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise VectorFileError(f"{path} is not a readable torch file of tensors: {type(exc).__name__}: {exc}") from exc
    origin = {"path": str(path.resolve()), "sha256": _sha256(raw)}
    if isinstance(data, dict) and "lens_steer" in data and isinstance(data["lens_steer"], dict):
        origin.update({f"lens_steer_{k}": v for k, v in data["lens_steer"].items()
                       if k in ("model_id", "model_fingerprint", "coeff", "vector_sha256")})
    if isinstance(data, dict) and "layer_activations" in data:
        return _from_layer_activations(data["layer_activations"], data.get("layer_type", "decoder_block"),
                                       origin, str(path))
    if isinstance(data, dict) and data and all(isinstance(v, dict) and "steering_vector" in v for v in data.values()):
        directions, hookpoints = {}, {}
        for hookpoint, info in data.items():
            match = _HOOKPOINT.fullmatch(str(hookpoint))
            if match is None:
                raise VectorFileError(f"{path}: hookpoint {hookpoint!r} is not a decoder block (`layers.N`)")
            if info.get("action", "add") != "add" or info.get("head_index") is not None or info.get("bias") is not None:
                raise VectorFileError(f"{path}: hookpoint {hookpoint!r} uses action {info.get('action')!r} "
                                      "with a head index or bias; only a plain 'add' maps onto lens_steer's steering")
            layer = int(match.group(1))
            if layer in hookpoints:  # lm-eval hooks modules by name under the base model: at most one is the block
                raise VectorFileError(f"{path}: hookpoints {hookpoints[layer]!r} and {hookpoint!r} both name layer "
                                      f"{layer}; lm-eval resolves each by module name, so at most one of them is that "
                                      "decoder block in a given model: keep the one for your model")
            hookpoints[layer] = hookpoint
            coeff = _lm_eval_coefficient(info, f"{path}: hookpoint {hookpoint!r}")
            directions[layer] = coeff * _vector_1d(info["steering_vector"], f"{path}: {hookpoint}")
        for info in data.values():
            for k, v in (info.get("lens_steer") or {}).items():
                if k in ("model_id", "model_fingerprint"):
                    origin.setdefault(f"lens_steer_{k}", v)
        return ForeignVector(directions, "lm-eval", origin)
    raise VectorFileError(f"{path} is neither a steering-vectors file (no 'layer_activations') nor an lm-eval "
                          "steer file ({hookpoint: {'steering_vector': ...}})")


def _lm_eval_coefficient(info: dict, where: str) -> float:
    """``steering_coefficient`` read as lm-eval's ``SteeredModel`` reads it (0.4.12 to 0.4.13:
    ``float(steer_info.get("steering_coefficient", 1.0))``): a missing one is 1.0; ``None`` (which lm-eval
    itself fails on with a ``TypeError``) or a value ``float()`` cannot take is refused in one line."""
    value = info.get("steering_coefficient", 1.0)
    if value is None:
        raise VectorFileError(f"{where}: steering_coefficient is null; lm-eval reads a missing coefficient as 1.0 "
                              "but cannot use null: give a number (or leave the key out for 1.0)")
    try:
        return float(value)
    except (TypeError, ValueError, RuntimeError):  # RuntimeError: a tensor of several values
        shown = repr(value) if len(repr(value)) <= 60 else f"a {type(value).__name__}"
        raise VectorFileError(f"{where}: steering_coefficient {shown} is not a number") from None


def _vector_1d(value, where: str) -> Tensor:
    t = torch.as_tensor(value)
    if not t.is_floating_point():
        raise VectorFileError(f"{where}: direction is {t.dtype}, not floating point")
    t = t.detach().float().cpu()
    if t.ndim > 1 and all(d == 1 for d in t.shape[:-1]):
        t = t.reshape(-1)
    if t.ndim != 1:
        raise VectorFileError(f"{where}: direction has shape {tuple(t.shape)}, not [d_model]")
    return t


def _from_layer_activations(acts, layer_type: str, origin: dict, where: str) -> ForeignVector:
    if layer_type != "decoder_block":
        raise VectorFileError(f"{where}: layer_type {layer_type!r}: lens_steer steers the decoder block's output "
                              "(layer_type 'decoder_block') only")
    if not isinstance(acts, dict) or not acts:
        raise VectorFileError(f"{where}: layer_activations is empty or not a dict")
    directions = {}
    for layer, value in acts.items():
        if not isinstance(layer, int) or isinstance(layer, bool):
            raise VectorFileError(f"{where}: layer key {layer!r} is not an int")
        directions[layer] = _vector_1d(value, f"{where}: layer {layer}")
    return ForeignVector(directions, "steering-vectors", origin)


def from_object(obj) -> ForeignVector:
    """A live ``steering_vectors.SteeringVector`` (``layer_activations``, ``layer_type``) or
    ``repeng.ControlVector`` (``model_type``, ``directions``), read by their attributes."""
    if hasattr(obj, "layer_activations"):
        return _from_layer_activations(obj.layer_activations, getattr(obj, "layer_type", "decoder_block"),
                                       {"object": type(obj).__module__ + "." + type(obj).__qualname__},
                                       type(obj).__name__)
    if hasattr(obj, "directions") and hasattr(obj, "model_type") and isinstance(obj.directions, dict):
        directions = {int(k): _vector_1d(v, f"repeng ControlVector layer {k}") for k, v in obj.directions.items()}
        return ForeignVector(directions, "repeng", {"object": "repeng.ControlVector", "model_hint": obj.model_type})
    raise TypeError(f"expected a steering-vectors SteeringVector or a repeng ControlVector, got {type(obj).__name__}")


def read_source(source, fmt: str | None = None) -> ForeignVector:
    """The :class:`ForeignVector` of a file path (format from ``fmt``, else the suffix and contents) or a live object."""
    if isinstance(source, ForeignVector):
        return source
    if not isinstance(source, (str, Path)):
        return from_object(source)
    path = Path(source)
    if fmt is None:
        fmt = "gguf" if path.suffix == ".gguf" else None
    if fmt == "gguf":
        return read_gguf(path)
    if fmt in (None, "steering-vectors", "lm-eval"):
        foreign = read_torch_file(path)
        if fmt is not None and foreign.format != fmt:
            raise VectorFileError(f"{path} is a {foreign.format} file, not {fmt}")
        return foreign
    raise ValueError(f"unknown import format {fmt!r}: choose one of {', '.join(IMPORT_FORMATS)}")


def import_vector(source, model, *, fmt: str | None = None, allow_other_model: bool = False) -> SteeringVector:
    """A ``SteeringVector`` for ``model`` from another program's vector.

    Args:
        source: A file (``.gguf``; ``.pt`` of steering-vectors or lm-eval), a ``ForeignVector``, or a
            live steering-vectors / repeng object.
        model: The model it is for (a bridge, an engine or a ``ModelInfo``): depth and width are checked.
        fmt: Force a file format (default: from the suffix and contents).
        allow_other_model: Accept a file that lens_steer exported from another model of the same shape.

    Raises:
        VectorFileError: unreadable file. ModelMismatchError: width or depth does not fit ``model``,
        or a lens_steer export of another model.
    """
    foreign = read_source(source, fmt)
    info = _info_of(model)
    where = foreign.origin.get("path") or foreign.origin.get("object") or foreign.format
    for layer, direction in foreign.directions.items():
        if direction.shape[-1] != info.d_model:
            raise ModelMismatchError(f"{where}: directions are {direction.shape[-1]} wide, but {info.model_id!r} has "
                                     f"d_model {info.d_model}")
        if not 0 <= layer < info.n_layers:
            raise ModelMismatchError(f"{where}: has a direction for layer {layer}, but {info.model_id!r} has layers "
                                     f"0..{info.n_layers - 1}")
        if not torch.isfinite(direction).all():
            raise VectorFileError(f"{where}: direction at layer {layer} holds NaN or infinite values")
    fp = foreign.origin.get("lens_steer_model_fingerprint")
    if fp and fp != info.fingerprint and not allow_other_model:
        raise ModelMismatchError(f"{where} was exported from {foreign.origin.get('lens_steer_model_id')!r} "
                                 f"(fingerprint {fp}), not this model {info.model_id!r} (fingerprint "
                                 f"{info.fingerprint}); pass allow_other_model=True to use it anyway")
    directions = torch.zeros(info.n_layers, info.d_model)
    for layer, direction in foreign.directions.items():
        directions[layer] = direction
    layers = sorted(foreign.directions)
    meta = VectorMetadata(
        model_id=info.model_id, model_fingerprint=info.fingerprint, n_layers=info.n_layers, d_model=info.d_model,
        positions="unknown", method=f"imported:{foreign.format}", package_version=__version__,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        stats=DerivationStats(imported=ImportOrigin(foreign.format, tuple(layers), {
            **foreign.origin, "note": "directions only: no per-question vectors or residual norms"})))
    return SteeringVector(directions=directions, metadata=meta)
