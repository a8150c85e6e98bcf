"""The benchmark registry: one :class:`BenchmarkSpec` per benchmark, looked up by name.

Everything that depends on which benchmark an item came from (loading, the reporting key,
the kind of answer scoring extracts, the order of results tables) reads the spec here. To
add a benchmark, write one module with a ``SPEC`` and add it to ``_BUILTIN`` (or call
:func:`register` from your own code); see the README's *Adding a benchmark*.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from lens_steer.data import agieval, arc, bbl, gsm8k, mmlu
from lens_steer.data.agieval import AGIEVAL_MC_TASKS, load_agieval
from lens_steer.data.arc import load_arc
from lens_steer.data.bbl import BBL_TASKS, load_bbl
from lens_steer.data.example import (
    DATA_DIR_ENV, LETTERS, DataFormatError, Example, SkippedRecordsWarning, resolve_data_dir, subsample,
)
from lens_steer.data.gsm8k import load_gsm8k
from lens_steer.data.mmlu import load_mmlu
from lens_steer.data.spec import ANSWER_KINDS, BenchmarkSpec

__all__ = [
    "AGIEVAL_MC_TASKS",
    "ANSWER_KINDS",
    "BBL_TASKS",
    "BENCHMARKS",
    "DATA_DIR_ENV",
    "LETTERS",
    "REGISTRY",
    "BenchmarkSpec",
    "DataFormatError",
    "Example",
    "SkippedRecordsWarning",
    "answer_kind",
    "benchmark_key",
    "expand_benchmarks",
    "get_benchmark",
    "load_agieval",
    "load_arc",
    "load_bbl",
    "load_benchmark",
    "load_gsm8k",
    "load_mmlu",
    "register",
    "resolve_data_dir",
    "subsample",
]

_BUILTIN: tuple[BenchmarkSpec, ...] = (gsm8k.SPEC, mmlu.SPEC, arc.SPEC, agieval.SPEC, bbl.SPEC)

REGISTRY: dict[str, BenchmarkSpec] = {spec.name: spec for spec in _BUILTIN}
"""Registered benchmarks by name, in registration order (the order of results tables)."""

BENCHMARKS: tuple[str, ...] = tuple(REGISTRY)
"""Names of the built-in benchmarks (also ``agieval:<task>``, ``bbl:<task>``, ``mmlu:<subject>``)."""


def register(spec: BenchmarkSpec, *, replace: bool = False) -> BenchmarkSpec:
    """Add a benchmark to the registry (after the built-in ones).

    Raises:
        ValueError: If the name is taken (unless ``replace``) or holds ``:`` / ``@`` / ``,``.
    """
    if any(c in spec.name for c in ":@,") or not spec.name:
        raise ValueError(f"a benchmark name cannot be empty or hold ':', '@' or ',': {spec.name!r}")
    if spec.name in REGISTRY and not replace:
        raise ValueError(f"benchmark {spec.name!r} is already registered (pass replace=True to replace it)")
    REGISTRY[spec.name] = spec
    return spec


def get_benchmark(name: str) -> BenchmarkSpec:
    """The spec of a benchmark (``"<name>"``, or ``"<name>:<subset>"``).

    Raises:
        ValueError: For an unknown name.
    """
    base = name.partition(":")[0]
    if base not in REGISTRY:
        raise ValueError(f"unknown benchmark {name!r}; expected one of {list(REGISTRY)} (or '<name>:<subset>')")
    return REGISTRY[base]


def answer_kind(source: str) -> str | None:
    """The :data:`ANSWER_KINDS` entry of a source; None for an unregistered one (``"custom"``)."""
    spec = REGISTRY.get(source)
    return spec.answer_kind if spec else None


def benchmark_key(example: Example) -> str:
    """The benchmark an item is reported under (``"agieval:sat-math"``, ``"gsm8k"``, ``"custom"``)."""
    spec = REGISTRY.get(example.source)
    return spec.report_key(example) if spec else example.source


def benchmark_order(name: str) -> tuple:
    """Sort key of results rows: registry order, a source's tasks before its pooled row, ``all`` last."""
    names = list(REGISTRY)
    if name == "all":
        return (len(names) + 1, 1, name)
    base, _, task = name.partition(":")
    rank = names.index(base) if base in names else len(names)
    return (rank, 0 if task else 1, name)


def load_benchmark(
    name: str,
    split: str | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    seed: int = 0,
    multiple_choice_only: bool = False,
) -> list[Example]:
    """Load a benchmark by name, optionally a seeded subsample of it.

    Args:
        name: A registry name (``"gsm8k"``, ``"mmlu"``, ``"arc"``, ``"agieval"``, ``"bbl"``),
            or ``"<name>:<subset>"`` for one that takes subsets (``"mmlu:anatomy"``,
            ``"agieval:sat-math"``, ``"bbl:<task>[/<subtask>]"``).
        split: Split (None: the benchmark's default, ``"test"``); single-split benchmarks
            (AGIEval, BBL) accept only None or ``"test"``.
        data_dir: Offline data directory; see :func:`resolve_data_dir`.
        limit: Keep a seeded subsample of this many items (see :func:`subsample`).
        seed: Seed of that subsample.
        multiple_choice_only: Keep only multiple-choice items (matters for BBL).

    Raises:
        ValueError: For an unknown benchmark name, split or subset suffix.
    """
    spec = get_benchmark(name)
    arg = name.partition(":")[2]
    if spec.single_split and split not in (None, spec.splits[0]):
        raise ValueError(f"{spec.name} has a single split; got split={split!r}")
    if arg and not spec.takes_subset:
        raise ValueError(f"{spec.name} takes no ':<subset>' suffix (got {name!r})")
    examples = spec.load(split, [arg] if arg else None, data_dir, multiple_choice_only)
    return subsample(examples, limit, seed)


def expand_benchmarks(
    benchmarks: str | Sequence[str],
    *,
    split: str = "test",
    limit: int | None = None,
    task_limit: int | None = None,
    seed: int = 0,
    data_dir: str | os.PathLike[str] | None = None,
) -> tuple[list[Example], list[str]]:
    """Load the items of a run: benchmarks given as ``name[:subset][@split]``.

    A benchmark with tasks (AGIEval, BBL) named without a subset is expanded into one
    benchmark per task, each a subsample of ``task_limit`` (default ``limit``) items; the
    others are a subsample of ``limit`` from ``@split`` or ``split``.

    Args:
        benchmarks: Comma-separated names or a sequence of them.

    Returns:
        ``(examples, names)``: all items in order, and the expanded names (``@split`` kept).

    Raises:
        ValueError: For an unknown name, or when nothing is selected.
    """
    entries = benchmarks.split(",") if isinstance(benchmarks, str) else list(benchmarks)
    examples: list[Example] = []
    names: list[str] = []
    for entry in (e.strip() for e in entries):
        if not entry:
            continue
        name, _, at_split = entry.partition("@")
        spec = get_benchmark(name)
        expand = bool(spec.tasks) and ":" not in name
        for full in ([f"{name}:{t}" for t in spec.tasks] if expand else [name]):
            n = task_limit if spec.tasks and task_limit is not None else limit
            examples += load_benchmark(full, at_split or (None if spec.tasks else split), data_dir, n, seed)
            names.append(full + (f"@{at_split}" if at_split else ""))
    if not examples:
        shown = benchmarks if isinstance(benchmarks, str) else ",".join(benchmarks)
        raise ValueError(f"no items in --benchmarks {shown!r}")
    return examples, names
