"""Data loaders on random and mutated files: they load, or raise DataFormatError naming the file.

Property: whatever the bytes (truncated, bit-flipped, not UTF-8, empty, random), whatever the JSON
(wrong types, missing keys, huge numbers, lone surrogates, deep nesting), a loader returns well-formed
items or raises :class:`DataFormatError` whose message names the file; nothing else escapes.
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lens_steer.data import DataFormatError, Example, corpus_hash, load_questions_jsonl
from lens_steer.data.registry import load_agieval, load_arc, load_bbl, load_gsm8k, load_mmlu

from ._mutations import FUZZ, byte_mutated, json_documents, jsonl_documents

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "data"


def _jsonl(rel: str) -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / rel).read_text(encoding="utf-8").splitlines() if line.strip()]


def _check_loads(write: Callable[[Path], Path], load: Callable[[Path], list[Example]]) -> None:
    """Write the file under a fresh directory and load it: items or a DataFormatError naming the file."""
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = write(Path(tmp))
        try:
            examples = load(Path(tmp))
        except DataFormatError as exc:
            assert str(path) in str(exc) and exc.path == str(path)
            return
    for ex in examples:
        assert isinstance(ex, Example) and all(isinstance(v, str) for v in (ex.id, ex.question, ex.answer, ex.subset))
        assert all(isinstance(c, str) for c in ex.choices)
    corpus_hash(examples)  # every text is encodable UTF-8


def _writer(rel: str, data: bytes) -> Callable[[Path], Path]:
    def write(root: Path) -> Path:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    return write


JSONL_CASES = {
    "questions": ("q.jsonl", [{"question": "What is 2+2?", "id": "a"}, {"question": "Why?", "answer": 7}],
                  lambda root: load_questions_jsonl(root / "q.jsonl")),
    "gsm8k": ("gsm8k/test.jsonl", _jsonl("gsm8k/test.jsonl"), lambda root: load_gsm8k("test", root)),
    "arc": ("arc/ARC-Challenge-Test.jsonl", _jsonl("arc/ARC-Challenge-Test.jsonl"), lambda root: load_arc("test", root)),
    "agieval": ("agieval/lsat-ar.jsonl", _jsonl("agieval/lsat-ar.jsonl"), lambda root: load_agieval("lsat-ar", root)),
}


@pytest.mark.parametrize("case", sorted(JSONL_CASES))
@FUZZ
@given(data=st.data())
def test_jsonl_loaders_raise_only_data_format_errors(case: str, data: st.DataObject) -> None:
    rel, records, load = JSONL_CASES[case]
    _check_loads(_writer(rel, data.draw(jsonl_documents(records))), load)


_BBL = json.loads((FIXTURES / "bigbench_lite" / "novel_concepts" / "task.json").read_text(encoding="utf-8"))
_BBL["examples"].append({"input": "op 2", "target": ["2", "two"]})


@FUZZ
@given(document=json_documents(_BBL))
def test_bbl_task_json_raises_only_data_format_errors(document: bytes) -> None:
    _check_loads(_writer("bigbench_lite/novel_concepts/task.json", document), lambda root: load_bbl("novel_concepts", root))


@FUZZ
@given(document=json_documents(_BBL))
def test_bbl_subtask_json_raises_only_data_format_errors(document: bytes) -> None:
    def write(root: Path) -> Path:
        _writer("bigbench_lite/novel_concepts/task.json", b'{"name": "novel_concepts"}')(root)
        return _writer("bigbench_lite/novel_concepts/sub/task.json", document)(root)

    _check_loads(write, lambda root: load_bbl("novel_concepts", root))


def _csv_text(rows: list[list[str]]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue()


_MMLU_ROWS = list(csv.reader(io.StringIO((FIXTURES / "mmlu/dev/beta_subject_dev.csv").read_text(encoding="utf-8"))))
_cells = st.text(alphabet=st.sampled_from(list('ab ,"\n\r\x00') + ["é", "A", "E"]), max_size=8)
_mmlu_documents = st.one_of(
    st.lists(st.lists(_cells, max_size=8), max_size=4).map(lambda rows: _csv_text(_MMLU_ROWS + rows).encode()),
    byte_mutated(_csv_text(_MMLU_ROWS).encode()),
    st.integers(0, 300_000).map(lambda n: ('"' + "x" * n + '",a,b,c,d,A\n').encode()),  # over csv's field size limit
)


@FUZZ
@given(document=_mmlu_documents)
def test_mmlu_csv_raises_only_data_format_errors(document: bytes) -> None:
    _check_loads(_writer("mmlu/dev/beta_subject_dev.csv", document), lambda root: load_mmlu("dev", root, ["beta_subject"]))
