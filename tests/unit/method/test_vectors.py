"""SteeringVector save/load round trip, corrupt files, model mismatch; derive on the tiny model."""

import json
import re

import pytest
import torch

from conftest import make_tiny_bridge
from lens_steer.method.derive import as_questions, derive_cot_vector
from lens_steer.config import GenerationConfig
from lens_steer.engines.api import steer
from lens_steer.method.vectors import ModelMismatchError, SteeringVector, VectorFileError

QUESTIONS = [
    {"id": "a", "question": "What is 3 times 4?", "source": "gsm8k"},
    {"id": "b", "question": "Is a whale a fish?", "source": "mmlu"},
    {"id": "c", "question": "Spell cat backwards.", "source": "bbl"},
]


@pytest.fixture(scope="module")
def vector(tiny):
    return derive_cot_vector(tiny, QUESTIONS, generation=GenerationConfig(max_new_tokens=8), progress=False)


def test_derive_shapes_and_metadata(tiny, vector):
    assert vector.directions.shape == (4, 64)
    assert vector.per_question.shape == (3, 4, 64)
    torch.testing.assert_close(vector.directions, vector.per_question.mean(0))
    meta = vector.metadata
    assert meta.question_ids == ["a", "b", "c"] and meta.question_sources == ["gsm8k", "mmlu", "bbl"]
    assert meta.n_layers == 4 and meta.d_model == 64 and meta.positions == "generated"
    assert meta.hook_name == "blocks.{layer}.hook_resid_post"
    assert meta.templates.cot.endswith("step by step.") and len(meta.corpus_hash) == 64
    assert meta.generation.max_new_tokens == 8 and meta.package_version
    assert vector.resid_norm.shape == (4,) and (vector.resid_norm > 0).all()
    assert len(vector.responses) == 6


def test_derive_is_deterministic(tiny, vector):
    again = derive_cot_vector(tiny, QUESTIONS, generation=GenerationConfig(max_new_tokens=8), progress=False)
    assert torch.equal(again.per_question, vector.per_question)


def test_round_trip(tmp_path, tiny, vector):
    vector.save(tmp_path / "v")
    loaded = SteeringVector.load(tmp_path / "v", model=tiny)
    assert torch.equal(loaded.directions, vector.directions)
    assert torch.equal(loaded.per_question, vector.per_question)
    assert torch.equal(loaded.resid_norm, vector.resid_norm)
    assert loaded.metadata == vector.metadata
    assert loaded.responses == vector.responses
    with steer(tiny, loaded, 1, 2.0):
        pass


def test_missing_and_corrupt_files(tmp_path, vector):
    with pytest.raises(VectorFileError, match="no steering vector directory"):
        SteeringVector.load(tmp_path / "nope")
    path = vector.save(tmp_path / "v")
    (path / "vector.safetensors").write_bytes((path / "vector.safetensors").read_bytes()[:-7] + b"garbage")
    with pytest.raises(VectorFileError, match="checksum"):
        SteeringVector.load(path)
    path = vector.save(tmp_path / "w")
    (path / "config.json").write_text("{not json")
    with pytest.raises(VectorFileError, match="corrupt"):
        SteeringVector.load(path)
    path = vector.save(tmp_path / "x")
    (path / "vector.safetensors").unlink()
    with pytest.raises(VectorFileError, match="missing"):
        SteeringVector.load(path)
    path = vector.save(tmp_path / "y")
    cfg = json.loads((path / "config.json").read_text())
    cfg["metadata"]["d_model"] = 65
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(VectorFileError, match="shape"):
        SteeringVector.load(path)


@pytest.mark.parametrize("bad, problem", [(b'{"id": "a"}\n{"id": "b", "response": "\xff"}\n', "not valid UTF-8"),
                                          (b'{"id": "a"}\n{"id": "b",\n', "invalid JSON"),
                                          (b'{"id": "a"}\n["b"]\n', "expected a JSON object")])
def test_corrupt_responses_name_the_file_and_line(tmp_path, vector, bad, problem):
    path = vector.save(tmp_path / "v")
    (path / "responses.jsonl").write_bytes(bad)
    with pytest.raises(VectorFileError, match=rf"{path / 'responses.jsonl'}, line 2: {problem}"):
        SteeringVector.load(path)


def test_config_field_of_the_wrong_type(tmp_path, vector):
    path = vector.save(tmp_path / "v")
    cfg = json.loads((path / "config.json").read_text())
    cfg["metadata"]["question_ids"] = 3
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(VectorFileError, match=r"config\.json: metadata field 'question_ids' is not list\[str\]"):
        SteeringVector.load(path)


def test_mismatch_errors(tmp_path, vector):
    path = vector.save(tmp_path / "v")
    wide, _ = make_tiny_bridge(0, hidden=32)
    with pytest.raises(ModelMismatchError, match="d_model 32"):
        SteeringVector.load(path, model=wide)
    deep, _ = make_tiny_bridge(0, n_layers=6)
    with pytest.raises(ModelMismatchError, match="6 layers"):
        with steer(deep, vector, 0, 1.0):
            pass
    other, _ = make_tiny_bridge(5)
    with pytest.raises(ModelMismatchError, match="fingerprint"):
        SteeringVector.load(path, model=other)
    SteeringVector.load(path, model=other, allow_other_model=True)


def test_coeff_for_scale(vector):
    c = vector.coeff_for_scale(2, 0.25)
    assert abs(c * vector.directions[2].norm() - 0.25 * vector.resid_norm[2]) < 1e-3


def test_question_normalisation():
    qs = as_questions(["plain", {"question": "d", "id": "x"}])
    assert [q.id for q in qs] == ["q0", "x"]
    with pytest.raises(ValueError, match="unique"):
        as_questions([{"question": "a", "id": "x"}, {"question": "b", "id": "x"}])
    with pytest.raises(ValueError, match="'question'"):
        as_questions([{"text": "a"}])


def test_typed_metadata_writes_the_same_config_as_before(tmp_path, vector):
    """Generation, templates and stats are typed in memory; on disk the metadata object keeps its layout (the
    legacy fixture's config re-saved is byte-identical in its metadata)."""
    from pathlib import Path

    from lens_steer.method.metadata import DerivationStats, VectorMetadata
    from lens_steer.prompts import PromptTemplate

    legacy = json.loads((Path(__file__).resolve().parents[2] / "fixtures/legacy/vector/config.json").read_text())
    meta = VectorMetadata.from_dict(legacy["metadata"])
    assert isinstance(meta.generation, GenerationConfig) and isinstance(meta.templates, PromptTemplate)
    assert isinstance(meta.stats, DerivationStats) and meta.stats.wall_seconds == 0.05
    assert meta.attention == "sdpa" and meta.engine == "bridge" and meta.chunk_questions is None
    assert meta.to_dict() == legacy["metadata"]
    saved = json.loads((vector.save(tmp_path / "v") / "config.json").read_text())["metadata"]
    assert set(saved["generation"]) >= {"max_new_tokens", "attention"} and saved["stats"]["n_questions"] == 3
    assert VectorMetadata.from_dict(saved).to_dict() == saved


@pytest.mark.parametrize("field, value, problem", [
    ("generation", {"max_new_tokens": "many"}, "generation"),
    ("stats", {"n_questions": "3"}, "stats.n_questions: expected an integer"),
    ("templates", {"cot": "no slot"}, "has no {question} slot"),
])
def test_malformed_typed_fields_name_the_field(tmp_path, vector, field, value, problem):
    path = vector.save(tmp_path / "v")
    cfg = json.loads((path / "config.json").read_text())
    cfg["metadata"][field] = value
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(VectorFileError, match=re.escape(problem)):
        SteeringVector.load(path)


def test_per_question_rows_must_match_the_question_ids(vector):
    from dataclasses import replace

    meta = replace(vector.metadata, question_ids=vector.metadata.question_ids + ["x"])
    with pytest.raises(ValueError, match="3 question vectors but the metadata lists 4 question ids"):
        SteeringVector(vector.directions, meta, per_question=vector.per_question)
