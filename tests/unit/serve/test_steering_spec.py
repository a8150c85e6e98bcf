"""The steering grammar and its JSON form: parsing, round trips, and each refusal naming its field."""

from __future__ import annotations

import math

import pytest
import torch

from lens_steer.serve.steering_spec import (SteeringEntry, SteeringSpecError, parse_steering, parse_steering_text,
                                            resolve_steering)


@pytest.mark.parametrize("text, entries", [
    ("none", ()),
    ("", ()),
    ("cot:15:4.5", (SteeringEntry("cot", 15, coeff=4.5),)),
    ("cot:15:scale=0.2:single", (SteeringEntry("cot", 15, scale=0.2, mode="single"),)),
    ("cot:15:single:coeff=-2", (SteeringEntry("cot", 15, coeff=-2.0, mode="single"),)),
    ("cot:10:coeff=-2, v2:20:scale=0.1:mode=continuous",
     (SteeringEntry("cot", 10, coeff=-2.0), SteeringEntry("v2", 20, scale=0.1))),
])
def test_text_grammar(text, entries):
    assert parse_steering_text(text) == entries
    again = parse_steering_text(",".join(e.to_text() for e in entries))
    assert again == entries  # to_text round-trips


@pytest.mark.parametrize("text, field", [
    ("cot", "[0]"),
    ("cot:x:1", "[0].layer"),
    ("cot:1", "[0].coeff"),
    ("cot:1:coeff=1:scale=2", "[0].scale"),
    ("cot:1:1:sideways", "[0].coeff"),  # a bare word that is no mode reads as a coefficient
    ("cot:1:mode=sideways:coeff=1", "[0].mode"),
    ("cot:1:coeff=nan", "[0].coeff"),
    ("cot:1:coeff=inf", "[0].coeff"),
    ("cot:1:coef=1", "[0].coef"),
    ("cot:1:coeff=1:coeff=2", "[0].coeff"),
    ("cot:1:1,cot:2:scale=x", "[1].scale"),
    ("c o t:1:1", "[0].vector"),
])
def test_text_grammar_refusals_name_the_field(text, field):
    with pytest.raises(SteeringSpecError) as info:
        parse_steering_text(text)
    assert info.value.field == field


def test_json_forms():
    assert parse_steering(None) is None  # absent: the server's default
    assert parse_steering([]) == ()
    one = SteeringEntry("cot", 3, coeff=1.5, mode="single")
    assert parse_steering({"vector": "cot", "layer": 3, "coefficient": 1.5, "mode": "single"}) == (one,)
    assert parse_steering([{"vector": "cot", "layer": 3, "coeff": 1.5, "mode": "single"}, "cot:1:scale=0.1"]) == (
        one, SteeringEntry("cot", 1, scale=0.1))
    assert parse_steering("cot:3:1.5:single") == (one,)


@pytest.mark.parametrize("value, field", [
    (42, ""),
    ([42], "[0]"),
    ([{"layer": 1, "coeff": 1}], "[0].vector"),
    ([{"vector": "cot", "coeff": 1}], "[0].layer"),
    ([{"vector": "cot", "layer": True, "coeff": 1}], "[0].layer"),
    ([{"vector": "cot", "layer": 1.0, "coeff": 1}], "[0].layer"),
    ([{"vector": "cot", "layer": 1}], "[0].coeff"),
    ([{"vector": "cot", "layer": 1, "coeff": "big"}], "[0].coeff"),
    ([{"vector": "cot", "layer": 1, "coeff": math.nan}], "[0].coeff"),
    ([{"vector": "cot", "layer": 1, "coeff": 1, "scale": 1}], "[0].scale"),
    ([{"vector": "cot", "layer": 1, "coeff": 1, "coefficient": 2}], "[0].coefficient"),
    ([{"vector": "cot", "layer": 1, "coeff": 1, "positions": "all"}], "[0].positions"),
    ({"vector": "cot", "layer": 1, "coeff": 1, "mode": 3}, "[0].mode"),
    (["cot:1:1,cot:2:2"], "[0]"),
    ([{"vector": "cot", "layer": 1, "coeff": 1}] * 17, ""),
])
def test_json_refusals_name_the_field(value, field):
    with pytest.raises(SteeringSpecError) as info:
        parse_steering(value)
    assert info.value.field == field


@pytest.fixture(scope="module")
def vectors(cot_dir, engine):
    from lens_steer.method.vectors import SteeringVector

    return {"cot": SteeringVector.load(cot_dir, model=engine.info)}


def _resolve(text, vectors, engine, dtype=torch.float32):
    return resolve_steering(parse_steering_text(text), vectors, info=engine.info, dtype=dtype, engine=engine)


def test_resolve_builds_the_plan(vectors, engine):
    applied = _resolve("cot:2:scale=0.5:single,cot:1:coeff=-3", vectors, engine)
    first, second = applied.plan
    assert first.vector is vectors["cot"] and first.layer == 2 and first.mode == "single"
    assert first.coeff == pytest.approx(vectors["cot"].coeff_for_scale(2, 0.5))
    assert (second.layer, second.coeff, second.mode) == (1, -3.0, "continuous")
    assert applied.entries[0].coeff == first.coeff and applied.entries[0].scale == 0.5
    assert applied.describe()["steering"][1] == {"vector": "cot", "layer": 1, "coeff": -3.0, "mode": "continuous"}
    same = _resolve("cot:2:scale=0.5:single", vectors, engine)
    assert same.plan[0].key() == first.key()  # alike requests group together in the engine


@pytest.mark.parametrize("text, field, code", [
    ("nope:1:1", "[0].vector", "unknown_vector"),
    ("cot:4:1", "[0].layer", "layer_out_of_range"),
    ("cot:-1:1", "[0].layer", "layer_out_of_range"),
    ("cot:1:coeff=1e39", "[0].coeff", "invalid_coefficient"),
    ("cot:1:scale=1e38", "[0].scale", "invalid_coefficient"),
])
def test_resolve_refusals(vectors, engine, text, field, code):
    with pytest.raises(SteeringSpecError) as info:
        _resolve(text, vectors, engine)
    assert (info.value.field, info.value.code) == (field, code)


@pytest.mark.filterwarnings("ignore:steering at layer")
def test_absurd_in_half_precision_only(vectors, engine):
    _resolve("cot:1:coeff=1e9", vectors, engine)  # c·v finite in float32
    with pytest.raises(SteeringSpecError, match="float16") as info:
        _resolve("cot:1:coeff=1e9", vectors, engine, dtype=torch.float16)
    assert info.value.field == "[0].coeff"
