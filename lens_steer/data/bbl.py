"""BIG-bench Lite: 24 tasks mixing multiple-choice and generative items, reported per task.

Local ``task.json`` files and hub rows are parsed differently but classified by one rule
(:func:`classify`): one top-scoring choice makes a multiple-choice item, else a target makes
a generative one, else the item fits neither and is left out with a warning.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lens_steer.data._records import (
    check_n_choices, format_mc, get_str, glob_files, hub_label, hub_load, read_json, require_file,
)
from lens_steer.data.example import LETTERS, DataFormatError, Example, SkippedRecordsWarning
from lens_steer.data.spec import BenchmarkSpec

__all__ = ["BBL_TASKS", "SPEC", "classify", "load_bbl"]

BBL_TASKS: tuple[str, ...] = (
    "auto_debugging",
    "bbq_lite_json",
    "code_line_description",
    "conceptual_combinations",
    "conlang_translation",
    "emoji_movie",
    "formal_fallacies_syllogisms_negation",
    "hindu_knowledge",
    "known_unknowns",
    "language_identification",
    "linguistics_puzzles",
    "logic_grid_puzzle",
    "logical_deduction",
    "misconceptions_russian",
    "novel_concepts",
    "operators",
    "parsinlu_reading_comprehension",
    "play_dialog_same_or_different",
    "repeat_copy_logic",
    "strange_stories",
    "strategyqa",
    "symbol_interpretation",
    "vitaminc_fact_verification",
    "winowhy",
)
"""The 24 BIG-bench Lite v1 tasks (``bigbench_lite_v1``)."""

_LAYOUT = (
    "<data_dir>/bigbench_lite/<task>/task.json or <data_dir>/bigbench_lite/<task>/<subtask>/task.json "
    "(BIG-bench JSON with 'examples')"
)

SKIPPED = "skipped"
"""What :func:`classify` returns for an item with several top-scoring choices and no target."""
NEITHER = "neither"
"""What :func:`classify` returns for an item with neither choices nor a target."""


def classify(
    ex_id: str,
    subset: str,
    text: str,
    choices: Sequence[str],
    scores: Sequence[float],
    target: str | None,
    multiple_choice_only: bool,
) -> Example | str | None:
    """The one BIG-bench Lite item rule, for local and hub rows alike.

    Args:
        ex_id / subset: The item's id and ``task[/subtask]``.
        text: The input.
        choices / scores: Multiple-choice options and their scores (empty when there are none).
        target: The first target, or None.
        multiple_choice_only: Drop generative items.

    Returns:
        A multiple-choice :class:`Example` when exactly one choice has the top score (its
        letter is the answer); else a generative one when there is a target (None when
        ``multiple_choice_only``); else :data:`SKIPPED` when there were choices, :data:`NEITHER`
        when there were none.
    """
    if choices:
        best = max(scores)
        winners = [i for i, s in enumerate(scores) if s == best]
        if len(winners) == 1:
            return Example(ex_id, "bbl", format_mc(text, choices), LETTERS[winners[0]], tuple(choices), subset)
    if target is not None:
        return None if multiple_choice_only else Example(ex_id, "bbl", text, target, (), subset)
    return SKIPPED if choices else NEITHER


class _Kept:
    """What :func:`classify` kept of one source's items, and one warning for the ones it had to leave out."""

    def __init__(self) -> None:
        self.examples: list[Example] = []
        self.skipped = 0

    def add(self, item: Example | str | None, neither: Callable[[], Exception]) -> None:
        """Keep ``item`` (a classified row); raise ``neither()`` for a row with neither choices nor a target."""
        if item is NEITHER:
            raise neither()
        if item is SKIPPED:
            self.skipped += 1
        elif item is not None:
            self.examples.append(item)

    def result(self, source: str, rows: str) -> list[Example]:
        """The kept examples, warning once (naming ``source``) when ``rows`` were left out."""
        if self.skipped:
            warnings.warn(f"{source}: left out {self.skipped} {rows}", SkippedRecordsWarning, stacklevel=5)
        return self.examples


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _read_file(path: Path, subset: str, mc_only: bool, data: Mapping[str, Any] | None = None) -> list[Example]:
    data = read_json(path) if data is None else data
    examples = data.get("examples")
    if not isinstance(examples, list):
        raise DataFormatError(path, "no 'examples' list")
    kept = _Kept()
    for i, ex in enumerate(examples):
        where = f"examples[{i}]"
        if not isinstance(ex, dict) or not isinstance(ex.get("input"), str):
            raise DataFormatError(path, f"{where}: expected an object with a string 'input'")
        ts = ex.get("target_scores")
        if ts is not None:
            if not isinstance(ts, dict) or not ts or not all(_is_number(v) for v in ts.values()):
                raise DataFormatError(path, f"{where}: 'target_scores' must be a non-empty {{choice: number}} object")
            if len(ts) > len(LETTERS):
                raise DataFormatError(path, f"{where}: {len(ts)} choices exceed the {len(LETTERS)} available letters")
        target = ex.get("target")
        if target is not None:
            if isinstance(target, list) and target and all(isinstance(t, str) for t in target):
                target = target[0]
            elif not isinstance(target, str):
                raise DataFormatError(path, f"{where}: 'target' must be a string or a non-empty list of strings")
        kept.add(classify(f"bbl/{subset}/{i}", subset, ex["input"], list(ts or ()), list((ts or {}).values()),
                          target, mc_only),
                 lambda: DataFormatError(path, f"{where}: neither 'target_scores' nor 'target'"))
    return kept.result(str(path), "example(s) whose target_scores have several top-scoring choices and no "
                                  "'target' (neither single-answer multiple choice nor generative)")


def _read_task(root: Path, task: str, mc_only: bool) -> list[Example]:
    task = task.strip("/")
    task_dir = root / "bigbench_lite" / task
    top = task_dir / "task.json"
    require_file(top, "BIG-bench Lite task file", _LAYOUT)
    data = read_json(top)
    if "examples" in data:
        return _read_file(top, task, mc_only, data)
    subdirs = [p.parent for p in glob_files(task_dir, "*/task.json")]
    if not subdirs:
        raise DataFormatError(top, "no 'examples' and no <subtask>/task.json folders")
    return [ex for sub in subdirs for ex in _read_file(sub / "task.json", f"{task}/{sub.name}", mc_only)]


def _read_local(root: Path, split: str, subsets: tuple[str, ...] | None, mc_only: bool) -> list[Example]:
    return [ex for task in (subsets or BBL_TASKS) for ex in _read_task(root, task, mc_only)]


def _hub_task(task: str, mc_only: bool) -> list[Example]:
    task = task.strip("/")
    if "/" in task:
        raise ValueError(f"selecting a subtask ({task!r}) is not supported from the hub, which merges subtasks")
    kept = _Kept()
    for split in ("train", "validation"):
        label = hub_label("tasksource/bigbench", task, split)
        for i, row in enumerate(hub_load("tasksource/bigbench", task, split)):
            text = get_str(row, "inputs", label, i + 1)
            mc_targets = [str(t) for t in row.get("multiple_choice_targets") or []]
            mc_scores = list(row.get("multiple_choice_scores") or [])
            targets = list(row.get("targets") or [])
            if len(mc_targets) != len(mc_scores):
                problem = "multiple_choice_targets and multiple_choice_scores differ in length"
                raise DataFormatError(label, problem, i + 1)
            if mc_targets:
                check_n_choices(len(mc_targets), label, i + 1)
            kept.add(classify(f"bbl/{task}/hub-{split}/{i}", task, text, mc_targets, mc_scores,
                              str(targets[0]) if targets else None, mc_only),
                     lambda: DataFormatError(label, "row has neither multiple-choice targets nor targets", i + 1))
    return kept.result(f"tasksource/bigbench[{task}]", "row(s) with several top-scoring choices and no target")


def _read_hub(split: str, subsets: tuple[str, ...] | None, mc_only: bool) -> list[Example]:
    return [ex for task in (subsets or BBL_TASKS) for ex in _hub_task(task, mc_only)]


SPEC = BenchmarkSpec(
    name="bbl",
    title="BIG-bench Lite",
    splits=("test",),
    answer_kind="choice_or_text",
    read_local=_read_local,
    read_hub=_read_hub,
    layout=_LAYOUT,
    hub="tasksource/bigbench (config = task; train + validation, subtasks merged; best effort)",
    tasks=BBL_TASKS,
    takes_subset=True,
)


def load_bbl(
    task: str, data_dir: str | os.PathLike[str] | None = None, multiple_choice_only: bool = False
) -> list[Example]:
    """Load one BIG-bench Lite task (all of its subtasks, or one ``task/subtask``).

    An example is multiple choice when its ``target_scores`` have exactly one top-scoring
    choice (``answer`` is that letter; choices keep the file's order); otherwise it is
    generative when it has a ``target`` (``answer`` is the target, the first one when it
    is a list; ``question`` is the raw input). Examples with several top-scoring choices
    and no ``target`` fit neither: they are left out with a :class:`SkippedRecordsWarning`.

    From the hub, ``tasksource/bigbench`` (config = task, splits train + validation,
    subtasks merged) is used; the mapping is best effort and ids index hub rows.

    Args:
        task: Task name (see :data:`BBL_TASKS`), or ``"<task>/<subtask>"`` locally.
        data_dir: Offline data directory (holding ``bigbench_lite/``); None falls back to
            ``$LENS_STEER_DATA_DIR``, then to the hub.
        multiple_choice_only: Keep only multiple-choice examples.

    Returns:
        Examples in file order (subtasks alphabetically), id
        ``bbl/<task>[/<subtask>]/<0-based index in 'examples'>``, ``subset`` = ``task[/subtask]``.

    Raises:
        FileNotFoundError: If the task folder or its ``task.json`` is missing.
        DataFormatError: If a file or example cannot be read.
    """
    return SPEC.load(None, [task], data_dir, multiple_choice_only)
