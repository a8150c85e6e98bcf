"""A derivation into a directory, as ``lens-steer derive`` and ``lens-steer reproduce`` both run it: the
writer lock, the checkpoint (a killed run resumes), SIGTERM as an interruption, the wall time, the
atomic save. The one place the derivation's protocol lives."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from lens_steer.config import GenerationConfig
from lens_steer.method.checkpoint import derive_checkpoint
from lens_steer.method.derive import derive_cot_vector
from lens_steer.method.vectors import SteeringVector
from lens_steer.prompts import DEFAULT_TEMPLATE, PromptTemplate
from lens_steer.storage import DirLock

__all__ = ["DeriveSettings", "check_derivable", "derive_into", "sigterm_interrupts"]


@dataclass(frozen=True)
class DeriveSettings:
    """How a vector is derived (the questions and the engine are given beside it).

    Attributes:
        template: Prompt templates. generation: Generation settings of the responses.
        positions: ``generated``, ``prompt`` or ``all``. method: ``fused`` or ``two_pass``.
        chunk_questions: Questions per checkpointed chunk, the unit of resumption (0: one chunk, no checkpoint).
    """

    template: PromptTemplate = DEFAULT_TEMPLATE
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    positions: str = "generated"
    method: str = "fused"
    chunk_questions: int = 32

    def __post_init__(self) -> None:
        if self.chunk_questions < 0:
            raise ValueError(f"chunk_questions must be 0 (no checkpoints) or more, got {self.chunk_questions}")
        if self.positions not in ("generated", "prompt", "all"):
            raise ValueError(f"positions must be generated, prompt or all, got {self.positions!r}")
        if self.method not in ("fused", "two_pass"):
            raise ValueError(f"method must be fused or two_pass, got {self.method!r}")

    def checkpoint(self, out: str | os.PathLike[str], engine, questions: Sequence):
        """The :class:`~lens_steer.method.checkpoint.DeriveCheckpoint` of this derivation into ``out``
        (None when it keeps none)."""
        if not self.chunk_questions:
            return None
        return derive_checkpoint(out, engine, questions, template=self.template, generation=self.generation,
                                 positions=self.positions, method=self.method, chunk_questions=self.chunk_questions)


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Make SIGTERM raise KeyboardInterrupt (a background job ignores SIGINT), so ``kill PID`` stops a run
    between two saved chunks as cleanly as Ctrl-C (locks released, a message, a resumable state). Off the
    main thread nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def check_derivable(engine: str, method: str) -> None:
    """Refuse, before any model loads, a derivation the engine called ``engine`` cannot run.

    Raises:
        CapabilityError: it reads no residuals, or cannot re-read them for ``method="two_pass"``.
    """
    from lens_steer.engines.registry import require

    require(engine, "residual_capture", "deriving a vector")
    if method == "two_pass":
        require(engine, "reread_residuals", "--method two_pass")


def derive_into(out: str | os.PathLike[str], engine, questions: Sequence, settings: DeriveSettings = DeriveSettings(),
                *, progress: bool = True) -> SteeringVector:
    """Derive the CoT vector of ``questions`` on ``engine`` into the directory ``out``.

    Holds ``out``'s writer lock throughout; with ``settings.chunk_questions`` each finished chunk is
    checkpointed in ``out``, so a killed or interrupted run (Ctrl-C, SIGTERM) resumes where it stopped when
    called again with the same settings, bit-identical to an uninterrupted run; the vector records the wall
    time of the call that finished it and replaces ``out`` only when complete.

    Returns:
        The vector as loaded back from ``out``.

    Raises:
        KeyboardInterrupt: interrupted (the finished chunks are kept). LockedError: another writer holds ``out``.
        CheckpointMismatch: ``out`` holds a checkpoint made with other settings.
    """
    from lens_steer.engines.api import as_engine

    engine = as_engine(engine)
    check_derivable(engine.name, settings.method)
    out = Path(out)
    with DirLock(out, "lens-steer derive"), sigterm_interrupts():
        start = time.perf_counter()
        vector = derive_cot_vector(engine, questions, template=settings.template, generation=settings.generation,
                                   positions=settings.positions, method=settings.method, progress=progress,
                                   chunk_questions=settings.chunk_questions or None,
                                   checkpoint=settings.checkpoint(out, engine, questions))
        vector.metadata = vector.metadata.with_stats(wall_seconds=round(time.perf_counter() - start, 2))
        vector.save(out)
    return SteeringVector.load(out)
