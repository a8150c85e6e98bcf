"""The benchmark item record (:class:`Example`), its errors, and the rules every loader shares:
where the offline data lives and how a seeded subsample is drawn."""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DATA_DIR_ENV",
    "DataFormatError",
    "Example",
    "LETTERS",
    "SkippedRecordsWarning",
    "resolve_data_dir",
    "subsample",
]

DATA_DIR_ENV = "LENS_STEER_DATA_DIR"
"""Environment variable naming the offline data directory when no ``data_dir`` is given."""

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
"""Option letters of multiple-choice items, by position."""


@dataclass(frozen=True)
class Example:
    """One benchmark item, identical in shape whatever the source.

    Attributes:
        id: Stable identifier, e.g. ``"gsm8k/test/17"``, ``"mmlu/test/anatomy/3"``,
            ``"bbl/logical_deduction/three_objects/4"``.
        source: The benchmark's registry name (``"gsm8k"``, ``"mmlu"``, ``"arc"``,
            ``"agieval"``, ``"bbl"``, ...) or ``"custom"``.
        question: Text shown to the model. For multiple choice it includes the lettered
            options, one per line (``"A. ...\\nB. ..."``), after the passage and question.
        answer: Gold answer: final number string (GSM8K), letter (multiple choice) or
            target text (generative BIG-bench).
        choices: Option texts without letters, in order; ``()`` for free-form items.
        subset: MMLU subject, AGIEval task, BBL ``task[/subtask]`` or ARC split.
    """

    id: str
    source: str
    question: str
    answer: str
    choices: tuple[str, ...] = ()
    subset: str = ""


class DataFormatError(ValueError):
    """A record in a benchmark file (or hub row) that cannot be read.

    Attributes:
        path: File (or hub dataset) that holds the record.
        line: 1-based line number of the record, when the format has lines.
        problem: What was wrong.
    """

    def __init__(self, path: str | os.PathLike[str], problem: str = "", line: int | None = None) -> None:
        self.path = str(path)
        self.line = line
        self.problem = problem
        where = f"{self.path}, line {line}" if line is not None else self.path
        super().__init__(f"{where}: {problem}")


class SkippedRecordsWarning(UserWarning):
    """Well-formed records left out because they fit no supported item type."""


def resolve_data_dir(data_dir: str | os.PathLike[str] | None) -> Path | None:
    """Pick the offline data directory: the argument, else ``$LENS_STEER_DATA_DIR``, else None.

    Args:
        data_dir: Explicit directory, or None.

    Returns:
        The directory as a ``Path``, or None when neither the argument nor the
        environment variable is set (loaders then use the Hugging Face hub).
    """
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir)
    env = os.environ.get(DATA_DIR_ENV, "")
    return Path(env) if env else None


def subsample(examples: Sequence[Example], n: int | None, seed: int) -> list[Example]:
    """Draw ``n`` items without replacement, deterministically, keeping the original order.

    Args:
        examples: Items to draw from.
        n: How many to keep; None or ``n >= len(examples)`` keeps all.
        seed: Seed of the draw; the same ``(len(examples), n, seed)`` picks the same positions.

    Returns:
        The chosen items, in their original relative order.

    Raises:
        ValueError: If ``n`` is negative.
    """
    if n is None or n >= len(examples):
        return list(examples)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    picked = sorted(random.Random(seed).sample(range(len(examples)), n))
    return [examples[i] for i in picked]
