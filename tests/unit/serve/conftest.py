"""Fixtures of the server tests: the tiny model loaded from ``tiny_dir``, a CoT vector derived on it and one
derived on another model, a running server (localhost, a free port, in a thread) and an ``openai`` client."""

from __future__ import annotations

import http.client
import json

import pytest

from conftest import make_tiny_bridge
from lens_steer.config import GenerationConfig
from lens_steer.method.derive import derive_cot_vector

API_KEY = "test-key"
MODEL = "tiny"
QUESTIONS = ["What is 3 times 4?", "Is a whale a fish?", "Spell cat backwards.", "Name a prime above 10."]
DEFAULT = "cot:2:scale=0.5:single"
"""The served default steering."""


@pytest.fixture(scope="session")
def served_bridge(tiny_dir):
    from lens_steer.models import load_model

    return load_model(str(tiny_dir))


@pytest.fixture(scope="session")
def engine(served_bridge):
    from lens_steer.engines.bridge import engine_for

    return engine_for(served_bridge)


@pytest.fixture(scope="session")
def cot_dir(served_bridge, tmp_path_factory):
    vector = derive_cot_vector(served_bridge, QUESTIONS, generation=GenerationConfig(max_new_tokens=8), progress=False)
    return vector.save(tmp_path_factory.mktemp("serve-vectors") / "cot")


@pytest.fixture(scope="session")
def other_dir(tmp_path_factory):
    """A vector of the same shape derived on another checkpoint (the tiny model with seed 1)."""
    bridge, _ = make_tiny_bridge(1)
    vector = derive_cot_vector(bridge, QUESTIONS[:2], generation=GenerationConfig(max_new_tokens=6), progress=False)
    return vector.save(tmp_path_factory.mktemp("other-vectors") / "other")


@pytest.fixture(scope="session")
def server(engine, cot_dir):
    """A server over the tiny model with the vector ``cot`` and the default steering :data:`DEFAULT`."""
    from lens_steer.serve import ServeApp, ServeSettings, load_served_vectors, make_server, serve_in_thread

    app = ServeApp(engine, load_served_vectors([f"cot={cot_dir}"], engine.info),
                   ServeSettings(model_name=MODEL, default_steering=DEFAULT, max_tokens=8, max_batch=32))
    srv = make_server(app, "127.0.0.1", 0, api_key=API_KEY, log_requests=False)
    thread = serve_in_thread(srv)
    yield srv
    srv.shutdown()
    srv.server_close()
    app.close()
    thread.join(10)


@pytest.fixture(scope="session")
def client(server):
    import openai

    return openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=120)


def raw_post(server, path: str, body: bytes | str, headers: dict | None = None) -> tuple[int, dict, dict]:
    """POST ``body`` as is (JSON the openai client would not send); ``(status, JSON body, headers)``."""
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=60)
    try:
        hdrs = {"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"} | (headers or {})
        conn.request("POST", path, body=body.encode() if isinstance(body, str) else body, headers=hdrs)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}"), dict(resp.getheaders())
    finally:
        conn.close()
