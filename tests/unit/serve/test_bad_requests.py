"""Every bad request gets a 4xx with an OpenAI-style error naming the field, never a 500, and the server
keeps answering."""

from __future__ import annotations

import json

import openai
import pytest

from .conftest import API_KEY, MODEL, raw_post

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
MESSAGES = [{"role": "user", "content": "Hi?"}]


def _steer(steering) -> dict:
    return {"model": MODEL, "messages": MESSAGES, "max_tokens": 4, "steering": steering}


CASES = {
    # steering: unknown vector, layer out of range, non-finite or absurd coefficient, malformed objects
    "unknown vector": (CHAT, _steer([{"vector": "nope", "layer": 1, "coeff": 1}]), 400, "steering[0].vector"),
    "layer too high": (CHAT, _steer([{"vector": "cot", "layer": 4, "coeff": 1}]), 400, "steering[0].layer"),
    "layer negative": (CHAT, _steer("cot:-1:coeff=1"), 400, "steering[0].layer"),
    "layer not an int": (CHAT, _steer([{"vector": "cot", "layer": "two", "coeff": 1}]), 400, "steering[0].layer"),
    "coefficient NaN": (CHAT, '{"model": "tiny", "messages": [{"role": "user", "content": "Hi?"}], '
                              '"steering": [{"vector": "cot", "layer": 1, "coeff": NaN}]}', 400, "steering[0].coeff"),
    "coefficient infinite": (CHAT, '{"model": "tiny", "messages": [{"role": "user", "content": "Hi?"}], '
                                   '"steering": [{"vector": "cot", "layer": 1, "coeff": 1e400}]}', 400,
                             "steering[0].coeff"),
    "coefficient a huge integer": (CHAT, _steer([{"vector": "cot", "layer": 1, "coeff": 10**400}]), 400,
                                   "steering[0].coeff"),
    "c*v overflows float32": (CHAT, _steer([{"vector": "cot", "layer": 1, "coeff": 1e39}]), 400, "steering[0].coeff"),
    "scale overflows": (COMPLETIONS, {"prompt": "x", "steering": "cot:1:scale=1e38"}, 400, "steering[0].scale"),
    "unknown mode": (CHAT, _steer([{"vector": "cot", "layer": 1, "coeff": 1, "mode": "sideways"}]), 400,
                     "steering[0].mode"),
    "steering not a list": (CHAT, _steer(42), 400, "steering"),
    "entry not an object": (CHAT, _steer([7]), 400, "steering[0]"),
    "no coefficient": (CHAT, _steer([{"vector": "cot", "layer": 1}]), 400, "steering[0].coeff"),
    "coeff and scale": (CHAT, _steer([{"vector": "cot", "layer": 1, "coeff": 1, "scale": 1}]), 400,
                        "steering[0].scale"),
    "unknown steering field": (CHAT, _steer([{"vector": "cot", "layer": 1, "coef": 1}]), 400, "steering[0].coef"),
    "bad text spec": (CHAT, _steer("cot"), 400, "steering[0]"),
    "one object, bad layer": (CHAT, _steer({"vector": "cot", "layer": 7, "coeff": 1}), 400, "steering[0].layer"),
    "steering in model and body": (CHAT, {"model": f"{MODEL}@cot:1:1", "messages": MESSAGES, "steering": []}, 400,
                                   "steering"),
    "bad steering in model name": (CHAT, {"model": f"{MODEL}@cot:9:1", "messages": MESSAGES}, 400, "model"),
    # prompts longer than the context (512 positions), or leaving no room for max_tokens
    "prompt too long": (COMPLETIONS, {"model": MODEL, "prompt": "a" * 600}, 400, "prompt"),
    "messages too long": (CHAT, {"model": MODEL, "messages": [{"role": "user", "content": "a" * 600}]}, 400,
                          "messages"),
    "max_tokens past the context": (COMPLETIONS, {"model": MODEL, "prompt": "a" * 300, "max_tokens": 300}, 400,
                                    "max_tokens"),
    "one of several prompts too long": (COMPLETIONS, {"prompt": ["ok", "a" * 600]}, 400, "prompt"),
    # the rest of the request
    "model not served": (CHAT, {"model": "gpt-4o", "messages": MESSAGES}, 404, "model"),
    "no messages": (CHAT, {"model": MODEL, "messages": []}, 400, "messages"),
    "message without role": (CHAT, {"model": MODEL, "messages": [{"content": "x"}]}, 400, "messages[0]"),
    "image content": (CHAT, {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
                      400, "messages[0].content[0]"),
    "no prompt": (COMPLETIONS, {"model": MODEL, "prompt": []}, 400, "prompt"),
    "empty token prompt": (COMPLETIONS, {"model": MODEL, "prompt": [[]]}, 400, "prompt"),
    "token id outside the vocabulary": (COMPLETIONS, {"model": MODEL, "prompt": [1, 99999]}, 400, "prompt"),
    "n > 1": (CHAT, {"model": MODEL, "messages": MESSAGES, "n": 2}, 400, "n"),
    "logprobs": (COMPLETIONS, {"model": MODEL, "prompt": "x", "logprobs": 1, "echo": True}, 400, "echo"),
    "temperature a huge integer": (CHAT, {"model": MODEL, "messages": MESSAGES, "temperature": 10**400}, 400,
                                   "temperature"),
    "negative temperature": (CHAT, {"model": MODEL, "messages": MESSAGES, "temperature": -1}, 400, "temperature"),
    "top_p zero": (CHAT, {"model": MODEL, "messages": MESSAGES, "temperature": 1, "top_p": 0}, 400, "top_p"),
    "max_tokens zero": (CHAT, {"model": MODEL, "messages": MESSAGES, "max_tokens": 0}, 400, "max_tokens"),
    "seed not an integer": (CHAT, {"model": MODEL, "messages": MESSAGES, "seed": "x"}, 400, "seed"),
    "stop not strings": (CHAT, {"model": MODEL, "messages": MESSAGES, "stop": [1]}, 400, "stop"),
    "body not an object": (CHAT, [1, 2], 400, None),
    "body not JSON": (CHAT, "{nope", 400, None),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_request_names_the_field(server, name):
    path, body, status, param = CASES[name]
    got, payload, _ = raw_post(server, path, body if isinstance(body, str) else json.dumps(body))
    assert got == status, payload
    error = payload["error"]
    assert error["param"] == param, error
    assert isinstance(error["message"], str) and error["message"] and "\n" not in error["message"]
    assert set(error) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("headers", [{"Authorization": "Bearer wrong"}, {"Authorization": ""},
                                     {"Authorization": f"Basic {API_KEY}"}])
def test_wrong_api_key(server, headers):
    got, payload, _ = raw_post(server, CHAT, json.dumps({"model": MODEL, "messages": MESSAGES}), headers)
    assert got == 401
    assert payload["error"]["param"] == "Authorization" and payload["error"]["code"] == "invalid_api_key"


def test_wrong_key_through_the_openai_client(server):
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0, timeout=30)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_unknown_route_and_method(server):
    assert raw_post(server, "/v1/embeddings", "{}")[0] == 404
    assert raw_post(server, "/v1/models", "{}")[0] == 405


def test_a_mode_the_engine_cannot_do(engine, cot_dir, monkeypatch):
    """An engine that declares only continuous steering refuses ``single`` naming the field."""
    from lens_steer.engines import registry
    from lens_steer.serve import ServeApp, ServeSettings, load_served_vectors, make_server, serve_in_thread

    spec = registry.EngineSpec("continuous-only", "test engine", registry.Capabilities(steer_modes=("continuous",)),
                               opener="lens_steer.engines.registry:_open_bridge")
    monkeypatch.setitem(registry._REGISTRY, spec.name, spec)

    class ContinuousOnly:
        name = "continuous-only"

        def __getattr__(self, item):
            return getattr(engine, item)

    app = ServeApp(ContinuousOnly(), load_served_vectors([f"cot={cot_dir}"], engine.info),
                   ServeSettings(model_name=MODEL, max_tokens=4))
    srv = make_server(app, "127.0.0.1", 0, log_requests=False)
    serve_in_thread(srv)
    try:
        got, payload, _ = raw_post(srv, CHAT, json.dumps(_steer("cot:1:coeff=1:single")))
        assert got == 400 and payload["error"]["param"] == "steering[0].mode"
        assert payload["error"]["code"] == "unsupported_mode" and "single" in payload["error"]["message"]
        got, payload, _ = raw_post(srv, CHAT, json.dumps(_steer("cot:1:coeff=1:continuous")))
        assert got == 200 and payload["lens_steer"]["spec"] == "cot:1:coeff=1.0:continuous"
    finally:
        srv.shutdown()
        srv.server_close()
        app.close()


def test_still_answering_after_the_bad_requests(client):
    resp = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4)
    assert resp.choices[0].finish_reason in ("stop", "length")
