"""Turn analysis results into ``plotly.graph_objects.Figure`` objects; never writes files.

One import for every plot; they live in :mod:`~lens_steer.viz.plot_vectors`,
:mod:`~lens_steer.viz.plot_lens` and :mod:`~lens_steer.viz.plot_runs`.
"""

from lens_steer.viz.plot_lens import plot_logit_lens, plot_projection_trace, plot_token_set_lens
from lens_steer.viz.plot_runs import plot_ablation, plot_probe, plot_sweep_heatmap, plot_trace
from lens_steer.viz.plot_vectors import (
    plot_explained_variance, plot_layer_cosine, plot_pca_scatter, plot_source_cosine, plot_split_half,
)
from lens_steer.viz.plotting_common import TEMPLATE

__all__ = [
    "TEMPLATE",
    "plot_ablation",
    "plot_explained_variance",
    "plot_layer_cosine",
    "plot_logit_lens",
    "plot_pca_scatter",
    "plot_probe",
    "plot_projection_trace",
    "plot_source_cosine",
    "plot_split_half",
    "plot_sweep_heatmap",
    "plot_token_set_lens",
    "plot_trace",
]
