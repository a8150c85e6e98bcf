"""``lens-steer serve --engine vllm`` on the embedded model: vLLM's own OpenAI server and async engine with the
steering gate in front, driven by the real ``openai`` client (localhost only, a fixed number of requests).

Isolation and load: 64 concurrent requests (16 prompts x 4 steerings, unsteered included; half streamed, chat and
completions) share vLLM's continuous batching, and every answer equals the one the same request got alone; none is
lost; a client that drops a stream mid-way changes no other answer; the server answers afterwards. Bad requests are
4xx naming the field, never 500, and the server lives on. A vector from another model stops the command before
the port opens. Run by `make test-vllm`."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import make_tiny_bridge
from lens_steer.config import GenerationConfig
from lens_steer.engines.vllm import vllm_available
from lens_steer.method.derive import derive_cot_vector

pytestmark = [pytest.mark.vllm, pytest.mark.skipif(bool(vllm_available()), reason=vllm_available() or "ok")]

KEY = "serve-key"
MODEL = "smollm2-135m-instruct"
CLI = str(Path(sys.executable).with_name("lens-steer"))
VARIANTS = ["none", "cot:15:8", "cot:15:40:single", "cot:10:-6"]
QUESTIONS = ["What is 17 times 3?", "Is a tomato a fruit?", "Name the capital of Japan.", "What is 2 to the 10th?",
             "Spell 'river' backwards.", "How many legs does a spider have?", "Is 51 prime?",
             "What colour is the sky at noon?", "What is 100 divided by 8?", "Who wrote Hamlet?",
             "What is the square root of 144?", "Name a mammal that flies.", "What is 9 plus 16?",
             "How many days are in a leap year?", "What gas do plants take in?", "What is 3 cubed?"]
TOKENS = 24


def _start(args: list[str], timeout: float = 900) -> tuple[subprocess.Popen, str | None, list[str]]:
    """Start ``lens-steer serve``; returns the process, its base URL (None if it exited) and its output so far."""
    proc = subprocess.Popen([CLI, "serve", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "VLLM_LOGGING_LEVEL": "WARNING"})
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("lens-steer serve: ") and " on http" in line:
            url = line.split(" on ", 1)[1].split("/v1", 1)[0]
            threading.Thread(target=lambda: [lines.append(x) for x in proc.stdout], daemon=True).start()
            return proc, url, lines
        if time.monotonic() > deadline:
            break
    proc.wait(timeout=60)
    return proc, None, lines


@pytest.fixture(scope="module")
def vectors(smol, tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    cot = derive_cot_vector(smol, QUESTIONS[:4], generation=GenerationConfig(max_new_tokens=8), progress=False)
    bridge, _ = make_tiny_bridge(0)
    other = derive_cot_vector(bridge, QUESTIONS[:2], generation=GenerationConfig(max_new_tokens=4), progress=False)
    return cot.save(root / "cot"), other.save(root / "other")


@pytest.fixture(scope="module")
def server(vectors):
    proc, url, lines = _start(["--engine", "vllm", "--vector", f"cot={vectors[0]}", "--api-key", KEY, "--port", "0",
                               "--gpu-memory-utilization", "0.15", "--max-tokens", str(TOKENS), "--quiet"])
    assert url, "".join(lines[-30:])
    yield url
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=600)


def _ask(client, question: str, steering: str, *, chat: bool, stream: bool) -> tuple[str, str]:
    """One request through the openai client: (text, the steering the server says it applied)."""
    extra = {"steering": steering}
    if chat:
        kwargs = dict(model=MODEL, messages=[{"role": "user", "content": question}], max_tokens=TOKENS,
                      extra_body=extra)
        if not stream:
            raw = client.chat.completions.with_raw_response.create(**kwargs)
            r = raw.parse()
            assert r.model_extra["lens_steer"]["spec"] == raw.headers["x-lens-steer-steering"]
            return r.choices[0].message.content, raw.headers["x-lens-steer-steering"]
        with client.chat.completions.with_streaming_response.create(stream=True, **kwargs) as raw:
            parts = [c.choices[0].delta.content or "" for c in raw.parse() if c.choices]
            return "".join(parts), raw.headers["x-lens-steer-steering"]
    kwargs = dict(model=MODEL, prompt=f"Q: {question}\nA:", max_tokens=TOKENS, extra_body=extra)
    if not stream:
        raw = client.completions.with_raw_response.create(**kwargs)
        return raw.parse().choices[0].text, raw.headers["x-lens-steer-steering"]
    with client.completions.with_streaming_response.create(stream=True, **kwargs) as raw:
        return "".join(c.choices[0].text for c in raw.parse() if c.choices), raw.headers["x-lens-steer-steering"]


def _requests():
    """64 requests: every prompt under every steering; chat for even prompts, streamed for every other variant."""
    return [(q, v, i % 2 == 0, j % 2 == 1) for i, q in enumerate(QUESTIONS) for j, v in enumerate(VARIANTS)]


def test_64_concurrent_requests_over_4_steerings_each_equal_alone(client, server):
    reqs = _requests()
    alone = [_ask(client, q, v, chat=c, stream=s) for q, v, c, s in reqs]
    with ThreadPoolExecutor(64) as pool:
        together = list(pool.map(lambda r: _ask(client, r[0], r[1], chat=r[2], stream=r[3]), reqs))
    assert len(together) == 64 and all(text for text, _ in together)
    same = sum(a == b for a, b in zip(alone, together, strict=True))
    changed = sum(alone[k][0] != alone[k - j][0] for k, (_, _, _, _) in enumerate(reqs) for j in [k % 4] if j)
    print(f"64 concurrent requests: {same}/64 equal to the same request alone; steering changed {changed}/48 "
          "answers against the unsteered one")
    assert same == 64
    assert changed >= 24  # a steering that did nothing must not pass
    assert {h for _, h in together} == {"none", "cot:15:coeff=8.0:continuous", "cot:15:coeff=40.0:single",
                                        "cot:10:coeff=-6.0:continuous"}
    assert client.models.list().data[0].id == MODEL  # still answering


def test_a_client_dropping_a_stream_changes_no_other_answer(client, server):
    host, port = server.removeprefix("http://").split(":")
    ref = [_ask(client, q, "cot:15:8", chat=True, stream=False) for q in QUESTIONS[:4]]
    body = json.dumps({"model": MODEL, "max_tokens": 400, "stream": True, "steering": "cot:10:-6",
                       "messages": [{"role": "user", "content": "Write a long story about a lighthouse."}]})
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json",
                                                         "Authorization": f"Bearer {KEY}"})
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("x-lens-steer-steering") == "cot:10:coeff=-6.0:continuous"
    with ThreadPoolExecutor(4) as pool:
        others = pool.map(lambda q: _ask(client, q, "cot:15:8", chat=True, stream=False), QUESTIONS[:4])
        resp.fp.read(300)  # a few events, then the client goes away
        conn.sock.shutdown(2)
        conn.close()
        assert list(others) == ref
    assert _ask(client, QUESTIONS[0], "cot:15:8", chat=True, stream=True) == ref[0]


def _post(server: str, path: str, body, key: str | None = KEY) -> tuple[int, dict]:
    host, port = server.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    conn.request("POST", path, body if isinstance(body, str) else json.dumps(body), headers)
    resp = conn.getresponse()
    data = json.loads(resp.read() or b"{}")
    conn.close()
    return resp.status, data


@pytest.mark.parametrize("body,status,param", [
    ({"steering": "nope:15:2"}, 400, "steering[0].vector"),
    ({"steering": "cot:30:2"}, 400, "steering[0].layer"),
    ({"steering": [{"vector": "cot", "layer": 15, "coeff": 1e39}]}, 400, "steering[0].coeff"),
    ({"steering": {"vector": "cot", "layer": 15, "coeff": 2, "mode": "sideways"}}, 400, "steering[0].mode"),
    ({"steering": {"layer": 15}}, 400, "steering[0].vector"),
    ({"vllm_xargs": {"lens_steer": "plan0"}}, 400, "vllm_xargs.lens_steer"),
    ({"model": "gpt-9"}, 404, "model"),
    ({"messages": [{"role": "user", "content": "word " * 9000}]}, 400, None),
])
def test_bad_requests_are_4xx_and_the_server_lives_on(server, client, body, status, param):
    full = {"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}], **body}
    got, data = _post(server, "/v1/chat/completions", full)
    assert got == status, data
    assert data["error"]["message"]
    if param is not None:
        assert data["error"]["param"] == param
    assert _post(server, "/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 2})[0] == 200


def test_wrong_key_and_the_vectors_endpoint(server, vectors):
    assert _post(server, "/v1/completions", {"model": MODEL, "prompt": "hi"}, key="bad")[0] == 401
    assert _post(server, "/v1/completions", {"model": MODEL, "prompt": "hi"}, key=None)[0] == 401
    host, port = server.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.request("GET", "/v1/steering/vectors", headers={"Authorization": f"Bearer {KEY}"})
    listing = json.loads(conn.getresponse().read())
    (cot,) = listing["data"]
    assert cot["name"] == "cot" and cot["path"] == str(Path(vectors[0]).resolve())
    assert listing["model"]["fingerprint"] == cot["model_fingerprint"]


def test_a_vector_from_another_model_is_refused_before_the_port_opens(vectors):
    proc, url, lines = _start(["--engine", "vllm", "--vector", f"other={vectors[1]}", "--port", "0"], timeout=300)
    assert url is None and proc.returncode == 2
    last = lines[-1]
    assert last.startswith("lens-steer serve: error: --vector other=") and "d_model" in last, "".join(lines[-5:])
