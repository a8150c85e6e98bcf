"""The vectors a server offers, by name: ``NAME=DIR`` arguments loaded and checked against the served model
at start (a vector derived on another model is refused before the port opens), and each one's provenance
as ``/v1/steering/vectors`` reports it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lens_steer.method.vectors import ModelMismatchError, SteeringVector, VectorFileError
from lens_steer.models import ModelInfo, layer_span
from lens_steer.serve.steering_spec import NAME_PATTERN

__all__ = ["ServedVector", "load_served_vectors", "parse_vector_arg"]


@dataclass(frozen=True)
class ServedVector:
    """A vector the server steers with.

    Attributes:
        name: What requests call it. path: Where it was loaded from. vector: The vector (one object for the
        server's life: the engine groups requests that steer alike by it).
    """

    name: str
    path: str
    vector: SteeringVector

    def provenance(self) -> dict:
        """Where the vector came from: model, corpus, layers and the checksum of its tensors."""
        meta, ref = self.vector.metadata, self.vector.source
        layers = (self.vector.directions.abs().sum(-1) > 0).nonzero().flatten().tolist()
        return {"name": self.name, "object": "steering_vector", "path": self.path, "model_id": meta.model_id,
                "model_fingerprint": meta.model_fingerprint, "n_layers": meta.n_layers, "d_model": meta.d_model,
                "layers": layers, "layer_span": layer_span(layers), "corpus_hash": meta.corpus_hash,
                "n_questions": len(meta.question_ids), "positions": meta.positions, "method": meta.method,
                "tensors_sha256": ref.tensors_sha256 if ref is not None else None,
                "scale_available": self.vector.resid_norm is not None}


def parse_vector_arg(text: str) -> tuple[str, Path]:
    """``NAME=DIR`` as ``(name, path)``.

    Raises:
        ValueError: no ``=``, or a name outside ``[A-Za-z0-9_.-]``.
    """
    name, eq, path = text.partition("=")
    if not eq or not path:
        raise ValueError(f"--vector {text!r}: expected NAME=DIR (e.g. cot=runs/v)")
    if not NAME_PATTERN.fullmatch(name):
        raise ValueError(f"--vector {text!r}: the name may hold only letters, digits, '_', '.' and '-'")
    return name, Path(path)


def load_served_vectors(args: Sequence[str], info: ModelInfo, *, allow_other_model: bool = False
                        ) -> dict[str, ServedVector]:
    """Load every ``NAME=DIR`` and check it fits the model.

    Raises:
        ValueError: a malformed or repeated name. VectorFileError: a missing or corrupt vector.
        ModelMismatchError: a vector derived on another model (or of another shape), named.
    """
    out: dict[str, ServedVector] = {}
    for text in args:
        name, path = parse_vector_arg(text)
        if name in out:
            raise ValueError(f"--vector {name} is given twice")
        try:
            vector = SteeringVector.load(path, model=info, allow_other_model=allow_other_model)
        except ModelMismatchError as exc:
            raise ModelMismatchError(f"--vector {name}={path}: {exc}") from None
        except VectorFileError as exc:
            raise VectorFileError(f"--vector {name}={path}: {exc}") from None
        out[name] = ServedVector(name, str(path.resolve()), vector)
    return out
