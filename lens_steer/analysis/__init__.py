"""Pure analyses of CoT steering vectors: similarity, PCA, logit lens, projections."""

from lens_steer.analysis.logit_lens import (
    LogitLensResult,
    NormKind,
    direction_logit_lens,
    random_direction_control,
    token_overlap,
)
from lens_steer.analysis.pca import PCAResult, alignment_with_direction, pca_per_question
from lens_steer.analysis.similarity import (
    PairwiseCosineStats,
    SourceCosineResult,
    cosine_by_source,
    layer_cosine_matrix,
    pairwise_cosine_stats,
    split_half_stability,
)
from lens_steer.analysis.trace import projection_onto_direction

__all__ = [
    "LogitLensResult",
    "NormKind",
    "PCAResult",
    "PairwiseCosineStats",
    "SourceCosineResult",
    "alignment_with_direction",
    "cosine_by_source",
    "direction_logit_lens",
    "layer_cosine_matrix",
    "pairwise_cosine_stats",
    "pca_per_question",
    "projection_onto_direction",
    "random_direction_control",
    "split_half_stability",
    "token_overlap",
]
