"""The figures stage of a reproduction: every analysis figure of the vector into ``DIR/figures`` through
:func:`~lens_steer.reproduce.figures.make_figures`, as ``lens-steer figures`` writes them. Files a user adds to
the directory stay; the stage's own files of an earlier run are moved into ``superseded/``."""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from lens_steer.analysis.paper import FigureSettings
from lens_steer.method.vectors import SteeringVector
from lens_steer.reproduce.cache import superseded_path
from lens_steer.reproduce.context import Context
from lens_steer.reproduce.record import StageRecord, fingerprint
from lens_steer.reproduce.settings import ReproduceSettings
from lens_steer.reproduce.stages import Stage
from lens_steer.storage import storage_errors

__all__ = ["Figures", "figure_settings", "write_figures"]


class Figures(Stage):
    """Every analysis figure of the vector (``DIR/figures``, as ``lens-steer figures`` writes it). Files a user
    adds to the directory stay where they are; the stage's own files of an earlier run are moved aside."""

    name = "figures"
    _OWN_SUFFIXES = (".html", ".png", ".js", ".jsonl")
    _OWN_NAMES = ("summary.json", "README.md")

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self._written: tuple[str, ...] | None = None
        self._previous: tuple[str, ...] | None = None

    @property
    def path(self) -> Path:
        return self.ctx.out / "figures"

    def inputs(self) -> dict:
        vector = self.ctx.vector()
        return {"vector": vector.source.tensors_sha256,
                "settings": figure_settings(self.ctx.settings, vector).to_dict(),
                "png": self.ctx.settings.budget.figures.png}

    def made_from(self, record: StageRecord | None) -> dict | None:
        self._previous = record.files if record is not None else None
        return super().made_from(record)

    def _listed(self) -> tuple[str, ...] | None:
        return self._written if self._written is not None else self._previous

    def output(self) -> str | None:
        names = self._listed()
        if names is None or not (self.path / "README.md").is_file():
            return None
        digests = {}
        for name in names:
            try:
                digests[name] = hashlib.sha256((self.path / name).read_bytes()).hexdigest()
            except OSError:
                return None
        return fingerprint(digests)

    def legacy_output(self) -> str | None:
        summary, readme = self.path / "summary.json", self.path / "README.md"
        if not (summary.is_file() and readme.is_file()):
            return None
        if self._previous is None:  # a format-1 record lists no files: take the stage's own by name and kind
            self._written = tuple(p.relative_to(self.path).as_posix() for p in self._own(set()))
        return fingerprint(summary.read_text())

    def files(self) -> tuple[str, ...] | None:
        return self._written

    def _own(self, names: set[str]) -> list[Path]:
        """The files of ``figures/`` an earlier run of this stage wrote (by its list, else by name and kind)."""
        listed = set(self._previous) if self._previous is not None else None
        found = []
        for path in sorted(p for p in self.path.rglob("*") if p.is_file()):
            rel = path.relative_to(self.path).as_posix()
            if rel in names or (listed is not None and rel in listed) or (
                    listed is None and (rel in self._OWN_NAMES or path.suffix in self._OWN_SUFFIXES)):
                found.append(path)
        return found

    def set_aside(self) -> str | None:
        return None  # done file by file in run(), so files a user added stay

    def run(self, status: str) -> str | None:
        ctx = self.ctx
        vector = ctx.vector()
        staging = ctx.out / f".figures.new-{os.getpid()}"
        if staging.exists():
            shutil.rmtree(staging)
        try:
            write_figures(ctx.settings, ctx.bridge(), vector, staging, ctx.argv, ctx.say, progress=ctx.progress)
            new = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file())
            old = self._own(set(new)) if self.path.is_dir() else []
            with storage_errors(self.path):
                if old:
                    aside = superseded_path(ctx.out, "figures")
                    for path in old:
                        target = aside / path.relative_to(self.path)
                        target.parent.mkdir(parents=True, exist_ok=True)
                        os.rename(path, target)
                    ctx.say(f"figures: moved {len(old)} files of the previous figures to "
                            f"{os.path.relpath(aside, ctx.out)}")
                self.path.mkdir(parents=True, exist_ok=True)
                for name in new:
                    target = self.path / name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(staging / name, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self._written = tuple(new)
        return self.output()


# ---------------------------------------------------------------- the figures as the library writes them
def figure_settings(settings: ReproduceSettings, vector: SteeringVector) -> FigureSettings:
    """The figure stage's :class:`FigureSettings`, defaults resolved."""
    from lens_steer.analysis.paper import resolve_figure_settings

    fs = settings.budget.figures
    return resolve_figure_settings(settings.model, vector.n_layers, layer=fs.layer,
                                   ablation_questions=fs.ablation_questions, max_new_tokens=fs.max_new_tokens,
                                   batch_size=settings.batch_size, top_k=fs.top_k, n_splits=fs.n_splits,
                                   seed=settings.seed, device=settings.device, dtype=settings.dtype)


def write_figures(settings: ReproduceSettings, model, vector: SteeringVector, out: Path, argv: Sequence[str],
                  say: Callable[[str], None], *, progress: bool) -> None:
    """Every analysis figure of the vector into ``out``, as ``lens-steer figures`` writes them."""
    from lens_steer.reproduce.figures import make_figures

    png = settings.budget.figures.png
    run = make_figures(model, vector, figure_settings(settings, vector), out,
                       command=shlex.join(["lens-steer", *argv]), png=png, progress=progress,
                       vector_dir=out.parent / "vector")
    say(f"figures: wrote {len(run.written.html)} HTML and {len(run.written.png)} PNG files to {out}")
    if png and run.written.png_missing:
        say(f"figures: {run.written.png_message} (HTML written)")
    for skipped in run.paper.analysis.skipped:
        say(f"figures: skipped {skipped.group}: {skipped.reason}")
