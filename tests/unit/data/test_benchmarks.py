"""Benchmark loaders: local fixtures, error reporting, hub mapping (faked), real offline data."""

from __future__ import annotations

import os
import re
import shutil
import warnings
from pathlib import Path

import pytest

from lens_steer.data import example as bm
from lens_steer.data.registry import (
    AGIEVAL_MC_TASKS,
    BBL_TASKS,
    BENCHMARKS,
    DataFormatError,
    Example,
    SkippedRecordsWarning,
    load_agieval,
    load_arc,
    load_bbl,
    load_benchmark,
    load_gsm8k,
    load_mmlu,
    resolve_data_dir,
    subsample,
)

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "data"
_ENV_DATA_DIR = os.environ.get(bm.DATA_DIR_ENV, "")  # read before the autouse fixture clears it


def shared_data_dir() -> Path:
    """The offline benchmark copies (``../shared/data`` beside the repo, or ``$LENS_STEER_DATA_DIR``)."""
    candidates = [Path(__file__).resolve().parents[3].parent / "shared" / "data"]
    if _ENV_DATA_DIR:
        candidates.append(Path(_ENV_DATA_DIR))
    for path in candidates:
        if (path / "gsm8k" / "test.jsonl").is_file():
            return path
    pytest.skip("../shared/data not found: offline benchmark copies absent")


@pytest.fixture
def data_copy(tmp_path: Path) -> Path:
    """A writable copy of the fixture data, for tests that break a file."""
    dest = tmp_path / "data"
    shutil.copytree(FIXTURES, dest)
    return dest


@pytest.fixture(autouse=True)
def _no_env_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(bm.DATA_DIR_ENV, raising=False)


# ---------------------------------------------------------------------------
# constants and helpers


def test_constants() -> None:
    assert len(BBL_TASKS) == 24 and len(set(BBL_TASKS)) == 24
    assert len(AGIEVAL_MC_TASKS) == 8 and "math" not in AGIEVAL_MC_TASKS
    assert BENCHMARKS == ("gsm8k", "mmlu", "arc", "agieval", "bbl")


def test_example_is_frozen() -> None:
    ex = Example("x/0", "custom", "q?", "a")
    with pytest.raises(AttributeError):
        ex.answer = "b"  # type: ignore[misc]
    assert ex.choices == () and ex.subset == ""


def test_resolve_data_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert resolve_data_dir(None) is None
    monkeypatch.setenv(bm.DATA_DIR_ENV, str(tmp_path / "env"))
    assert resolve_data_dir(None) == tmp_path / "env"
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_dir(str(tmp_path)) == tmp_path


def test_env_var_is_used_by_loaders(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(bm.DATA_DIR_ENV, str(FIXTURES))
    assert [ex.answer for ex in load_gsm8k("test")] == ["30", "1334", "4"]


def _items(n: int) -> list[Example]:
    return [Example(f"t/{i}", "custom", f"q{i}", "") for i in range(n)]


def test_subsample_deterministic_and_order_stable() -> None:
    items = _items(50)
    a = subsample(items, 10, seed=3)
    b = subsample(items, 10, seed=3)
    assert a == b and len(a) == 10
    positions = [items.index(x) for x in a]
    assert positions == sorted(positions)
    assert subsample(items, 10, seed=4) != a
    assert subsample(items, None, seed=0) == items
    assert subsample(items, 50, seed=0) == items and subsample(items, 99, seed=0) == items
    assert subsample(items, 0, seed=0) == []
    with pytest.raises(ValueError):
        subsample(items, -1, seed=0)


# ---------------------------------------------------------------------------
# local loaders on fixtures


def test_gsm8k_local() -> None:
    train = load_gsm8k("train", FIXTURES)
    assert [ex.answer for ex in train] == ["12", "2000", "-5", "3.5", "5"]
    assert train[1].id == "gsm8k/train/1" and train[1].source == "gsm8k" and train[1].subset == "train"
    assert train[0].question.startswith("Tom has 3 boxes") and train[0].choices == ()
    assert [ex.id for ex in load_gsm8k("test", FIXTURES)] == [f"gsm8k/test/{i}" for i in range(3)]
    with pytest.raises(ValueError, match="split"):
        load_gsm8k("dev", FIXTURES)


def test_mmlu_local_csv_quirks() -> None:
    dev = load_mmlu("dev", FIXTURES)
    assert [ex.subset for ex in dev] == ["alpha_subject"] * 2 + ["beta_subject"] * 3
    assert dev[0].id == "mmlu/dev/alpha_subject/0"
    assert dev[0].question == "What colour is a clear daytime sky?\nA. red\nB. blue\nC. green\nD. yellow"
    assert dev[0].answer == "B" and dev[0].choices == ("red", "blue", "green", "yellow")
    multiline = dev[2]
    assert multiline.question.startswith("A question whose text\nspans two lines, with a comma.")
    assert multiline.id == "mmlu/dev/beta_subject/0"
    assert dev[3].choices[0] == "stone, grey"  # quoted comma stays in one field
    assert dev[1].answer == "C" and dev[4].answer == "B"


def test_mmlu_splits_and_subjects() -> None:
    assert [ex.id for ex in load_mmlu("val", FIXTURES)] == ["mmlu/validation/alpha_subject/0"]
    assert len(load_mmlu("validation", FIXTURES)) == 1
    test = load_mmlu("test", FIXTURES, subjects=["beta_subject"])
    assert [(ex.id, ex.answer) for ex in test] == [("mmlu/test/beta_subject/0", "C")]
    with pytest.raises(ValueError, match="split"):
        load_mmlu("train", FIXTURES)


def test_arc_numeric_labels_map_by_position() -> None:
    test = load_arc("test", FIXTURES)
    assert [ex.id for ex in test] == ["arc/test/FIX_1", "arc/test/FIX_NUM_2", "arc/test/FIX_5"]
    numeric = test[1]
    assert numeric.answer == "C" and numeric.choices == ("metre", "second", "kilogram", "kelvin")
    assert numeric.question.endswith("A. metre\nB. second\nC. kilogram\nD. kelvin")
    assert test[2].answer == "E" and len(test[2].choices) == 5
    assert all(ex.subset == "test" and ex.source == "arc" for ex in test)
    assert load_arc("dev", FIXTURES)[0].id == "arc/validation/FIX_DEV_1"
    assert load_arc("validation", FIXTURES)[0].choices == ("Mars", "Sirius", "Luna")
    assert load_arc("train", FIXTURES)[0].answer == "B"


def test_agieval_passage_and_prefixes() -> None:
    lsat = load_agieval("lsat-ar", FIXTURES)
    ex = lsat[0]
    assert ex.id == "agieval/lsat-ar/0" and ex.subset == "lsat-ar" and ex.answer == "A"
    assert ex.question.startswith("Five friends, P, Q, R, S and T, sit in a row.")
    assert "\n\nWhich of the following could be the order" in ex.question
    assert ex.choices[0] == "P, Q, R, S, T" and ex.question.endswith("\nE. T, S, Q, P, R")
    aqua = load_agieval("aqua-rat", FIXTURES)[0]
    assert aqua.question.startswith("What is 6 times 7?\nA. 36")  # null passage: question first
    assert aqua.choices == ("36", "42", "48", "54", "13")
    logiqa, shuffled = load_agieval("logiqa-en", FIXTURES)
    assert logiqa.choices == ("Tom is white", "Tom is black", "Tom is a dog", "A cat is missing")
    # printed "(A) (C) (B) (D)": put in letter order, gold stays the printed "(B)"
    assert shuffled.choices == ("the red box", "the green box", "the blue box", "no box")
    assert shuffled.answer == "B" and shuffled.id == "agieval/logiqa-en/1"
    sat = load_agieval("sat-math", FIXTURES)[0]
    assert sat.question.startswith("If 2x = 10") and sat.answer == "B"  # empty passage


def test_agieval_several_tasks_and_validation() -> None:
    both = load_agieval(["aqua-rat", "lsat-ar"], FIXTURES)
    assert [ex.subset for ex in both] == ["aqua-rat", "lsat-ar", "lsat-ar"]
    with pytest.raises(ValueError, match="multiple-choice"):
        load_agieval("math", FIXTURES)
    with pytest.raises(ValueError, match="unknown AGIEval task"):
        load_agieval("gaokao-english", FIXTURES)


def test_bbl_subtasks_pooled_with_ids() -> None:
    exs = load_bbl("logical_deduction", FIXTURES)
    assert [ex.id for ex in exs] == [
        "bbl/logical_deduction/five_objects/0",
        "bbl/logical_deduction/three_objects/0",
        "bbl/logical_deduction/three_objects/1",
    ]
    assert exs[1].subset == "logical_deduction/three_objects"
    assert exs[1].answer == "A" and exs[2].answer == "C" and exs[0].answer == "B"
    assert exs[1].question == (
        "A cup is left of a pen. The pen is left of a key.\n"
        "A. The cup is leftmost.\nB. The pen is leftmost.\nC. The key is leftmost."
    )
    one = load_bbl("logical_deduction/three_objects", FIXTURES)
    assert [ex.id for ex in one] == [ex.id for ex in exs[1:]]


def test_bbl_generative_and_mixed() -> None:
    ops = load_bbl("operators", FIXTURES)
    assert [(ex.question, ex.answer, ex.choices) for ex in ops][:2] == [
        ("op x is x plus 1.\nop 4", "5", ()),
        ("op x is x times 2.\nop 3", "6", ()),  # list target: first one
    ]
    assert load_bbl("operators", FIXTURES, multiple_choice_only=True) == []
    emoji = load_bbl("emoji_movie", FIXTURES)[0]  # target and target_scores: multiple choice wins
    assert emoji.answer == "A" and emoji.choices == ("the lion king", "jaws", "up")


def test_bbl_tied_answers_left_out_with_warning() -> None:
    with pytest.warns(SkippedRecordsWarning, match="1 example"):
        exs = load_bbl("novel_concepts", FIXTURES)
    assert [ex.id for ex in exs] == ["bbl/novel_concepts/0", "bbl/novel_concepts/1", "bbl/novel_concepts/3"]
    assert [ex.answer for ex in exs] == ["A", "B", "A"]


# ---------------------------------------------------------------------------
# dispatcher


def test_load_benchmark_names() -> None:
    assert len(load_benchmark("gsm8k", data_dir=FIXTURES)) == 3
    assert len(load_benchmark("gsm8k", split="train", data_dir=FIXTURES)) == 5
    assert len(load_benchmark("mmlu", split="dev", data_dir=FIXTURES)) == 5
    assert [ex.subset for ex in load_benchmark("mmlu:beta_subject", "test", FIXTURES)] == ["beta_subject"]
    assert len(load_benchmark("arc", data_dir=FIXTURES)) == 3
    assert len(load_benchmark("agieval:lsat-ar", data_dir=FIXTURES)) == 2
    assert len(load_benchmark("bbl:logical_deduction", data_dir=FIXTURES)) == 3
    assert len(load_benchmark("bbl:operators", data_dir=FIXTURES, multiple_choice_only=True)) == 0
    with pytest.raises(FileNotFoundError):  # all 8 tasks, fixtures hold only 4
        load_benchmark("agieval", data_dir=FIXTURES)
    with pytest.raises(ValueError, match="unknown benchmark"):
        load_benchmark("hellaswag", data_dir=FIXTURES)
    with pytest.raises(ValueError, match="single split"):
        load_benchmark("bbl:operators", split="train", data_dir=FIXTURES)
    with pytest.raises(ValueError):
        load_benchmark("gsm8k:foo", data_dir=FIXTURES)


def test_load_benchmark_limit_is_seeded() -> None:
    a = load_benchmark("gsm8k", "train", FIXTURES, limit=3, seed=1)
    assert a == load_benchmark("gsm8k", "train", FIXTURES, limit=3, seed=1)
    assert a == subsample(load_gsm8k("train", FIXTURES), 3, seed=1)
    assert len(a) == 3


# ---------------------------------------------------------------------------
# missing files


@pytest.mark.parametrize(
    ("call", "expected", "in_fixtures"),
    [
        (lambda d: load_gsm8k("test", d), "gsm8k/test.jsonl", False),
        (lambda d: load_mmlu("test", d), "mmlu/test", False),
        (lambda d: load_mmlu("dev", d, subjects=["nope"]), "mmlu/dev/nope_dev.csv", True),
        (lambda d: load_arc("test", d), "arc/ARC-Challenge-Test.jsonl", False),
        (lambda d: load_agieval("lsat-lr", d), "agieval/lsat-lr.jsonl", True),
        (lambda d: load_bbl("winowhy", d), "bigbench_lite/winowhy/task.json", True),
    ],
)
def test_missing_files_name_path_and_layout(call, expected: str, in_fixtures: bool, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        call(FIXTURES if in_fixtures else tmp_path / "empty")
    message = str(info.value)
    assert expected in message.replace(os.sep, "/")
    assert "Expected layout" in message


# ---------------------------------------------------------------------------
# malformed records


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_gsm8k_bad_json_names_file_and_line(data_copy: Path) -> None:
    path = data_copy / "gsm8k" / "test.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    _write(path, "\n".join([lines[0], '{"question": "broken", ', lines[2]]) + "\n")
    with pytest.raises(DataFormatError) as info:
        load_gsm8k("test", data_copy)
    assert info.value.line == 2 and str(path) in str(info.value) and "line 2" in str(info.value)
    assert "invalid JSON" in str(info.value)


def test_gsm8k_missing_final_answer(data_copy: Path) -> None:
    path = data_copy / "gsm8k" / "train.jsonl"
    with path.open("a", encoding="utf-8") as f:
        f.write('{"question": "q?", "answer": "no final line"}\n')
    with pytest.raises(DataFormatError, match=r"line 6: .*####"):
        load_gsm8k("train", data_copy)
    _write(path, '{"answer": "#### 3"}\n')
    with pytest.raises(DataFormatError, match=r"line 1: field 'question'"):
        load_gsm8k("train", data_copy)


def test_mmlu_bad_row_line_counts_embedded_newlines(data_copy: Path) -> None:
    path = data_copy / "mmlu" / "dev" / "beta_subject_dev.csv"
    _write(path, '"two\nlines",a,b,c,d,A\nonly,four,fields,here\n')
    with pytest.raises(DataFormatError) as info:
        load_mmlu("dev", data_copy)
    assert info.value.line == 3 and "6 columns" in str(info.value) and "beta_subject_dev.csv" in str(info.value)
    _write(path, "q,a,b,c,d,E\n")
    with pytest.raises(DataFormatError, match=r"line 1: answer 'E'"):
        load_mmlu("dev", data_copy)


def test_files_not_utf8_name_file_and_line(data_copy: Path) -> None:
    csv_path = data_copy / "mmlu" / "dev" / "beta_subject_dev.csv"
    csv_path.write_bytes(b"q,a,b,c,d,A\n\"two\nlines \xff\",a,b,c,d,B\n")
    with pytest.raises(DataFormatError, match=r"beta_subject_dev\.csv, line 3: not valid UTF-8"):
        load_mmlu("dev", data_copy)
    json_path = data_copy / "bigbench_lite" / "operators" / "task.json"
    json_path.write_bytes(b'{"name": "operators",\n "examples": [{"input": "\xc3", "target": "1"}]}')
    with pytest.raises(DataFormatError, match=r"operators/task\.json, line 2: not valid UTF-8"):
        load_bbl("operators", data_copy)


def test_arc_bad_answer_key(data_copy: Path) -> None:
    path = data_copy / "arc" / "ARC-Challenge-Dev.jsonl"
    good = path.read_text(encoding="utf-8")
    _write(path, good + good.replace('"answerKey":"A"', '"answerKey":"5"'))
    with pytest.raises(DataFormatError, match=r"line 2: answerKey '5'"):
        load_arc("dev", data_copy)
    _write(path, '{"id": "x", "question": "a string", "answerKey": "A"}\n')
    with pytest.raises(DataFormatError, match="line 1"):
        load_arc("dev", data_copy)


def test_agieval_bad_label(data_copy: Path) -> None:
    path = data_copy / "agieval" / "lsat-ar.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    _write(path, lines[0] + "\n" + lines[1].replace('"label": "B"', '"label": "Z"') + "\n")
    with pytest.raises(DataFormatError, match=r"lsat-ar.jsonl, line 2: label 'Z'"):
        load_agieval("lsat-ar", data_copy)
    _write(path, lines[0].replace('"options": [', '"options": 3, "x": [') + "\n")
    with pytest.raises(DataFormatError, match=r"line 1: field 'options'"):
        load_agieval("lsat-ar", data_copy)


def test_bbl_bad_example_and_bad_json(data_copy: Path) -> None:
    path = data_copy / "bigbench_lite" / "operators" / "task.json"
    _write(path, '{"name": "operators", "examples": [{"input": "x", "target": "1"}, {"input": "y"}]}')
    with pytest.raises(DataFormatError, match=r"examples\[1\]: neither"):
        load_bbl("operators", data_copy)
    _write(path, '{"name": "operators",\n "examples": [\n  {"input": "x" "target": "1"}]}')
    with pytest.raises(DataFormatError) as info:
        load_bbl("operators", data_copy)
    assert info.value.line == 3 and "invalid JSON" in str(info.value)
    _write(path, '{"name": "operators", "examples": [{"input": "x", "target_scores": {"a": "yes"}}]}')
    with pytest.raises(DataFormatError, match=r"examples\[0\]: 'target_scores'"):
        load_bbl("operators", data_copy)
    top = data_copy / "bigbench_lite" / "logical_deduction"
    shutil.rmtree(top / "three_objects")
    shutil.rmtree(top / "five_objects")
    with pytest.raises(DataFormatError, match="no 'examples' and no"):
        load_bbl("logical_deduction", data_copy)


# ---------------------------------------------------------------------------
# hub mapping (datasets.load_dataset faked; the hub is never contacted)


HUB_ROWS: dict[tuple[str, str | None, str], list[dict]] = {
    ("openai/gsm8k", "main", "test"): [
        {"question": "Q1?", "answer": "1+1=<<1+1=2>>2\n#### 2"},
        {"question": "Q2?", "answer": "so\n#### 1,500"},
    ],
    ("cais/mmlu", "all", "dev"): [
        {"question": "Zeta q", "subject": "zoology", "choices": ["a", "b", "c", "d"], "answer": 3},
        {"question": "Alpha q", "subject": "anatomy", "choices": ["w", "x", "y", "z"], "answer": 0},
        {"question": "Alpha q2", "subject": "anatomy", "choices": ["w", "x", "y", "z"], "answer": 2},
    ],
    ("cais/mmlu", "anatomy", "validation"): [
        {"question": "Val q", "subject": "anatomy", "choices": ["w", "x", "y", "z"], "answer": 1},
    ],
    ("allenai/ai2_arc", "ARC-Challenge", "validation"): [
        {
            "id": "HUB_1",
            "question": "Which unit measures mass?",
            "choices": {"text": ["metre", "kilogram", "second"], "label": ["1", "2", "3"]},
            "answerKey": "2",
        },
    ],
    ("hails/agieval-lsat-ar", None, "test"): [
        {
            "query": "Q: Six people sit in a row. Who sits first? Answer Choices: (A)Ann (B)Bob (C)Cy (D)Di (E)Ed\n"
            "A: Among A through E, the answer is",
            "choices": ["(A)Ann", "(B)Bob", "(C)Cy", "(D)Di", "(E)Ed"],
            "gold": [3],
        },
    ],
    ("tasksource/bigbench", "novel_concepts", "train"): [
        {"idx": 0, "inputs": "What is common?", "targets": ["x"], "multiple_choice_targets": ["p", "x", "q"],
         "multiple_choice_scores": [0, 1, 0]},
        {"idx": 1, "inputs": "Tied?", "targets": [], "multiple_choice_targets": ["p", "q"],
         "multiple_choice_scores": [1, 1]},
    ],
    ("tasksource/bigbench", "novel_concepts", "validation"): [
        {"idx": 0, "inputs": "Free form?", "targets": ["answer text", "alt"], "multiple_choice_targets": [],
         "multiple_choice_scores": []},
    ],
}


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    datasets = pytest.importorskip("datasets")
    calls: list[tuple] = []

    def fake_load_dataset(path, name=None, split=None, **kwargs):
        calls.append((path, name, split))
        return list(HUB_ROWS[(path, name, split)])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    return calls


def test_hub_gsm8k(fake_hub: list[tuple]) -> None:
    exs = load_gsm8k("test")
    assert fake_hub == [("openai/gsm8k", "main", "test")]
    assert [(ex.id, ex.answer) for ex in exs] == [("gsm8k/test/0", "2"), ("gsm8k/test/1", "1500")]


def test_hub_mmlu(fake_hub: list[tuple]) -> None:
    exs = load_mmlu("dev")
    assert [ex.id for ex in exs] == ["mmlu/dev/anatomy/0", "mmlu/dev/anatomy/1", "mmlu/dev/zoology/0"]
    assert [ex.answer for ex in exs] == ["A", "C", "D"]
    assert exs[0].question == "Alpha q\nA. w\nB. x\nC. y\nD. z"
    val = load_mmlu("val", subjects=["anatomy"])
    assert fake_hub[-1] == ("cais/mmlu", "anatomy", "validation")
    assert [(ex.id, ex.answer) for ex in val] == [("mmlu/validation/anatomy/0", "B")]


def test_hub_arc(fake_hub: list[tuple]) -> None:
    (ex,) = load_arc("dev")
    assert fake_hub == [("allenai/ai2_arc", "ARC-Challenge", "validation")]
    assert ex.id == "arc/validation/HUB_1" and ex.answer == "B" and ex.choices == ("metre", "kilogram", "second")


def test_hub_agieval(fake_hub: list[tuple]) -> None:
    (ex,) = load_agieval("lsat-ar")
    assert ex.answer == "D" and ex.choices == ("Ann", "Bob", "Cy", "Di", "Ed")
    assert ex.question.startswith("Six people sit in a row. Who sits first?\nA. Ann")
    assert "Answer Choices" not in ex.question and "Among A through E" not in ex.question


def test_hub_bbl(fake_hub: list[tuple]) -> None:
    with pytest.warns(SkippedRecordsWarning):
        exs = load_bbl("novel_concepts")
    assert [c[2] for c in fake_hub] == ["train", "validation"]
    assert [(ex.answer, ex.choices) for ex in exs] == [("B", ("p", "x", "q")), ("answer text", ())]
    assert exs[0].id == "bbl/novel_concepts/hub-train/0" and exs[1].id == "bbl/novel_concepts/hub-validation/0"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedRecordsWarning)
        assert [ex.answer for ex in load_bbl("novel_concepts", multiple_choice_only=True)] == ["B"]
    with pytest.raises(ValueError, match="subtask"):
        load_bbl("logical_deduction/three_objects")


def test_hub_malformed_row_names_dataset_and_row(fake_hub: list[tuple], monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [{"question": "ok", "answer": "#### 1"}, {"question": "bad", "answer": "no number"}]
    monkeypatch.setitem(HUB_ROWS, ("openai/gsm8k", "main", "train"), rows)
    with pytest.raises(DataFormatError, match=r"hub:openai/gsm8k\[main\]/train, line 2"):
        load_gsm8k("train")


# ---------------------------------------------------------------------------
# real offline data (../shared/data)

AGIEVAL_ROWS = {
    "aqua-rat": 254,
    "logiqa-en": 651,
    "lsat-ar": 230,
    "lsat-lr": 510,
    "lsat-rc": 269,
    "sat-en": 206,
    "sat-en-without-passage": 206,
    "sat-math": 220,
}


@pytest.mark.data
def test_real_gsm8k_mmlu_arc_counts() -> None:
    root = shared_data_dir()
    assert len(load_gsm8k("test", root)) == 1319
    dev = load_mmlu("dev", root)
    assert len(dev) == 285 and len({ex.subset for ex in dev}) == 57
    arc = load_arc("test", root)
    assert len(arc) == 1172 and len({ex.id for ex in arc}) == 1172
    assert all(ex.answer in "ABCDE"[: len(ex.choices)] for ex in arc)


@pytest.mark.data
def test_real_agieval_counts() -> None:
    root = shared_data_dir()
    for task, rows in AGIEVAL_ROWS.items():
        exs = load_agieval(task, root)
        assert len(exs) == rows, task
        assert not [c for ex in exs for c in ex.choices if re.match(r"\(?[A-E]\)", c)], task  # prefixes stripped


@pytest.mark.data
def test_real_bbl_all_tasks_load() -> None:
    root = shared_data_dir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedRecordsWarning)
        counts = {task: len(load_bbl(task, root)) for task in BBL_TASKS}
    assert all(n > 0 for n in counts.values())
    assert counts["novel_concepts"] == 30 and counts["operators"] == 211
    assert sum(counts.values()) == 110_551 - 3  # 3 tied-answer examples (hindu_knowledge 1, novel_concepts 2)


def test_unreadable_files_and_folders_raise_one_line_naming_the_path(data_copy: Path, tmp_path: Path) -> None:
    """Run as a user without root's permission override (``setpriv`` drops it), so the real checks happen."""
    import json
    import subprocess
    import sys

    prefix = []
    if os.geteuid() == 0:
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
        if shutil.which("setpriv") is None:
            pytest.skip("cannot drop root's file-permission override here (no setpriv)")
    d = data_copy
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"question": "hi"}\n')
    cases = [
        ("load_gsm8k('test', d)", d / "gsm8k" / "test.jsonl", d / "gsm8k" / "test.jsonl"),
        ("load_mmlu('dev', d)", d / "mmlu" / "dev", d / "mmlu" / "dev"),  # listing the folder
        ("load_mmlu('test', d, subjects=['beta_subject'])", d / "mmlu" / "test",
         d / "mmlu" / "test" / "beta_subject_test.csv"),
        ("load_arc('dev', d)", d / "arc" / "ARC-Challenge-Dev.jsonl", d / "arc" / "ARC-Challenge-Dev.jsonl"),
        ("load_agieval('sat-math', d)", d / "agieval", d / "agieval" / "sat-math.jsonl"),
        ("load_bbl('logical_deduction', d)", d / "bigbench_lite" / "logical_deduction" / "task.json",
         d / "bigbench_lite" / "logical_deduction" / "task.json"),
        ("load_questions_jsonl(q)", questions, questions),
    ]
    for _, locked, _ in cases:
        locked.chmod(0)
    script = ("import json, sys\nfrom pathlib import Path\nfrom lens_steer.data.registry import *\n"
              "from lens_steer.data.corpus import load_questions_jsonl\nfrom lens_steer.storage import StorageError\n"
              "d, q = Path(sys.argv[1]), Path(sys.argv[2])\nout = []\n"
              "for call in json.loads(sys.argv[3]):\n    try:\n        eval(call)\n        out.append('loaded')\n"
              "    except StorageError as e:\n        out.append(str(e))\nprint(json.dumps(out))")
    repo = Path(__file__).resolve().parents[3]
    proc = subprocess.run([*prefix, sys.executable, "-c", script, str(d), str(questions),
                           json.dumps([call for call, _, _ in cases])], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(repo)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout) == [f"cannot read {path}: Permission denied" for _, _, path in cases]
