"""The benchmark registry: a new benchmark is one spec; loading, reporting keys, scoring and
result order read it; the one BIG-bench Lite classifier."""

from __future__ import annotations

from pathlib import Path

import pytest

from lens_steer.data import registry
from lens_steer.data.bbl import NEITHER, SKIPPED, classify
from lens_steer.data.example import Example
from lens_steer.data.registry import (
    BENCHMARKS, REGISTRY, BenchmarkSpec, answer_kind, benchmark_key, benchmark_order, expand_benchmarks,
    get_benchmark, load_benchmark, register,
)
from lens_steer.eval.results import ItemRow, summarise
from lens_steer.eval.scoring import score


def _toy_rows(split: str, tasks) -> list[Example]:
    return [Example(f"toy/{t}/{i}", "toy", f"{t} question {i}", str(i + 40), subset=t)
            for t in (tasks or ("alpha", "beta")) for i in range(3)]


def _toy_spec(calls: list) -> BenchmarkSpec:
    def read_local(root: Path, split, tasks, mc_only):
        calls.append(("local", root, split, tasks))
        return _toy_rows(split, tasks)

    def read_hub(split, tasks, mc_only):
        calls.append(("hub", split, tasks))
        return _toy_rows(split, tasks)

    return BenchmarkSpec(name="toy", title="Toy", splits=("dev", "test"), answer_kind="number",
                         read_local=read_local, read_hub=read_hub, layout="<data_dir>/toy/*.jsonl",
                         hub="nobody/toy", tasks=("alpha", "beta"), takes_subset=True)


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.delenv("LENS_STEER_DATA_DIR", raising=False)
    calls: list = []
    spec = _toy_spec(calls)
    monkeypatch.setitem(REGISTRY, "toy", spec)  # removed again after the test
    return spec, calls


def test_builtin_registry():
    assert BENCHMARKS == ("gsm8k", "mmlu", "arc", "agieval", "bbl") == tuple(REGISTRY)[:5]
    assert [REGISTRY[n].answer_kind for n in BENCHMARKS] == ["number", "choice", "choice", "choice", "choice_or_text"]
    assert answer_kind("custom") is None and get_benchmark("mmlu:anatomy") is REGISTRY["mmlu"]
    with pytest.raises(ValueError, match="unknown benchmark 'nope'"):
        get_benchmark("nope")


def test_a_new_benchmark_is_one_spec(toy, tmp_path):
    spec, calls = toy
    assert len(load_benchmark("toy")) == 6 and calls[-1] == ("hub", "test", None)
    assert len(load_benchmark("toy:beta", "dev", data_dir=tmp_path)) == 3
    assert calls[-1] == ("local", tmp_path, "dev", ("beta",))
    with pytest.raises(ValueError, match="unknown Toy split 'train'"):
        load_benchmark("toy", "train")
    examples, names = expand_benchmarks("toy,gsm8k@train", task_limit=2, limit=1,
                                        data_dir=Path(__file__).resolve().parents[2] / "fixtures" / "data")
    assert names == ["toy:alpha", "toy:beta", "gsm8k@train"]
    assert [e.source for e in examples] == ["toy"] * 4 + ["gsm8k"]
    assert benchmark_key(examples[0]) == "toy:alpha" and benchmark_key(examples[-1]) == "gsm8k"
    # scoring reads the answer kind: a number is extracted even where the gold looks like text
    ex = Example("toy/alpha/x", "toy", "q", "forty-two")
    assert score(ex, "It is 42.").predicted == "42"
    assert score(Example("c/1", "custom", "q", "forty-two"), "It is 42.").predicted != "42"  # text answer there


def test_results_follow_the_registry_order(toy):
    rows = [ItemRow(id=f"{b}/{i}", benchmark=b, source=b.partition(":")[0], subset="", condition="direct",
                    name="direct", style="direct", layer=None, coeff=None, scale=None, mode=None, answer="1",
                    predicted=None, parsed=False, correct=False, cot_style=False, n_tokens=1, stopped=True,
                    prompt_tokens=5, gen_seconds=0.0, response="r")
            for b in ("toy:beta", "gsm8k", "toy:alpha") for i in range(2)]
    order = [s.benchmark for s in summarise(rows, n_boot=10)]
    assert order == ["gsm8k", "toy:alpha", "toy:beta", "toy", "all"]
    assert benchmark_order("gsm8k") < benchmark_order("toy:alpha") < benchmark_order("toy") < benchmark_order("all")


def test_register_checks_names(toy):
    spec, _ = toy
    with pytest.raises(ValueError, match="already registered"):
        register(spec)
    with pytest.raises(ValueError, match="cannot be empty"):
        register(BenchmarkSpec(**{**spec.__dict__, "name": "a:b"}))
    with pytest.raises(ValueError, match="answer_kind"):
        BenchmarkSpec(**{**spec.__dict__, "answer_kind": "essay"})
    assert register(spec, replace=True) is REGISTRY["toy"]


def test_one_bbl_classifier():
    mc = classify("i", "t", "Which?", ["a", "b"], [0, 1], None, False)
    assert isinstance(mc, Example) and mc.answer == "B" and mc.choices == ("a", "b")
    assert mc.question == "Which?\nA. a\nB. b"
    gen = classify("i", "t", "Say", [], [], "hi", False)
    assert gen.answer == "hi" and gen.choices == ()
    assert classify("i", "t", "Say", [], [], "hi", True) is None
    assert classify("i", "t", "Tie", ["a", "b"], [1, 1], "a", False).answer == "a"  # tie with target: generative
    assert classify("i", "t", "Tie", ["a", "b"], [1, 1], None, False) is SKIPPED
    assert classify("i", "t", "Empty", [], [], None, False) is NEITHER


def test_registry_module_is_the_only_dispatch():
    assert not hasattr(registry, "_LAYOUT")  # each benchmark module owns its layout
