"""ARC-Challenge: grade-school science multiple choice; options lettered by position."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from lens_steer.data._records import (
    check_n_choices, format_mc, get_str, hub_label, hub_load, iter_jsonl, require_file,
)
from lens_steer.data.example import LETTERS, DataFormatError, Example
from lens_steer.data.spec import BenchmarkSpec

__all__ = ["SPEC", "load_arc"]

_LAYOUT = (
    "<data_dir>/arc/ARC-Challenge-{Train,Dev,Test}.jsonl "
    "(JSON Lines: id, question{stem, choices[{text,label}]}, answerKey)"
)
_FILE = {"train": "Train", "validation": "Dev", "test": "Test"}
_HUB = ("allenai/ai2_arc", "ARC-Challenge")


def _example(
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
    check_n_choices(len(texts), path, line)
    labels = [str(lab).strip() for lab in labels]
    if answer_key not in labels:
        raise DataFormatError(path, f"answerKey {answer_key!r} is not one of the labels {labels}", line)
    if len(set(labels)) != len(labels):
        raise DataFormatError(path, f"duplicate choice labels {labels}", line)
    choices = tuple(str(t) for t in texts)
    return Example(
        id=f"arc/{split}/{item_id}",
        source="arc",
        question=format_mc(stem, choices),
        answer=LETTERS[labels.index(answer_key)],
        choices=choices,
        subset=split,
    )


def _read_local(root: Path, split: str, subsets: tuple[str, ...] | None, mc_only: bool) -> list[Example]:
    path = root / "arc" / f"ARC-Challenge-{_FILE[split]}.jsonl"
    require_file(path, "ARC-Challenge file", _LAYOUT)
    out: list[Example] = []
    for lineno, obj in iter_jsonl(path):
        q = obj.get("question")
        if not isinstance(q, Mapping) or not isinstance(q.get("choices"), list):
            raise DataFormatError(path, "field 'question' must be {stem, choices: [...]}", lineno)
        texts, labels = [], []
        for c in q["choices"]:
            if not isinstance(c, Mapping) or not isinstance(c.get("text"), str) or c.get("label") is None:
                raise DataFormatError(path, f"malformed choice {c!r}", lineno)
            texts.append(c["text"])
            labels.append(str(c["label"]))
        item_id, stem = get_str(obj, "id", path, lineno), get_str(q, "stem", path, lineno)
        answer_key = get_str(obj, "answerKey", path, lineno).strip()
        out.append(_example(item_id, stem, texts, labels, answer_key, split, path, lineno))
    return out


def _read_hub(split: str, subsets: tuple[str, ...] | None, mc_only: bool) -> list[Example]:
    label = hub_label(*_HUB, split)
    out: list[Example] = []
    for i, row in enumerate(hub_load(*_HUB, split)):
        choices = row.get("choices")
        if not isinstance(choices, Mapping) or "text" not in choices or "label" not in choices:
            raise DataFormatError(label, "field 'choices' must be {text: [...], label: [...]}", i + 1)
        item_id, stem = get_str(row, "id", label, i + 1), get_str(row, "question", label, i + 1)
        answer_key = get_str(row, "answerKey", label, i + 1).strip()
        out.append(_example(item_id, stem, list(choices["text"]), list(choices["label"]), answer_key, split,
                            label, i + 1))
    return out


SPEC = BenchmarkSpec(
    name="arc",
    title="ARC",
    splits=("train", "validation", "test"),
    answer_kind="choice",
    read_local=_read_local,
    read_hub=_read_hub,
    layout=_LAYOUT,
    hub="allenai/ai2_arc (config ARC-Challenge)",
    split_aliases={"dev": "validation"},
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
    return SPEC.load(split, None, data_dir)
