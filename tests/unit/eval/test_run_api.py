"""An eval and a sweep through the Python API alone (no CLI): run, interrupt, resume, and get the
same rows and summary as an uninterrupted run."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from lens_steer.config import GenerationConfig
from lens_steer.engines.bridge import BridgeEngine
from lens_steer.eval import Condition, DataSettings, EvalRun, RunSettings, steered_condition, sweep_conditions
from lens_steer.eval.results_dir import read_items, read_run, read_summary
from lens_steer.method.vectors import SteeringVector, VectorMetadata
from lens_steer.models import model_info

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "data"
DATA = DataSettings(benchmarks=("gsm8k", "arc"), limit=3, seed=0, data_dir=str(FIXTURES))
GEN = GenerationConfig(max_new_tokens=3, batch_size=2)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def vector(tiny, tmp_path_factory):
    info = model_info(tiny)
    meta = VectorMetadata(model_id=info.model_id, model_fingerprint=info.fingerprint, n_layers=info.n_layers,
                          d_model=info.d_model, corpus_hash="api-test")
    g = torch.Generator().manual_seed(1)
    vec = SteeringVector(directions=torch.randn(info.n_layers, info.d_model, generator=g), metadata=meta,
                         resid_norm=torch.full((info.n_layers,), 4.0))
    return SteeringVector.load(vec.save(tmp_path_factory.mktemp("vec") / "v"))


def _strip(rows):
    return sorted(({k: v for k, v in asdict(r).items() if k != "gen_seconds"} for r in rows),
                  key=lambda r: (r["id"], r["condition"]))


def _untimed(summary):
    return [{k: v for k, v in s.to_dict().items() if k not in ("gen_seconds", "tokens_per_second")} for s in summary]


def _interrupt_after(monkeypatch, n_calls: int) -> list[int]:
    real = BridgeEngine.generate
    calls: list[int] = []

    def generate(self, prompts, config, **kw):
        if len(calls) == n_calls:
            raise KeyboardInterrupt
        calls.append(len(prompts))
        return real(self, prompts, config, **kw)

    monkeypatch.setattr(BridgeEngine, "generate", generate)
    return calls


@pytest.mark.parametrize("command", ["eval", "sweep"])
def test_run_interrupt_resume_through_the_api(tiny, vector, tmp_path, monkeypatch, command):
    if command == "eval":
        conditions = (Condition.baseline("direct"), Condition.baseline("cot"),
                      steered_condition(vector, "continuous", 1, coeff=2.0))
    else:
        conditions = (Condition.baseline("direct"),
                      *sweep_conditions(vector, [1, 2], ["continuous", "single"], scales={"continuous": [0.5],
                                                                                          "single": [1.0]}))
    settings = RunSettings(command=command, data=DATA, conditions=conditions, generation=GEN)

    full = EvalRun(tmp_path / "full", settings, tiny, vector, argv=["api"]).run(progress=False, log=False)
    assert full.completed and full.new_rows == 6 * len(conditions)

    calls = _interrupt_after(monkeypatch, 2)
    out = tmp_path / "resumed"
    first = EvalRun(out, settings, tiny, vector, argv=["api"]).run(progress=False, log=False)
    assert not first.completed and first.new_rows == sum(calls) == 4
    assert json.loads((out / "summary.json").read_text())["complete"] is False
    assert read_run(out).invocations[-1].completed is False

    monkeypatch.undo()
    second = EvalRun(out, settings, tiny, vector, argv=["api"]).run(progress=False, log=False)
    assert second.completed and second.new_rows == 6 * len(conditions) - 4
    assert _strip(read_items(out / "items.jsonl")) == _strip(read_items(tmp_path / "full" / "items.jsonl"))
    assert _untimed(second.summary) == _untimed(full.summary)
    record = read_run(out)
    assert [i.completed for i in record.invocations] == [False, True] and record.invocations[0].argv == ["api"]
    assert record.settings.vector.path == vector.source.path and record.settings.data.n_items == 6
    if command == "sweep":
        assert set(second.best) == {"continuous", "single"} and _untimed(second.best.values()) == _untimed(full.best.values())
        _, extra = read_summary(out)
        assert set(extra["best"]) == {"continuous", "single"}


def test_run_refuses_changed_settings_and_unsaved_vectors(tiny, vector, tmp_path):
    settings = RunSettings(command="eval", data=DATA, conditions=(Condition.baseline("direct"),), generation=GEN)
    EvalRun(tmp_path / "r", settings, tiny).run(progress=False, log=False)
    longer = RunSettings(command="eval", data=DATA, conditions=settings.conditions,
                         generation=GenerationConfig(max_new_tokens=4, batch_size=2))
    with pytest.raises(ValueError, match="max_new_tokens"):
        EvalRun(tmp_path / "r", longer, tiny).run(progress=False, log=False)
    unsaved = SteeringVector(directions=vector.directions, metadata=vector.metadata, resid_norm=vector.resid_norm)
    steered = RunSettings(command="eval", data=DATA, conditions=(steered_condition(vector, "single", 1, coeff=1.0),),
                          generation=GEN)
    with pytest.raises(ValueError, match="SteeringVector.load"):
        EvalRun(tmp_path / "s", steered, tiny, unsaved).run(progress=False, log=False)
    with pytest.raises(ValueError, match="need a vector"):
        EvalRun(tmp_path / "t", steered, tiny)
