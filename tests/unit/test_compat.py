"""The third-party compatibility layer: tested version ranges (the same as pyproject.toml's, refused in one line
outside them), the internals it reads, and hooks attached through TransformerLens's public API only."""

import ast
import tomllib
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from lens_steer.compat import require
from lens_steer.compat import transformer_lens as tl_compat
from lens_steer.compat import transformers as hf_compat
from lens_steer.engines.hooks import attach
from lens_steer.models import hf_model, resid_post_name

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "lens_steer"


def test_the_ranges_are_the_ones_pyproject_pins():
    deps = {(r := Requirement(d)).name: str(r.specifier)
            for d in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]}
    assert SpecifierSet(tl_compat.SUPPORTED) == SpecifierSet(deps["transformer-lens"])
    assert SpecifierSet(hf_compat.SUPPORTED) == SpecifierSet(deps["transformers"])


@pytest.mark.parametrize("version, inside", [("5.19.0", True), ("5.23.0", True), ("5.23.1", True),
                                             ("5.23.0.dev0", True), ("5.24.0", False), ("5.24.0.dev0", False),
                                             ("5.18.2", False), ("4.57.1", False), ("not-a-version", False)])
def test_require_refuses_versions_outside_the_range_in_one_line(version, inside):
    if inside:
        assert require("transformers", hf_compat.SUPPORTED, version=version) == version
        return
    with pytest.raises(ImportError) as err:
        require("transformers", hf_compat.SUPPORTED, version=version)
    message = str(err.value)
    assert "\n" not in message and version in message and ">=5.19,<5.24" in message


def test_require_names_a_missing_distribution():
    with pytest.raises(ImportError, match=r"^lens_steer needs no-such-dist>=1, which is not installed"):
        require("no-such-dist", ">=1")


def test_the_installed_versions_are_inside():
    assert require("transformer-lens", tl_compat.SUPPORTED) == tl_compat.VERSION
    assert require("transformers", hf_compat.SUPPORTED) == hf_compat.VERSION


PRIVATE_TL_AND_HF = ("_capture_hook_handles", "_maybe_wire_capture_hooks", "_stop_at_layer_idx",
                     "_start_at_layer_idx", "_original_component", "compatibility_mode", "_active_collector",
                     "_supports_sdpa", "_attn_implementation", "hf_quantizer", "fwd_hooks",
                     "generalized_components", "output_capturing")


def test_no_module_outside_compat_names_the_internals():
    """Each internal is named in its compat module only (strings and attribute names alike)."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.parent.name == "compat":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([node.attr] if isinstance(node, ast.Attribute) else
                     [node.value] if isinstance(node, ast.Constant) and isinstance(node.value, str) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [f"{path.relative_to(REPO)}: {n}" for n in names for p in PRIVATE_TL_AND_HF
                      if n == p or n.endswith("." + p) or f".{p}." in n]
    assert not found, "\n".join(found)


def test_the_internals_read_the_bridge(tiny):
    hf = hf_model(tiny)
    block = tiny.blocks[0]
    assert tl_compat.is_component(block) and not tl_compat.is_component(hf)
    assert block._modules[tl_compat.WRAPPED_MODULE_KEY] is block.original_component
    tl_compat.wire_capture_hooks(block)
    own = tl_compat.capture_hook_ids(block)
    assert own and own <= {k for m in block.modules() for k in (*m._forward_hooks, *m._forward_pre_hooks)}
    assert not tl_compat.partial_forward_active(block) and not tl_compat.in_compatibility_mode(tiny)
    assert hf_compat.supports_sdpa(hf) and hf_compat.attention_implementation(hf.config) == "eager"
    assert not hf_compat.output_collector_active()


def test_detached_quantizer_puts_both_back():
    from transformers import LlamaConfig

    hf = torch.nn.Module()
    hf.config = LlamaConfig(vocab_size=8, hidden_size=8, num_hidden_layers=1, num_attention_heads=1)
    marker = object()
    hf.hf_quantizer, hf.config.quantization_config = marker, {"quant_method": "gguf"}
    with pytest.raises(RuntimeError):
        with hf_compat.detached_quantizer(hf):
            assert hf.hf_quantizer is None and getattr(hf.config, "quantization_config", None) is None
            raise RuntimeError("save failed")
    assert hf.hf_quantizer is marker and hf.config.quantization_config == {"quant_method": "gguf"}


def test_attach_removes_only_its_own_hooks_beside_transformer_lens_contexts(tiny):
    """attach() tags its hooks with a level of its own: TransformerLens's ``hooks()`` context and attach()
    nest either way round, and each removes exactly what it added."""
    name = resid_post_name(1)
    point = tiny.hook_dict[name]
    mine, theirs = (lambda x, hook: None), (lambda x, hook: None)
    with attach(tiny, [(name, mine)]):
        with tiny.hooks(fwd_hooks=[(name, theirs)]):
            with attach(tiny, [(name, mine), (name, mine)]):
                assert len(point.fwd_hooks) == 4
            assert [h.user_hook for h in point.fwd_hooks][:1] == [mine] and len(point.fwd_hooks) == 2
        assert len(point.fwd_hooks) == 1
        point.add_hook(theirs)  # a user's own hook, added inside our block, outlives it
    assert [h.user_hook for h in point.fwd_hooks] == [theirs] and len(point._forward_hooks) == 1
    point.remove_hooks("fwd")
    assert not point.fwd_hooks and not point._forward_hooks


def test_an_engine_whose_library_is_outside_its_range_is_one_line(monkeypatch, tmp_path, capsys):
    """vLLM installed outside lens_steer's range fails at import (compat/vllm.py): the registry reports it as the
    engine's reason, and a command that opens the engine prints one line, exit 2 (before: a traceback)."""
    import sys

    from lens_steer.cli import main
    from lens_steer.compat import UnsupportedVersion
    from lens_steer.engines import registry

    def outside(*a, **k):
        raise UnsupportedVersion("lens_steer is tested with vllm>=0.32,<0.33, but vllm 0.34.0 is installed: "
                                 "pip install 'vllm>=0.32,<0.33'")

    spec = registry.EngineSpec("outside", "test: its library is outside the range", registry.Capabilities(),
                               opener=f"{__name__}:_raises_outside", availability=f"{__name__}:_raises_outside")
    monkeypatch.setattr(sys.modules[__name__], "_raises_outside", outside, raising=False)
    registry.register(spec)
    try:
        assert spec.unavailable().startswith("lens_steer is tested with vllm>=0.32,<0.33, but vllm 0.34.0")
        assert main(["generate", "--engine", "outside", "--prompt", "Hi", "--max-new-tokens", "1",
                     "--out", str(tmp_path / "g.json")]) == 2
    finally:
        registry._REGISTRY.pop("outside", None)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == ["lens-steer generate: error: lens_steer is tested with vllm>=0.32,<0.33, but vllm 0.34.0 is "
                     "installed: pip install 'vllm>=0.32,<0.33'"], err
