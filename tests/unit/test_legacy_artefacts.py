"""Artefacts written by the code before the redesign still load and resume (tests/fixtures/legacy)."""

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import torch

from lens_steer.cli import main
from lens_steer.eval.results_dir import read_items
from lens_steer.method.vectors import SteeringVector

LEGACY = Path(__file__).resolve().parents[1] / "fixtures" / "legacy"
DATA = Path(__file__).resolve().parents[1] / "fixtures" / "data"
FIXTURE_TRANSFORMERS = "5.23.0"
"""transformers version the legacy fixtures were made with (tests/fixtures/legacy/README.md)."""


def _strip(rows):
    return sorted(({k: v for k, v in asdict(r).items() if k != "gen_seconds"} for r in rows),
                  key=lambda r: (r["id"], r["condition"]))


def test_legacy_vector_loads_and_fits_the_model(tiny):
    vec = SteeringVector.load(LEGACY / "vector", model=tiny)
    assert vec.directions.shape == (4, 64) and vec.per_question.shape[0] == 3
    assert vec.source is not None and vec.source.n_questions == 3
    assert torch.isfinite(vec.directions).all()


def test_legacy_half_eval_resumes_to_the_uninterrupted_result(tiny_dir, tmp_path):
    out = tmp_path / "eval-half"
    vector = tmp_path / "vector"
    shutil.copytree(LEGACY / "eval-half", out)
    shutil.copytree(LEGACY / "vector", vector)
    # The run was made on another machine; here the same files live at other paths.
    run = json.loads((out / "run.json").read_text())
    settings = run["settings"]
    settings["model"]["model_id"] = str(tiny_dir)
    settings["vector"]["path"] = str(vector.resolve())
    settings["data"]["source"] = str(DATA.resolve())
    (out / "run.json").write_text(json.dumps(run, indent=2))
    argv = json.loads((LEGACY / "eval-argv.json").read_text())
    swap = {"/tmp/legacy-tiny": str(tiny_dir), "/work/main/tests/fixtures/data": str(DATA),
            "/work/main/tests/fixtures/legacy/vector": str(vector), "/work/main/tests/fixtures/legacy/eval-half": str(out)}
    before = len(read_items(out))
    assert main([swap.get(a, a) for a in argv]) == 0
    rows = read_items(out)
    reference = read_items(LEGACY / "eval-full-reference")
    assert before < len(rows) == len(reference)
    assert _strip(rows) == _strip(reference)
    summary = json.loads((out / "summary.json").read_text())
    ref_summary = json.loads((LEGACY / "eval-full-reference" / "summary.json").read_text())
    drop = ("gen_seconds", "tokens_per_second")
    assert [{k: v for k, v in s.items() if k not in drop} for s in summary["summary"]] == [
        {k: v for k, v in s.items() if k not in drop} for s in ref_summary["summary"]]


def test_same_settings_give_the_bit_identical_vector(tiny_dir, tmp_path):
    """Derive again what the old code derived (same model, questions, settings): the same bits."""
    legacy = SteeringVector.load(LEGACY / "vector")
    meta = legacy.metadata
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps({"id": i, "question": q}) + "\n"
                                 for i, q in zip(meta.question_ids, meta.questions)))
    out = tmp_path / "again"
    assert main(["derive", "--model", str(tiny_dir), "--questions", str(questions), "--out", str(out),
                 "--max-new-tokens", str(meta.generation["max_new_tokens"]), "--no-progress"]) == 0
    again = SteeringVector.load(out)
    import transformers

    if transformers.__version__ == FIXTURE_TRANSFORMERS:  # the environment the fixture was made in: same bits
        assert torch.equal(again.directions, legacy.directions)
        assert torch.equal(again.per_question, legacy.per_question)
    else:  # e.g. the .venv after `make setup-vllm` (transformers 5.19): other kernels, float rounding only
        torch.testing.assert_close(again.directions, legacy.directions, rtol=0, atol=1e-6)
        torch.testing.assert_close(again.per_question, legacy.per_question, rtol=0, atol=1e-6)
    assert again.metadata.corpus_hash == meta.corpus_hash
