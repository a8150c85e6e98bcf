"""Steering specs in evaluation: conditions keyed as before for the paper's modes (so results directories resume),
``steered`` conditions for every other spec, their rows and sweeps, refusals before anything runs, and the eval /
sweep / report CLI with ``--schedule`` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lens_steer.cli import main
from lens_steer.config import GenerationConfig
from lens_steer.data.registry import load_benchmark
from lens_steer.engines.api import as_engine
from lens_steer.engines.registry import CapabilityError
from lens_steer.eval.conditions import Condition, steered_condition, sweep_conditions
from lens_steer.eval.evaluate import check_conditions, evaluate
from lens_steer.eval.results import summarise
from lens_steer.eval.results_dir import read_items, read_run
from lens_steer.eval.sweep import best_steered, sweep_grid
from lens_steer.method.vectors import SteeringVector, VectorMetadata
from lens_steer.models import model_info

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "data"
LEGACY = Path(__file__).resolve().parents[2] / "fixtures" / "legacy"
CFG = GenerationConfig(max_new_tokens=4, batch_size=2)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def vector(tiny):
    info = model_info(tiny)
    meta = VectorMetadata(model_id=info.model_id, model_fingerprint=info.fingerprint, n_layers=info.n_layers,
                          d_model=info.d_model, corpus_hash="spec-test")
    g = torch.Generator().manual_seed(0)
    return SteeringVector(directions=torch.randn(info.n_layers, info.d_model, generator=g), metadata=meta,
                          resid_norm=torch.full((info.n_layers,), 4.0))


@pytest.fixture(scope="module")
def examples():
    return load_benchmark("gsm8k", data_dir=FIXTURES)[:2] + load_benchmark("arc", data_dir=FIXTURES)[:1]


def test_legacy_condition_keys_are_unchanged():
    """Every condition recorded by the old code reads back with the key its rows carry, and building the same
    condition today gives the same key (results directories are resumed by key)."""
    run = json.loads((LEGACY / "eval-full-reference" / "run.json").read_text())
    rows = [json.loads(line) for line in (LEGACY / "eval-full-reference" / "items.jsonl").read_text().splitlines()]
    for saved in run["conditions"]:
        cond = Condition.from_dict(saved)
        assert cond.key == saved["key"] and cond.to_dict() == saved
        if cond.steered:
            again = steered_condition(None, cond.mode, cond.layer, coeff=cond.coeff)
            assert again.name == cond.name and again.mode == cond.mode
            assert again.key == f"{cond.name}[l={cond.layer},c={cond.coeff:.6g}]"
    assert {r["condition"] for r in rows} == {c["key"] for c in run["conditions"]}
    assert steered_condition(None, "single", 15, coeff=12.5).key == "steered-single[l=15,c=12.5]"
    assert steered_condition(None, "at=prompt", 15, coeff=12.5).key == "steered-single[l=15,c=12.5]"


def test_steered_conditions_for_any_spec(vector):
    c = steered_condition(vector, "op=clamp, at=first:4", 2, scale=0.5)
    assert c.name == "steered" and c.mode == "at=first:4,op=clamp" and c.style == "direct"
    assert c.key == f"steered[l=2,s=0.5,c={c.coeff:.6g};at=first:4,op=clamp]"
    assert Condition.from_dict(c.to_dict()) == c and "at=first:4,op=clamp" in c.label()
    cot = steered_condition(vector, "op=ablate", 2, coeff=1.0, style="cot")
    assert cot.key == "steered[l=2,c=1;style=cot;op=ablate]" and cot.scale is None
    preset_on_cot = steered_condition(vector, "continuous", 2, coeff=1.0, style="cot")
    assert preset_on_cot.name == "steered" and preset_on_cot.key.endswith(";style=cot;continuous]")
    with pytest.raises(ValueError, match="op=ablate takes a coefficient"):
        steered_condition(vector, "op=ablate", 2, scale=0.5)
    with pytest.raises(ValueError, match="is the condition 'steered-single'"):
        Condition("steered", "direct", layer=1, coeff=1.0, mode="single")
    with pytest.raises(ValueError, match="op: unknown operator 'mul'"):
        Condition("steered", "direct", layer=1, coeff=1.0, mode="op=mul")
    with pytest.raises(ValueError, match="needs a mode"):
        Condition("steered", "cot", layer=1, coeff=1.0)
    grid = sweep_conditions(vector, [1, 2], ["single", "at=first:4", "at=trigger:x"],
                            coeffs={"at=prompt": [1.0], "at=first:4": [1.0, 2.0]}, scales={"at=trigger:x": [0.5]})
    assert [(c.name, c.mode, c.layer) for c in grid] == [
        ("steered-single", "single", 1), ("steered-single", "single", 2)] + [
        ("steered", "at=first:4", 1)] * 2 + [("steered", "at=first:4", 2)] * 2 + [
        ("steered", "at=trigger:x", 1), ("steered", "at=trigger:x", 2)]
    assert len({c.key for c in grid}) == len(grid)


def test_evaluate_rows_carry_the_spec_and_steer(tiny, vector, examples):
    conds = [Condition.baseline("direct"), steered_condition(vector, "continuous", 1, coeff=4.0),
             steered_condition(vector, "at=first:2", 1, coeff=4.0),
             steered_condition(vector, "at=trigger:x,op=add-norm", 1, coeff=4.0, style="cot")]
    rows = evaluate(tiny, examples, conds, CFG, vector, progress=False)
    by = {c.key: [r for r in rows if r.condition == c.key] for c in conds}
    assert [r.mode for r in by[conds[2].key]] == ["at=first:2"] * 3 and {r.style for r in by[conds[3].key]} == {"cot"}
    responses = {k: [r.response for r in sorted(v, key=lambda r: r.id)] for k, v in by.items()}
    assert responses[conds[2].key] != responses[conds[0].key]  # first:2 changed the direct answers
    assert responses[conds[2].key] != responses[conds[1].key]  # and differently from continuous
    summary = summarise(rows)
    assert [s.name for s in summary if s.benchmark == "all"] == ["direct", "steered-continuous", "steered", "steered"]
    assert sweep_grid(summary, "at=first:2", "accuracy")[0] == [1]
    assert best_steered(summary, "at=first:2").condition == conds[2].key
    assert best_steered(summary, "at=first:2") is best_steered(summary, "at=first:2,op=add")


def test_refused_before_anything_runs(tiny, vector, examples, presets_only):
    class PresetsOnly:
        name = "presets-only"

        def __init__(self, inner):
            self.inner, self.calls = inner, 0

        def __getattr__(self, item):
            return getattr(self.inner, item)

        def generate(self, *a, **k):
            self.calls += 1
            return self.inner.generate(*a, **k)

    engine = PresetsOnly(as_engine(tiny))
    ok = [Condition.baseline("direct"), steered_condition(vector, "single", 1, coeff=1.0)]
    check_conditions(engine, ok, vector)
    bad = ok + [steered_condition(vector, "at=window:1-3", 1, coeff=1.0)]
    with pytest.raises(CapabilityError, match=r"^the presets-only engine cannot steer a window of generated tokens "
                                              r"\(at=window\), which condition steered\[l=1,.*\] needs; "
                                              r"use --engine bridge or --engine vllm$"):
        evaluate(engine, examples, bad, CFG, vector, progress=False)
    assert engine.calls == 0
    with pytest.raises(ValueError, match=r"^condition steered\[l=1,s=.*,c=1;at=trigger:é\]: at: trigger 'é' is not "
                                         r"made of the model's tokens"):
        evaluate(tiny, examples, ok + [steered_condition(vector, "at=trigger:é", 1, coeff=1.0)], CFG, vector,
                 progress=False)


# ---------------------------------------------------------------- the CLI

@pytest.fixture(scope="module")
def vector_dir(vector, tmp_path_factory):
    return vector.save(tmp_path_factory.mktemp("vec") / "v")


def _argv(command, tiny_dir, vector_dir, out, *extra):
    return [command, "--model", str(tiny_dir), "--benchmarks", "gsm8k,arc", "--data-dir", str(FIXTURES),
            "--limit", "2", "--vector", str(vector_dir), "--max-new-tokens", "3", "--batch-size", "2",
            "--no-progress", "--out", str(out), *extra]


def test_eval_with_schedules_runs_resumes_and_reports(tiny_dir, vector_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    argv = _argv("eval", tiny_dir, vector_dir, out, "--conditions", "direct,steered-single", "--layer-single", "2",
                 "--coeff-single", "3", "--schedule", "at=first:2", "--schedule", r"at=trigger:x|\\,op=clamp",
                 "--schedule", "single", "--layer", "1", "--scale", "0.5")
    assert main(argv) == 0
    run = read_run(out)
    keys = [c.key for c in run.conditions]
    assert keys[0] == "direct" and keys[1].startswith("steered-single[l=2,") and keys[1].endswith(",c=3]")
    assert [c.mode for c in run.conditions[2:]] == ["at=first:2", r"at=trigger:x|\\,op=clamp", "single"]
    assert keys[4].startswith("steered-single[l=1,s=0.5,")  # a preset given as a schedule is the preset's condition
    rows = read_items(out)
    assert len(rows) == 4 * 5 and {r.condition for r in rows} == set(keys)
    assert main(argv) == 0  # resumed: nothing to do
    assert len(read_items(out)) == 4 * 5 and "20 of 20 already" in capsys.readouterr().err
    doc = tmp_path / "results.md"
    assert main(["report", "--eval", str(out), "--out", str(doc)]) == 0
    assert "at=first:2" in doc.read_text()


def test_sweep_grids_over_position_kinds(tiny_dir, vector_dir, tmp_path):
    out = tmp_path / "sweep"
    assert main(_argv("sweep", tiny_dir, vector_dir, out, "--layers", "1,2", "--modes", "continuous",
                      "--scales-continuous", "0.5", "--schedule", "at=first:2", "--schedule", "at=region:x..B",
                      "--schedule", "single,op=ablate", "--coeffs", "1,2", "--no-png")) == 0
    run = read_run(out)
    assert [c.mode for c in run.conditions if c.steered] == ["continuous"] * 2 + ["at=first:2"] * 4 + [
        "at=region:x..B"] * 4 + ["at=prompt,op=ablate"] * 4
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["best"]) == {"continuous", "at=first:2", "at=region:x..B", "at=prompt,op=ablate"}
    doc = tmp_path / "sweep.md"
    assert main(["report", "--eval", str(out), "--sweep", str(out), "--out", str(doc)]) == 0
    text = doc.read_text()
    assert "- at=region:x..B: layer " in text and "- at=prompt,op=ablate: layer " in text  # no scale: c only
    assert "steered (l=1, c=1, at=prompt,op=ablate)" in text
    html = sorted(p.name for p in (out / "heatmaps").glob("*.html"))
    slug = next(n for n in html if n.startswith("all-at=region")).removeprefix("all-").removesuffix("-accuracy.html")
    assert "/" not in slug and f"all-{slug}-cot_style_rate.html" in html and "all-continuous-accuracy.html" in html


@pytest.mark.parametrize(("flags", "message"), [
    (["--schedule", "at=window:5-3"], "--schedule 'at=window:5-3': at: window 5-3 is empty"),
    (["--schedule", "op=mul"], "--schedule 'op=mul': op: unknown operator 'mul'"),
    (["--schedule", "at=first:2"], "--schedule needs --vector, --layer and --coeff or --scale"),
    (["--schedule", "at=trigger:é", "--layer", "1", "--coeff", "1"],
     ";at=trigger:é]: at: trigger 'é' is not made of the model's tokens"),
    (["--schedule", "at=region:<think>..</think>", "--layer", "1", "--coeff", "1"],
     "at: region marker '<think>' is not in the model's vocabulary"),
    (["--schedule", "at=first:2", "--layer", "1", "--coeff", "1", "--engine", "presets-only"],
     "the presets-only engine cannot steer the first k generated tokens (at=first), which --schedule needs; use "
     "--engine bridge or --engine vllm"),
])
def test_bad_schedules_are_one_line_exit_2(tiny_dir, vector_dir, tmp_path, capsys, presets_only, flags, message):
    out = tmp_path / "bad"
    assert main(_argv("eval", tiny_dir, vector_dir, out, "--conditions", "direct", *flags)) == 2
    err = capsys.readouterr().err.replace("\r", "\n")  # after the model loads, its progress bar comes first
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("lens-steer eval: error: ") and message in errors[0], err
    assert not (out / "items.jsonl").exists() and not (out / "run.json").exists()  # refused before any row
