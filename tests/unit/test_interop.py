"""Export / import formats on the tiny model: round trips, the files' structure as their readers expect it,
the layer convention, and one-line refusals. (The readers themselves run in tests/interop.)"""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path

import gguf
import pytest
import torch

from conftest import REPO
from lens_steer.cli import main
from lens_steer.config import GenerationConfig
from lens_steer.engines.api import steer
from lens_steer.interop import export_vector, import_vector, layer_table_markdown, read_gguf
from lens_steer.interop.convention import gguf_layer, gguf_tensor_name, hidden_states_index, lm_eval_hookpoint
from lens_steer.method.derive import derive_cot_vector
from lens_steer.method.vectors import ModelMismatchError, SteeringVector, VectorFileError
from lens_steer.models import ModelInfo, model_info

QUESTIONS = [{"id": "a", "question": "What is 3 times 4?"}, {"id": "b", "question": "Is a whale a fish?"}]


@pytest.fixture(scope="module")
def vector(tiny, tmp_path_factory):
    v = derive_cot_vector(tiny, QUESTIONS, generation=GenerationConfig(max_new_tokens=6), progress=False)
    path = tmp_path_factory.mktemp("vec") / "v"
    v.save(path)
    return SteeringVector.load(path)


def test_layer_table_is_in_the_readme():
    assert layer_table_markdown() in (REPO / "README.md").read_text()


def test_convention_names():
    assert gguf_tensor_name(5) == "direction.5" and gguf_layer("direction.5") == 5
    assert lm_eval_hookpoint(15) == "layers.15" and hidden_states_index(15) == 16
    with pytest.raises(ValueError, match="block 0"):
        gguf_tensor_name(0)
    for bad in ("direction.0", "direction.x", "dir.3"):
        with pytest.raises(ValueError):
            gguf_layer(bad)


def test_gguf_export_as_llama_cpp_reads_it(vector, tmp_path):
    out = export_vector(vector, tmp_path / "v.gguf", "gguf", coeff=2.5)
    assert out.layers == (1, 2, 3) and any("block 0 left out" in n for n in out.notes)
    reader = gguf.GGUFReader(out.path)
    assert reader.get_field("general.architecture").contents() == "controlvector"
    assert reader.get_field("controlvector.model_hint").contents() == vector.metadata.model_id
    assert reader.get_field("controlvector.layer_count").contents() == 3
    names = [t.name for t in reader.tensors]
    assert names == ["direction.1", "direction.2", "direction.3"]
    for t in reader.tensors:
        assert t.tensor_type == gguf.GGMLQuantizationType.F32 and len(t.shape) == 1 and t.n_elements == 64
        layer = gguf_layer(t.name)
        assert torch.equal(torch.from_numpy(t.data.copy()), 2.5 * vector.directions[layer])


def test_gguf_round_trip_and_steer(tiny, vector, tmp_path):
    export_vector(vector, tmp_path / "v.gguf", "gguf", layers=[2])
    back = import_vector(tmp_path / "v.gguf", tiny)
    assert torch.equal(back.directions[2], vector.directions[2])
    assert back.directions[[0, 1, 3]].abs().sum() == 0
    assert back.per_question is None and back.metadata.stats.imported.layers == (2,)
    assert "imported from gguf" in back.summary()
    tokens = torch.tensor([[5, 6, 7, 8]])
    with steer(tiny, vector, 2, 3.0):
        ours = tiny(tokens)
    with steer(tiny, back, 2, 3.0):
        theirs = tiny(tokens)
    assert torch.equal(ours, theirs)
    with pytest.raises(ValueError, match=r"all zeros.*directions at layers 2"):
        with steer(tiny, back, 1, 3.0):
            pass
    back.save(tmp_path / "imported")  # an imported vector saves and loads like any other
    assert torch.equal(SteeringVector.load(tmp_path / "imported").directions, back.directions)


def test_lm_eval_file(vector, tmp_path):
    out = export_vector(vector, tmp_path / "v.pt", "lm-eval", layers=[1, 3], coeff=4.0)
    cfg = torch.load(out.path, weights_only=False)
    assert list(cfg) == ["layers.1", "layers.3"]
    entry = cfg["layers.3"]
    assert entry["action"] == "add" and entry["steering_coefficient"] == 4.0 and entry["bias"] is None
    assert entry["head_index"] is None and torch.equal(entry["steering_vector"], vector.directions[3])
    back = import_vector(out.path, model_info_of(vector))
    assert torch.equal(back.directions[3], 4.0 * vector.directions[3])


def test_steering_vectors_file(vector, tmp_path):
    out = export_vector(vector, tmp_path / "sv.pt", "steering-vectors", coeff=-1.5)
    data = torch.load(out.path, weights_only=True)
    assert data["layer_type"] == "decoder_block" and sorted(data["layer_activations"]) == [0, 1, 2, 3]
    assert torch.equal(data["layer_activations"][0], -1.5 * vector.directions[0])
    back = import_vector(out.path, model_info_of(vector))
    torch.testing.assert_close(back.directions, -1.5 * vector.directions, rtol=0, atol=0)


def model_info_of(vector) -> ModelInfo:
    m = vector.metadata
    return ModelInfo(m.model_id, "LlamaForCausalLM", m.n_layers, m.d_model, m.model_fingerprint)


def test_refusals(vector, tmp_path):
    with pytest.raises(ValueError, match="block 0"):
        export_vector(vector, tmp_path / "a.gguf", "gguf", layers=[0])
    with pytest.raises(IndexError, match="out of range"):
        export_vector(vector, tmp_path / "a.gguf", "gguf", layers=[4])
    with pytest.raises(ValueError, match="unknown export format"):
        export_vector(vector, tmp_path / "a.x", "onnx")
    with pytest.raises(ValueError, match="finite"):
        export_vector(vector, tmp_path / "a.pt", "lm-eval", coeff=float("nan"))
    assert not list(tmp_path.iterdir())
    export_vector(vector, tmp_path / "v.gguf", "gguf")
    info = model_info_of(vector)
    wide = ModelInfo("other", "LlamaForCausalLM", 4, 128, "x")
    with pytest.raises(ModelMismatchError, match="64 wide.*d_model 128"):
        import_vector(tmp_path / "v.gguf", wide)
    shallow = ModelInfo("other", "LlamaForCausalLM", 3, 64, "x")
    with pytest.raises(ModelMismatchError, match="layer 3.*layers 0..2"):
        import_vector(tmp_path / "v.gguf", shallow)
    other = ModelInfo("other", "LlamaForCausalLM", 4, 64, "not-this-one")
    with pytest.raises(ModelMismatchError, match="exported from"):
        import_vector(tmp_path / "v.gguf", other)
    assert import_vector(tmp_path / "v.gguf", other, allow_other_model=True).n_layers == 4
    assert import_vector(tmp_path / "v.gguf", info).n_layers == 4


def _write_gguf(path: Path, tensors: dict, arch: str = "controlvector", dtype=None):
    import numpy as np

    w = gguf.GGUFWriter(str(path), arch)
    for name, value in tensors.items():
        w.add_tensor(name, np.asarray(value, dtype=dtype or np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("tensors,arch,match", [
    ({"direction.0": [1.0] * 64}, "controlvector", "direction.0"),
    ({"direction.a": [1.0] * 64}, "controlvector", "not a control-vector direction"),
    ({"direction.1": [1.0] * 64, "direction.2": [1.0] * 32}, "controlvector", "32 values, the others 64"),
    ({"direction.1": [[1.0] * 8] * 8}, "controlvector", "not 1-D"),
    ({"token_embd.weight": [1.0] * 64}, "llama", "architecture 'llama', not a control vector"),
    ({}, "controlvector", "no direction tensors"),
])
def test_bad_gguf(tmp_path, tensors, arch, match):
    _write_gguf(tmp_path / "bad.gguf", tensors, arch)
    with pytest.raises(VectorFileError, match=match):
        read_gguf(tmp_path / "bad.gguf")


def test_non_f32_and_corrupt_gguf(tmp_path):
    import numpy as np

    _write_gguf(tmp_path / "f16.gguf", {"direction.1": [1.0] * 64}, dtype=np.float16)
    with pytest.raises(VectorFileError, match="F16, llama.cpp reads F32 only"):
        read_gguf(tmp_path / "f16.gguf")
    (tmp_path / "junk.gguf").write_bytes(b"GGUF" + struct.pack("<I", 3) + b"\x00" * 5)
    with pytest.raises(VectorFileError, match="not a readable GGUF"):
        read_gguf(tmp_path / "junk.gguf")
    (tmp_path / "junk.pt").write_bytes(b"not a pickle")
    with pytest.raises(VectorFileError, match="not a readable torch file"):
        import_vector(tmp_path / "junk.pt", ModelInfo("m", "a", 4, 64, "f"))
    torch.save({"layer_activations": {1: torch.ones(64)}, "layer_type": "mlp"}, tmp_path / "mlp.pt")
    with pytest.raises(VectorFileError, match="decoder_block"):
        import_vector(tmp_path / "mlp.pt", ModelInfo("m", "a", 4, 64, "f"))


def test_objects_duck_typed(tiny):
    class PeerSV:  # the attributes steering_vectors.SteeringVector has
        layer_activations = {1: torch.ones(64)}
        layer_type = "decoder_block"

    class ControlVector:  # and repeng's
        model_type = "llama"
        directions = {2: torch.full((64,), 0.5).numpy()}

    assert torch.equal(import_vector(PeerSV(), tiny).directions[1], torch.ones(64))
    v = import_vector(ControlVector(), tiny)
    assert v.metadata.stats.imported.format == "repeng" and float(v.directions[2].sum()) == 32.0
    with pytest.raises(TypeError, match="steering-vectors SteeringVector or a repeng ControlVector"):
        import_vector(object(), tiny)


def test_cli_export_import(vector, tiny_dir, tmp_path, capsys):
    vec_dir = Path(vector.source.path)
    assert main(["export", "--vector", str(vec_dir), "--format", "gguf", "--out", str(tmp_path / "v.gguf"),
                 "--layers", "2,3", "--coeff", "2"]) == 0
    assert "layers 2,3, c=2" in capsys.readouterr().out
    assert main(["import", "--from", str(tmp_path / "v.gguf"), "--model", str(tiny_dir), "--out",
                 str(tmp_path / "imp"), "--allow-other-model"]) == 0
    back = SteeringVector.load(tmp_path / "imp")
    assert torch.equal(back.directions[2], 2 * vector.directions[2])
    capsys.readouterr()
    assert main(["export", "--vector", str(vec_dir), "--format", "gguf", "--out", str(tmp_path / "z.gguf"),
                 "--layers", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "block 0" in err
    (tmp_path / "bad.gguf").write_bytes(b"nope")
    assert main(["import", "--from", str(tmp_path / "bad.gguf"), "--model", str(tiny_dir), "--out",
                 str(tmp_path / "imp2")]) == 2
    assert "not a readable GGUF" in capsys.readouterr().err and not (tmp_path / "imp2").exists()


def test_model_info_fits(tiny, vector):
    assert model_info(tiny).fingerprint == vector.metadata.model_fingerprint


def test_analyses_run_on_an_imported_vector(tiny, vector, tmp_path):
    from lens_steer.analysis import direction_logit_lens, layer_cosine_matrix
    from lens_steer.models import unembedding

    export_vector(vector, tmp_path / "v.gguf", "gguf", layers=[1, 2])
    back = import_vector(tmp_path / "v.gguf", tiny)
    cos = layer_cosine_matrix(back.directions)
    assert torch.isfinite(cos).all()
    torch.testing.assert_close(cos[1, 2], layer_cosine_matrix(vector.directions)[1, 2])
    W_U, b_U = unembedding(tiny)
    lens = direction_logit_lens(back.directions, W_U, b_U, k=3)
    ref = direction_logit_lens(vector.directions, W_U, b_U, k=3)
    assert torch.equal(lens.top_ids[1:3], ref.top_ids[1:3])


def test_export_refuses_a_coefficient_whose_product_overflows_float32(vector, tmp_path):
    with pytest.raises(ValueError, match=r"coefficient 1e\+39 is too large for float32"):
        export_vector(vector, tmp_path / "a.gguf", "gguf", coeff=1e39)
    big = SteeringVector(directions=vector.directions * 1000, metadata=vector.metadata)
    coeff = 2 * torch.finfo(torch.float32).max / big.directions.abs().max().item()  # finite, but c*v is not
    assert math.isfinite(float(torch.tensor(coeff, dtype=torch.float32)))
    for fmt in ("gguf", "lm-eval", "steering-vectors"):
        with pytest.raises(ValueError, match=r"times the direction at layer \d .* overflows float32"):
            export_vector(big, tmp_path / "a.out", fmt, coeff=coeff)
    with pytest.raises(ValueError, match="no layers given"):
        export_vector(vector, tmp_path / "a.gguf", "gguf", layers=[])
    with pytest.raises(ValueError, match="gives 'layers.5' for both layer 1 and layer 2"):
        export_vector(vector, tmp_path / "a.pt", "lm-eval", layers=[1, 2], hookpoint="layers.5")
    with pytest.raises(ValueError, match="hookpoint template 'layers.{n}' is not valid"):
        export_vector(vector, tmp_path / "a.pt", "lm-eval", hookpoint="layers.{n}")
    assert not list(tmp_path.iterdir())


def test_export_never_writes_into_its_input_and_replaces_a_file_only_when_asked(vector, tmp_path):
    vdir = Path(vector.source.path)
    before = {p.name: p.read_bytes() for p in vdir.iterdir()}
    hard, soft = tmp_path / "hard.gguf", tmp_path / "soft.gguf"
    os.link(vdir / "vector.safetensors", hard)
    soft.symlink_to(vdir / "config.json")
    for out in (vdir / "vector.safetensors", vdir / "config.json", vdir / "new.gguf", hard, soft):
        for overwrite in (False, True):
            with pytest.raises(ValueError, match="in the input vector's directory"):
                export_vector(vector, out, "gguf", overwrite=overwrite)
    assert {p.name: p.read_bytes() for p in vdir.iterdir()} == before
    (tmp_path / "d").mkdir()
    for out in (tmp_path / "d", Path(".")):
        with pytest.raises(ValueError, match="is a directory: name the file to write"):
            export_vector(vector, out, "gguf")
    existing = tmp_path / "old.gguf"
    existing.write_bytes(b"keep me")
    with pytest.raises(ValueError, match="old.gguf exists; not overwriting it"):
        export_vector(vector, existing, "gguf")
    assert existing.read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "hard.gguf", "old.gguf", "soft.gguf"]  # no .tmp
    export_vector(vector, existing, "gguf", overwrite=True)
    assert read_gguf(existing).directions.keys() == {1, 2, 3}


def test_cli_export_refusals_are_one_line(vector, tmp_path, capsys):
    vdir = Path(vector.source.path)
    (tmp_path / "d").mkdir()
    (tmp_path / "old.gguf").write_bytes(b"keep me")
    cases = [(["--coeff", "1e39"], "coefficient 1e+39 is too large for float32"),
             (["--layers", ""], "--layers '' names no layer"),
             (["--layers", "1,x"], "--layers '1,x': give layer numbers separated by commas"),
             (["--out", str(tmp_path / "d")], "d is a directory: name the file to write"),
             (["--out", str(vdir / "vector.safetensors"), "--force"], "in the input vector's directory"),
             (["--out", str(tmp_path / "old.gguf")], "old.gguf exists; not overwriting it (pass --force")]
    for extra, message in cases:
        argv = ["export", "--vector", str(vdir), "--format", "gguf", "--out", str(tmp_path / "new.gguf"), *extra]
        assert main(argv) == 2, extra
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("lens-steer export: error: ") and message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "old.gguf"]
    assert main(["export", "--vector", str(vdir), "--format", "gguf", "--out", str(tmp_path / "old.gguf"),
                 "--force"]) == 0
    assert read_gguf(tmp_path / "old.gguf").directions.keys() == {1, 2, 3}


def _lm_eval_entry(vector, coeff=..., action="add"):
    entry = {"steering_vector": vector, "action": action, "bias": None}
    if coeff is not ...:
        entry["steering_coefficient"] = coeff
    return entry


def test_lm_eval_coefficient_is_read_as_lm_eval_reads_it(vector, tiny_dir, tmp_path, capsys):
    info = model_info_of(vector)
    v = torch.linspace(-1, 1, 64)
    torch.save({"layers.1": _lm_eval_entry(v)}, tmp_path / "missing.pt")  # lm-eval: a missing coefficient is 1.0
    assert torch.equal(import_vector(tmp_path / "missing.pt", info).directions[1], v)
    torch.save({"layers.1": _lm_eval_entry(v, "2.5")}, tmp_path / "text.pt")  # float("2.5"), as lm-eval
    assert torch.equal(import_vector(tmp_path / "text.pt", info).directions[1], 2.5 * v)
    torch.save({"layers.1": _lm_eval_entry(v, None)}, tmp_path / "null.pt")
    with pytest.raises(VectorFileError, match="hookpoint 'layers.1': steering_coefficient is null"):
        import_vector(tmp_path / "null.pt", info)
    torch.save({"layers.1": _lm_eval_entry(v, "big")}, tmp_path / "word.pt")
    with pytest.raises(VectorFileError, match="steering_coefficient 'big' is not a number"):
        import_vector(tmp_path / "word.pt", info)
    assert main(["import", "--from", str(tmp_path / "null.pt"), "--model", str(tiny_dir), "--out",
                 str(tmp_path / "imp")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "steering_coefficient is null" in err and not (tmp_path / "imp").exists()


def test_two_sources_for_one_layer_are_refused(vector, tmp_path):
    info = model_info_of(vector)
    v = torch.ones(64)
    torch.save({"layers.1": _lm_eval_entry(v, 1.0), "model.layers.1": _lm_eval_entry(2 * v, 1.0)},
               tmp_path / "two.pt")
    with pytest.raises(VectorFileError, match="hookpoints 'layers.1' and 'model.layers.1' both name layer 1"):
        import_vector(tmp_path / "two.pt", info)
    _write_gguf(tmp_path / "two.gguf", {"direction.3": [1.0] * 64, "direction.03": [2.0] * 64})
    with pytest.raises(VectorFileError, match="two tensors name layer 3"):
        read_gguf(tmp_path / "two.gguf")
