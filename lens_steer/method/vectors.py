"""``SteeringVector``: per-layer CoT directions, per-question vectors and provenance; save/load.

On disk a vector is a directory with ``vector.safetensors`` (tensors), ``config.json``
(metadata, including the model's identity and the tensors file's sha256) and, when the
derivation kept them, ``responses.jsonl``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor

from lens_steer.data._records import iter_jsonl, read_json
from lens_steer.data.example import DataFormatError
from lens_steer.method.metadata import MetadataError, VectorMetadata
from lens_steer.models import ModelInfo, layer_span, model_info

TENSORS_FILE = "vector.safetensors"
CONFIG_FILE = "config.json"
RESPONSES_FILE = "responses.jsonl"
FORMAT_VERSION = 1


class VectorFileError(ValueError):
    """A saved vector is missing, corrupt or inconsistent."""


CHECKPOINT_DIR = ".derive-partial"
"""A derivation's checkpoint inside its output directory (see :mod:`lens_steer.method.checkpoint`)."""


def _is_vector_dir(path: Path) -> bool:
    """Whether ``path`` may be replaced by a vector: empty, a vector, or a derivation checkpoint."""
    if not path.is_dir():
        return False
    names = {p.name for p in path.iterdir()}
    return not names or CONFIG_FILE in names or names <= {CHECKPOINT_DIR}


class ModelMismatchError(ValueError):
    """A vector does not fit the model it is applied to."""


def _info_of(model) -> ModelInfo:
    """The :class:`ModelInfo` of a bridge, an engine (its ``info``) or a ``ModelInfo`` itself."""
    if isinstance(model, ModelInfo):
        return model
    if hasattr(model, "info") and isinstance(model.info, ModelInfo):
        return model.info
    return model_info(model)


@dataclass(frozen=True)
class VectorRef:
    """Where a saved vector was read from and what it is: the record a run keeps of the vector it used.

    Attributes:
        path: The directory, absolute. model_id: Model it was derived on. corpus_hash: Its corpus.
        tensors_sha256: Checksum of its tensors file. n_questions: Questions averaged.
    """

    path: str
    model_id: str
    corpus_hash: str
    tensors_sha256: str | None
    n_questions: int


@contextmanager
def _as_vector_error() -> Iterator[None]:
    """Re-raise a located file error (bad UTF-8 or JSON, a line that is not an object) as :class:`VectorFileError`."""
    try:
        yield
    except DataFormatError as exc:
        raise VectorFileError(f"corrupt steering vector: {exc}") from exc


def _metadata_of(meta: object, path: Path) -> VectorMetadata:
    """The ``metadata`` object of a config file, each field checked against its type."""
    try:
        return VectorMetadata.from_dict(meta)
    except MetadataError as exc:
        raise VectorFileError(f"corrupt steering vector: {path}: {exc}") from exc


@dataclass
class SteeringVector:
    """A CoT steering vector.

    Attributes:
        directions: [n_layers, d_model] v = mean over questions of v(q).
        metadata: Provenance.
        per_question: [n_questions, n_layers, d_model] v(q) = mean_CoT − mean_direct, or None.
        resid_norm: [n_layers] mean residual norm over the averaged tokens (a scale for
            choosing coefficients), or None.
        responses: Generated responses of the derivation (dicts), or None.
    """

    directions: Float[Tensor, "layer d_model"]
    metadata: VectorMetadata
    per_question: Float[Tensor, "question layer d_model"] | None = None
    resid_norm: Float[Tensor, "layer"] | None = None
    responses: list[dict] | None = None
    source: VectorRef | None = field(default=None, compare=False, repr=False)
    """Set by :meth:`load`: the directory and checksum it was read from."""

    def __post_init__(self) -> None:
        if self.directions.ndim != 2:
            raise ValueError(f"directions must be [n_layers, d_model], got {tuple(self.directions.shape)}")
        shape = (self.metadata.n_layers, self.metadata.d_model)
        if tuple(self.directions.shape) != shape:
            raise ValueError(f"directions shape {tuple(self.directions.shape)} != metadata {shape}")
        if self.per_question is not None and tuple(self.per_question.shape[1:]) != shape:
            raise ValueError(f"per_question shape {tuple(self.per_question.shape)} does not end in {shape}")
        n_ids = len(self.metadata.question_ids)
        if self.per_question is not None and n_ids and self.per_question.shape[0] != n_ids:
            raise ValueError(f"per_question holds {self.per_question.shape[0]} question vectors but the metadata lists "
                             f"{n_ids} question ids")
        if len(self.metadata.question_sources) not in (0, n_ids) or len(self.metadata.questions) not in (0, n_ids):
            raise ValueError(f"the metadata lists {n_ids} question ids but {len(self.metadata.question_sources)} "
                             f"sources and {len(self.metadata.questions)} questions")
        bad = (~torch.isfinite(self.directions)).any(dim=-1)
        if bad.any():
            layers = bad.nonzero().flatten().tolist()
            shown = f"{layers[:8]}{' ...' if len(layers) > 8 else ''}"
            raise ValueError(f"directions hold NaN or infinite values at {len(layers)} of {len(bad)} layers "
                             f"{shown}: not a usable steering vector")

    @property
    def n_layers(self) -> int:
        return self.metadata.n_layers

    @property
    def d_model(self) -> int:
        return self.metadata.d_model

    def norms(self) -> Tensor:
        """[n_layers] L2 norm of the direction per layer."""
        return self.directions.norm(dim=-1)

    def relative_norms(self) -> Tensor | None:
        """[n_layers] ‖v_l‖ / mean residual norm, or None when the residual norm is unknown."""
        return None if self.resid_norm is None else self.norms() / self.resid_norm

    def coeff_for_scale(self, layer: int, scale: float) -> float:
        """The c for which ‖c·v_layer‖ = ``scale`` × the mean residual norm at ``layer``."""
        if self.resid_norm is None:
            raise ValueError("this vector has no residual norms recorded")
        return float(scale * self.resid_norm[layer] / self.directions[layer].norm())

    def check_compatible(self, model, *, allow_other_model: bool = False) -> None:
        """Raise ``ModelMismatchError`` unless this vector fits ``model`` (a bridge, an engine or a ``ModelInfo``).

        Depth and width must match. The fingerprint must match too unless
        ``allow_other_model`` (e.g. a fine-tune of the same base).
        """
        info = _info_of(model)
        n, d = info.n_layers, info.d_model
        if (self.n_layers, self.d_model) != (n, d):
            raise ModelMismatchError(
                f"vector from {self.metadata.model_id!r} has {self.n_layers} layers x d_model {self.d_model}, "
                f"but this model has {n} layers x d_model {d}"
            )
        fp = info.fingerprint
        if not allow_other_model and self.metadata.model_fingerprint and fp != self.metadata.model_fingerprint:
            raise ModelMismatchError(
                f"vector was derived on {self.metadata.model_id!r} (fingerprint {self.metadata.model_fingerprint}), "
                f"not on this model {info.model_id!r} (fingerprint {fp}); pass allow_other_model=True to use it anyway"
            )

    def save(self, path: str | Path) -> Path:
        """Write the vector directory. Returns its path.

        Atomic: the files are written to a new directory beside ``path``, which then takes its place
        in one step, so an existing vector there is replaced only by a complete one (a kill at any
        point leaves the old vector or the new). A directory that holds something other than a
        vector (or a derivation checkpoint) is not overwritten.
        """
        from safetensors.torch import save_file

        from lens_steer.storage import json_text, replace_dir, storage_errors, temp_dir_beside

        out = Path(path)
        if out.exists() and not _is_vector_dir(out):
            raise VectorFileError(f"{out} exists and is not a steering vector directory; not overwriting it "
                                  "(choose another output path)")
        tmp = temp_dir_beside(out)
        try:
            with storage_errors(tmp):
                tensors = {"directions": self.directions.detach().float().contiguous().cpu()}
                if self.per_question is not None:
                    tensors["per_question"] = self.per_question.detach().float().contiguous().cpu()
                if self.resid_norm is not None:
                    tensors["resid_norm"] = self.resid_norm.detach().float().contiguous().cpu()
                save_file(tensors, str(tmp / TENSORS_FILE))
                digest = hashlib.sha256((tmp / TENSORS_FILE).read_bytes()).hexdigest()
                config = {"format_version": FORMAT_VERSION, "tensors_sha256": digest, "metadata": self.metadata.to_dict()}
                (tmp / CONFIG_FILE).write_text(json_text(config) + "\n")
                if self.responses is not None:
                    with open(tmp / RESPONSES_FILE, "w") as f:
                        for r in self.responses:
                            f.write(json_text(r, indent=None) + "\n")
            replace_dir(tmp, out)
        except BaseException:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return out

    @classmethod
    def load(cls, path: str | Path, model=None, *, allow_other_model: bool = False) -> "SteeringVector":
        """Read a vector directory written by :meth:`save`.

        Args:
            path: The directory.
            model: If given, check the vector fits it (see :meth:`check_compatible`).
            allow_other_model: See :meth:`check_compatible`.

        Raises:
            VectorFileError: missing or corrupt files, named in the message (with the line, in
                ``responses.jsonl``). ModelMismatchError: wrong model.
        """
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        from lens_steer.storage import read_bytes

        src = Path(path)
        if not src.is_dir():
            raise VectorFileError(f"no steering vector directory at {src}")
        for name in (CONFIG_FILE, TENSORS_FILE):
            if not (src / name).is_file():
                raise VectorFileError(f"{src} is not a complete steering vector: {name} is missing")
        with _as_vector_error():
            config = read_json(src / CONFIG_FILE)
        if "metadata" not in config:
            raise VectorFileError(f"corrupt steering vector: {src / CONFIG_FILE} has no 'metadata'")
        metadata = _metadata_of(config["metadata"], src / CONFIG_FILE)
        if config.get("format_version") != FORMAT_VERSION:
            raise VectorFileError(f"{src} has format version {config.get('format_version')!r}, expected {FORMAT_VERSION}")
        raw = read_bytes(src / TENSORS_FILE)  # no permission: StorageError, one line
        if hashlib.sha256(raw).hexdigest() != config.get("tensors_sha256"):
            raise VectorFileError(f"{src / TENSORS_FILE} does not match the checksum in {CONFIG_FILE}: file corrupt or edited")
        try:
            tensors = load_file(str(src / TENSORS_FILE))
        except (SafetensorError, OSError, ValueError) as exc:
            raise VectorFileError(f"{src / TENSORS_FILE} is unreadable: {exc}") from exc
        if "directions" not in tensors:
            raise VectorFileError(f"{src / TENSORS_FILE} holds no 'directions' tensor")
        for name, tensor in tensors.items():
            if not tensor.is_floating_point():
                raise VectorFileError(f"{src / TENSORS_FILE}: tensor {name!r} is {tensor.dtype}, not floating point")
        resid_norm = tensors.get("resid_norm")
        if resid_norm is not None and tuple(resid_norm.shape) != (metadata.n_layers,):
            raise VectorFileError(f"{src / TENSORS_FILE}: resid_norm shape {tuple(resid_norm.shape)} != "
                                  f"({metadata.n_layers},)")
        responses = None
        if (src / RESPONSES_FILE).is_file():
            with _as_vector_error():
                responses = [obj for _, obj in iter_jsonl(src / RESPONSES_FILE)]
        try:
            vector = cls(
                directions=tensors["directions"],
                metadata=metadata,
                per_question=tensors.get("per_question"),
                resid_norm=resid_norm,
                responses=responses,
                source=VectorRef(path=str(src.resolve()), model_id=metadata.model_id, corpus_hash=metadata.corpus_hash,
                                 tensors_sha256=config.get("tensors_sha256"), n_questions=len(metadata.question_ids)),
            )
        except ValueError as exc:
            raise VectorFileError(f"{src}: {exc}") from exc
        if model is not None:
            vector.check_compatible(model, allow_other_model=allow_other_model)
        return vector

    def summary(self) -> str:
        """A few lines describing the vector."""
        norms = self.norms()
        rel = self.relative_norms()
        lines = [
            f"SteeringVector for {self.metadata.model_id} ({self.n_layers} layers x {self.d_model})",
            f"  questions: {len(self.metadata.question_ids)} (corpus {self.metadata.corpus_hash[:12]}), positions: {self.metadata.positions}",
            f"  |v| per layer: min {norms.min():.3g}, max {norms.max():.3g}",
        ]
        if rel is not None and torch.isfinite(rel).all():
            lines.append(f"  |v|/|resid| per layer: min {rel.min():.3f}, max {rel.max():.3f}")
        imported = self.metadata.stats.imported
        if imported is not None:
            where = imported.details.get("path") or imported.details.get("object", "")
            lines.append(f"  imported from {imported.format} {where}: "
                         f"directions at layers {layer_span(list(imported.layers))} only, no per-question vectors")
        return "\n".join(lines)

    def __repr__(self) -> str:
        n_q = 0 if self.per_question is None else self.per_question.shape[0]
        return f"SteeringVector(model={self.metadata.model_id!r}, layers={self.n_layers}, d_model={self.d_model}, questions={n_q})"


