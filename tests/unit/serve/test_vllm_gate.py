"""The steering gate in front of vLLM's OpenAI server, without vLLM: an ASGI app stands in for vLLM's and records the
body it is handed; a fake ``collective_rpc`` records what reaches the workers. Checks what vLLM is given (the
plan's key in ``vllm_xargs``, its salt in ``cache_salt``, the request defaults), what the client gets back (the
applied steering in a header and in a whole body), every refusal (4xx naming the field, nothing reaching vLLM), and
the plan registry's life cycle (one registration per distinct steering, idle plans kept then removed oldest first)."""

from __future__ import annotations

import asyncio
import json

import pytest
import torch

from lens_steer.engines.vllm_plans import compile_plan, steering_salt, unpack_tensors
from lens_steer.engines.vllm_steer import EXTRA_KEY
from lens_steer.serve.steering_spec import parse_steering_text, resolve_steering
from lens_steer.serve.vectors import load_served_vectors
from lens_steer.serve.vllm_gate import GateSettings, PlanRegistry, SteeringGate, SteeringMiddleware

KEY = "k3y"
NAME = "tiny"


class FakeVllm:
    """vLLM's app: answers a completion with the body it received (streamed in three events when asked)."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        self.after_body: list[dict] = []

    async def __call__(self, scope, receive, send) -> None:
        message = await receive()
        body = json.loads(message["body"])
        self.bodies.append(body)
        assert dict(scope["headers"])[b"content-length"] == str(len(message["body"])).encode()
        if body.get("stream"):
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/event-stream")]})
            for i in range(3):
                await send({"type": "http.response.body", "body": f"data: {i}\n\n".encode(), "more_body": True})
            self.after_body.append(await receive())  # what a disconnecting client sends reaches vLLM
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        data = json.dumps({"id": "x", "choices": [{"text": "ok"}]}).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
        await send({"type": "http.response.body", "body": data[:5], "more_body": True})
        await send({"type": "http.response.body", "body": data[5:], "more_body": False})


@pytest.fixture
def setup(engine, cot_dir):
    served = load_served_vectors([f"cot={cot_dir}"], engine.info)
    vectors = {n: sv.vector for n, sv in served.items()}
    info = engine.info

    def resolve(entries, source):
        return resolve_steering(entries, vectors, info=info, dtype=torch.float32, engine="vllm", source=source)

    default = resolve(parse_steering_text("cot:2:scale=0.5:single"), "default")
    calls: list[tuple] = []

    async def rpc(method, *args):
        calls.append((method, *args))

    registry = PlanRegistry(rpc, lambda plan: compile_plan(plan, info, torch.float32, None, 2), keep_idle=2)
    gate = SteeringGate(GateSettings(NAME, max_tokens=7, api_key=KEY),
                        lambda entries, source: default if entries is None else resolve(entries, source),
                        registry, {"object": "list", "data": []})
    vllm = FakeVllm()
    return SteeringMiddleware(vllm, gate), vllm, calls, registry


def call(app, body, *, path="/v1/completions", key=KEY, method="POST", disconnect_after=False):
    """One request through the ASGI app: (status, headers, body bytes)."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    if key is not None:
        headers.append((b"authorization", f"Bearer {key}".encode()))
    scope = {"type": "http", "path": path, "method": method, "headers": headers}
    messages = [{"type": "http.request", "body": raw[:3], "more_body": True},
                {"type": "http.request", "body": raw[3:], "more_body": False}, {"type": "http.disconnect"}]
    sent: list[dict] = []

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start = sent[0]
    return start["status"], dict(start["headers"]), b"".join(m.get("body", b"") for m in sent[1:])


def test_a_steered_request_reaches_vllm_with_its_plan_key_and_salt(setup, engine, cot_dir):
    app, vllm, calls, registry = setup
    status, headers, data = call(app, {"model": NAME, "prompt": "hi", "steering": "cot:1:coeff=2.5"})
    assert status == 200, data
    got = vllm.bodies[-1]
    key = got["vllm_xargs"][EXTRA_KEY]
    assert "steering" not in got and got["model"] == NAME
    assert (got["temperature"], got["max_tokens"]) == (0.0, 7)  # greedy and the server's max_tokens by default
    assert (got["top_p"], got["top_k"], got["min_p"], got["repetition_penalty"]) == (1.0, 0, 0.0, 1.0)
    assert calls == [("lens_steer_add_plans", {key: calls[0][1][key]})]
    wire = unpack_tensors(calls[0][1][key])
    assert got["cache_salt"] == steering_salt(wire) and key == got["cache_salt"][:32]
    assert headers[b"x-lens-steer-steering"] == b"cot:1:coeff=2.5:continuous"
    answer = json.loads(data)
    assert answer["choices"] == [{"text": "ok"}]
    assert answer["lens_steer"]["spec"] == "cot:1:coeff=2.5:continuous" and answer["lens_steer"]["source"] == "request"
    assert headers[b"content-length"] == str(len(data)).encode()
    # the same steering again: no second registration, the same key; the plan is idle afterwards
    call(app, {"prompt": "again", "steering": [{"vector": "cot", "layer": 1, "coeff": 2.5}]})
    assert len(calls) == 1 and vllm.bodies[-1]["vllm_xargs"][EXTRA_KEY] == key
    assert registry.in_use == {} and list(registry.idle) == [key]


def test_default_unsteered_model_name_and_xargs_carriers(setup):
    app, vllm, calls, _ = setup
    call(app, {"prompt": "a", "max_tokens": 3, "temperature": 0.5, "top_k": 5, "vllm_xargs": {"other": 1}})
    got = vllm.bodies[-1]  # the server's default steering (single mode), the client's own settings and xargs kept
    assert got["vllm_xargs"]["other"] == 1 and EXTRA_KEY in got["vllm_xargs"] and got["top_k"] == 5
    assert (got["max_tokens"], got["temperature"], got["seed"]) == (3, 0.5, 0)
    status, headers, data = call(app, {"prompt": "b", "steering": "none"})
    assert status == 200 and headers[b"x-lens-steer-steering"] == b"none"
    assert "vllm_xargs" not in vllm.bodies[-1] and "cache_salt" not in vllm.bodies[-1]
    assert json.loads(data)["lens_steer"]["steering"] == []
    status, headers, _ = call(app, {"model": f"{NAME}@cot:3:scale=0.1", "prompt": "c"})
    assert status == 200 and headers[b"x-lens-steer-steering"] == b"cot:3:scale=0.1:continuous"
    assert vllm.bodies[-1]["model"] == NAME
    status, headers, _ = call(app, {"prompt": "d", "vllm_xargs": {"steering": "cot:0:1.5:single"}, "cache_salt": "mine"},
                              path="/v1/chat/completions")
    got = vllm.bodies[-1]
    assert status == 200 and headers[b"x-lens-steer-steering"] == b"cot:0:coeff=1.5:single"
    assert set(got["vllm_xargs"]) == {EXTRA_KEY} and got["cache_salt"] != "mine" and len(got["cache_salt"]) == 64


@pytest.mark.parametrize("body,status,param", [
    ({"prompt": "x", "steering": "nope:1:2"}, 400, "steering[0].vector"),
    ({"prompt": "x", "steering": "cot:99:2"}, 400, "steering[0].layer"),
    ({"prompt": "x", "steering": [{"vector": "cot", "layer": 1, "coeff": float("inf")}]}, 400, "steering[0].coeff"),
    ({"prompt": "x", "steering": [{"vector": "cot", "layer": 1, "coeff": 1e39}]}, 400, "steering[0].coeff"),
    ({"prompt": "x", "steering": {"vector": "cot"}}, 400, "steering[0].layer"),
    ({"prompt": "x", "steering": 5}, 400, "steering"),
    ({"prompt": "x", "steering": "cot:1:2:sideways"}, 400, "steering[0].coeff"),
    ({"prompt": "x", "steering": {"vector": "cot", "layer": 1, "coeff": 2, "mode": "sideways"}}, 400, "steering[0].mode"),
    ({"prompt": "x", "vllm_xargs": {"steering": "cot:77:1"}}, 400, "vllm_xargs.steering[0].layer"),
    ({"prompt": "x", "vllm_xargs": {EXTRA_KEY: "plan0"}}, 400, f"vllm_xargs.{EXTRA_KEY}"),
    ({"prompt": "x", "vllm_xargs": ["a"]}, 400, "vllm_xargs"),
    ({"prompt": "x", "steering": "cot:1:2", "vllm_xargs": {"steering": "cot:1:2"}}, 400, "vllm_xargs.steering"),
    ({"prompt": "x", "model": "other"}, 404, "model"),
    ({"prompt": "x", "model": f"{NAME}@cot:1:2", "steering": "cot:1:2"}, 400, "steering"),
    (b"{not json", 400, None),
    ([1, 2], 400, None),
])
def test_bad_requests_are_refused_naming_the_field_and_never_reach_vllm(setup, body, status, param):
    app, vllm, calls, _ = setup
    got, headers, data = call(app, body)
    error = json.loads(data)["error"]
    assert got == status and error["param"] == param and error["message"], error
    assert vllm.bodies == [] and calls == []


def test_the_api_key_is_checked_first_and_the_vectors_endpoint_answers(setup):
    app, vllm, _, _ = setup
    for key in (None, "wrong"):
        status, _, data = call(app, {"prompt": "x", "steering": "nope:1:2"}, key=key)
        assert status == 401 and json.loads(data)["error"]["param"] == "Authorization"
    status, _, data = call(app, b"", path="/v1/steering/vectors", method="GET")
    assert status == 200 and json.loads(data)["object"] == "list"
    assert call(app, b"", path="/v1/steering/vectors", method="GET", key=None)[0] == 401
    assert vllm.bodies == []


def test_a_stream_passes_through_with_the_header_and_a_disconnect_reaches_vllm(setup):
    app, vllm, _, registry = setup
    status, headers, data = call(app, {"prompt": "s", "stream": True, "steering": "cot:2:1"})
    assert status == 200 and headers[b"x-lens-steer-steering"] == b"cot:2:coeff=1.0:continuous"
    assert data == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"  # untouched: no lens_steer field in a stream
    assert vllm.after_body == [{"type": "http.disconnect"}]
    assert registry.in_use == {}


def test_idle_plans_are_kept_then_removed_oldest_first(setup):
    app, _, calls, registry = setup  # keep_idle=2
    for c in (1.0, 2.0, 3.0, 1.0):
        call(app, {"prompt": "x", "steering": f"cot:1:{c}"})
    methods = [c[0] for c in calls]
    keys = [next(iter(c[1])) for c in calls if c[0] == "lens_steer_add_plans"]
    # three registrations; the third, done, evicts the first (idle past keep_idle), which the fourth registers
    # again, evicting the second when done
    assert methods == ["lens_steer_add_plans"] * 3 + ["lens_steer_remove_plans", "lens_steer_add_plans",
                                                      "lens_steer_remove_plans"]
    assert len(set(keys[:3])) == 3 and keys[3] == keys[0]
    assert calls[3][1] == [keys[0]] and calls[5][1] == [keys[1]]
    assert registry.registered == set(registry.idle) == {keys[2], keys[0]}


def test_a_registration_the_workers_refuse_is_a_503_and_releases(engine, cot_dir):
    served = load_served_vectors([f"cot={cot_dir}"], engine.info)
    vectors = {n: sv.vector for n, sv in served.items()}

    async def refuse(method, *args):
        raise ValueError("more than 63 distinct steerings at layer 1 at once")

    registry = PlanRegistry(refuse, lambda plan: compile_plan(plan, engine.info, torch.float32, None, 2))
    gate = SteeringGate(GateSettings(NAME), lambda entries, source: resolve_steering(
        entries or (), vectors, info=engine.info, dtype=torch.float32, engine="vllm", source=source), registry, {})
    vllm = FakeVllm()
    status, _, data = call(SteeringMiddleware(vllm, gate), {"prompt": "x", "steering": "cot:1:2"}, key=None)
    assert status == 503 and "63 distinct" in json.loads(data)["error"]["message"]
    assert vllm.bodies == [] and registry.in_use == {} and registry.registered == set()
