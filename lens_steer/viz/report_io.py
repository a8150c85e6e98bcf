"""The results document written from saved eval / sweep directories (``lens-steer report`` and
``lens-steer reproduce``): reads the runs, renders :func:`~lens_steer.viz.report.results_markdown`, writes it."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from lens_steer.eval.results import SummaryRow, recovery
from lens_steer.eval.results_dir import RUN_FILE, SUMMARY_FILE, read_items, read_run, read_summary
from lens_steer.method.vectors import SteeringVector, VectorFileError
from lens_steer.storage import atomic_write, storage_errors
from lens_steer.viz.report import results_markdown, shown_path

__all__ = ["write_report"]


def write_report(
    eval_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    sweep_dir: str | os.PathLike[str] | None = None,
    copy_summaries: str | os.PathLike[str] | None = None,
    command: str = "",
    title: str | None = None,
    notes: Sequence[str] = (),
) -> Path:
    """Write the markdown results document of an eval (and its sweep) directory.

    Args:
        eval_dir: Results directory of the eval. out: The markdown file to write.
        sweep_dir: Results directory of the sweep, if any (its best cells and heatmaps are shown).
        copy_summaries: Also copy each run's ``summary.json`` and ``run.json`` (and the sweep's
            heatmaps) here, and cite the copies.
        command: The command line recorded in the document. title / notes: See
            :func:`~lens_steer.viz.report.results_markdown`.

    Returns:
        The path written.
    """
    out = Path(out)
    eval_run = read_run(eval_dir)
    eval_summary, _ = read_summary(eval_dir)
    sweep_run = sweep_summary = sweep_best = None
    if sweep_dir is not None:
        sweep_run = read_run(sweep_dir)
        sweep_summary, extra = read_summary(sweep_dir)
        best = extra.get("best")
        sweep_best = ({m: (SummaryRow.from_dict(s) if s else None) for m, s in best.items()} if best else None)
    copies = Path(copy_summaries) if copy_summaries is not None else None
    sources = []
    for tag, path in (("eval", eval_dir), ("sweep", sweep_dir)):
        if path is None:
            continue
        if copies is not None:
            copies.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(path) / SUMMARY_FILE, copies / f"{tag}-{SUMMARY_FILE}")
            atomic_write(copies / f"{tag}-{RUN_FILE}", _shown_run_json(Path(path) / RUN_FILE))
            sources += [str(copies / f"{tag}-{SUMMARY_FILE}"), str(copies / f"{tag}-{RUN_FILE}")]
        else:
            sources.append(str(Path(path) / SUMMARY_FILE))
    heatmaps = []
    if sweep_dir is not None and (Path(sweep_dir) / "heatmaps").is_dir():
        folder = Path(sweep_dir) / "heatmaps"
        for src in sorted(folder.glob("all-*.*")) or sorted(folder.glob("*.*")):
            if copies is not None:
                dest = copies / f"sweep-{src.name}"
                shutil.copyfile(src, dest)
                src = dest
            heatmaps.append(os.path.relpath(src, out.parent))
    vector_config = None
    if eval_run.settings.vector is not None:
        try:
            vector_config = SteeringVector.load(eval_run.settings.vector.path).metadata
        except VectorFileError:  # the vector directory is gone or changed: the document says less about it
            vector_config = None
    text = results_markdown(
        eval_run, eval_summary, sweep_run=sweep_run, sweep_summary=sweep_summary, sweep_best=sweep_best,
        heatmaps=heatmaps, sources=sources, command=command, title=title, notes=notes, vector_config=vector_config,
        recovery=recovery(read_items(eval_dir)))
    with storage_errors(out):
        out.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(out, text)


def _shown_run_json(path: Path) -> str:
    """A run's ``run.json`` for a committed copy: the vector's and the data's paths as
    :func:`~lens_steer.viz.report.shown_path` shows them (relative to the repository), all else as recorded."""
    record = json.loads(path.read_text(encoding="utf-8"))
    settings = record.get("settings", {})
    if isinstance(settings.get("vector"), dict) and settings["vector"].get("path"):
        settings["vector"]["path"] = shown_path(settings["vector"]["path"])
    if isinstance(settings.get("data"), dict) and settings["data"].get("source"):
        settings["data"]["source"] = shown_path(settings["data"]["source"])
    return json.dumps(record, indent=2) + "\n"
