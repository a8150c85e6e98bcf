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


def _strip(rows):
    return sorted(({k: v for k, v in asdict(r).items() if k != "gen_seconds"} for r in rows),
                  key=lambda r: (r["id"], r["condition"]))


def test_legacy_vector_loads_and_fits_the_model(tiny):
    vec = SteeringVector.load(LEGACY / "vector", model=tiny)
    assert vec.directions.shape == (4, 64) and vec.per_question.shape[0] == 3
    assert vec.source is not None and vec.source.n_questions == 3
    assert torch.isfinite(vec.directions).all()


GREEDY_MARGIN = 1e-3
"""Smallest top-1 minus top-2 logit gap allowed in the greedy choices of the resumed rows (the smallest seen is
1.4e-3). The reference rows were generated on another machine; rounding differences between CPUs move these
float32 logits by ~1e-5 at most, so a gap above this makes every greedy choice machine-independent and exact
row equality a sound check, not a lucky one."""


def test_legacy_half_eval_resumes_to_the_uninterrupted_result(tiny_dir, tmp_path, monkeypatch):
    from lens_steer.engines import bridge as bridge_engine

    gaps = []
    next_token = bridge_engine.next_token

    def recording(logits, cfg, gen):
        top = logits.float().topk(2, dim=-1).values
        gaps.append(float((top[:, 0] - top[:, 1]).min()))
        return next_token(logits, cfg, gen)

    monkeypatch.setattr(bridge_engine, "next_token", recording)
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
    assert gaps and min(gaps) > GREEDY_MARGIN, f"a greedy choice is within {min(gaps):.2e} of a tie"
    assert _strip(rows) == _strip(reference)
    summary = json.loads((out / "summary.json").read_text())
    ref_summary = json.loads((LEGACY / "eval-full-reference" / "summary.json").read_text())
    drop = ("gen_seconds", "tokens_per_second", "repetition_rate")  # the last: summarised since the fixture
    assert [{k: v for k, v in s.items() if k not in drop} for s in summary["summary"]] == [
        {k: v for k, v in s.items() if k not in drop} for s in ref_summary["summary"]]


def test_legacy_results_report(tmp_path):
    """A results directory of the old code reads back typed and reports (no model needed)."""
    from lens_steer.eval.results_dir import read_run

    run = read_run(LEGACY / "eval-full-reference")
    assert run.settings.generation.max_new_tokens == 3 and run.settings.model.n_layers == 4
    assert [c.key for c in run.conditions][:2] == ["direct", "cot"]
    out = tmp_path / "report.md"
    assert main(["report", "--eval", str(LEGACY / "eval-full-reference"), "--out", str(out)]) == 0
    text = out.read_text()
    assert "steered-single" in text and "max_new_tokens 3" in text


def _derive_again(tiny_dir, meta, questions, out) -> SteeringVector:
    assert main(["derive", "--model", str(tiny_dir), "--questions", str(questions), "--out", str(out),
                 "--max-new-tokens", str(meta.generation.max_new_tokens), "--no-progress"]) == 0
    return SteeringVector.load(out)


def test_same_settings_give_the_same_vector(tiny_dir, tmp_path):
    """Derive again what the old code derived (same model, questions, settings).

    Bit-identity is a promise on one machine: two derivations here give the same bytes. The fixture was
    made on another machine, whose CPU kernels may round differently (AVX2 vs AVX-512 differ in the 8th
    significant digit), so against it the check is a tolerance that still catches a changed definition:
    per-layer cosine >= 0.999999 and max |delta| <= 1e-5 of max |v| (a changed template, position set or
    averaging moves the vector by far more; see tests/fixtures/legacy/README.md).
    """
    legacy = SteeringVector.load(LEGACY / "vector")
    meta = legacy.metadata
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps({"id": i, "question": q}) + "\n"
                                 for i, q in zip(meta.question_ids, meta.questions)))
    again = _derive_again(tiny_dir, meta, questions, tmp_path / "again")
    twice = _derive_again(tiny_dir, meta, questions, tmp_path / "twice")
    assert torch.equal(again.directions, twice.directions)  # this machine: the same bits
    assert torch.equal(again.per_question, twice.per_question)
    assert again.metadata.corpus_hash == meta.corpus_hash
    assert again.metadata.question_ids == meta.question_ids
    for ours, theirs in ((again.directions, legacy.directions), (again.per_question, legacy.per_question)):
        assert ours.shape == theirs.shape
        cos = torch.nn.functional.cosine_similarity(ours.flatten(0, -2), theirs.flatten(0, -2), dim=-1)
        assert cos.min() >= 0.999999, cos
        assert (ours - theirs).abs().max() <= 1e-5 * theirs.abs().max()


def test_the_tolerance_catches_a_changed_definition(tiny_dir, tmp_path):
    """The cross-machine tolerance above is not loose: prompt positions instead of generated ones (a changed
    definition) fail it."""
    legacy = SteeringVector.load(LEGACY / "vector")
    meta = legacy.metadata
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps({"id": i, "question": q}) + "\n"
                                 for i, q in zip(meta.question_ids, meta.questions)))
    out = tmp_path / "prompt"
    assert main(["derive", "--model", str(tiny_dir), "--questions", str(questions), "--out", str(out),
                 "--max-new-tokens", str(meta.generation.max_new_tokens), "--positions", "prompt",
                 "--no-progress"]) == 0
    other = SteeringVector.load(out).directions
    cos = torch.nn.functional.cosine_similarity(other, legacy.directions, dim=-1)
    assert cos.min() < 0.999999 or (other - legacy.directions).abs().max() > 1e-5 * legacy.directions.abs().max()
