"""The engine registry: names, declared capabilities, one-line refusals of what an engine does not declare,
options, and an engine added by one register() call being usable from the CLI and the library."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest

from lens_steer.cli import build_parser, main
from lens_steer.engines import registry
from lens_steer.engines.api import as_engine
from lens_steer.engines.registry import (
    Capabilities, CapabilityError, EngineSpec, capabilities_of, engine_names, engine_spec, open_engine, register,
    require,
)

PACKAGE = Path(__file__).resolve().parents[3] / "lens_steer"


class ToyEngine:
    """The bridge engine under another name, declaring less (a stand-in for a third-party engine)."""

    name = "toy"

    def __init__(self, inner) -> None:
        self.inner = inner

    def __getattr__(self, item):
        return getattr(self.inner, item)


def _open_toy(model, *, device, dtype, capture_residuals, **options):
    return ToyEngine(open_engine("bridge", model, device=device, dtype=dtype))


@pytest.fixture
def toy():
    spec = EngineSpec("toy", "the bridge, declaring only continuous steering",
                      Capabilities(steer_modes=("continuous",)), opener=f"{__name__}:_open_toy")
    register(spec)
    try:
        yield spec
    finally:
        registry._REGISTRY.pop("toy", None)


def test_builtin_engines_and_their_capabilities():
    assert engine_names()[:2] == ("bridge", "vllm")
    bridge, vllm = capabilities_of("bridge"), capabilities_of("vllm")
    assert bridge.hooks and bridge.reread_residuals and not bridge.mixed_steering and not bridge.tensor_parallel
    assert vllm.mixed_steering and vllm.residual_capture and not vllm.hooks and not vllm.reread_residuals
    assert "steer:single" in bridge.declared() and "hooks" in bridge.declared()
    with pytest.raises(ValueError, match="unknown engine 'nope'; expected one of bridge, vllm"):
        engine_spec("nope")
    with pytest.raises(ValueError, match="already registered"):
        register(engine_spec("bridge"))


def test_cli_engine_choices_come_from_the_registry(toy):
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for command in ("generate", "derive", "eval", "sweep", "demo", "reproduce"):
        engine = next(a for a in sub.choices[command]._actions if a.dest == "engine")
        assert tuple(engine.choices) == engine_names() and "toy" in engine.choices


def test_an_undeclared_capability_is_one_line_naming_engine_and_capability(tiny):
    with pytest.raises(CapabilityError, match=r"^the vllm engine cannot re-read residuals of given sequences "
                                              r"\(the two_pass derivation\), which x needs; use --engine bridge$"):
        require("vllm", "reread_residuals", "x")
    with pytest.raises(CapabilityError, match="the bridge engine cannot batch requests with different steering"):
        require(as_engine(tiny), "mixed_steering")
    require(as_engine(tiny), "steer:single")
    with pytest.raises(ValueError, match="unknown capability 'telepathy'"):
        require("bridge", "telepathy")


def test_options_an_engine_does_not_take_are_refused(tiny_dir):
    with pytest.raises(ValueError, match="tensor_parallel_size applies to the vllm engine only, not bridge"):
        open_engine("bridge", str(tiny_dir), tensor_parallel_size=2)
    with pytest.raises(ValueError, match="the vllm engine places the model itself on cpu or cuda; device 'mps'"):
        open_engine("vllm", str(tiny_dir), device="mps")


def test_a_registered_engine_runs_from_the_cli_within_what_it_declares(toy, tiny_dir, tmp_path, capsys):
    out = tmp_path / "gen.jsonl"
    assert main(["generate", "--engine", "toy", "--model", str(tiny_dir), "--prompt", "2+2?", "--max-new-tokens",
                 "3", "--no-progress", "--out", str(out)]) == 0
    assert out.read_text().count("\n") == 1
    capsys.readouterr()
    code = main(["derive", "--engine", "toy", "--model", str(tiny_dir), "--corpus", "demo", "--limit", "2",
                 "--out", str(tmp_path / "v"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "the toy engine cannot read residual means while generating" in err[0]
    assert not (tmp_path / "v").exists()  # refused before any model loaded


def test_evaluation_batches_by_the_declared_capability(toy, tiny, monkeypatch):
    """An engine declaring mixed_steering gets every condition's chunk in one call; one that does not, one
    condition per call."""
    from lens_steer.config import GenerationConfig
    from lens_steer.data.example import Example
    from lens_steer.eval.conditions import Condition
    import torch

    engine = ToyEngine(as_engine(tiny))
    calls = []
    original = engine.inner.generate
    engine.generate = lambda prompts, *a, **k: calls.append(len(prompts)) or original(prompts, *a, **k)
    examples = [Example(f"q{i}", "gsm8k", f"What is {i}+1?", str(i + 1), (), "test") for i in range(2)]
    v = torch.ones(tiny.cfg.n_layers, tiny.cfg.d_model)
    conditions = [Condition.baseline("direct"), Condition.baseline("cot"),
                  Condition("steered-continuous", "direct", layer=1, coeff=0.5, mode="continuous")]
    from lens_steer.eval.evaluate import evaluate

    evaluate(engine, examples, conditions, GenerationConfig(max_new_tokens=2, batch_size=2), v, progress=False)
    assert calls == [2, 2, 2]
    registry._REGISTRY["toy"] = replace(toy, capabilities=replace(toy.capabilities, mixed_steering=True))
    calls.clear()
    evaluate(engine, examples, conditions, GenerationConfig(max_new_tokens=2, batch_size=2), v, progress=False)
    assert calls == [6]


def test_no_capability_is_guessed_by_name_or_attribute():
    """Capabilities are read from the registry, never probed (``hasattr``/``getattr`` on an engine) or decided
    by an engine's name."""
    pattern = re.compile(r"(hasattr|getattr)\(\s*(self\.)?(_)?engine\b|engine\.name\s*[!=]=|"
                         r"(kind|engine|args\.engine|settings\.engine)\s*[!=]=\s*[\"'](bridge|vllm)[\"']")
    found = [f"{p.relative_to(PACKAGE)}:{i}: {line.strip()}" for p in sorted(PACKAGE.rglob("*.py"))
             for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert found == []
