"""Benchmark loaders (GSM8K, MMLU, ARC-Challenge, AGIEval, BIG-bench Lite) -> ``list[Example]``.

Every source, a local data directory (layout of the offline copies' README) or the
Hugging Face hub, is mapped to the same frozen :class:`Example` record. A record that
cannot be read raises :class:`DataFormatError` naming the file and line; nothing is
dropped silently.
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "AGIEVAL_MC_TASKS",
    "BBL_TASKS",
    "BENCHMARKS",
    "DATA_DIR_ENV",
    "DataFormatError",
    "LETTERS",
    "Example",
    "SkippedRecordsWarning",
    "load_agieval",
    "load_arc",
    "load_bbl",
    "load_benchmark",
    "load_gsm8k",
    "load_mmlu",
    "resolve_data_dir",
    "subsample",
]

DATA_DIR_ENV = "LENS_STEER_DATA_DIR"
"""Environment variable naming the offline data directory when no ``data_dir`` is given."""

BENCHMARKS: tuple[str, ...] = ("gsm8k", "mmlu", "arc", "agieval", "bbl")
"""Names for :func:`load_benchmark` (also ``agieval:<task>``, ``bbl:<task>``, ``mmlu:<subject>``)."""

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

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

_LAYOUT = {
    "gsm8k": "<data_dir>/gsm8k/{train,test}.jsonl (JSON Lines: question, answer ending in '#### N')",
    "mmlu": "<data_dir>/mmlu/{dev,val,test}/<subject>_{dev,val,test}.csv (no header; question,A,B,C,D,answer)",
    "arc": (
        "<data_dir>/arc/ARC-Challenge-{Train,Dev,Test}.jsonl "
        "(JSON Lines: id, question{stem, choices[{text,label}]}, answerKey)"
    ),
    "agieval": "<data_dir>/agieval/<task>.jsonl (JSON Lines: passage, question, options ['(A)...'], label)",
    "bbl": (
        "<data_dir>/bigbench_lite/<task>/task.json or <data_dir>/bigbench_lite/<task>/<subtask>/task.json "
        "(BIG-bench JSON with 'examples')"
    ),
}

_SPLIT_ALIASES = {"val": "validation", "valid": "validation", "validation": "validation"}


@dataclass(frozen=True)
class Example:
    """One benchmark item, identical in shape whatever the source.

    Attributes:
        id: Stable identifier, e.g. ``"gsm8k/test/17"``, ``"mmlu/test/anatomy/3"``,
            ``"bbl/logical_deduction/three_objects/4"``.
        source: ``"gsm8k"``, ``"mmlu"``, ``"arc"``, ``"agieval"``, ``"bbl"`` (or ``"custom"``).
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


# ---------------------------------------------------------------------------
# shared helpers


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


def _missing(path: Path, what: str, layout_key: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"{what} not found: {path}. Expected layout: {_LAYOUT[layout_key]} "
        f"(see the offline data README; set data_dir or ${DATA_DIR_ENV})."
    )


def _require_file(path: Path, what: str, layout_key: str) -> None:
    if not path.is_file():
        raise _missing(path, what, layout_key)


def _iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(1-based line number, object)`` for each non-blank line."""
    with path.open(encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataFormatError(path, f"invalid JSON ({e.msg} at column {e.colno})", lineno) from e
            if not isinstance(obj, dict):
                raise DataFormatError(path, f"expected a JSON object, got {type(obj).__name__}", lineno)
            yield lineno, obj


def _get_str(obj: Mapping[str, Any], key: str, path: str | Path, line: int | None) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise DataFormatError(path, f"field {key!r} missing or not a string (got {type(value).__name__})", line)
    if not value.strip():
        raise DataFormatError(path, f"field {key!r} is empty", line)
    return value


def _format_mc(stem: str, choices: Sequence[str]) -> str:
    options = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))
    return f"{stem}\n{options}"


def _check_n_choices(n: int, path: str | Path, line: int | None) -> None:
    if n < 2:
        raise DataFormatError(path, f"multiple-choice item needs at least 2 choices, got {n}", line)
    if n > len(LETTERS):
        raise DataFormatError(path, f"{n} choices exceed the {len(LETTERS)} available letters", line)


def _canonical_split(split: str, allowed: Sequence[str], dataset: str) -> str:
    canon = _SPLIT_ALIASES.get(split, split)
    if canon not in allowed:
        raise ValueError(f"unknown {dataset} split {split!r}; expected one of {list(allowed)}")
    return canon


def _hub_load(path: str, name: str | None, split: str) -> Any:
    """Load one split from the Hugging Face hub (``datasets`` imported lazily, it is slow)."""
    import datasets

    return datasets.load_dataset(path, name, split=split)


def _hub_label(path: str, name: str | None, split: str) -> str:
    return f"hub:{path}" + (f"[{name}]" if name else "") + f"/{split}"


# ---------------------------------------------------------------------------
# GSM8K

_GSM8K_FINAL = re.compile(r"####\s*(.+?)\s*$")


def _gsm8k_example(obj: Mapping[str, Any], split: str, index: int, path: str | Path, line: int | None) -> Example:
    question = _get_str(obj, "question", path, line)
    solution = _get_str(obj, "answer", path, line)
    last = solution.strip().splitlines()[-1] if solution.strip() else ""
    m = _GSM8K_FINAL.search(last)
    if m is None:
        raise DataFormatError(path, "field 'answer' does not end with a '#### <number>' line", line)
    answer = m.group(1).replace(",", "").strip()
    if not re.fullmatch(r"-?\d+(?:\.\d+)?", answer):
        raise DataFormatError(path, f"final answer {m.group(1)!r} is not a number", line)
    return Example(id=f"gsm8k/{split}/{index}", source="gsm8k", question=question, answer=answer, subset=split)


def load_gsm8k(split: str = "test", data_dir: str | os.PathLike[str] | None = None) -> list[Example]:
    """Load GSM8K (``answer`` is the final number, commas removed).

    Args:
        split: ``"train"`` or ``"test"``.
        data_dir: Offline data directory (holding ``gsm8k/``); None falls back to
            ``$LENS_STEER_DATA_DIR``, then to the hub (``openai/gsm8k``, config ``main``).

    Returns:
        One :class:`Example` per problem, id ``gsm8k/<split>/<0-based line index>``.

    Raises:
        FileNotFoundError: If the local file is missing.
        DataFormatError: If a record cannot be read.
    """
    split = _canonical_split(split, ("train", "test"), "GSM8K")
    root = resolve_data_dir(data_dir)
    if root is None:
        label = _hub_label("openai/gsm8k", "main", split)
        rows = _hub_load("openai/gsm8k", "main", split)
        return [_gsm8k_example(row, split, i, label, i + 1) for i, row in enumerate(rows)]
    path = root / "gsm8k" / f"{split}.jsonl"
    _require_file(path, "GSM8K file", "gsm8k")
    return [_gsm8k_example(obj, split, lineno - 1, path, lineno) for lineno, obj in _iter_jsonl(path)]


# ---------------------------------------------------------------------------
# MMLU

_MMLU_SPLITS = ("dev", "validation", "test")
_MMLU_FILE_SUFFIX = {"dev": "dev", "validation": "val", "test": "test"}


def _mmlu_example(
    question: str,
    choices: Sequence[str],
    answer: str,
    subject: str,
    split: str,
    index: int,
    path: str | Path,
    line: int | None,
) -> Example:
    if not question.strip():
        raise DataFormatError(path, "empty question", line)
    if len(choices) != 4:
        raise DataFormatError(path, f"expected 4 choices, got {len(choices)}", line)
    if answer not in LETTERS[:4]:
        raise DataFormatError(path, f"answer {answer!r} is not one of A-D", line)
    return Example(
        id=f"mmlu/{split}/{subject}/{index}",
        source="mmlu",
        question=_format_mc(question, choices),
        answer=answer,
        choices=tuple(choices),
        subset=subject,
    )


def _read_mmlu_csv(path: Path, subject: str, split: str) -> list[Example]:
    out: list[Example] = []
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        index = 0
        while True:
            start = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                raise DataFormatError(path, f"CSV error: {e}", start) from e
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) != 6:
                raise DataFormatError(path, f"expected 6 columns (question,A,B,C,D,answer), got {len(row)}", start)
            out.append(_mmlu_example(row[0], row[1:5], row[5].strip(), subject, split, index, path, start))
            index += 1
    return out


def load_mmlu(
    split: str = "test",
    data_dir: str | os.PathLike[str] | None = None,
    subjects: Sequence[str] | None = None,
) -> list[Example]:
    """Load MMLU, subjects in alphabetical order, rows in file order.

    Args:
        split: ``"dev"``, ``"validation"`` (alias ``"val"``) or ``"test"``.
        data_dir: Offline data directory (holding ``mmlu/``); None falls back to
            ``$LENS_STEER_DATA_DIR``, then to the hub (``cais/mmlu``).
        subjects: Subjects to load (e.g. ``["anatomy"]``); None loads all.

    Returns:
        One :class:`Example` per question, id ``mmlu/<split>/<subject>/<0-based row>``.

    Raises:
        FileNotFoundError: If the split folder or a subject file is missing.
        DataFormatError: If a row cannot be read.
    """
    split = _canonical_split(split, _MMLU_SPLITS, "MMLU")
    root = resolve_data_dir(data_dir)
    if root is None:
        return _load_mmlu_hub(split, subjects)
    suffix = _MMLU_FILE_SUFFIX[split]
    split_dir = root / "mmlu" / suffix
    if subjects is None:
        if not split_dir.is_dir():
            raise _missing(split_dir, "MMLU split folder", "mmlu")
        files = sorted(split_dir.glob(f"*_{suffix}.csv"))
        if not files:
            raise _missing(split_dir / f"<subject>_{suffix}.csv", "MMLU subject files", "mmlu")
        names = [p.name[: -len(f"_{suffix}.csv")] for p in files]
    else:
        names = sorted(set(subjects))
        files = [split_dir / f"{s}_{suffix}.csv" for s in names]
        for p in files:
            _require_file(p, "MMLU subject file", "mmlu")
    out: list[Example] = []
    for subject, path in zip(names, files, strict=True):
        out.extend(_read_mmlu_csv(path, subject, split))
    return out


def _load_mmlu_hub(split: str, subjects: Sequence[str] | None) -> list[Example]:
    configs = ["all"] if subjects is None else sorted(set(subjects))
    by_subject: dict[str, list[Example]] = {}
    for config in configs:
        label = _hub_label("cais/mmlu", config, split)
        for i, row in enumerate(_hub_load("cais/mmlu", config, split)):
            subject = row.get("subject") or config
            choices = row.get("choices")
            gold = row.get("answer")
            if not isinstance(choices, Sequence) or isinstance(choices, str):
                raise DataFormatError(label, "field 'choices' missing or not a list", i + 1)
            if isinstance(gold, bool) or not isinstance(gold, int) or not 0 <= gold < len(choices):
                raise DataFormatError(label, f"field 'answer' {gold!r} is not a valid choice index", i + 1)
            rows = by_subject.setdefault(subject, [])
            question = _get_str(row, "question", label, i + 1)
            choice_texts = [str(c) for c in choices]
            rows.append(_mmlu_example(question, choice_texts, LETTERS[gold], subject, split, len(rows), label, i + 1))
    return [ex for subject in sorted(by_subject) for ex in by_subject[subject]]


# ---------------------------------------------------------------------------
# ARC-Challenge

_ARC_SPLITS = ("train", "validation", "test")
_ARC_FILE = {"train": "Train", "validation": "Dev", "test": "Test"}


def _arc_example(
    item_id: str,
    stem: str,
    texts: Sequence[str],
    labels: Sequence[str],
    answer_key: str,
    split: str,
    path: str | Path,
    line: int | None,
) -> Example:
    if not stem.strip():
        raise DataFormatError(path, "empty question stem", line)
    if len(texts) != len(labels):
        raise DataFormatError(path, f"{len(texts)} choice texts but {len(labels)} labels", line)
    _check_n_choices(len(texts), path, line)
    labels = [str(lab).strip() for lab in labels]
    if answer_key not in labels:
        raise DataFormatError(path, f"answerKey {answer_key!r} is not one of the labels {labels}", line)
    if len(set(labels)) != len(labels):
        raise DataFormatError(path, f"duplicate choice labels {labels}", line)
    choices = tuple(str(t) for t in texts)
    return Example(
        id=f"arc/{split}/{item_id}",
        source="arc",
        question=_format_mc(stem, choices),
        answer=LETTERS[labels.index(answer_key)],
        choices=choices,
        subset=split,
    )


def load_arc(split: str = "test", data_dir: str | os.PathLike[str] | None = None) -> list[Example]:
    """Load ARC-Challenge. Choices are lettered A, B, ... by position, whatever their labels.

    Items labelled ``"1"``-``"4"`` in the source are mapped by position: the gold answer
    becomes the letter at the position of the gold label.

    Args:
        split: ``"train"``, ``"validation"`` (aliases ``"dev"``, ``"val"``) or ``"test"``.
        data_dir: Offline data directory (holding ``arc/``); None falls back to
            ``$LENS_STEER_DATA_DIR``, then to the hub (``allenai/ai2_arc``, ``ARC-Challenge``).

    Returns:
        One :class:`Example` per question, id ``arc/<split>/<source id>``.

    Raises:
        FileNotFoundError: If the local file is missing.
        DataFormatError: If a record cannot be read.
    """
    split = _canonical_split("validation" if split == "dev" else split, _ARC_SPLITS, "ARC")
    root = resolve_data_dir(data_dir)
    out: list[Example] = []
    if root is None:
        label = _hub_label("allenai/ai2_arc", "ARC-Challenge", split)
        for i, row in enumerate(_hub_load("allenai/ai2_arc", "ARC-Challenge", split)):
            choices = row.get("choices")
            if not isinstance(choices, Mapping) or "text" not in choices or "label" not in choices:
                raise DataFormatError(label, "field 'choices' must be {text: [...], label: [...]}", i + 1)
            out.append(
                _arc_example(
                    _get_str(row, "id", label, i + 1),
                    _get_str(row, "question", label, i + 1),
                    list(choices["text"]),
                    list(choices["label"]),
                    _get_str(row, "answerKey", label, i + 1).strip(),
                    split,
                    label,
                    i + 1,
                )
            )
        return out
    path = root / "arc" / f"ARC-Challenge-{_ARC_FILE[split]}.jsonl"
    _require_file(path, "ARC-Challenge file", "arc")
    for lineno, obj in _iter_jsonl(path):
        q = obj.get("question")
        if not isinstance(q, Mapping) or not isinstance(q.get("choices"), list):
            raise DataFormatError(path, "field 'question' must be {stem, choices: [...]}", lineno)
        texts, labels = [], []
        for c in q["choices"]:
            if not isinstance(c, Mapping) or not isinstance(c.get("text"), str) or c.get("label") is None:
                raise DataFormatError(path, f"malformed choice {c!r}", lineno)
            texts.append(c["text"])
            labels.append(str(c["label"]))
        out.append(
            _arc_example(
                _get_str(obj, "id", path, lineno),
                _get_str(q, "stem", path, lineno),
                texts,
                labels,
                _get_str(obj, "answerKey", path, lineno).strip(),
                split,
                path,
                lineno,
            )
        )
    return out


# ---------------------------------------------------------------------------
# AGIEval


_STRONG_PREFIX = re.compile(r"\s*\(\s*([A-Z])\s*\)\s*")


def _agieval_choices(options: Sequence[str]) -> tuple[str, ...]:
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


def _agieval_example(
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
    _check_n_choices(len(options), path, line)
    choices = _agieval_choices([str(o) for o in options])
    label = label.strip().strip("()")
    if len(label) != 1 or label not in LETTERS[: len(choices)]:
        raise DataFormatError(path, f"label {label!r} is not one of {list(LETTERS[: len(choices)])}", line)
    stem = f"{passage.strip()}\n\n{question.strip()}" if passage and passage.strip() else question.strip()
    return Example(
        id=f"agieval/{task}/{index}",
        source="agieval",
        question=_format_mc(stem, choices),
        answer=label,
        choices=choices,
        subset=task,
    )


def _agieval_hub(task: str) -> list[Example]:
    label = _hub_label(f"hails/agieval-{task}", None, "test")
    out = []
    for i, row in enumerate(_hub_load(f"hails/agieval-{task}", None, "test")):
        query = _get_str(row, "query", label, i + 1)
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
        out.append(_agieval_example(task, i, None, stem, list(choices), LETTERS[gold], label, i + 1))
    return out


def load_agieval(
    task_or_tasks: str | Sequence[str], data_dir: str | os.PathLike[str] | None = None
) -> list[Example]:
    """Load English multiple-choice AGIEval tasks (test only).

    The question is the passage (when there is one), a blank line, the question, then the
    lettered options. The ``(A)`` prefixes of the source options are stripped into
    ``choices``; options printed out of letter order are put in letter order (see
    :func:`_agieval_choices`).

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
    for task in tasks:
        if task not in AGIEVAL_MC_TASKS:
            raise ValueError(
                f"unknown AGIEval task {task!r}; the English multiple-choice tasks are {list(AGIEVAL_MC_TASKS)}"
            )
    root = resolve_data_dir(data_dir)
    out: list[Example] = []
    for task in tasks:
        if root is None:
            out.extend(_agieval_hub(task))
            continue
        path = root / "agieval" / f"{task}.jsonl"
        _require_file(path, "AGIEval task file", "agieval")
        for lineno, obj in _iter_jsonl(path):
            options = obj.get("options")
            if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
                raise DataFormatError(path, "field 'options' missing or not a list of strings", lineno)
            passage = obj.get("passage")
            if passage is not None and not isinstance(passage, str):
                raise DataFormatError(path, "field 'passage' is not a string or null", lineno)
            out.append(
                _agieval_example(
                    task,
                    lineno - 1,
                    passage,
                    _get_str(obj, "question", path, lineno),
                    options,
                    _get_str(obj, "label", path, lineno),
                    path,
                    lineno,
                )
            )
    return out


# ---------------------------------------------------------------------------
# BIG-bench Lite


def _bbl_mc(choices: Sequence[str], scores: Sequence[float]) -> tuple[tuple[str, ...], str] | None:
    """Return ``(choices, gold letter)`` when exactly one choice has the maximum score."""
    best = max(scores)
    winners = [i for i, s in enumerate(scores) if s == best]
    if len(winners) != 1:
        return None
    return tuple(choices), LETTERS[winners[0]]


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _bbl_examples_from_file(
    path: Path, subset: str, multiple_choice_only: bool, data: Mapping[str, Any] | None = None
) -> list[Example]:
    data = _read_json(path) if data is None else data
    examples = data.get("examples")
    if not isinstance(examples, list):
        raise DataFormatError(path, "no 'examples' list")
    out: list[Example] = []
    skipped = 0
    for i, ex in enumerate(examples):
        where = f"examples[{i}]"
        if not isinstance(ex, dict) or not isinstance(ex.get("input"), str):
            raise DataFormatError(path, f"{where}: expected an object with a string 'input'")
        text = ex["input"]
        ts = ex.get("target_scores")
        mc = None
        if ts is not None:
            if not isinstance(ts, dict) or not ts or not all(_is_number(v) for v in ts.values()):
                raise DataFormatError(path, f"{where}: 'target_scores' must be a non-empty {{choice: number}} object")
            if len(ts) > len(LETTERS):
                raise DataFormatError(path, f"{where}: {len(ts)} choices exceed the {len(LETTERS)} available letters")
            mc = _bbl_mc(list(ts), list(ts.values()))
        target = ex.get("target")
        if target is not None:
            if isinstance(target, list) and target and all(isinstance(t, str) for t in target):
                target = target[0]
            elif not isinstance(target, str):
                raise DataFormatError(path, f"{where}: 'target' must be a string or a non-empty list of strings")
        ex_id = f"bbl/{subset}/{i}"
        if mc is not None:
            choices, gold = mc
            out.append(Example(ex_id, "bbl", _format_mc(text, choices), gold, choices, subset))
        elif target is not None:
            if not multiple_choice_only:
                out.append(Example(ex_id, "bbl", text, target, (), subset))
        elif ts is not None:
            skipped += 1
        else:
            raise DataFormatError(path, f"{where}: neither 'target_scores' nor 'target'")
    if skipped:
        warnings.warn(
            f"{path}: left out {skipped} example(s) whose target_scores have several top-scoring "
            "choices and no 'target' (neither single-answer multiple choice nor generative)",
            SkippedRecordsWarning,
            stacklevel=3,
        )
    return out


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with path.open(encoding="utf-8-sig") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DataFormatError(path, f"invalid JSON ({e.msg} at column {e.colno})", e.lineno) from e
    if not isinstance(data, dict):
        raise DataFormatError(path, "expected a JSON object", 1)
    return data


def _bbl_hub(task: str, multiple_choice_only: bool) -> list[Example]:
    out: list[Example] = []
    skipped = 0
    for split in ("train", "validation"):
        label = _hub_label("tasksource/bigbench", task, split)
        for i, row in enumerate(_hub_load("tasksource/bigbench", task, split)):
            text = _get_str(row, "inputs", label, i + 1)
            mc_targets = list(row.get("multiple_choice_targets") or [])
            mc_scores = list(row.get("multiple_choice_scores") or [])
            targets = list(row.get("targets") or [])
            if len(mc_targets) != len(mc_scores):
                problem = "multiple_choice_targets and multiple_choice_scores differ in length"
                raise DataFormatError(label, problem, i + 1)
            mc = None
            if mc_targets:
                _check_n_choices(len(mc_targets), label, i + 1)
                mc = _bbl_mc([str(t) for t in mc_targets], mc_scores)
            ex_id = f"bbl/{task}/hub-{split}/{i}"
            if mc is not None:
                choices, gold = mc
                out.append(Example(ex_id, "bbl", _format_mc(text, choices), gold, choices, task))
            elif targets:
                if not multiple_choice_only:
                    out.append(Example(ex_id, "bbl", text, str(targets[0]), (), task))
            elif mc_targets:
                skipped += 1
            else:
                raise DataFormatError(label, "row has neither multiple-choice targets nor targets", i + 1)
    if skipped:
        warnings.warn(
            f"tasksource/bigbench[{task}]: left out {skipped} row(s) with several top-scoring choices and no target",
            SkippedRecordsWarning,
            stacklevel=3,
        )
    return out


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
    task = task.strip("/")
    root = resolve_data_dir(data_dir)
    if root is None:
        if "/" in task:
            raise ValueError(f"selecting a subtask ({task!r}) is not supported from the hub, which merges subtasks")
        return _bbl_hub(task, multiple_choice_only)
    task_dir = root / "bigbench_lite" / task
    top = task_dir / "task.json"
    _require_file(top, "BIG-bench Lite task file", "bbl")
    data = _read_json(top)
    if "examples" in data:
        return _bbl_examples_from_file(top, task, multiple_choice_only, data)
    subdirs = sorted(p.parent for p in task_dir.glob("*/task.json"))
    if not subdirs:
        raise DataFormatError(top, "no 'examples' and no <subtask>/task.json folders")
    out: list[Example] = []
    for sub in subdirs:
        out.extend(_bbl_examples_from_file(sub / "task.json", f"{task}/{sub.name}", multiple_choice_only))
    return out


# ---------------------------------------------------------------------------
# dispatcher


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
        name: ``"gsm8k"``, ``"mmlu"`` or ``"mmlu:<subject>"``, ``"arc"``, ``"agieval"``
            (all 8 English multiple-choice tasks) or ``"agieval:<task>"``, ``"bbl"`` (all
            24 tasks) or ``"bbl:<task>[/<subtask>]"``.
        split: Split for GSM8K / MMLU / ARC (default ``"test"``); AGIEval and BBL have
            only one split, so it must be None or ``"test"`` for them.
        data_dir: Offline data directory; see :func:`resolve_data_dir`.
        limit: Keep a seeded subsample of this many items (see :func:`subsample`).
        seed: Seed of that subsample.
        multiple_choice_only: For BBL, keep only multiple-choice examples.

    Returns:
        The examples.

    Raises:
        ValueError: For an unknown benchmark name or split.
    """
    base, _, arg = name.partition(":")
    if base not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; expected one of {list(BENCHMARKS)} (or '<name>:<subset>')")
    if base in ("agieval", "bbl") and split not in (None, "test"):
        raise ValueError(f"{base} has a single split; got split={split!r}")
    if arg and base in ("gsm8k", "arc"):
        raise ValueError(f"{base} takes no ':<subset>' suffix (got {name!r})")
    split = split or "test"
    if base == "gsm8k":
        examples = load_gsm8k(split, data_dir)
    elif base == "mmlu":
        examples = load_mmlu(split, data_dir, subjects=[arg] if arg else None)
    elif base == "arc":
        examples = load_arc(split, data_dir)
    elif base == "agieval":
        examples = load_agieval(arg or AGIEVAL_MC_TASKS, data_dir)
    else:
        tasks = [arg] if arg else list(BBL_TASKS)
        examples = [ex for t in tasks for ex in load_bbl(t, data_dir, multiple_choice_only=multiple_choice_only)]
    return subsample(examples, limit, seed)
