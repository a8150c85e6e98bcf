"""What the stages of one reproduction share while it runs: its directory and settings, the engine (loaded
on first need, once), the bridge for the figures, and the values read once (questions, items, the vector)."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lens_steer.method.vectors import SteeringVector
from lens_steer.reproduce.cache import corpus_questions, read_vector
from lens_steer.reproduce.presets import Preset
from lens_steer.reproduce.settings import ReproduceSettings

__all__ = ["Context", "open_bridge", "open_engine"]


def open_engine(settings: ReproduceSettings, capture_residuals: bool):
    """The settings' engine on their model (``capture_residuals``: the derivation will read residuals)."""
    from lens_steer.engines.api import open_engine as open_named

    return open_named(settings.engine, settings.model, device=settings.device, dtype=settings.dtype,
                      capture_residuals=capture_residuals)


def open_bridge(settings: ReproduceSettings):
    """The settings' model as a TransformerLens bridge (the figures need its hooks)."""
    from lens_steer.config import torch_dtype
    from lens_steer.models import load_model

    return load_model(settings.model, device=settings.device, dtype=torch_dtype(settings.dtype))


@dataclass
class Context:
    """One reproduction's shared state (owned by :class:`~lens_steer.reproduce.pipeline.Reproduction`).

    Attributes:
        out: The directory. settings: What to run. preset: The paper's cells for this model (or None).
        argv: The command line recorded in runs and the report. say: Prints a status line.
        progress: Show progress bars. log: Where evaluation runs print (``False`` mutes).
        engine_factory: ``(capture_residuals) -> Engine``. bridge_factory: ``() -> TransformerBridge``.
        on_engine: Called once the engine is loaded (the pipeline re-checks the vector's model then).
    """

    out: Path
    settings: ReproduceSettings
    preset: Preset | None
    argv: list[str]
    say: Callable[[str], None]
    progress: bool
    log: object
    engine_factory: Callable
    bridge_factory: Callable
    on_engine: Callable[[], None] = lambda: None
    load_seconds: float = 0.0
    _engine: object = None
    _questions: list | None = None
    _vector: SteeringVector | None = None
    _data: dict[str, tuple[list, list[str]]] = field(default_factory=dict)

    # ------------------------------------------------------------ the engine
    @property
    def loaded(self) -> bool:
        """Whether the engine is loaded."""
        return self._engine is not None

    @property
    def engine(self):
        """The generating engine, loaded on first use."""
        if self._engine is None:
            started = time.perf_counter()
            self._engine = self.engine_factory("derive" in self.settings.stages)
            self.load_seconds = time.perf_counter() - started
            self.say(f"loaded {self.settings.model} on the {self._engine.name} engine ({self.load_seconds:.1f} s)")
            self.on_engine()
        return self._engine

    def release_engine(self) -> None:
        """Free the engine (and the GPU memory it held)."""
        if self._engine is None:
            return
        self._engine = None
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def bridge(self):
        """A TransformerBridge of the model: the engine's own when it runs hooks, else a new one after freeing
        the engine (its memory first)."""
        from lens_steer.engines.registry import capabilities_of

        if self._engine is not None and capabilities_of(self._engine).hooks:
            return self._engine.model
        self.release_engine()
        return self.bridge_factory()

    # ------------------------------------------------------------ values read once
    def questions(self) -> list:
        """The derivation's questions."""
        if self._questions is None:
            self._questions = corpus_questions(self.settings.budget.derive, self.settings.data_dir)
        return self._questions

    def vector(self) -> SteeringVector:
        """The reproduction's vector (``out/vector``).

        Raises:
            FileNotFoundError: there is no complete one.
        """
        if self._vector is None:
            vector = read_vector(self.out / "vector")
            if vector is None:
                raise FileNotFoundError(f"no complete steering vector in {self.out / 'vector'}: run the derive stage")
            self._vector = vector
        return self._vector

    def forget_vector(self) -> None:
        """Read the vector again on next use (it was just derived or moved)."""
        self._vector = None

    def data(self, stage: str, settings) -> tuple[list, list[str]]:
        """The items of the ``sweep`` or ``eval`` stage (``settings``: its ``DataSettings``)."""
        if stage not in self._data:
            self._data[stage] = settings.load()
        return self._data[stage]
