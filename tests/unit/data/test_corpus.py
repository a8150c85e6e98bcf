"""The paper's contrast corpus, its hash, and user question files."""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path

import pytest

from lens_steer.data.registry import BBL_TASKS, DATA_DIR_ENV, DataFormatError, Example
from lens_steer.data.corpus import corpus_hash, load_questions_jsonl, paper_corpus

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "data"


def shared_data_dir() -> Path:
    """The offline benchmark copies (``../shared/data`` beside the repo, or ``$LENS_STEER_DATA_DIR``)."""
    candidates = [Path(__file__).resolve().parents[3].parent / "shared" / "data"]
    if os.environ.get(DATA_DIR_ENV):
        candidates.append(Path(os.environ[DATA_DIR_ENV]))
    for path in candidates:
        if (path / "gsm8k" / "train.jsonl").is_file():
            return path
    pytest.skip("../shared/data not found: offline benchmark copies absent")


@pytest.fixture(scope="module")
def full_fixture_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture data plus a small synthetic task for every BBL task the fixtures lack."""
    root = tmp_path_factory.mktemp("corpus") / "data"
    shutil.copytree(FIXTURES, root)
    for task in BBL_TASKS:
        folder = root / "bigbench_lite" / task
        if folder.exists():
            continue
        folder.mkdir(parents=True)
        examples = [{"input": f"{task} question {i}?", "target": f"answer {i}"} for i in range(6)]
        (folder / "task.json").write_text(json.dumps({"name": task, "examples": examples}), encoding="utf-8")
    return root


def test_paper_corpus_composition(full_fixture_dir: Path) -> None:
    corpus = paper_corpus(full_fixture_dir, seed=0, n_gsm8k=3)
    by_source = Counter(ex.source for ex in corpus)
    # fixture BBL tasks: emoji_movie has 1 example, the rest >= 3 (novel_concepts: 3 after the tied one)
    assert by_source["bbl"] == 23 * 3 + 1
    assert by_source["mmlu"] == 2 * 2 and by_source["gsm8k"] == 3
    assert len({ex.id for ex in corpus}) == len(corpus)
    mmlu = [ex for ex in corpus if ex.source == "mmlu"]
    assert all(ex.id.startswith("mmlu/dev/") for ex in mmlu)
    assert Counter(ex.subset for ex in mmlu) == {"alpha_subject": 2, "beta_subject": 2}
    assert all(ex.id.startswith("gsm8k/train/") for ex in corpus if ex.source == "gsm8k")
    bbl_tasks = [ex.subset.split("/")[0] for ex in corpus if ex.source == "bbl"]
    assert list(dict.fromkeys(bbl_tasks)) == list(BBL_TASKS)  # BBL_TASKS order, every task present
    assert [ex.source for ex in corpus] == sorted((ex.source for ex in corpus), key=["bbl", "mmlu", "gsm8k"].index)
    operators = [ex for ex in corpus if ex.subset == "operators"]
    assert len(operators) == 3 and all(ex.choices == () for ex in operators)  # generative kept


def test_paper_corpus_seeded(full_fixture_dir: Path) -> None:
    a = paper_corpus(full_fixture_dir, seed=0, n_gsm8k=3)
    assert a == paper_corpus(full_fixture_dir, seed=0, n_gsm8k=3)
    b = paper_corpus(full_fixture_dir, seed=1, n_gsm8k=3)
    assert [ex.id for ex in a] != [ex.id for ex in b]
    assert corpus_hash(a) != corpus_hash(b)


def test_paper_corpus_env_var(full_fixture_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATA_DIR_ENV, str(full_fixture_dir))
    assert paper_corpus(seed=0, n_gsm8k=2) == paper_corpus(full_fixture_dir, seed=0, n_gsm8k=2)


def test_corpus_hash() -> None:
    exs = [Example("a/0", "custom", "first?", "1"), Example("a/1", "custom", "second?", "2")]
    h = corpus_hash(exs)
    assert len(h) == 64 and int(h, 16) >= 0
    assert corpus_hash(list(exs)) == h
    assert corpus_hash(exs[::-1]) != h  # order matters
    assert corpus_hash([exs[0], Example("a/1", "custom", "second!", "2")]) != h
    assert corpus_hash([exs[0], Example("a/9", "custom", "second?", "2")]) != h
    assert corpus_hash([Example("a/0", "other", "first?", "x"), exs[1]]) == h  # only ids and questions
    # no ambiguity from concatenation
    assert corpus_hash([Example("ab", "c", "c", "")]) != corpus_hash([Example("a", "c", "bc", "")])


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_load_questions_jsonl_defaults_and_blank_lines(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "mine.jsonl",
        '{"question": "What is 2+2?"}\n'
        "\n"
        '{"question": "Capital of France?", "id": "geo-1", "answer": "Paris", "source": "quiz", "extra": 1}\n'
        '   \n'
        '{"question": "Seven?", "id": 7, "answer": 7}\n',
    )
    exs = load_questions_jsonl(path)
    assert exs == [
        Example("mine/0", "custom", "What is 2+2?", ""),
        Example("geo-1", "quiz", "Capital of France?", "Paris"),
        Example("7", "custom", "Seven?", "7"),
    ]


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ('{"question": "ok"}\n{"question": "bad",\n', 2, "invalid JSON"),
        ('{"question": "ok"}\n\n{"id": "x"}\n', 3, "'question'"),
        ('{"question": "   "}\n', 1, "'question'"),
        ('["question"]\n', 1, "JSON object"),
        ('{"question": "q", "source": 3}\n', 1, "'source'"),
        ('{"question": "q", "id": "d"}\n{"question": "r", "id": "d"}\n', 2, "duplicate id"),
    ],
)
def test_load_questions_jsonl_errors(tmp_path: Path, text: str, line: int, message: str) -> None:
    path = _write(tmp_path, "q.jsonl", text)
    with pytest.raises(DataFormatError) as info:
        load_questions_jsonl(path)
    assert info.value.line == line
    assert f"line {line}" in str(info.value) and str(path) in str(info.value) and message in str(info.value)


def test_load_questions_jsonl_not_utf8_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    path.write_bytes(b'{"question": "ok"}\n\n{"question": "caf\xe9?"}\n')  # Latin-1, not UTF-8
    with pytest.raises(DataFormatError, match=r"q\.jsonl, line 3: not valid UTF-8 \(byte 0xe9") as info:
        load_questions_jsonl(path)
    assert info.value.line == 3 and str(path) in str(info.value)


@pytest.mark.parametrize("text", ["", "\n  \n"])
def test_load_questions_jsonl_without_questions(tmp_path: Path, text: str) -> None:
    path = _write(tmp_path, "empty.jsonl", text)
    with pytest.raises(DataFormatError, match=r"empty\.jsonl: no questions in the file"):
        load_questions_jsonl(path)


def test_load_questions_jsonl_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_questions_jsonl(tmp_path / "nope.jsonl")


@pytest.mark.data
def test_real_paper_corpus() -> None:
    root = shared_data_dir()
    a = paper_corpus(root, seed=0)
    assert len(a) == 72 + 114 + 100 == 286
    assert Counter(ex.source for ex in a) == {"bbl": 72, "mmlu": 114, "gsm8k": 100}
    assert len({ex.id for ex in a}) == 286
    b = paper_corpus(root, seed=0)
    assert a == b and corpus_hash(a) == corpus_hash(b)
