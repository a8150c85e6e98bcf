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
