"""The server through the real ``openai`` client: chat and text completions, streamed and not, equal to the
engine's own ``generate`` on the same tokens and steering; which steering was applied; models, vectors."""

from __future__ import annotations

import hashlib
import json
import urllib.request
from pathlib import Path

import pytest

from lens_steer.engines.base import Steering
from lens_steer.method.vectors import SteeringVector
from lens_steer.prompts import encode_prompt

from .conftest import API_KEY, DEFAULT, MODEL, QUESTIONS


def _chat(client, question, **kw):
    return client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": question}], **kw)


def _alone(engine, cot_dir, ids, plan, max_new=8):
    """The in-process answer: the engine's generate on one prompt."""
    from lens_steer.config import GenerationConfig

    return engine.generate([ids], GenerationConfig(max_new_tokens=max_new), steering=[plan], progress=False)[0].text


@pytest.fixture(scope="module")
def vec(cot_dir, engine):
    return SteeringVector.load(cot_dir, model=engine.info)


def test_chat_default_steering_equals_in_process_generate(client, engine, cot_dir, vec):
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": QUESTIONS[0]}], max_tokens=8)
    resp = raw.parse()
    assert raw.headers["X-Lens-Steer-Steering"] == "cot:2:scale=0.5:single"
    assert raw.headers["X-Lens-Steer-Steering-Source"] == "default"
    applied = resp.model_extra["lens_steer"]
    assert applied["source"] == "default" and applied["spec"] == DEFAULT
    assert applied["steering"] == [{"vector": "cot", "layer": 2, "coeff": vec.coeff_for_scale(2, 0.5),
                                    "mode": "single", "scale": 0.5}]
    ids = encode_prompt(engine.tokenizer, QUESTIONS[0], "none")  # the chat template around the message
    expected = _alone(engine, cot_dir, ids, (Steering(vec, 2, vec.coeff_for_scale(2, 0.5), "single"),))
    assert resp.choices[0].message.content == expected
    assert resp.usage.prompt_tokens == len(ids) and resp.usage.completion_tokens <= 8


def test_completions_several_prompts_with_request_steering(client, engine, cot_dir, vec):
    prompts = ["The cat sat", "One two three"]
    resp = client.completions.create(model=MODEL, prompt=prompts, max_tokens=6,
                                     extra_body={"steering": [{"vector": "cot", "layer": 1, "coeff": 3.0}]})
    assert resp.model_extra["lens_steer"]["source"] == "request"
    plan = (Steering(vec, 1, 3.0),)
    for choice, text in zip(resp.choices, prompts, strict=True):
        ids = engine.tokenizer(text, add_special_tokens=True)["input_ids"]
        assert choice.text == _alone(engine, cot_dir, ids, plan, max_new=6)
    tokens = client.completions.create(model=MODEL, prompt=engine.tokenizer(prompts[0])["input_ids"], max_tokens=6,
                                       extra_body={"steering": "cot:1:3"})
    assert tokens.choices[0].text == resp.choices[0].text  # token ids in, same answer


def test_steering_changes_the_answer(client):
    answers = {}
    for name, steering in {"none": [], "default": None, "continuous": "cot:1:coeff=4"}.items():
        extra = {} if steering is None else {"extra_body": {"steering": steering}}
        answers[name] = tuple(_chat(client, q, max_tokens=8, **extra).choices[0].message.content for q in QUESTIONS)
    assert len(set(answers.values())) == 3, answers


@pytest.mark.parametrize("chat", [True, False])
def test_streaming_equals_the_whole_answer(client, chat):
    kw = {"max_tokens": 8, "extra_body": {"steering": "cot:1:coeff=2"}}
    if chat:
        whole = _chat(client, QUESTIONS[1], **kw)
        chunks = list(_chat(client, QUESTIONS[1], stream=True, stream_options={"include_usage": True}, **kw))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        expected, finish = whole.choices[0].message.content, whole.choices[0].finish_reason
    else:
        whole = client.completions.create(model=MODEL, prompt="Stream me", **kw)
        chunks = list(client.completions.create(model=MODEL, prompt="Stream me", stream=True,
                                                stream_options={"include_usage": True}, **kw))
        text = "".join(c.choices[0].text for c in chunks if c.choices)
        expected, finish = whole.choices[0].text, whole.choices[0].finish_reason
    assert text == expected
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == finish
    assert chunks[0].model_extra["lens_steer"]["spec"] == "cot:1:coeff=2.0:continuous"
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert len([c for c in chunks if c.choices]) > 3  # one event per token, not one blob


def test_steering_named_with_the_model(client):
    by_name = client.chat.completions.create(model=f"{MODEL}@cot:1:coeff=2",
                                             messages=[{"role": "user", "content": QUESTIONS[2]}], max_tokens=8)
    by_body = _chat(client, QUESTIONS[2], max_tokens=8, extra_body={"steering": "cot:1:coeff=2"})
    assert by_name.choices[0].message.content == by_body.choices[0].message.content
    assert by_name.model_extra["lens_steer"]["source"] == "model"


def test_stop_strings_cut_the_answer(client):
    full = client.completions.create(model=MODEL, prompt="Stop here", max_tokens=8, extra_body={"steering": []})
    text = full.choices[0].text
    assert len(text) >= 3
    stop = text[2:4]
    cut = client.completions.create(model=MODEL, prompt="Stop here", max_tokens=8, stop=[stop, "never-there"],
                                    extra_body={"steering": []})
    assert cut.choices[0].text == text[:text.find(stop)]
    assert cut.choices[0].finish_reason == "stop"
    assert cut.usage.completion_tokens <= full.usage.completion_tokens


def test_sampling_is_reproducible_by_seed(client):
    kw = {"max_tokens": 8, "temperature": 1.0, "extra_body": {"steering": []}}
    a = [_chat(client, QUESTIONS[0], seed=s, **kw).choices[0].message.content for s in (1, 1, 2)]
    assert a[0] == a[1]


def test_models_and_vector_provenance(client, server, engine, cot_dir, vec):
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL]
    assert models[0].model_extra["lens_steer"]["model"]["fingerprint"] == engine.info.fingerprint
    req = urllib.request.Request(server.url + "/v1/steering/vectors", headers={"Authorization": f"Bearer {API_KEY}"})
    body = json.loads(urllib.request.urlopen(req, timeout=30).read())
    (entry,) = body["data"]
    assert entry["name"] == "cot" and entry["path"] == str(Path(cot_dir).resolve())
    assert entry["tensors_sha256"] == hashlib.sha256((Path(cot_dir) / "vector.safetensors").read_bytes()).hexdigest()
    assert entry["model_fingerprint"] == engine.info.fingerprint
    assert entry["corpus_hash"] == vec.metadata.corpus_hash and entry["layers"] == [0, 1, 2, 3]
    assert body["default_steering"]["spec"] == DEFAULT
    health = json.loads(urllib.request.urlopen(server.url + "/health", timeout=30).read())  # no key needed
    assert health == {"status": "ok"}
