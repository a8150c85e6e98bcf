"""Analyses of CoT steering vectors: similarity, PCA, logit lens, token-set lens (pure); projection trace, ablation and steering probe (run the model, write nothing)."""

from lens_steer.analysis.logit_lens import (
    LogitLensResult,
    NormKind,
    direction_logit_lens,
    lens_scores,
    random_direction_control,
    random_directions,
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
from lens_steer.analysis.token_set_lens import (
    DEFAULT_TOKEN_GROUPS,
    DroppedToken,
    LensMetric,
    TokenSet,
    TokenSetLens,
    resolve_token_set,
    token_set_lens,
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
    "DEFAULT_TOKEN_GROUPS",
    "DroppedToken",
    "LensMetric",
    "LogitLensResult",
    "NormKind",
    "PCAResult",
    "PairwiseCosineStats",
    "ProbeGrid",
    "SourceCosineResult",
    "TokenSet",
    "TokenSetLens",
    "TraceResult",
    "alignment_with_direction",
    "cosine_by_source",
    "direction_ablation",
    "direction_logit_lens",
    "distinct_ngram_ratio",
    "is_repetitive",
    "layer_cosine_matrix",
    "lens_scores",
    "pairwise_cosine_stats",
    "pca_per_question",
    "probe_steering",
    "projection_onto_direction",
    "projection_trace",
    "random_direction_control",
    "random_directions",
    "resolve_token_set",
    "split_half_stability",
    "token_overlap",
    "token_set_lens",
]
