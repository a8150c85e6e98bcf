"""Viz: draws, never runs a model. Plotly figures of analysis results and runs (``plot_*``), the paper
figure set drawn from a :class:`~lens_steer.analysis.paper.VectorAnalysis` with its headline numbers and
README text, the sweep heatmaps, the results document, and the one I/O module per output (figure_io, report_io)."""
