"""AGIEval: the eight English multiple-choice tasks (test only), reported per task."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from lens_steer.data._records import (
    check_n_choices, format_mc, get_str, hub_label, hub_load, iter_jsonl, require_file,
)
from lens_steer.data.example import LETTERS, DataFormatError, Example
from lens_steer.data.spec import BenchmarkSpec

__all__ = ["AGIEVAL_MC_TASKS", "SPEC", "load_agieval"]

AGIEVAL_MC_TASKS: tuple[str, ...] = (
    "aqua-rat",
    "logiqa-en",
    "lsat-ar",
    "lsat-lr",
    "lsat-rc",
    "sat-en",
    "sat-en-without-passage",
    "sat-math",
)
"""The eight English multiple-choice AGIEval tasks."""

_LAYOUT = "<data_dir>/agieval/<task>.jsonl (JSON Lines: passage, question, options ['(A)...'], label)"
_STRONG_PREFIX = re.compile(r"\s*\(\s*([A-Z])\s*\)\s*")


def _choices(options: Sequence[str]) -> tuple[str, ...]:
    """Option texts without their ``(A)`` prefixes, in letter order.

    When every option carries a ``(X)`` prefix and the letters are A, B, ... in some other
    order (28 logiqa-en rows print ``(A) (C) (B) (D)``), the options are put in letter
    order, since the gold ``label`` names the printed letter. A few logiqa-en rows use
    ``A ...`` or ``A? ...`` prefixes instead; those are removed when the letter matches the
    position, and one aqua-rat row's doubled ``(A)A)`` prefix is removed whole. Text without
    a recognisable prefix is kept unchanged.
    """
    strong = [_STRONG_PREFIX.match(o) for o in options]
    letters = [m.group(1) if m else None for m in strong]
    if all(letters) and sorted(letters) == list(LETTERS[: len(options)]):  # type: ignore[type-var]
        # one aqua-rat row doubles the prefix: "(A)A)59"
        pairs = sorted(
            (m.group(1), re.sub(rf"^{m.group(1)}\)\s*", "", o[m.end() :].strip()))
            for m, o in zip(strong, options, strict=True)
            if m
        )
        return tuple(text for _, text in pairs)
    out = []
    for i, (m, option) in enumerate(zip(strong, options, strict=True)):
        if m is None:
            m = re.match(rf"\s*{LETTERS[i]}(?:\s*[).:?]\s*|\s+)", option)
        out.append(option[m.end() :].strip() if m else option.strip())
    return tuple(out)


def _example(
    task: str,
    index: int,
    passage: str | None,
    question: str,
    options: Sequence[str],
    label: str,
    path: str | Path,
    line: int | None,
) -> Example:
    if not question.strip():
        raise DataFormatError(path, "empty question", line)
    check_n_choices(len(options), path, line)
    choices = _choices([str(o) for o in options])
    label = label.strip().strip("()")
    if len(label) != 1 or label not in LETTERS[: len(choices)]:
        raise DataFormatError(path, f"label {label!r} is not one of {list(LETTERS[: len(choices)])}", line)
    stem = f"{passage.strip()}\n\n{question.strip()}" if passage and passage.strip() else question.strip()
    return Example(
        id=f"agieval/{task}/{index}",
        source="agieval",
        question=format_mc(stem, choices),
        answer=label,
        choices=choices,
        subset=task,
    )


def _tasks(subsets: tuple[str, ...] | None) -> tuple[str, ...]:
    tasks = AGIEVAL_MC_TASKS if subsets is None else subsets
    for task in tasks:
        if task not in AGIEVAL_MC_TASKS:
            raise ValueError(
                f"unknown AGIEval task {task!r}; the English multiple-choice tasks are {list(AGIEVAL_MC_TASKS)}"
            )
    return tasks


def _read_local(root: Path, split: str, subsets: tuple[str, ...] | None, mc_only: bool) -> list[Example]:
    out: list[Example] = []
    for task in _tasks(subsets):
        path = root / "agieval" / f"{task}.jsonl"
        require_file(path, "AGIEval task file", _LAYOUT)
        for lineno, obj in iter_jsonl(path):
            options = obj.get("options")
            if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
                raise DataFormatError(path, "field 'options' missing or not a list of strings", lineno)
            passage = obj.get("passage")
            if passage is not None and not isinstance(passage, str):
                raise DataFormatError(path, "field 'passage' is not a string or null", lineno)
            question = get_str(obj, "question", path, lineno)
            label = get_str(obj, "label", path, lineno)
            out.append(_example(task, lineno - 1, passage, question, options, label, path, lineno))
    return out


def _read_hub(split: str, subsets: tuple[str, ...] | None, mc_only: bool) -> list[Example]:
    out: list[Example] = []
    for task in _tasks(subsets):
        label = hub_label(f"hails/agieval-{task}", None, "test")
        for i, row in enumerate(hub_load(f"hails/agieval-{task}", None, "test")):
            query = get_str(row, "query", label, i + 1)
            choices = row.get("choices")
            gold = row.get("gold")
            if isinstance(gold, Sequence) and not isinstance(gold, str):
                gold = gold[0] if len(gold) == 1 else None
            if not isinstance(choices, Sequence) or isinstance(choices, str):
                raise DataFormatError(label, "field 'choices' missing or not a list", i + 1)
            if isinstance(gold, bool) or not isinstance(gold, int) or not 0 <= gold < len(choices):
                raise DataFormatError(label, f"field 'gold' {row.get('gold')!r} is not a single valid index", i + 1)
            # hails' query is "Q: <passage> <question> Answer Choices: (A)... \nA: Among A through E, the answer is"
            stem = re.split(r"\s*Answer Choices:", query, maxsplit=1)[0]
            stem = re.sub(r"^\s*Q:\s*", "", stem)
            out.append(_example(task, i, None, stem, list(choices), LETTERS[gold], label, i + 1))
    return out


SPEC = BenchmarkSpec(
    name="agieval",
    title="AGIEval",
    splits=("test",),
    answer_kind="choice",
    read_local=_read_local,
    read_hub=_read_hub,
    layout=_LAYOUT,
    hub="hails/agieval-<task> (best effort: passage and question are not separable there)",
    tasks=AGIEVAL_MC_TASKS,
    takes_subset=True,
)


def load_agieval(
    task_or_tasks: str | Sequence[str], data_dir: str | os.PathLike[str] | None = None
) -> list[Example]:
    """Load English multiple-choice AGIEval tasks (test only).

    The question is the passage (when there is one), a blank line, the question, then the
    lettered options. The ``(A)`` prefixes of the source options are stripped into
    ``choices``; options printed out of letter order are put in letter order.

    From the hub (no official copy exists) the per-task copies ``hails/agieval-<task>``
    are used, whose rows are ``query``/``choices``/``gold``; the mapping is best effort:
    the passage cannot be separated from the question there, and ids index hub rows.

    Args:
        task_or_tasks: One task name or several, from :data:`AGIEVAL_MC_TASKS`.
        data_dir: Offline data directory (holding ``agieval/``); None falls back to
            ``$LENS_STEER_DATA_DIR``, then to the hub.

    Returns:
        One :class:`Example` per item, id ``agieval/<task>/<0-based line index>``, tasks
        in the order given.

    Raises:
        ValueError: For an unknown or non-multiple-choice task (e.g. ``math``).
        FileNotFoundError: If a task file is missing.
        DataFormatError: If a record cannot be read.
    """
    tasks = [task_or_tasks] if isinstance(task_or_tasks, str) else list(task_or_tasks)
    _tasks(tuple(tasks))  # an unknown task fails before any file or hub is read
    return SPEC.load(None, tasks, data_dir)
