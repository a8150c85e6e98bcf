"""Steering specs as data: the compact grammar (round trip, canonical text, escapes), one-line errors naming the
field, the paper's presets kept exactly (name, key, capability), and the registry refusing what an engine does not
declare (the vLLM entry declares only the presets; no vLLM needed)."""

from __future__ import annotations

import pytest
import torch

from lens_steer.engines.base import Steering
from lens_steer.engines.registry import CapabilityError, capabilities_of, require, require_steering
from lens_steer.engines.steer_spec import (
    OPERATORS, POSITION_KINDS, PRESETS, SCHEDULE_KINDS, SpecError, SteerSpec, Strength, Where, as_spec, parse_spec,
)

V = torch.ones(8)


@pytest.mark.parametrize(("text", "spec"), [
    ("continuous", SteerSpec()),
    ("single", SteerSpec(Where.prompt())),
    ("at=last", SteerSpec(Where.last())),
    ("at=first:16", SteerSpec(Where.first(16))),
    ("at=window:4-20,strength=linear:1:0:16", SteerSpec(Where.window(4, 20), Strength.linear(1, 0, 16))),
    (r"at=trigger:\n\n|Step", SteerSpec(Where.trigger("\n\n", "Step"))),
    (r"at=trigger:a\,b|c\|d\\e,span=3", SteerSpec(Where.trigger("a,b", "c|d\\e", span=3))),
    ("at=region:<think>..</think>,op=add-norm", SteerSpec(Where.between("<think>", "</think>"), op="add-norm")),
    (r"at=region:a\.b..c", SteerSpec(Where.between("a.b", "c"))),
    ("at=prompt,op=ablate", SteerSpec(Where.prompt(), op="ablate")),
    ("strength=step:0.25:-1.5:3,op=clamp", SteerSpec(strength=Strength.step(0.25, -1.5, 3), op="clamp")),
])
def test_compact_text_round_trips(text, spec):
    assert parse_spec(text) == spec and spec.text == text and parse_spec(spec.text) == spec
    assert Steering(V, 0, 1.0, text).mode == text and Steering(V, 0, 1.0, spec).spec == spec


@pytest.mark.parametrize(("text", "canonical"), [
    ("at=all", "continuous"), ("at=prompt", "single"), ("op=add", "continuous"), ("strength=constant", "continuous"),
    ("single,op=ablate", "at=prompt,op=ablate"), (" op=clamp , at=first:3", "at=first:3,op=clamp"),
    ("at= window:1-2", "at=window:1-2"), ("strength=linear:1.0:0.50:8", "strength=linear:1:0.5:8"),
])
def test_canonical_text(text, canonical):
    assert parse_spec(text).text == canonical


def test_presets_are_the_papers_modes_exactly():
    assert PRESETS == {"continuous": SteerSpec(), "single": SteerSpec(Where("prompt"))}
    for name in ("continuous", "single"):
        s = Steering(V, 2, 1.5, name)
        assert s.mode == name and s.spec.preset == name and as_spec(name) is PRESETS[name]
        assert s.key() == (id(V), 2, 1.5, name, False)  # what engines group by, as before
        # positionally, with every argument, as the vLLM engine and older code build it
        assert Steering(V, 2, 1.5, name, True).key() == (id(V), 2, 1.5, name, True)
    for other in ("at=last", "strength=step:1:1:0", "op=add-norm", "at=prompt,op=clamp"):
        assert parse_spec(other).preset is None
    assert Steering(V, 0, 1.0).mode == "continuous"


@pytest.mark.parametrize(("text", "message"), [
    ("at=window:5-3", "at: window 5-3 is empty: its end (3) must be greater than its start (5)"),
    ("at=window:4-4", "at: window 4-4 is empty"),
    ("at=window:3", "at: 'window:3' is not window:A-B with integers"),
    ("at=first:0", "at: first's k must be an integer >= 1, got 0"),
    ("op=mul", "op: unknown operator 'mul'; expected one of add, add-norm, clamp, ablate"),
    ("at=everywhere", "at: unknown position 'everywhere'"),
    ("at=trigger:", "at: unknown position 'trigger:'"),
    ("at=region:<think>", "at: 'region:<think>' is not region:OPEN..CLOSE"),
    ("at=region:a..a", "at: region markers must differ"),
    ("strength=linear:1:0:0", "strength: linear's token count must be an integer >= 1, got 0"),
    ("strength=linear:1:0", "strength: '1:0' is not linear:FROM:TO:N"),
    ("strength=step:1:x:3", "strength: 'step:1:x:3' is not step:BEFORE:AFTER:K"),
    ("strength=step:inf:0:3", "strength: step's start value must be a finite number"),
    ("strength=cubic:1:0:3", "strength: unknown schedule 'cubic:1:0:3'"),
    ("span=2", "span: span applies to at=trigger only, not at=all"),
    ("at=trigger:x,span=0", "span: span must be an integer >= 1, got 0"),
    ("single,at=last", "at: give the preset 'single' or at=..., not both"),
    ("op=clamp,op=add", "op: given twice"),
    ("where=all", "where: unknown field 'where'"),
    ("sometimes", "mode: unknown steering mode 'sometimes'"),
    ("", "mode: an empty steering spec"),
])
def test_bad_specs_are_one_line_naming_the_field(text, message):
    with pytest.raises(SpecError) as info:
        Steering(V, 0, 1.0, text)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)
    assert info.value.field == message.split(":")[0]
    assert isinstance(info.value, ValueError)  # the CLI's exit 2


def test_strength_factors():
    ramp, step = Strength.linear(0.0, 1.0, 4), Strength.step(1.0, 0.0, 2)
    assert [ramp.factor(t) for t in (None, 0, 1, 2, 4, 9)] == [0.0, 0.0, 0.25, 0.5, 1.0, 1.0]
    assert [step.factor(t) for t in (None, 0, 1, 2, 3)] == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert Strength().factor(5) == 1.0
    with pytest.raises(SpecError, match="constant takes no values"):
        Strength("constant", 2.0)


def test_spec_slug_is_a_file_name():
    for text in ("continuous", "at=first:16", r"at=trigger:\n\n|/etc", "at=region:<think>..</think>"):
        slug = parse_spec(text).slug()
        assert "/" not in slug and "\\" not in slug and ":" not in slug and len(slug) <= 69
    assert parse_spec("single").slug() == "single"
    a, b = parse_spec("at=trigger:a/b").slug(), parse_spec("at=trigger:a:b").slug()
    assert a != b and a.split("-")[0] == b.split("-")[0]  # the same characters replaced: the hash tells them apart


def test_capabilities_declare_kinds_schedules_and_operators(presets_only):
    bridge, vllm, presets = capabilities_of("bridge"), capabilities_of("vllm"), capabilities_of(presets_only)
    for caps in (bridge, vllm):
        assert (caps.steer_positions, caps.steer_schedules, caps.steer_operators) == (
            POSITION_KINDS, SCHEDULE_KINDS, OPERATORS)
    assert (presets.steer_modes, presets.steer_positions, presets.steer_schedules, presets.steer_operators) == (
        ("continuous", "single"), ("all", "prompt"), ("constant",), ("add",))
    assert "steer:at=trigger" in vllm.declared() and "steer:op=clamp" in bridge.declared()
    assert "steer:at=trigger" not in presets.declared() and "steer:single" in presets.declared()


HINT = "; use --engine bridge or --engine vllm"


@pytest.mark.parametrize(("mode", "message"), [
    ("at=first:4", "the presets-only engine cannot steer the first k generated tokens (at=first)"),
    ("at=window:1-3", "the presets-only engine cannot steer a window of generated tokens (at=window)"),
    (r"at=trigger:\n\n", "the presets-only engine cannot steer the tokens after a trigger (at=trigger)"),
    ("at=region:<think>..</think>", "the presets-only engine cannot steer the tokens inside a delimited region (at=region)"),
    ("at=last", "the presets-only engine cannot steer the last prompt token (at=last)"),
    ("strength=linear:1:0:8", "the presets-only engine cannot vary the steering strength over tokens (strength=linear)"),
    ("single,strength=step:1:0:3", "the presets-only engine cannot vary the steering strength over tokens (strength=step)"),
    ("op=clamp", "the presets-only engine cannot apply the clamp steering operator (op=clamp)"),
    ("op=add-norm", "the presets-only engine cannot apply the add-norm steering operator (op=add-norm)"),
    ("single,op=ablate", "the presets-only engine cannot apply the ablate steering operator (op=ablate)"),
])
def test_an_undeclared_spec_is_the_registrys_one_line_error(presets_only, mode, message):
    steering = Steering(V, 1, 1.0, mode)
    with pytest.raises(CapabilityError) as info:
        require_steering(presets_only, [None, Steering(V, 1, 1.0, "single"), steering], "the eval")
    assert str(info.value) == f"{message}, which the eval needs{HINT}"
    with pytest.raises(CapabilityError, match=f"the {presets_only} engine cannot"):
        require(presets_only, f"steer:{steering.mode}")
    for engine in ("bridge", "vllm"):
        require_steering(engine, steering)
        require(engine, f"steer:{steering.mode}")


def test_presets_pass_on_every_engine_and_parts_are_capabilities(presets_only):
    for engine in ("bridge", "vllm", presets_only):
        require_steering(engine, [Steering(V, 1, 1.0, "continuous"), Steering(V, 1, 1.0, "at=prompt")])
        require(engine, "steer:single")
        require(engine, "steer:op=add")
        require(engine, "steer:at=prompt")
    with pytest.raises(CapabilityError, match=r"^the presets-only engine cannot steer a window of generated tokens "
                                              r"\(at=window\), which x needs; use --engine bridge or --engine vllm$"):
        require(presets_only, "steer:at=window", "x")
    with pytest.raises(ValueError, match="unknown capability 'steer:op=mul'; op is one of add, add-norm"):
        require("vllm", "steer:op=mul")
