"""lm-evaluation-harness 0.4.13 reads lens_steer's `lm-eval` export: its `steered` model (`SteeredModel`, an
HFLM over the de-quantised embedded model) gives the logits of lens_steer's continuous steering, and runs
a multiple-choice task steered (the local ARC-Challenge task in lm_eval_tasks/, offline)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from interop_common import LAYER, all_logits, coeff, cot_vector, hf_dir, need, prompts  # noqa: F401 (fixtures)
from lens_steer.engines.api import steer
from lens_steer.interop import export_vector

TASKS = Path(__file__).parent / "lm_eval_tasks"
REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.interop
need("lm_eval")



@pytest.fixture(scope="module")
def steer_file(cot_vector, coeff, tmp_path_factory):
    path = tmp_path_factory.mktemp("lm-eval") / "cot.pt"
    export_vector(cot_vector, path, "lm-eval", layers=[LAYER], coeff=coeff)
    return path


@pytest.fixture(scope="module")
def steered_lm(hf_dir, steer_file):
    need("lm_eval")
    from lm_eval.models.hf_steered import SteeredModel

    return SteeredModel(pretrained=str(hf_dir), steer_path=str(steer_file), device="cpu", dtype="float32",
                        batch_size=8)


def test_steered_model_logits_equal_lens_steer(steered_lm, smol, cot_vector, coeff, prompts):
    worst, moved = 0.0, 0.0
    for ids in prompts:
        theirs = steered_lm._model_call(torch.tensor([ids]))[0].double()
        with steer(smol, cot_vector, LAYER, coeff):
            ours = all_logits(smol, ids)
        plain = all_logits(smol, ids)
        worst = max(worst, float((theirs - ours).abs().max()))
        moved = max(moved, float((ours - plain).abs().max()))
        torch.testing.assert_close(theirs, ours, atol=2e-4, rtol=1e-5)
    print(f"\nlm-eval SteeredModel vs lens_steer steer (layer {LAYER}, c={coeff:.3f}), every position of 8 prompts: "
          f"max |logit difference| {worst:.2e}; steering moved logits by up to {moved:.2f}")
    assert moved > 1.0  # the comparison is between steered runs, not two unsteered ones


def test_steered_task_runs_offline(steered_lm, shared_data, monkeypatch):
    lm_eval = need("lm_eval")
    from lm_eval.tasks import TaskManager

    monkeypatch.chdir(REPO)  # the task file names ../shared/data relative to the repository root
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    if not (REPO.parent / "shared" / "data" / "arc" / "ARC-Challenge-Test.jsonl").is_file():
        pytest.skip("../shared/data/arc/ARC-Challenge-Test.jsonl is not beside this checkout")
    out = lm_eval.simple_evaluate(model=steered_lm, tasks=["lens_steer_arc_challenge_local"],
                                  task_manager=TaskManager(include_path=str(TASKS)), limit=16, random_seed=0)
    res = out["results"]["lens_steer_arc_challenge_local"]
    print(f"\nlm-eval steered on 16 ARC-Challenge test items: acc {res['acc,none']:.3f}, "
          f"acc_norm {res['acc_norm,none']:.3f}")
    assert 0.0 <= res["acc,none"] <= 1.0 and len(out["samples"]["lens_steer_arc_challenge_local"]) == 16
