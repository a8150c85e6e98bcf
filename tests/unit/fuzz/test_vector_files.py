"""``SteeringVector.load`` on mutated vector directories: it loads, or raises VectorFileError naming the file.

A valid vector (made from tiny tensors, no model) is saved once; each example breaks one of its
files (``config.json``, ``vector.safetensors`` with or without its checksum updated to match,
``responses.jsonl``) or leaves files out, and loads the copy.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lens_steer.config import GenerationConfig
from lens_steer.method.metadata import DerivationStats
from lens_steer.method.vectors import (
    CONFIG_FILE, RESPONSES_FILE, TENSORS_FILE, SteeringVector, VectorFileError, VectorMetadata,
)

from ._mutations import FUZZ, byte_mutated, json_documents, jsonl_documents

_RESPONSES = [{"id": "a", "style": "cot", "response": "Step 1: 3*4 = 12.", "n_tokens": 9},
              {"id": "b", "style": "direct", "response": "No.", "n_tokens": 2}]


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, bytes]:
    """The files of a valid saved vector, by name."""
    g = torch.Generator().manual_seed(0)
    meta = VectorMetadata(model_id="tiny", model_fingerprint="0123456789abcdef", n_layers=3, d_model=4,
                          question_ids=["a", "b"], question_sources=["gsm8k", "mmlu"], questions=["3*4?", "Whale a fish?"],
                          corpus_hash="c" * 64, generation=GenerationConfig(max_new_tokens=8),
                          stats=DerivationStats(n_questions=2))
    per_question = torch.randn(2, 3, 4, generator=g)
    vector = SteeringVector(directions=per_question.mean(0), metadata=meta, per_question=per_question,
                            resid_norm=torch.rand(3, generator=g) + 1, responses=_RESPONSES)
    path = vector.save(tmp_path_factory.mktemp("vec") / "v")
    files = {name: (path / name).read_bytes() for name in (CONFIG_FILE, TENSORS_FILE, RESPONSES_FILE)}
    SteeringVector.load(path)  # the unbroken copy loads
    return files


def _check_load(files: dict[str, bytes | None], broken: str) -> None:
    """Write ``files`` (None: left out) and load: a vector, or a VectorFileError naming the directory or file."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "v"
        root.mkdir()
        for name, data in files.items():
            if data is not None:
                (root / name).write_bytes(data)
        try:
            vector = SteeringVector.load(root)
        except VectorFileError as exc:
            assert str(root) in str(exc)
            if broken == RESPONSES_FILE:
                assert str(root / RESPONSES_FILE) in str(exc)
            return
    vector.summary()
    assert vector.responses is None or all(isinstance(r, dict) for r in vector.responses)


def _with_checksum(files: dict[str, bytes], tensors: bytes) -> dict[str, bytes]:
    """``files`` with new tensor bytes whose sha256 the config records, so the safetensors reader sees them."""
    config = json.loads(files[CONFIG_FILE])
    config["tensors_sha256"] = hashlib.sha256(tensors).hexdigest()
    return {**files, TENSORS_FILE: tensors, CONFIG_FILE: json.dumps(config).encode()}


@FUZZ
@given(data=st.data())
def test_mutated_config(saved: dict[str, bytes], data: st.DataObject) -> None:
    document = data.draw(json_documents(json.loads(saved[CONFIG_FILE])))
    _check_load({**saved, CONFIG_FILE: document}, CONFIG_FILE)


@FUZZ
@given(data=st.data(), checksum_matches=st.booleans())
def test_mutated_tensors(saved: dict[str, bytes], data: st.DataObject, checksum_matches: bool) -> None:
    tensors = data.draw(byte_mutated(saved[TENSORS_FILE]))
    files = _with_checksum(saved, tensors) if checksum_matches else {**saved, TENSORS_FILE: tensors}
    _check_load(files, TENSORS_FILE)


@FUZZ
@given(data=st.data())
def test_mutated_safetensors_header(saved: dict[str, bytes], data: st.DataObject) -> None:
    """The safetensors header (8-byte length, then JSON) mutated as JSON, checksum updated."""
    raw = saved[TENSORS_FILE]
    n = int.from_bytes(raw[:8], "little")
    header = data.draw(json_documents(json.loads(raw[8 : 8 + n])))
    _check_load(_with_checksum(saved, len(header).to_bytes(8, "little") + header + raw[8 + n :]), TENSORS_FILE)


@FUZZ
@given(data=st.data())
def test_mutated_responses(saved: dict[str, bytes], data: st.DataObject) -> None:
    _check_load({**saved, RESPONSES_FILE: data.draw(jsonl_documents(_RESPONSES))}, RESPONSES_FILE)


@FUZZ
@given(present=st.fixed_dictionaries({name: st.booleans() for name in (CONFIG_FILE, TENSORS_FILE, RESPONSES_FILE)}))
def test_missing_files(saved: dict[str, bytes], present: dict[str, bool]) -> None:
    _check_load({name: data if present[name] else None for name, data in saved.items()}, "")
