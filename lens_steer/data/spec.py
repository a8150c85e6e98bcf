"""What the toolkit knows about one benchmark: :class:`BenchmarkSpec`.

A spec names the benchmark, its splits and tasks, the kind of answer it has (which scoring
reads), how a local data directory and the hub are mapped to :class:`Example` records, and the
key results are reported under. Loading picks the source once, here, so a benchmark module only
maps rows.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lens_steer.data.example import Example, resolve_data_dir

__all__ = ["ANSWER_KINDS", "BenchmarkSpec", "LocalReader", "HubReader"]

ANSWER_KINDS = ("number", "choice", "choice_or_text")
"""``number``: a final number (GSM8K). ``choice``: a letter among lettered options.
``choice_or_text``: letter items and free-form target items mixed (BIG-bench Lite)."""

LocalReader = Callable[[Path, str, "tuple[str, ...] | None", bool], list[Example]]
"""``(data_dir, split, subsets or None for all, multiple_choice_only) -> examples``."""
HubReader = Callable[[str, "tuple[str, ...] | None", bool], list[Example]]
"""``(split, subsets or None for all, multiple_choice_only) -> examples``."""

_SPLIT_ALIASES = {"val": "validation", "valid": "validation", "validation": "validation"}


@dataclass(frozen=True)
class BenchmarkSpec:
    """One benchmark.

    Attributes:
        name: Registry name, also :attr:`Example.source` of its items (``"gsm8k"``).
        title: Display name in messages (``"GSM8K"``).
        splits: Canonical split names; the first single one means "has one split".
        answer_kind: One of :data:`ANSWER_KINDS`.
        read_local: Maps the local copy (``layout``) to examples.
        read_hub: Maps the hub dataset (``hub``) to examples.
        layout: The local files expected, quoted in "not found" errors.
        hub: The hub dataset(s) read when no local directory is given.
        tasks: Tasks a run expands one by one and reports separately (``"agieval:sat-math"``);
            empty when results are reported for the benchmark as a whole.
        takes_subset: Whether ``"<name>:<subset>"`` selects part of it (MMLU subject, a task).
        split_aliases: Extra accepted split names (``{"dev": "validation"}``).
        default_split: Split used when none is given.
    """

    name: str
    title: str
    splits: tuple[str, ...]
    answer_kind: str
    read_local: LocalReader
    read_hub: HubReader
    layout: str
    hub: str
    tasks: tuple[str, ...] = ()
    takes_subset: bool = False
    split_aliases: Mapping[str, str] = field(default_factory=dict)
    default_split: str = "test"

    def __post_init__(self) -> None:
        if self.answer_kind not in ANSWER_KINDS:
            raise ValueError(f"answer_kind must be one of {ANSWER_KINDS}, got {self.answer_kind!r}")
        if self.default_split not in self.splits:
            raise ValueError(f"default split {self.default_split!r} is not one of {list(self.splits)}")

    @property
    def single_split(self) -> bool:
        """Whether the benchmark has one split only (it takes no ``@split``)."""
        return len(self.splits) == 1

    def canonical_split(self, split: str | None) -> str:
        """The canonical name of ``split`` (None: the default).

        Raises:
            ValueError: For a split the benchmark does not have.
        """
        if split is None:
            return self.default_split
        if self.single_split:
            if split != self.splits[0]:
                raise ValueError(f"{self.name} has a single split; got split={split!r}")
            return split
        canon = self.split_aliases.get(split, _SPLIT_ALIASES.get(split, split))
        if canon not in self.splits:
            raise ValueError(f"unknown {self.title} split {split!r}; expected one of {list(self.splits)}")
        return canon

    def load(
        self,
        split: str | None = None,
        subsets: Sequence[str] | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        multiple_choice_only: bool = False,
    ) -> list[Example]:
        """Load items from the local directory (see :func:`resolve_data_dir`), else the hub.

        Args:
            split: Split (None: :attr:`default_split`).
            subsets: Subjects / tasks to load; None loads all.
            data_dir: Offline data directory.
            multiple_choice_only: Keep only multiple-choice items.
        """
        split = self.canonical_split(split)
        chosen = None if subsets is None else tuple(subsets)
        root = resolve_data_dir(data_dir)
        if root is None:
            return self.read_hub(split, chosen, multiple_choice_only)
        return self.read_local(root, split, chosen, multiple_choice_only)

    def report_key(self, example: Example) -> str:
        """The benchmark an item's results are reported under: ``"<name>:<task>"`` when the
        benchmark has :attr:`tasks`, else ``"<name>"``."""
        if self.tasks and example.subset:
            return f"{self.name}:{example.subset.split('/')[0]}"
        return self.name
