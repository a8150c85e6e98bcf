"""Evaluation harness: conditions, scoring rows, summaries, resumable results, eval/sweep/report CLI."""

from __future__ import annotations

import json
import math
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from dataclasses import asdict

from lens_steer.cli import main
from lens_steer.data.registry import Example, load_benchmark
from lens_steer.engines.bridge import BridgeEngine
from lens_steer.eval import results_dir as ev
from lens_steer.eval.conditions import Condition, steered_condition, sweep_conditions
from lens_steer.eval.evaluate import evaluate
from lens_steer.eval.results import ItemRow, recovery, summarise
from lens_steer.eval.results_dir import RunSettingsMismatch, open_results_dir, read_items
from lens_steer.eval.sweep import best_steered, sweep_grid
from lens_steer.config import GenerationConfig
from lens_steer.engines.base import Generation
from lens_steer.models import describe
from lens_steer.eval.stats import mcnemar_exact, recovered_gain
from lens_steer.method.vectors import SteeringVector, VectorMetadata

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "data"
CFG = GenerationConfig(max_new_tokens=3, batch_size=2)


@pytest.fixture(autouse=True)
def _no_env_data_dir(monkeypatch):
    monkeypatch.delenv("LENS_STEER_DATA_DIR", raising=False)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def vector(tiny):
    info = describe(tiny)
    meta = VectorMetadata(model_id=info["model_id"], model_fingerprint=info["fingerprint"], n_layers=info["n_layers"],
                          d_model=info["d_model"], corpus_hash="test-corpus")
    g = torch.Generator().manual_seed(0)
    return SteeringVector(directions=torch.randn(info["n_layers"], info["d_model"], generator=g), metadata=meta,
                          resid_norm=torch.full((info["n_layers"],), 4.0))


@pytest.fixture(scope="module")
def vector_dir(vector, tmp_path_factory):
    return vector.save(tmp_path_factory.mktemp("vec") / "v")


@pytest.fixture(scope="module")
def examples():
    return load_benchmark("gsm8k", data_dir=FIXTURES) + load_benchmark("arc", data_dir=FIXTURES)


def _strip(rows):
    """Rows without timing, sorted by key: what must not depend on how a run was split up."""
    return sorted(({k: v for k, v in asdict(r).items() if k != "gen_seconds"} for r in rows),
                  key=lambda r: (r["id"], r["condition"]))


# ---------------------------------------------------------------------------
# conditions


def test_conditions_validate_and_key(vector):
    assert Condition.baseline("plain").style == "none"
    assert Condition.baseline("cot").key == "cot"
    with pytest.raises(ValueError, match="prompt style"):
        Condition("direct", "cot")
    with pytest.raises(ValueError, match="needs mode"):
        Condition("steered-single", "direct", layer=1, mode="single")
    with pytest.raises(ValueError, match="not steered"):
        Condition("cot", "cot", layer=1)
    with pytest.raises(ValueError, match="unsteered"):
        Condition.baseline("steered-single")
    c = steered_condition(vector, "single", 2, scale=0.5)
    assert c.style == "direct" and c.mode == "single" and c.key.startswith("steered-single[l=2,s=0.5,c=")
    # scale -> coeff -> scale round trip: ||c v_l|| = scale * resid_norm_l
    assert float(c.coeff * vector.directions[2].norm()) == pytest.approx(0.5 * 4.0)
    back = steered_condition(vector, "single", 2, coeff=c.coeff)
    assert back.scale == pytest.approx(0.5) and back.coeff == c.coeff
    with pytest.raises(ValueError, match="exactly one"):
        steered_condition(vector, "single", 2, coeff=1.0, scale=1.0)
    with pytest.raises(IndexError):
        steered_condition(vector, "single", 9, coeff=1.0)
    grid = sweep_conditions(vector, [1, 2], ["continuous", "single"], coeffs={"continuous": [1.0, 2.0]},
                            scales={"single": [0.5]})
    assert [(c.mode, c.layer) for c in grid] == [("continuous", 1)] * 2 + [("continuous", 2)] * 2 + [
        ("single", 1), ("single", 2)]
    assert len({c.key for c in grid}) == len(grid)


# ---------------------------------------------------------------------------
# evaluate on the tiny model


def test_evaluate_rows_and_skips(tiny, vector, examples):
    conds = [Condition.baseline("direct"), steered_condition(vector, "continuous", 1, scale=0.5)]
    seen = []
    rows = evaluate(tiny, examples, conds, CFG, vector, on_rows=seen.append, progress=False)
    assert len(rows) == len(examples) * 2 and sum(len(c) for c in seen) == len(rows)
    assert all(len(c) <= 2 for c in seen)  # chunks default to the batch size
    r = rows[0]
    assert isinstance(r, ItemRow)
    for key in ("id", "benchmark", "source", "subset", "condition", "layer", "coeff", "scale", "mode", "response",
                "n_tokens", "stopped", "predicted", "parsed", "correct", "cot_style", "answer"):
        assert key in r.to_dict()
    assert all(r.n_tokens <= 3 for r in rows)
    assert {r.benchmark for r in rows} == {"gsm8k", "arc"}
    # everything done: nothing is generated again
    again = evaluate(tiny, examples, conds, CFG, vector, done=ev.done_keys(rows), progress=False)
    assert again == []
    # steering changes nothing outside its context: the direct rows are reproducible
    direct = evaluate(tiny, examples, conds[:1], CFG, progress=False)
    assert _strip(direct) == _strip([r for r in rows if r.condition == "direct"])


def test_evaluate_rejects_bad_input(tiny, vector, examples):
    steered = steered_condition(vector, "single", 1, coeff=1.0)
    with pytest.raises(ValueError, match="need a vector"):
        evaluate(tiny, examples, [steered], CFG, progress=False)
    with pytest.raises(ValueError, match="unique"):
        evaluate(tiny, examples + examples[:1], [Condition.baseline("direct")], CFG, progress=False)
    with pytest.raises(ValueError, match="repeat"):
        evaluate(tiny, examples, [Condition.baseline("cot")] * 2, CFG, progress=False)


def test_parse_failures_never_correct(tiny, monkeypatch):
    """A response with no extractable answer is a parse failure, scored wrong, and counted as such."""
    items = [
        Example("q/0", "gsm8k", "How many apples?", "4"),
        Example("q/1", "gsm8k", "How many pears?", "0"),
        Example("q/2", "mmlu", "Pick one.\nA. x\nB. y", "A", ("x", "y"), "s"),
        Example("q/3", "mmlu", "Pick two.\nA. x\nB. y", "B", ("x", "y"), "s"),
    ]
    replies = {"apples": "I cannot tell.", "pears": "The answer is 0.", "one": "No idea at all", "two": "Answer: B"}

    def fake_generate(self, prompts, config, progress=False, **kw):
        out = []
        for p in prompts:
            text = self.tokenizer.decode(p)
            reply = next(v for k, v in replies.items() if k in text)
            out.append(Generation(list(p), [5] * len(reply.split()), True, reply))
        return out

    monkeypatch.setattr(BridgeEngine, "generate", fake_generate)
    rows = evaluate(tiny, items, [Condition.baseline("direct")], CFG, progress=False)
    by_id = {r.id: r for r in rows}
    assert not by_id["q/0"].parsed and not by_id["q/0"].correct and by_id["q/0"].predicted is None
    assert not by_id["q/2"].parsed and not by_id["q/2"].correct
    assert by_id["q/1"].correct and by_id["q/3"].correct  # gold "0" is still a real answer
    summary = {s.benchmark: s for s in summarise(rows)}
    assert summary["gsm8k"].parse_fail_rate == 0.5 and summary["gsm8k"].accuracy == 0.5
    assert summary["all"].n_correct == 2 and summary["all"].parse_fail_rate == 0.5


# ---------------------------------------------------------------------------
# summaries


def _row(id_, bench, cond, correct, *, parsed=True, n_tokens=10, cot=False, stopped=True, mode=None, layer=None,
         coeff=None, scale=None):
    name = cond.split("[")[0]
    return ItemRow(id=id_, benchmark=bench, source=bench.split(":")[0], subset="", condition=cond, name=name,
                   style={"cot": "cot", "plain": "none"}.get(name, "direct"), layer=layer, coeff=coeff, scale=scale,
                   mode=mode, answer="A", predicted="A" if parsed else None, parsed=parsed, correct=correct,
                   cot_style=cot, n_tokens=n_tokens, stopped=stopped, prompt_tokens=5, gen_seconds=0.5, response="")


def test_summarise_statistics():
    direct = [True, False, False, True, False, False]
    cot = [True, True, True, True, False, True]
    rows = []
    for i, (d, c) in enumerate(zip(direct, cot)):
        bench = "agieval:lsat-ar" if i < 3 else "agieval:sat-math"
        rows.append(_row(f"x/{i}", bench, "direct", d, parsed=d or i != 1, n_tokens=4))
        rows.append(_row(f"x/{i}", bench, "cot", c, n_tokens=20, cot=i % 2 == 0, stopped=i != 5))
    rows.append(_row("x/9", "agieval:sat-math", "cot", False))  # unpaired item
    summary = summarise(rows)
    assert [s.benchmark for s in summary] == ["agieval:lsat-ar"] * 2 + ["agieval:sat-math"] * 2 + ["agieval"] * 2 + [
        "all"] * 2
    pooled = {s.condition: s for s in summary if s.benchmark == "agieval"}
    assert pooled["direct"].accuracy == pytest.approx(2 / 6) and pooled["direct"].mcnemar_p is None
    assert pooled["direct"].parse_fail_rate == pytest.approx(1 / 6)
    c = pooled["cot"]
    assert c.n == 7 and c.n_paired == 6 and c.n_correct == 5
    assert c.mcnemar_p == pytest.approx(mcnemar_exact(cot, direct))
    assert c.diff_vs_baseline == pytest.approx((5 - 2) / 6)
    assert c.truncation_rate == pytest.approx(1 / 7) and c.cot_style_rate == pytest.approx(3 / 7)
    assert c.mean_tokens == pytest.approx((6 * 20 + 10) / 7)
    assert c.ci_low <= c.accuracy <= c.ci_high
    assert c.repetition_rate == 0.0  # empty responses
    looped = [replace(r, response="go on go on go on go on") for r in rows]
    assert all(s.repetition_rate == pytest.approx(3 / 5) for s in summarise(looped))  # 5 four-grams, 2 distinct
    assert summarise(list(reversed(rows))) == summary  # independent of row order
    with pytest.raises(ValueError, match="repeat"):
        summarise(rows + rows[:1])


def test_recovered_gain_arithmetic():
    direct, cot = [False] * 4, [True, True, False, False]
    g = recovered_gain(direct, cot, [True, False, False, False])
    assert g.fraction == 0.5 and g.n == 4 and g.n_boot == 2000
    # a replicate holding neither item 0 nor 1 has no gain (probability 1/16): left out and counted
    assert 60 < g.dropped < 200 and 0.0 <= g.low <= 0.5 <= g.high <= 1.0
    assert recovered_gain(direct, cot, [True, False, False, False], seed=0) == g  # seeded
    same_as_cot, same_as_direct = recovered_gain(direct, cot, cot), recovered_gain(direct, cot, direct)
    assert (same_as_cot.fraction, same_as_cot.low, same_as_cot.high) == (1.0, 1.0, 1.0)
    assert (same_as_direct.fraction, same_as_direct.low, same_as_direct.high) == (0.0, 0.0, 0.0)
    beyond = recovered_gain([False, False, True], [True, False, True], [True, True, True])
    assert beyond.fraction == 2.0  # steering may recover more than the CoT prompt's gain
    loss = recovered_gain([True, True], [False, True], [False, False])  # a CoT loss: still defined; replicates
    assert loss.fraction == 2.0 and loss.dropped > 0  # without item 0 have no loss and are left out
    assert recovered_gain([True, False], [True, False], [True, True]) is None  # no gain to recover
    for bad in (([True], [True, False], [True]), ([], [], [])):
        with pytest.raises(ValueError):
            recovered_gain(*bad)
    with pytest.raises(ValueError, match="n_boot"):
        recovered_gain(direct, cot, cot, n_boot=0)


def test_recovery_rows_pair_items_per_benchmark():
    rows = []
    for i in range(4):
        rows.append(_row(f"g/{i}", "gsm8k", "direct", False))
        rows.append(_row(f"g/{i}", "gsm8k", "cot", i < 2))
        rows.append(_row(f"g/{i}", "gsm8k", "steered-single[l=2]", i == 0, mode="single", layer=2, coeff=3.0))
        rows.append(_row(f"m/{i}", "mmlu", "direct", True))
        rows.append(_row(f"m/{i}", "mmlu", "cot", True))
        rows.append(_row(f"m/{i}", "mmlu", "steered-single[l=2]", False, mode="single", layer=2, coeff=3.0))
    rows.append(_row("g/9", "gsm8k", "steered-single[l=2]", True, mode="single", layer=2, coeff=3.0))  # unpaired
    out = recovery(rows)
    assert [(r.benchmark, r.condition) for r in out] == [("gsm8k", "steered-single[l=2]"),
                                                         ("mmlu", "steered-single[l=2]"), ("all", "steered-single[l=2]")]
    gsm, mmlu, pooled = out
    assert gsm.n == 4 and (gsm.direct, gsm.cot, gsm.steered) == (0.0, 0.5, 0.25) and gsm.gain.fraction == 0.5
    assert gsm.gain == recovered_gain([False] * 4, [True, True, False, False], [True, False, False, False])
    assert gsm.p_direct == mcnemar_exact([False] * 4, [True, False, False, False])
    assert gsm.p_cot == mcnemar_exact([True, True, False, False], [True, False, False, False])
    assert mmlu.gain is None and mmlu.steered == 0.0
    assert pooled.n == 8 and pooled.gain.fraction == pytest.approx((1 - 4) / (6 - 4))
    assert recovery(list(reversed(rows))) == out
    assert recovery([r for r in rows if r.condition != "cot"]) == []


def test_sweep_grid_and_best():
    rows = []
    cells = [(1, 0.1, [True, False]), (1, 0.2, [True, True]), (2, 0.1, [True, True]), (2, 0.2, [False, False])]
    for layer, scale, correct in cells:
        key = f"steered-single[l={layer},s={scale},c={scale * 10:g}]"
        for i, c in enumerate(correct):
            rows.append(_row(f"g/{i}", "gsm8k", key, c, mode="single", layer=layer, coeff=scale * 10, scale=scale,
                             cot=(layer == 2)))
    summary = summarise(rows)
    layers, cols, grid = sweep_grid(summary, "single", "accuracy")
    assert layers == [1, 2] and cols == [0.1, 0.2] and grid == [[0.5, 1.0], [1.0, 0.0]]
    partial = [s for s in summary if not (s.layer == 1 and s.scale == 0.2)]
    assert math.isnan(sweep_grid(partial, "single", "accuracy")[2][0][1])
    best = best_steered(summary, "single")
    assert (best.layer, best.scale) == (2, 0.1)  # tie on accuracy -> higher CoT-style rate
    assert best_steered(summary, "continuous") is None


# ---------------------------------------------------------------------------
# results directory


def test_results_dir_settings_and_partial_line(tmp_path):
    out = tmp_path / "run"
    assert open_results_dir(out, {"a": 1, "gen": {"max_new_tokens": 3}}) == set()
    ev.append_items(out / ev.ITEMS_FILE, [_row("x", "gsm8k", "direct", True)])
    with open(out / ev.ITEMS_FILE, "a") as f:
        f.write('{"id": "y", "cond')  # an interrupted write
    assert open_results_dir(out, {"a": 1, "gen": {"max_new_tokens": 3}}) == {("x", "direct")}
    assert len(read_items(out)) == 1
    with pytest.raises(RunSettingsMismatch, match=r"gen.max_new_tokens: 3 \(saved\) vs 4 \(now\)"):
        open_results_dir(out, {"a": 1, "gen": {"max_new_tokens": 4}})


def test_results_dir_vector_added_later(tmp_path):
    """Unsteered rows do not depend on the vector: a baseline-only run can be completed with one."""
    out = tmp_path / "run"
    open_results_dir(out, {"a": 1, "vector": None})
    open_results_dir(out, {"a": 1, "vector": {"sha": "x"}})
    assert json.loads((out / "run.json").read_text())["settings"]["vector"] == {"sha": "x"}
    open_results_dir(out, {"a": 1, "vector": None})  # a later baseline-only invocation
    with pytest.raises(RunSettingsMismatch, match="vector.sha"):
        open_results_dir(out, {"a": 1, "vector": {"sha": "y"}})
    with pytest.raises(RunSettingsMismatch, match="a: 1"):
        open_results_dir(out, {"a": 2, "vector": None})


def test_results_dir_knows_its_vector_by_content_not_path(tmp_path):
    """A vector moved or copied elsewhere (same tensors) resumes the directory, whose record follows it."""
    out = tmp_path / "run"
    open_results_dir(out, {"a": 1, "vector": {"path": "/old/v", "tensors_sha256": "s"}})
    open_results_dir(out, {"a": 1, "vector": {"path": "/new/v", "tensors_sha256": "s"}})
    assert json.loads((out / "run.json").read_text())["settings"]["vector"]["path"] == "/new/v"
    with pytest.raises(RunSettingsMismatch, match="vector.tensors_sha256"):
        open_results_dir(out, {"a": 1, "vector": {"path": "/new/v", "tensors_sha256": "t"}})


# ---------------------------------------------------------------------------
# CLI: eval, sweep (interrupted and resumed), report


def _eval_argv(tiny_dir, vector_dir, out, *extra):
    return ["eval", "--model", str(tiny_dir), "--benchmarks", "gsm8k,mmlu,arc,agieval:logiqa-en",
            "--data-dir", str(FIXTURES), "--limit", "2", "--task-limit", "1", "--conditions", "direct,cot,steered-continuous,steered-single",
            "--vector", str(vector_dir), "--layer-continuous", "1", "--scale-continuous", "0.5",
            "--layer-single", "2", "--coeff-single", "3", "--max-new-tokens", "3", "--batch-size", "4",
            "--no-progress", "--out", str(out), *extra]


def test_eval_cli_summary_recomputed_from_items(tiny_dir, vector_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(_eval_argv(tiny_dir, vector_dir, out)) == 0
    printed = capsys.readouterr().out
    assert "steered-single (l=2, c=3" in printed and "acc % [95% CI]" in printed
    items = read_items(out / "items.jsonl")
    assert len(items) == (2 + 2 + 2 + 1) * 4 and len(ev.done_keys(items)) == len(items)
    assert {r.benchmark for r in items} == {"gsm8k", "mmlu", "arc", "agieval:logiqa-en"}
    saved = json.loads((out / "summary.json").read_text())
    assert saved["complete"] is True
    assert saved["summary"] == [x.to_dict() for x in summarise(items)]  # the summary is a function of items.jsonl alone
    run = json.loads((out / "run.json").read_text())
    assert run["settings"]["vector"]["corpus_hash"] == "test-corpus"
    assert run["settings"]["data"]["source"] == str(FIXTURES.resolve())
    assert [c["name"] for c in run["conditions"]] == ["direct", "cot", "steered-continuous", "steered-single"]
    # resuming a finished run generates nothing; other settings are refused with a clear message
    assert main(_eval_argv(tiny_dir, vector_dir, out)) == 0
    assert len(read_items(out / "items.jsonl")) == len(items)
    assert main(_eval_argv(tiny_dir, vector_dir, out, "--seed", "1")) == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "generation.seed: 0 (saved) vs 1 (now)" in err
    with pytest.raises(SystemExit):  # argparse: --coeff-single and --scale-single exclude each other
        main(_eval_argv(tiny_dir, vector_dir, tmp_path / "bad", "--scale-single", "1"))
    assert main(_eval_argv(tiny_dir, vector_dir, tmp_path / "bad", "--conditions", "steered-continuous",
                           "--layer-continuous", "7")) == 2


def _sweep_argv(tiny_dir, vector_dir, out):
    return ["sweep", "--model", str(tiny_dir), "--benchmarks", "gsm8k@train,arc", "--data-dir", str(FIXTURES),
            "--limit", "3", "--vector", str(vector_dir), "--layers", "1,2", "--scales-continuous", "0.5,1",
            "--coeffs-single", "2,4", "--max-new-tokens", "3", "--batch-size", "2", "--no-progress",
            "--no-png", "--out", str(out)]


def test_sweep_interrupted_and_resumed(tiny_dir, vector_dir, tmp_path, monkeypatch):
    real = BridgeEngine.generate
    calls = []

    def counting(self, prompts, config, **kw):
        calls.append(len(prompts))
        return real(self, prompts, config, **kw)

    def interrupting(self, prompts, config, **kw):
        if len(calls) == 7:
            raise KeyboardInterrupt
        return counting(self, prompts, config, **kw)

    n_items, n_conds = 6, 1 + 2 * 2 * 2
    monkeypatch.setattr(BridgeEngine, "generate", counting)
    full = tmp_path / "full"
    assert main(_sweep_argv(tiny_dir, vector_dir, full)) == 0
    assert sum(calls) == n_items * n_conds
    calls.clear()

    out = tmp_path / "resumed"
    monkeypatch.setattr(BridgeEngine, "generate", interrupting)
    assert main(_sweep_argv(tiny_dir, vector_dir, out)) == 130
    first = read_items(out / "items.jsonl")
    assert len(first) == sum(calls) == 7 * 2
    assert json.loads((out / "summary.json").read_text())["complete"] is False
    monkeypatch.setattr(BridgeEngine, "generate", counting)
    assert main(_sweep_argv(tiny_dir, vector_dir, out)) == 0
    assert sum(calls) == n_items * n_conds  # nothing generated twice
    rows = read_items(out / "items.jsonl")
    assert len(rows) == len(ev.done_keys(rows)) == n_items * n_conds
    assert _strip(rows) == _strip(read_items(full / "items.jsonl"))
    a, b = (json.loads((d / "summary.json").read_text()) for d in (out, full))
    strip_time = lambda s: [{k: v for k, v in x.items() if k not in ("gen_seconds", "tokens_per_second")}
                            for x in s["summary"]]
    assert strip_time(a) == strip_time(b) and a["complete"] and set(a["best"]) == {"continuous", "single"}
    run = json.loads((out / "run.json").read_text())
    assert [i["completed"] for i in run["invocations"]] == [False, True]
    assert run["settings"]["data"]["benchmarks"] == ["gsm8k@train", "arc"]
    assert all(r.id.startswith(("gsm8k/train/", "arc/")) for r in rows)
    html = sorted(p.name for p in (out / "heatmaps").glob("*.html"))
    assert "all-continuous-accuracy.html" in html and "gsm8k-single-cot_style_rate.html" in html


def test_report_from_runs(tiny_dir, vector_dir, tmp_path):
    ev_dir, sw_dir = tmp_path / "eval", tmp_path / "sweep"
    assert main(_eval_argv(tiny_dir, vector_dir, ev_dir)) == 0
    assert main(_sweep_argv(tiny_dir, vector_dir, sw_dir)) == 0
    doc = tmp_path / "docs" / "results.md"
    copies = tmp_path / "docs" / "results"
    assert main(["report", "--eval", str(ev_dir), "--sweep", str(sw_dir), "--out", str(doc),
                 "--copy-summaries", str(copies), "--note", "Sizes were cut to fit the time."]) == 0
    text = doc.read_text()
    assert "## Notes\n\nSizes were cut to fit the time.\n" in text and "--note 'Sizes were cut" in text
    assert "The vector was derived on 0 questions" in text
    assert "| benchmark | condition |" in text and "steered-continuous (l=1" in text
    assert "meta-llama/Meta-Llama-3-8B-Instruct" in text and "layer 16, c = 20" in text and "layer 10, c = 0.5" in text
    assert "## Grid search" in text and "Selection rule" in text and "Wall time" in text
    # every benchmark group has one recovery row per steered condition (the tiny model gains nothing from CoT)
    section = text.split("## How much of the CoT prompt's gain steering recovers")[1].split("\n## ")[0]
    assert section.count("| steered-continuous (l=1") == section.count("| steered-single (l=2") == 5  # 4 + all
    assert (copies / "eval-summary.json").is_file() and (copies / "sweep-run.json").is_file()
    assert "results/eval-summary.json" in text
    assert main(["report", "--eval", str(tmp_path / "nope"), "--out", str(doc)]) == 2


def run_source(run_dir) -> str:
    return json.loads((Path(run_dir) / "run.json").read_text())["settings"]["data"]["source"]


def test_report_shows_paths_relative_to_the_repository(tiny_dir, vector_dir, tmp_path, monkeypatch):
    """Committed documents name the vector and the data relative to where the report is run (the
    repository root), also inside the copied run.json; paths elsewhere stay as they are."""
    from lens_steer.viz.report import shown_path

    assert shown_path("/r/repo/runs/v", "/r/repo") == "runs/v"
    assert shown_path("/r/shared/data", "/r/repo") == "../shared/data"
    assert shown_path("/elsewhere/deep/data", "/r/repo") == "/elsewhere/deep/data"
    assert shown_path("hub", "/r/repo") == "hub" and shown_path("runs/v", "/r/repo") == "runs/v"
    repo = tmp_path / "repo"
    repo.mkdir()
    ev_dir = repo / "runs" / "eval"
    assert main(_eval_argv(tiny_dir, vector_dir, ev_dir)) == 0
    monkeypatch.chdir(repo)
    assert main(["report", "--eval", "runs/eval", "--out", "docs/results.md", "--copy-summaries", "docs/results"]) == 0
    text = (repo / "docs" / "results.md").read_text()
    run = json.loads((repo / "docs" / "results" / "eval-run.json").read_text())
    shown = run["settings"]["vector"]["path"], run["settings"]["data"]["source"]
    assert f"- Steering vector: `{shown[0]}`" in text and f"data from `{shown[1]}`" in text
    assert shown[0] == shown_path(vector_dir, repo) and shown[1] == shown_path(run_source(ev_dir), repo)
    assert not os.path.isabs(shown_path(repo / "runs" / "v", repo))


def test_sigterm_stops_cleanly(tiny_dir, vector_dir, tmp_path, monkeypatch):
    """`kill PID` on a background run (which ignores SIGINT) stops it like Ctrl-C: rows kept, run recorded."""
    import os
    import signal

    real, calls, snapshots = BridgeEngine.generate, [], []
    out = tmp_path / "eval"

    def terminating(self, prompts, config, **kw):
        calls.append(len(prompts))
        if len(calls) == 2:
            # what a run killed outright here (SIGKILL, a restart) would leave behind
            snapshots.append(json.loads((out / "run.json").read_text()))
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, prompts, config, **kw)

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(BridgeEngine, "generate", terminating)
    assert main(_eval_argv(tiny_dir, vector_dir, out)) == 130
    (killed,) = snapshots[0]["invocations"]
    assert killed["completed"] is False and killed["new_rows"] == calls[0] and killed["eval_seconds"] > 0
    assert signal.getsignal(signal.SIGTERM) is before
    run = json.loads((out / "run.json").read_text())
    assert run["invocations"][-1]["completed"] is False
    assert 0 < len(read_items(out)) <= calls[0]
