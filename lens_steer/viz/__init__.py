"""Viz: plotly figures of analyses and runs (never write files), the paper-figure set with its
headline numbers, figure I/O (HTML, PNG, README), sweep heatmaps and the results document."""
