"""GSM8K: grade-school maths word problems; the answer is the final number."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lens_steer.data._records import get_str, hub_label, hub_load, iter_jsonl, require_file
from lens_steer.data.example import DataFormatError, Example
from lens_steer.data.spec import BenchmarkSpec

__all__ = ["SPEC", "load_gsm8k"]

_LAYOUT = "<data_dir>/gsm8k/{train,test}.jsonl (JSON Lines: question, answer ending in '#### N')"
_HUB = ("openai/gsm8k", "main")
_FINAL = re.compile(r"####\s*(.+?)\s*$")


def _example(obj: Mapping[str, Any], split: str, index: int, path: str | Path, line: int | None) -> Example:
    question = get_str(obj, "question", path, line)
    solution = get_str(obj, "answer", path, line)
    last = solution.strip().splitlines()[-1] if solution.strip() else ""
    m = _FINAL.search(last)
    if m is None:
        raise DataFormatError(path, "field 'answer' does not end with a '#### <number>' line", line)
    answer = m.group(1).replace(",", "").strip()
    if not re.fullmatch(r"-?\d+(?:\.\d+)?", answer):
        raise DataFormatError(path, f"final answer {m.group(1)!r} is not a number", line)
    return Example(id=f"gsm8k/{split}/{index}", source="gsm8k", question=question, answer=answer, subset=split)


def _read_local(root: Path, split: str, subsets: tuple[str, ...] | None, mc_only: bool) -> list[Example]:
    path = root / "gsm8k" / f"{split}.jsonl"
    require_file(path, "GSM8K file", _LAYOUT)
    return [_example(obj, split, lineno - 1, path, lineno) for lineno, obj in iter_jsonl(path)]


def _read_hub(split: str, subsets: tuple[str, ...] | None, mc_only: bool) -> list[Example]:
    label = hub_label(*_HUB, split)
    return [_example(row, split, i, label, i + 1) for i, row in enumerate(hub_load(*_HUB, split))]


SPEC = BenchmarkSpec(
    name="gsm8k",
    title="GSM8K",
    splits=("train", "test"),
    answer_kind="number",
    read_local=_read_local,
    read_hub=_read_hub,
    layout=_LAYOUT,
    hub="openai/gsm8k (config main)",
)


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
    return SPEC.load(split, None, data_dir)
