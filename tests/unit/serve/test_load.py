"""Isolation under load: concurrent requests with different steering (and none) share engine calls, and each
answer equals the one the same request gets alone; a client that vanishes mid-stream disturbs no other."""

from __future__ import annotations

import json
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

from .conftest import API_KEY, MODEL, QUESTIONS

VARIANTS = {
    "none": [],
    "continuous": [{"vector": "cot", "layer": 1, "coeff": 3.0}],
    "single": "cot:2:scale=0.5:single",
    "two-layer": [{"vector": "cot", "layer": 0, "coeff": -2.0}, {"vector": "cot", "layer": 3, "scale": 0.3}],
}
SPECS = {"none": "none", "continuous": "cot:1:coeff=3.0:continuous", "single": "cot:2:scale=0.5:single",
         "two-layer": "cot:0:coeff=-2.0:continuous,cot:3:scale=0.3:continuous"}
REQUESTS = [(q, v) for q in range(len(QUESTIONS)) for v in VARIANTS]  # 16 distinct requests


def _ask(client, q: int, variant: str) -> tuple[str, str]:
    """Questions 0 and 2 by chat, 1 and 3 as text completions; ``(answer, steering spec applied)``."""
    extra = {"extra_body": {"steering": VARIANTS[variant]}}
    if q % 2 == 0:
        resp = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": QUESTIONS[q]}],
                                              max_tokens=8, **extra)
        return resp.choices[0].message.content, resp.model_extra["lens_steer"]["spec"]
    resp = client.completions.create(model=MODEL, prompt=QUESTIONS[q], max_tokens=8, **extra)
    return resp.choices[0].text, resp.model_extra["lens_steer"]["spec"]


def _concurrently(fn, items, workers):
    barrier = threading.Barrier(min(workers, len(items)))

    def run(item):
        barrier.wait(timeout=60)
        return fn(item)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(run, items))


def test_64_concurrent_requests_over_4_steerings_equal_their_answers_alone(client, server):
    alone = {r: _ask(client, *r) for r in REQUESTS}  # one at a time
    for (q, v), (_, spec) in alone.items():
        assert spec == SPECS[v]
    for q in range(len(QUESTIONS)):
        assert len({alone[(q, v)][0] for v in VARIANTS}) > 1  # the steering changes answers
    stats = server.app.batcher.stats
    calls_before, jobs_before = stats.calls, stats.jobs
    load = REQUESTS * 4  # 64 requests, each distinct one 4 times, in interleaved order
    answers = _concurrently(lambda r: _ask(client, *r), load, workers=64)
    assert len(answers) == 64  # no request lost (the client does not retry)
    wrong = [(r, got, alone[r]) for r, got in zip(load, answers) if got != alone[r]]
    assert not wrong, f"{len(wrong)} of 64 answers differ from the same request alone: {wrong[:3]}"
    assert stats.jobs - jobs_before == 64 and stats.failed == 0
    assert stats.calls - calls_before < 64 and stats.largest > 4  # requests shared engine calls
    assert _ask(client, 0, "single") == alone[(0, "single")]  # still answering


def _start_stream_and_vanish(server, read_first_event: bool) -> None:
    """Ask for a stream on a raw socket, then close it: after the first event, or before any answer."""
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": QUESTIONS[3]}], "max_tokens": 24,
                       "stream": True, "steering": "cot:1:coeff=5"}).encode()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    sock = socket.create_connection(server.server_address[:2], timeout=60)
    try:
        sock.sendall(head + body)
        if read_first_event:
            received = b""
            while b"data: " not in received:
                chunk = sock.recv(256)
                assert chunk, "the server closed before the first event"
                received += chunk
            assert received.startswith(b"HTTP/1.1 200")
    finally:
        sock.close()


def test_client_vanishing_mid_stream_disturbs_no_other(client, server):
    others = [(q, v) for q in (0, 1) for v in VARIANTS]
    alone = {r: _ask(client, *r) for r in others}
    jobs = [("vanish", True), ("vanish", False)] + [("ask", r) for r in others] * 2

    def run(job):
        kind, arg = job
        return _start_stream_and_vanish(server, arg) if kind == "vanish" else _ask(client, *arg)

    results = _concurrently(run, jobs, workers=len(jobs))
    for (kind, arg), got in zip(jobs, results):
        if kind == "ask":
            assert got == alone[arg]
    stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": QUESTIONS[3]}],
                                            max_tokens=24, stream=True, extra_body={"steering": "cot:1:coeff=5"})
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)  # the server streams on
