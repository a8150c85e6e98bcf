"""The method of Zhang & Viteri: collect residual means over generated tokens, derive the CoT
vector (mean CoT minus mean direct, per layer, per question kept), and save / load it."""

from lens_steer.method.collect import ResidualMeans, collect_residual_means
from lens_steer.method.derive import derive_cot_vector
from lens_steer.method.vectors import ModelMismatchError, SteeringVector, VectorFileError, VectorMetadata, VectorRef

__all__ = [
    "ModelMismatchError",
    "ResidualMeans",
    "SteeringVector",
    "VectorFileError",
    "VectorMetadata",
    "VectorRef",
    "collect_residual_means",
    "derive_cot_vector",
]
