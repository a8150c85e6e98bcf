"""Analyses of CoT steering vectors: similarity, PCA, logit lens (pure); projection trace, ablation and steering probe (run the model, write nothing)."""

from lens_steer.analysis.logit_lens import (
    LogitLensResult,
    NormKind,
    direction_logit_lens,
    random_direction_control,
    token_overlap,
)
from lens_steer.analysis.pca import PCAResult, alignment_with_direction, pca_per_question
from lens_steer.analysis.probe import ProbeGrid, probe_steering
from lens_steer.analysis.similarity import (
    PairwiseCosineStats,
    SourceCosineResult,
    cosine_by_source,
    layer_cosine_matrix,
    pairwise_cosine_stats,
    split_half_stability,
)
from lens_steer.analysis.trace import (
    ABLATION_CONDITIONS,
    AblationCondition,
    AblationResult,
    TraceResult,
    direction_ablation,
    distinct_ngram_ratio,
    is_repetitive,
    projection_onto_direction,
    projection_trace,
)

__all__ = [
    "ABLATION_CONDITIONS",
    "AblationCondition",
    "AblationResult",
    "LogitLensResult",
    "NormKind",
    "PCAResult",
    "PairwiseCosineStats",
    "ProbeGrid",
    "SourceCosineResult",
    "TraceResult",
    "alignment_with_direction",
    "cosine_by_source",
    "direction_ablation",
    "direction_logit_lens",
    "distinct_ngram_ratio",
    "is_repetitive",
    "layer_cosine_matrix",
    "pairwise_cosine_stats",
    "pca_per_question",
    "probe_steering",
    "projection_onto_direction",
    "projection_trace",
    "random_direction_control",
    "split_half_stability",
    "token_overlap",
]
