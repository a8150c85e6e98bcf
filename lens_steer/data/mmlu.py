"""MMLU: four-option multiple choice over 57 subjects."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path

from lens_steer.data._records import (
    check_reachable, format_mc, get_str, glob_files, hub_label, hub_load, missing, read_text, require_file,
)
from lens_steer.data.example import LETTERS, DataFormatError, Example
from lens_steer.data.spec import BenchmarkSpec

__all__ = ["SPEC", "load_mmlu"]

_LAYOUT = "<data_dir>/mmlu/{dev,val,test}/<subject>_{dev,val,test}.csv (no header; question,A,B,C,D,answer)"
_FILE_SUFFIX = {"dev": "dev", "validation": "val", "test": "test"}


def _example(
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
        question=format_mc(question, choices),
        answer=answer,
        choices=tuple(choices),
        subset=subject,
    )


def _read_csv(path: Path, subject: str, split: str) -> list[Example]:
    out: list[Example] = []
    reader = csv.reader(io.StringIO(read_text(path), newline=""))
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
        out.append(_example(row[0], row[1:5], row[5].strip(), subject, split, index, path, start))
        index += 1
    return out


def _read_local(root: Path, split: str, subjects: tuple[str, ...] | None, mc_only: bool) -> list[Example]:
    suffix = _FILE_SUFFIX[split]
    split_dir = root / "mmlu" / suffix
    if subjects is None:
        check_reachable(split_dir)
        if not split_dir.is_dir():
            raise missing(split_dir, "MMLU split folder", _LAYOUT)
        files = glob_files(split_dir, f"*_{suffix}.csv")
        if not files:
            raise missing(split_dir / f"<subject>_{suffix}.csv", "MMLU subject files", _LAYOUT)
        names = [p.name[: -len(f"_{suffix}.csv")] for p in files]
    else:
        names = sorted(set(subjects))
        files = [split_dir / f"{s}_{suffix}.csv" for s in names]
        for p in files:
            require_file(p, "MMLU subject file", _LAYOUT)
    out: list[Example] = []
    for subject, path in zip(names, files, strict=True):
        out.extend(_read_csv(path, subject, split))
    return out


def _read_hub(split: str, subjects: tuple[str, ...] | None, mc_only: bool) -> list[Example]:
    configs = ["all"] if subjects is None else sorted(set(subjects))
    by_subject: dict[str, list[Example]] = {}
    for config in configs:
        label = hub_label("cais/mmlu", config, split)
        for i, row in enumerate(hub_load("cais/mmlu", config, split)):
            subject = row.get("subject") or config
            choices = row.get("choices")
            gold = row.get("answer")
            if not isinstance(choices, Sequence) or isinstance(choices, str):
                raise DataFormatError(label, "field 'choices' missing or not a list", i + 1)
            if isinstance(gold, bool) or not isinstance(gold, int) or not 0 <= gold < len(choices):
                raise DataFormatError(label, f"field 'answer' {gold!r} is not a valid choice index", i + 1)
            rows = by_subject.setdefault(subject, [])
            question = get_str(row, "question", label, i + 1)
            choice_texts = [str(c) for c in choices]
            rows.append(_example(question, choice_texts, LETTERS[gold], subject, split, len(rows), label, i + 1))
    return [ex for subject in sorted(by_subject) for ex in by_subject[subject]]


SPEC = BenchmarkSpec(
    name="mmlu",
    title="MMLU",
    splits=("dev", "validation", "test"),
    answer_kind="choice",
    read_local=_read_local,
    read_hub=_read_hub,
    layout=_LAYOUT,
    hub="cais/mmlu (config all, or one per subject)",
    takes_subset=True,
)


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
    return SPEC.load(split, subjects, data_dir)
