"""load_model resolution and errors, hook-name helpers, bridge-vs-HF logits."""

import copy
import time

import pytest
import torch

from conftest import make_tiny_hf
from lens_steer import models
from lens_steer.models import (
    ModelLoadError,
    check_layer,
    d_model,
    final_norm,
    load_model,
    model_fingerprint,
    n_layers,
    resid_post_name,
    stop_token_ids,
    unembedding,
    wrap_model,
)


@pytest.mark.parametrize("impl, tol", [("eager", 0.0), ("sdpa", 1e-4)])
def test_bridge_logits_match_hf(impl, tol):
    """Bridge logits equal an unwrapped HF copy's: exactly against eager attention (the bridge runs
    eager attention in its own hooked component), and within 1e-4 against HF's default sdpa kernel
    (measured max abs difference ~2e-6 on this tiny model)."""
    hf, tok = make_tiny_hf(0)
    reference = copy.deepcopy(hf)
    reference.set_attn_implementation(impl)
    bridge = wrap_model(hf, tok, "tiny")
    x = torch.randint(4, len(tok), (2, 33), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        diff = (bridge(x, prepend_bos=False) - reference(x).logits).abs().max().item()
    assert diff <= tol


def test_helpers(tiny):
    assert n_layers(tiny) == 4 and d_model(tiny) == 64
    assert resid_post_name(3) == "blocks.3.hook_resid_post"
    assert resid_post_name(3) in tiny.hook_dict
    assert check_layer(tiny, 0) == 0
    for bad in (-1, 4, 100, 1.5, True):
        with pytest.raises(IndexError, match="out of range"):
            check_layer(tiny, bad)
    assert stop_token_ids(tiny) == [tiny.tokenizer.eos_token_id]
    w_u, b_u = unembedding(tiny)
    assert w_u.shape == (64, len(tiny.tokenizer))
    assert b_u is None or not b_u.any()  # Llama has no unembedding bias (the bridge may expose zeros)
    gain, kind = final_norm(tiny)
    assert kind == "rms" and gain.shape == (64,)


def test_fingerprint_distinguishes_checkpoints(tiny):
    other, _ = make_tiny_hf(7)
    other_bridge = wrap_model(other, tiny.tokenizer, "other")
    assert model_fingerprint(tiny) == model_fingerprint(tiny)
    assert model_fingerprint(tiny) != model_fingerprint(other_bridge)


def test_load_local_dir(tiny_dir):
    bridge = load_model(str(tiny_dir))
    assert n_layers(bridge) == 4
    assert bridge.cfg.d_model == 64


def test_load_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="GGUF file not found"):
        load_model(str(tmp_path / "missing.gguf"))
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(str(tmp_path))
    with pytest.raises(ModelLoadError, match="path not found"):
        load_model("./no/such/model/dir")
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not a gguf file")
    with pytest.raises(ModelLoadError, match="could not load GGUF"):
        load_model(str(broken), cache_gguf=False)


def test_hub_name_error_is_clear(monkeypatch):
    """A hub name goes to from_pretrained unchanged; its failure is reported with the name."""
    import transformers

    seen = []

    def offline(name, *args, **kwargs):
        seen.append(name)
        raise OSError("hub unreachable")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", offline)
    monkeypatch.setattr(models, "_hub_unreachable", lambda: None)  # the hub answers
    with pytest.raises(ModelLoadError, match="no-such-org/no-such-model-xyz.*Hugging Face hub.*hub unreachable"):
        load_model("no-such-org/no-such-model-xyz")
    assert seen == ["no-such-org/no-such-model-xyz"]


def test_unreachable_hub_reads_the_cache_at_once(monkeypatch, unreachable_hub):
    """No minute of retries: one probe, then from_pretrained on the local cache only."""
    import transformers

    assert "ConnectError" in models._hub_unreachable()
    seen = []

    def cached_only(name, *args, **kwargs):
        seen.append(kwargs.get("local_files_only"))
        raise OSError("not in the cache")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", cached_only)
    with pytest.raises(ModelLoadError, match=r"the hub is unreachable \(ConnectError.*no usable copy.*not in the cache"):
        load_model("no-such-org/no-such-model-xyz")
    assert seen == [True]


def test_unreachable_hub_fails_in_seconds(unreachable_hub):
    start = time.perf_counter()
    with pytest.raises(ModelLoadError, match="the hub is unreachable") as info:
        load_model("no-such-org/no-such-model-xyz")
    assert time.perf_counter() - start < 15 and "\n" not in str(info.value)


# ---------------------------------------------------------------- named offline models
def _fake_split_model(tmp_path, monkeypatch, payload=(b"GGUF-part-one|", b"part-two")):
    """A named model split over two installed 'packages' made in tmp_path (no model inside: the file logic only)."""
    import hashlib
    import sys

    from lens_steer.models import files

    for i, blob in enumerate(payload, 1):
        pkg = tmp_path / "site" / f"fakepart{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(blob)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    for name in ("fakepart1", "fakepart2"):
        sys.modules.pop(name, None)
    whole = b"".join(payload)
    model = files.NamedModel("fake-split", "a fake split model", "MIT", "tests",
                             (("fake-part1", "fakepart1/data/part01.bin"), ("fake-part2", "fakepart2/data/part02.bin")),
                             "fake.gguf", "pip install fake-part1 fake-part2", size=len(whole),
                             sha256=hashlib.sha256(whole).hexdigest(), aliases=("fake",))
    monkeypatch.setitem(files.NAMED_MODELS, model.name, model)
    monkeypatch.setenv(files.CACHE_ENV, str(tmp_path / "cache"))
    return model, whole


def test_a_split_named_model_is_assembled_once_and_checked(tmp_path, monkeypatch):
    from lens_steer.models.files import named_gguf_path, named_model

    model, whole = _fake_split_model(tmp_path, monkeypatch)
    assert named_model("fake") is model and named_model("qwen2.5-coder-0.5b").name == "qwen2.5-coder-0.5b-instruct"
    path = named_gguf_path("fake")
    assert path == tmp_path / "cache" / "gguf" / "fake.gguf" and path.read_bytes() == whole
    mtime = path.stat().st_mtime_ns
    assert named_gguf_path("fake-split").stat().st_mtime_ns == mtime  # assembled once
    assert [p.name for p in path.parent.iterdir()] == ["fake.gguf"]  # no temporary file left


def test_a_split_named_model_with_a_wrong_part_is_refused(tmp_path, monkeypatch):
    from lens_steer.models.files import ModelLoadError, named_gguf_path

    model, _ = _fake_split_model(tmp_path, monkeypatch, payload=(b"GGUF-part-one|", b"part-TWO"))
    monkeypatch.setitem(__import__("lens_steer.models.files", fromlist=["x"]).NAMED_MODELS, model.name,
                        __import__("dataclasses").replace(model, sha256="0" * 64))
    with pytest.raises(ModelLoadError, match=r"assemble to 22 bytes with sha256 .*not the expected.*reinstall them"):
        named_gguf_path("fake")
    assert not (tmp_path / "cache" / "gguf" / "fake.gguf").exists()
    assert list((tmp_path / "cache" / "gguf").iterdir()) == []


def test_a_missing_part_is_one_line_saying_what_to_install(tmp_path, monkeypatch, capsys):
    from lens_steer.cli import main

    _fake_split_model(tmp_path, monkeypatch)
    (tmp_path / "site" / "fakepart2" / "data" / "part02.bin").unlink()
    code = main(["generate", "--model", "fake", "--prompt", "hi", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "the model 'fake-split' needs the package fake-part2: pip install fake-part1 fake-part2" in err[0]


def test_named_models_are_listed_in_help(capsys):
    from lens_steer.cli import main

    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "qwen2.5-coder-0.5b-instruct" in out and "smollm2-135m-instruct" in out
