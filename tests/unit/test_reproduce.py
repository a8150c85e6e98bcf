"""``lens-steer reproduce`` on the tiny model: end to end, cached reruns that generate nothing, a changed sweep
setting redoing what depends on it, an interrupted eval resuming, a pre-existing vector reused, presets."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch

from conftest import make_tiny_hf
from lens_steer.cli import main
from lens_steer.config import GenerationConfig
from lens_steer.engines.api import as_engine
from lens_steer.eval.results_dir import read_items
from lens_steer.method.derive import derive_cot_vector
from lens_steer.method.vectors import SteeringVector, VectorMetadata
from lens_steer.models import wrap_model
from lens_steer.reproduce import (
    BUDGETS, Budget, DeriveStage, EvalStage, FigureStage, LayerGrid, ReproduceSettings, Reproduction, SweepStage,
    default_budget, preset_for,
)
from lens_steer.reproduce.cache import corpus_questions
from lens_steer.reproduce.record import describe_changes
from lens_steer.reproduce.selection import Selection, eval_conditions, select_cells

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "data"
SMALL = Budget(
    "test", DeriveStage(corpus="demo", corpus_limit=4, max_new_tokens=4, chunk_questions=2),
    SweepStage(limit=2, max_new_tokens=4, layers=LayerGrid((1, 2)), scales_continuous=(0.5, 1.0), scales_single=(1.0,),
               baselines=("direct",)),
    EvalStage(benchmarks=("gsm8k", "arc"), limit=2, task_limit=None, max_new_tokens=4),
    FigureStage(ablation_questions=1, max_new_tokens=3, n_splits=5, top_k=3, png=False))
SETTINGS = ReproduceSettings(model="tiny-llama-seed0", budget=SMALL, data_dir=str(FIXTURES), batch_size=4)
ALL_CACHED = [(name, "cached") for name in ("derive", "sweep", "select", "eval", "report", "figures")]


class CountingEngine:
    """Wraps an engine: counts generate calls and prompts, and raises KeyboardInterrupt on call ``fail_at``."""

    def __init__(self, inner, fail_at: int | None = None) -> None:
        self.inner, self.fail_at, self.calls, self.prompts = inner, fail_at, 0, 0
        self.name = inner.name

    info = property(lambda self: self.inner.info)
    model = property(lambda self: self.inner.model)
    context_length = property(lambda self: self.inner.context_length)  # the bridge engine's TransformerBridge (it declares hooks)
    tokenizer = property(lambda self: self.inner.tokenizer)
    dtype_name = property(lambda self: self.inner.dtype_name)
    device_name = property(lambda self: self.inner.device_name)

    def attention_kernel(self) -> str:
        return self.inner.attention_kernel()

    def first_token_logprobs(self, prompts, **kw):
        return self.inner.first_token_logprobs(prompts, **kw)

    def generate(self, prompts, config=GenerationConfig(), **kw):
        if self.fail_at is not None and self.calls + 1 == self.fail_at:
            raise KeyboardInterrupt
        self.calls += 1
        self.prompts += len(prompts)
        return self.inner.generate(prompts, config, **kw)


def _run(out, bridge, settings=SETTINGS, engine=None):
    """Run a reproduction with a counting engine on ``bridge``; returns (outcome, engine, factory calls)."""
    engine = engine or CountingEngine(as_engine(bridge))
    opened, bridges = [], []

    def open_engine(capture_residuals):
        opened.append(capture_residuals)
        return engine

    def open_bridge():
        bridges.append(1)
        return bridge

    outcome = Reproduction(out, settings, engine_factory=open_engine, bridge_factory=open_bridge, log=False,
                           progress=False).run()
    return outcome, engine, opened + bridges


def _statuses(outcome):
    return [(s.name, s.status) for s in outcome.stages]


def _rows(path):
    return sorted(({k: v for k, v in asdict(r).items() if k != "gen_seconds"} for r in read_items(path)),
                  key=lambda r: (r["id"], r["condition"]))


@pytest.fixture(scope="module")
def done(tiny, tmp_path_factory):
    """A finished reproduction (the reference of the tests below)."""
    out = tmp_path_factory.mktemp("reproduce") / "run"
    outcome, engine, _ = _run(out, tiny)
    return out, outcome, engine


def test_end_to_end_writes_every_stage(done):
    out, outcome, engine = done
    assert outcome.completed and _statuses(outcome) == [(n, "ran") for n, _ in ALL_CACHED]
    for path in ("vector/config.json", "sweep/summary.json", "sweep/heatmaps/all-continuous-accuracy.html",
                 "selection.json", "eval/summary.json", "report.md", "figures/README.md", "reproduce.json"):
        assert (out / path).is_file(), path
    selection = Selection.from_dict(json.loads((out / "selection.json").read_text()))
    assert [c.label for c in selection.cells] == ["sweep-continuous", "sweep-single"] and selection.preset is None
    assert [h.label for h in outcome.headline] == ["direct", "cot", "sweep-continuous", "sweep-single"]
    assert all(h.row.benchmark == "all" and h.row.n == 4 for h in outcome.headline)
    record = json.loads((out / "reproduce.json").read_text())
    assert record["stages"]["sweep"]["inputs"]["layers"] == [1, 2] and record["stages"]["eval"]["complete"]
    assert record["stages"]["sweep"]["inputs"]["vector"] == record["stages"]["derive"]["output"]
    report = (out / "report.md").read_text()
    assert "Cells carried to the evaluation" in report and "## Grid search" in report
    assert engine.calls > 0


def test_rerun_is_all_cached_and_loads_nothing(done, tiny):
    out, _, _ = done
    outcome, engine, opened = _run(out, tiny)
    assert outcome.completed and _statuses(outcome) == ALL_CACHED
    assert engine.calls == 0 and opened == []  # no engine, no bridge loaded
    assert [h.label for h in outcome.headline] == ["direct", "cot", "sweep-continuous", "sweep-single"]


def test_changed_sweep_redoes_it_and_what_reads_it(done, tiny, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(done[0], out)
    before = json.loads((out / "reproduce.json").read_text())["stages"]
    changed = replace(SETTINGS, budget=SMALL.with_overrides(sweep={"layers": LayerGrid((1, 3))}))
    outcome, engine, _ = _run(out, tiny, replace(changed, stages=("derive", "sweep")))
    assert _statuses(outcome)[:2] == [("derive", "cached"), ("sweep", "redone: layers 1,2 -> 1,3")]
    # a copy of the directory keeps its rows (the vector is identified by its content, not its path): only the
    # layer-3 cells are new
    assert engine.prompts == 3 * 3
    outcome, engine, _ = _run(out, tiny, replace(changed, stages=("derive", "sweep")))
    assert _statuses(outcome)[:2] == [("derive", "cached"), ("sweep", "cached")]
    outcome, engine, _ = _run(out, tiny, changed)
    status = dict(_statuses(outcome))
    after = json.loads((out / "reproduce.json").read_text())["stages"]
    assert after["derive"]["output"] == before["derive"]["output"]  # the vector was kept
    assert status["select"].startswith("redone: sweep ") and status["report"].startswith("redone: ")
    assert status["figures"] == "cached"  # the figures read the vector only
    if after["select"]["output"] == before["select"]["output"]:
        assert status["eval"] == "cached"
    else:
        assert status["eval"].startswith("redone: conditions ")
    layers = {r.layer for r in read_items(out / "sweep" / "items.jsonl") if r.layer is not None}
    assert layers == {1, 3}  # the layer-2 rows of the old grid are gone


def test_grid_change_in_place_generates_only_new_cells(tiny, tmp_path):
    out = tmp_path / "run"
    upto_sweep = replace(SETTINGS, stages=("derive", "sweep"))
    _run(out, tiny, upto_sweep)
    changed = replace(upto_sweep, budget=SMALL.with_overrides(sweep={"layers": LayerGrid((1, 3))}))
    outcome, engine, _ = _run(out, tiny, changed)
    assert _statuses(outcome)[1] == ("sweep", "redone: layers 1,2 -> 1,3")
    assert engine.prompts == 3 * 3  # 3 dev items x the 3 cells at layer 3; direct and layer 1 are kept
    assert len(read_items(out / "sweep" / "items.jsonl")) == 3 * 7


def test_interrupted_eval_resumes(done, tiny, tmp_path):
    out = tmp_path / "run"
    _run(out, tiny, replace(SETTINGS, stages=("derive", "sweep", "select")))
    outcome, engine, _ = _run(out, tiny, engine=CountingEngine(as_engine(tiny), fail_at=2))
    assert not outcome.completed and engine.calls == 1
    assert _statuses(outcome) == [("derive", "cached"), ("sweep", "cached"), ("select", "cached"),
                                  ("eval", "interrupted")]
    assert not json.loads((out / "reproduce.json").read_text())["stages"]["eval"]["complete"]
    kept = len(read_items(out / "eval" / "items.jsonl"))
    assert 0 < kept < 16
    outcome, engine, _ = _run(out, tiny)
    assert outcome.completed and dict(_statuses(outcome))["eval"] == "resumed"
    assert engine.prompts == 16 - kept  # only what the interruption left
    assert _rows(out / "eval" / "items.jsonl") == _rows(done[0] / "eval" / "items.jsonl")


def test_derive_reuses_a_vector_made_with_other_chunking(tiny, tmp_path):
    out = tmp_path / "run"
    questions = corpus_questions(SMALL.derive, None)
    vector = derive_cot_vector(as_engine(tiny), questions, generation=GenerationConfig(max_new_tokens=4, batch_size=3),
                               chunk_questions=None, progress=False)
    vector.save(out / "vector")
    sha = SteeringVector.load(out / "vector").source.tensors_sha256
    outcome, engine, opened = _run(out, tiny, replace(SETTINGS, stages=("derive",)))
    assert _statuses(outcome)[0] == ("derive", "cached") and opened == []
    assert SteeringVector.load(out / "vector").source.tensors_sha256 == sha
    longer = replace(SETTINGS, stages=("derive",), budget=SMALL.with_overrides(derive={"max_new_tokens": 5}))
    outcome, engine, opened = _run(out, tiny, longer)
    assert _statuses(outcome)[0] == ("derive", "redone: max_new_tokens 4 -> 5") and opened == [True]
    assert SteeringVector.load(out / "vector").metadata.generation.max_new_tokens == 5


def test_vector_of_another_checkpoint_is_derived_again(done, tiny, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(done[0] / "vector", out / "vector")
    hf, tok = make_tiny_hf(1)
    other = wrap_model(hf, tok, "tiny-llama-seed0")  # same name, other weights
    outcome, _, _ = _run(out, other, replace(SETTINGS, stages=("derive", "sweep")))
    status = _statuses(outcome)
    assert status[0] == ("derive", "cached") and status[1][0] == "derive"
    assert status[1][1].startswith("redone: fingerprint ") and status[2] == ("sweep", "ran")
    assert SteeringVector.load(out / "vector").metadata.model_fingerprint == as_engine(other).info.fingerprint


def test_presets_by_model_id():
    llama = preset_for("meta-llama/Meta-Llama-3-8B-Instruct")
    assert {(c.mode, c.layer, c.coeff) for c in llama.cells} == {("single", 16, 20.0), ("continuous", 13, 1.0)}
    mistral = preset_for("/models/Mistral-7B-Instruct-v0.2")
    assert {(c.mode, c.layer, c.coeff) for c in mistral.cells} == {("single", 15, 10.0), ("continuous", 10, 0.5)}
    assert preset_for("smollm2-135m-instruct") is None and preset_for("tiny-llama-seed0") is None


def test_preset_cells_are_evaluated_beside_the_sweeps(tiny, tmp_path):
    hf, tok = make_tiny_hf(0, n_layers=17)
    llama = wrap_model(hf, tok, "meta-llama/Meta-Llama-3-8B-Instruct")
    settings = replace(SETTINGS, model="meta-llama/Meta-Llama-3-8B-Instruct",
                       stages=("derive", "sweep", "select", "eval"),
                       budget=SMALL.with_overrides(sweep={"scales_continuous": (0.5,)},
                                                   eval={"benchmarks": ("gsm8k",)}))
    outcome, _, _ = _run(tmp_path / "run", llama, settings)
    assert outcome.completed
    labels = {h.label: h.row for h in outcome.headline}
    assert set(labels) == {"direct", "cot", "sweep-continuous", "sweep-single", "paper-continuous", "paper-single"}
    assert (labels["paper-single"].layer, labels["paper-single"].coeff) == (16, 20.0)
    assert (labels["paper-continuous"].layer, labels["paper-continuous"].coeff) == (13, 1.0)
    assert Selection.from_dict(json.loads((tmp_path / "run" / "selection.json").read_text())).preset == \
        "meta-llama/Meta-Llama-3-8B-Instruct"


def test_selection_and_eval_conditions_follow_the_rule():
    from lens_steer.eval.results import SummaryRow

    meta = VectorMetadata(model_id="m", model_fingerprint="f", n_layers=32, d_model=4)
    vector = SteeringVector(directions=torch.ones(32, 4), metadata=meta, resid_norm=torch.full((32,), 4.0))

    def row(mode, layer, scale, acc, cot):
        return SummaryRow("all", f"{mode}{layer}{scale}", f"steered-{mode}", "direct", mode, layer, scale * 2, scale,
                          10, int(acc * 10), acc, 0, 1, 0, 10, None, None, 5, 0, cot, 1, None)

    summary = [row("single", 10, 0.3, 0.5, 0.1), row("single", 13, 0.3, 0.5, 0.4), row("single", 16, 0.1, 0.5, 0.4),
               row("continuous", 10, 0.1, 0.2, 0.0)]
    selection = select_cells(summary, ("continuous", "single"), preset_for("meta-llama/Meta-Llama-3-8B-Instruct"))
    single = [c for c in selection.cells if c.label == "sweep-single"][0]
    assert (single.layer, single.scale) == (16, 0.1)  # tie on accuracy and CoT rate: the smaller |coeff|
    keys = [c.key for c in eval_conditions(vector, selection, ("direct", "cot"))]
    assert keys[:2] == ["direct", "cot"] and len(keys) == 6
    assert "steered-single[l=16,s=10,c=20]" in keys and "steered-continuous[l=13,s=0.5,c=1]" in keys
    assert Selection.from_dict(json.loads(json.dumps(selection.to_dict()))) == selection


def test_layer_grids_and_budgets():
    assert LayerGrid.parse("30%,40%,50%,60%,70%").resolve(32) == (10, 13, 16, 19, 22)
    assert BUDGETS["cpu"].sweep.layers.resolve(30) == (10, 15, 20)
    assert LayerGrid.parse("10,15,20").resolve(30) == (10, 15, 20)
    with pytest.raises(ValueError, match="not both"):
        LayerGrid.parse("10,50%")
    with pytest.raises(IndexError, match="out of range"):
        LayerGrid.parse("10,40").resolve(30)
    cpu = BUDGETS["cpu"]
    assert (cpu.derive.corpus, cpu.derive.corpus_limit, cpu.derive.max_new_tokens) == ("paper", None, 96)
    assert (cpu.sweep.benchmarks, cpu.sweep.limit, cpu.sweep.max_new_tokens) == (("gsm8k@train", "mmlu@val"), 16, 128)
    assert (cpu.sweep.scales_continuous, cpu.sweep.scales_single) == ((0.05, 0.1, 0.2), (0.3, 0.6, 1.0))
    assert (cpu.eval.limit, cpu.eval.task_limit, cpu.eval.max_new_tokens) == (100, 20, 128)
    full = BUDGETS["full"]
    assert full.eval.limit is None and full.derive.max_new_tokens == 256 and len(full.sweep.scales_single) == 5
    assert default_budget("smollm2-135m-instruct") == "cpu" and default_budget("mistralai/Mistral-7B-Instruct-v0.2") == "full"
    assert cpu.with_overrides(sweep={"limit": 16}) is cpu or cpu.with_overrides(sweep={"limit": 16}) == cpu
    assert cpu.with_overrides(sweep={"limit": 8}).name == "cpu with overrides"
    with pytest.raises(ValueError, match="no setting"):
        cpu.with_overrides(sweep={"bogus": 1})


def test_describe_changes():
    assert describe_changes({"layers": [10, 15, 20], "g": {"n": 96}}, {"layers": [8, 12, 16], "g": {"n": 128}}) == \
        "layers 10,15,20 -> 8,12,16; g.n 96 -> 128"
    assert describe_changes({"conditions": ["direct", "a", "b"]}, {"conditions": ["direct", "a", "c"]}) == \
        "conditions -b +c"


def test_cli_end_to_end_then_cached(tiny_dir, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["reproduce", "--model", str(tiny_dir), "--out", str(out), "--budget", "quick", "--corpus", "demo",
            "--corpus-limit", "2", "--max-new-tokens", "3", "--sweep-benchmarks", "gsm8k@train", "--sweep-limit", "2",
            "--layers", "25%,75%", "--scales-continuous", "0.5", "--scales-single", "1", "--benchmarks", "gsm8k",
            "--limit", "2", "--ablation-questions", "0", "--n-splits", "3", "--figure-max-new-tokens", "2",
            "--data-dir", str(FIXTURES), "--batch-size", "4", "--no-png", "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "pooled over gsm8k" in printed and "sweep-continuous" in printed and "complete in" in printed
    record = json.loads((out / "reproduce.json").read_text())
    assert record["settings"]["budget"]["name"] == "quick with overrides"
    assert record["stages"]["sweep"]["inputs"]["layers"] == [1, 3]
    assert main(argv) == 0
    assert capsys.readouterr().out.count("cached") == 6


@pytest.mark.parametrize("extra, message", [
    (["--layers", "1,50%"], "not both"),
    (["--stages", "derive,bogus"], "unknown stage"),
    (["--budget", "quick", "--stages", "eval"], "run the derive stage"),
])
def test_cli_bad_input_is_one_line(tiny_dir, tmp_path, capsys, extra, message):
    code = main(["reproduce", "--model", str(tiny_dir), "--out", str(tmp_path / "run"), "--no-progress", *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err and err.startswith("lens-steer reproduce: error")
