"""Write figures to disk: interactive HTML, static PNG (kaleido >= 1 + a local Chromium), and the paper
figure set with its ``summary.json``, per-question ablation files and README; also the sweep heatmaps.

The only module of the package that writes figure files. PNG export is offline: kaleido
renders in a headless Chromium with plotly.js taken from the installed ``plotly`` package
and MathJax switched off, so the page loads nothing from the network.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import plotly

from lens_steer.analysis.paper import FigureSettings
from lens_steer.eval.results import SummaryRow
from lens_steer.storage import atomic_write, json_text, storage_errors, write_json
from lens_steer.viz.figures import FigureSpec, PaperFigures, sweep_heatmaps
from lens_steer.viz.readme import BROWSER_ENV, readme_text

__all__ = [
    "BROWSER_ENV",
    "PLOTLYJS_MODES",
    "PngBackend",
    "export_pngs",
    "export_pngs_if_possible",
    "find_png_backend",
    "save_sweep_heatmaps",
    "write_html",
    "write_paper_figures",
]


PLOTLYJS_MODES: tuple[str, ...] = ("directory", "cdn", "inline")
"""How HTML files get plotly.js: one shared ``plotly.min.js`` beside them, the CDN, or inlined."""

_BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
INSTALL_HINT = (
    "install kaleido>=1 in the venv and a Chromium (Debian: apt-get install -y chromium), "
    f"or point {BROWSER_ENV} at a Chrome/Chromium binary"
)


@dataclass(frozen=True)
class PngBackend:
    """Whether static export can run here, and with which browser.

    Attributes:
        browser: Path of the Chrome/Chromium executable, or None.
        reason: Why export is unavailable (empty when ``browser`` is set).
        kaleido_version: Installed kaleido version, or None.
    """

    browser: str | None
    reason: str = ""
    kaleido_version: str | None = None

    @property
    def available(self) -> bool:
        """True when kaleido >= 1 and a browser were found."""
        return self.browser is not None


def _is_exe(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def find_png_backend() -> PngBackend:
    """Look for kaleido >= 1 and a Chrome/Chromium: ``$BROWSER_PATH``, then ``PATH``, then
    kaleido's own download (``kaleido_get_chrome``)."""
    try:
        from importlib.metadata import version

        kver = version("kaleido")
    except Exception:  # noqa: BLE001 - any failure means "not installed"
        return PngBackend(None, f"kaleido is not installed; {INSTALL_HINT}")
    if int(kver.split(".")[0]) < 1:
        return PngBackend(None, f"kaleido {kver} is too old (plotly needs >= 1); {INSTALL_HINT}", kver)
    env = os.environ.get(BROWSER_ENV)
    if env:
        if _is_exe(env):
            return PngBackend(env, "", kver)
        return PngBackend(None, f"{BROWSER_ENV}={env!r} is not an executable file", kver)
    for name in _BROWSER_NAMES:
        path = shutil.which(name)
        if path and _is_exe(path):
            return PngBackend(path, "", kver)
    try:
        from choreographer.browsers.chromium import Chromium

        path = Chromium.find_browser(skip_local=False)
    except Exception:  # noqa: BLE001 - private API; absence just means "not found"
        path = None
    if path and _is_exe(path):
        return PngBackend(path, "", kver)
    return PngBackend(None, f"no Chrome/Chromium found; {INSTALL_HINT}", kver)


def write_html(fig, path: str | Path, plotlyjs: str = "directory") -> Path:
    """Write one interactive HTML file.

    Args:
        fig: A ``go.Figure``.
        path: Output file.
        plotlyjs: ``"directory"`` (a shared ``plotly.min.js`` written beside the file; works
            offline), ``"cdn"`` (small files, needs the internet to view) or ``"inline"``
            (self-contained, ~4.8 MB each).

    Returns:
        The path written.
    """
    if plotlyjs not in PLOTLYJS_MODES:
        raise ValueError(f"plotlyjs must be one of {PLOTLYJS_MODES}, got {plotlyjs!r}")
    path = Path(path)
    include = True if plotlyjs == "inline" else plotlyjs
    with storage_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.write_html(str(path), include_plotlyjs=include, full_html=True,
                       config={"displaylogo": False, "responsive": True})
    return path


def export_pngs(specs: Sequence[FigureSpec], out_dir: str | Path, backend: PngBackend | None = None,
                scale: float = 1.0) -> tuple[list[Path], list[str]]:
    """Render figures to ``<out_dir>/<name>.png`` in one headless-browser session.

    An existing PNG of the same name is removed first, so a figure that fails to render
    never leaves a stale image behind.

    Args:
        specs: Figures with their names and sizes.
        out_dir: Output directory.
        backend: From :func:`find_png_backend` (looked up when None).
        scale: Pixel scale factor.

    Returns:
        ``(written paths, names of figures that plotly.js failed to render)``.

    Raises:
        RuntimeError: If no backend is available or the browser session fails (one-line message).
    """
    backend = backend or find_png_backend()
    if not backend.available:
        raise RuntimeError(backend.reason)
    import kaleido

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plotly_js = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    jobs, paths = [], []
    for spec in specs:
        path = out / f"{spec.name}.png"
        path.unlink(missing_ok=True)
        jobs.append({"fig": spec.figure.to_dict(), "path": path,
                     "opts": {"format": "png", "width": spec.width, "height": spec.height, "scale": scale}})
        paths.append(path)
    kopts = {"mathjax": False, "path": backend.browser}
    if plotly_js.is_file():
        kopts["plotlyjs"] = str(plotly_js)
    try:
        kaleido.write_fig_from_object_sync(jobs, kopts=kopts)
    except Exception as exc:  # noqa: BLE001 - report any browser/kaleido failure in one line
        msg = " ".join(str(exc).split()) or type(exc).__name__
        raise RuntimeError(f"PNG export with {backend.browser} failed: {msg[:300]}") from exc
    return [p for p in paths if p.is_file()], [p.stem for p in paths if not p.is_file()]


def export_pngs_if_possible(specs: Sequence[FigureSpec], out_dir: str | Path, backend: PngBackend | None = None,
                            scale: float = 1.0) -> tuple[list[Path], list[str], str]:
    """The one PNG fallback: :func:`export_pngs` when a backend exists, else nothing; never raises.

    Returns:
        ``(written paths, names plotly.js failed to render, problem)``; ``problem`` is ``""``
        when export ran, else the one-line reason it did not (the HTML is then all there is).
    """
    backend = backend or find_png_backend()
    if not backend.available:
        return [], [], backend.reason
    try:
        written, failed = export_pngs(specs, out_dir, backend, scale)
    except RuntimeError as exc:
        return [], [], str(exc)
    return written, failed, ""


@dataclass
class WriteReport:
    """What :func:`write_paper_figures` wrote.

    Attributes:
        html / png / other: Paths written.
        png_message: One line on the PNG export (written, skipped and why, or not requested).
        png_missing: Names of figures meant to have a PNG (``FigureSpec.png``) that got none.
    """

    html: list[Path] = field(default_factory=list)
    png: list[Path] = field(default_factory=list)
    png_message: str = ""
    other: list[Path] = field(default_factory=list)
    png_missing: list[str] = field(default_factory=list)


def write_paper_figures(
    paper: PaperFigures,
    out_dir: str | Path,
    *,
    command: str,
    vector_info: dict,
    png: bool = True,
    plotlyjs: str = "directory",
    backend: PngBackend | None = None,
    settings: FigureSettings | None = None,
) -> WriteReport:
    """Write every figure (HTML, PNG if possible), ``summary.json``, one ``<ablation>.jsonl`` per
    ablation (per-question responses) and ``README.md``.

    PNG failures never raise: the HTML is written and the reason is returned in
    ``png_message`` (and recorded in the README). Figures with ``png=False`` are HTML only, and a
    PNG of theirs left by an earlier run is removed.

    Args:
        paper: From :func:`lens_steer.viz.figures.paper_figures`.
        out_dir: Output directory (created).
        command: The command line to record.
        vector_info: Provenance lines for the README (``{label: value}``; :func:`lens_steer.viz.readme.vector_info`).
        png: Try static export.
        plotlyjs: See :func:`write_html`.
        backend: PNG backend (looked up when None and ``png``).
        settings: The run's effective settings, recorded in ``summary.json`` and the README.

    Returns:
        A :class:`WriteReport`.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = WriteReport()
    for spec in paper.figures:
        report.html.append(write_html(spec.figure, out / f"{spec.name}.html", plotlyjs))
    static = [spec for spec in paper.figures if spec.png]
    for spec in paper.figures:
        if not spec.png:
            (out / f"{spec.name}.png").unlink(missing_ok=True)
    if png:
        backend = backend or find_png_backend()
        report.png, failed, problem = export_pngs_if_possible(static, out, backend)
        if problem:
            report.png_message = f"PNG export skipped: {problem}"
        else:
            report.png_message = (f"PNG written for {len(report.png)} of {len(static)} figures "
                                  f"with kaleido {backend.kaleido_version} and {backend.browser}.")
            if failed:
                report.png_message += f" plotly.js could not render: {', '.join(failed)}."
        report.png_missing = sorted({spec.name for spec in static} - {p.stem for p in report.png})
    else:
        report.png_message = "PNG export not requested (--no-png)."
    summary = out / "summary.json"
    recorded = {"command": command} | ({"settings": settings.to_dict()} if settings is not None else {})
    skipped = {s.group: s.reason for s in paper.analysis.skipped}
    write_json(summary, {**recorded, "vector": vector_info, **paper.numbers.to_dict(), "skipped": skipped})
    report.other.append(summary)
    for ablation in paper.analysis.ablations:
        path = out / f"{ablation.name}.jsonl"
        atomic_write(path, "".join(json_text(row, indent=None) + "\n" for row in ablation.result.per_question()))
        report.other.append(path)
    readme = out / "README.md"
    atomic_write(readme, readme_text(paper, command=command, vector_info=vector_info, html_mode=plotlyjs,
                                     png_message=report.png_message, wrote_png=[p.stem for p in report.png],
                                     settings=settings))
    report.other.append(readme)
    return report


def save_sweep_heatmaps(summary: Sequence[SummaryRow], out: str | Path, axes: Mapping[str, str],
                        png: bool = True) -> tuple[list[Path], str]:
    """Write :func:`sweep_heatmaps` as HTML (plotly.js from the CDN), and PNG when ``png`` and possible.

    Returns:
        ``(paths written, message)``; the message is ``""`` unless PNG export was skipped or
        failed for some figures (the HTML is written either way).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    specs = sweep_heatmaps(summary, axes)
    written = [write_html(spec.figure, out / f"{spec.name}.html", "cdn") for spec in specs]
    message = ""
    if png and specs:
        pngs, failed, problem = export_pngs_if_possible(specs, out)
        written += pngs
        if problem:
            message = f"PNG heatmaps skipped ({problem})"
        elif failed:
            message = f"PNG export failed for {', '.join(failed)}"
    return written, message
