"""Steering in front of vLLM's OpenAI-compatible server: an ASGI middleware that reads each completion request's
steering (the bridge server's grammar and checks, :func:`~lens_steer.serve.protocol.request_steering`), registers
its plan with the engine's workers (:class:`PlanRegistry`), and hands vLLM the request with the plan's key in
``vllm_xargs`` (which vLLM passes to ``SamplingParams.extra_args``, where the per-step fill reads it) and the plan's
prefix-cache salt in ``cache_salt``. vLLM then schedules steered and unsteered requests together (continuous
batching) and answers; the middleware adds what was applied (``X-Lens-Steer-Steering``, and ``lens_steer`` in a
non-streamed body). Plain asyncio and ASGI, no vLLM import: :mod:`lens_steer.serve.vllm_server` wires it to vLLM.

A request's steering comes from ``steering`` in the body, ``vllm_xargs.steering`` (a string in the text grammar, for
clients that pass only vLLM's extra arguments), ``"model": "NAME@SPEC"``, or the server's default; ``[]`` or
``"none"`` is unsteered. A request that names no ``temperature`` is decoded greedily, one that names no
``max_tokens`` gets the server's default, and other sampling fields left out are neutral (:data:`NEUTRAL_SAMPLING`),
as on the bridge server.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from lens_steer.engines.vllm_plans import steering_salt
from lens_steer.engines.vllm_steer import EXTRA_KEY
from lens_steer.serve.errors import RequestError
from lens_steer.serve.protocol import request_steering
from lens_steer.serve.steering_spec import AppliedSteering

__all__ = ["COMPLETION_PATHS", "GateSettings", "InstalledSteeringMiddleware", "PlanRegistry", "SteeringGate",
           "SteeringMiddleware", "install"]

COMPLETION_PATHS = {"/v1/chat/completions": True, "/v1/completions": False}
"""The paths whose requests carry a steering, and whether each is a chat."""
HEADER = b"x-lens-steer-steering"
NEUTRAL_SAMPLING = {"top_p": 1.0, "top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0, "presence_penalty": 0.0,
                    "frequency_penalty": 0.0}
"""Sampling fields a request leaves out get these (no effect), so vLLM does not fill them from the checkpoint's
``generation_config.json`` (e.g. Qwen2.5-Instruct's ``repetition_penalty`` 1.05, ``top_k`` 20): a served answer is
then the one lens_steer's engines and the bridge server give the same request. Its stop tokens still come from it."""
MAX_BODY_BYTES = 32 * 1024 * 1024


class PlanRegistry:
    """Steering plans registered with the engine's workers, by content: requests that steer alike share one plan.
    A plan stays registered while a request uses it; up to ``keep_idle`` unused plans are kept for the next
    request (oldest removed first), so each distinct steering costs one round trip to the workers, not one per
    request. Registration and removal go to the workers in the order they were decided.

    Args:
        rpc: ``await rpc(method, *args)``: the worker extension's method on every worker.
        compile: A plan (tuple of :class:`~lens_steer.engines.base.Steering`) to its wire form
            (:func:`~lens_steer.engines.vllm_plans.compile_plan`).
        keep_idle: Unused plans kept registered.
    """

    def __init__(self, rpc: Callable[..., Awaitable], compile: Callable[[tuple], dict], keep_idle: int = 16) -> None:
        self.rpc = rpc
        self.compile = compile
        self.keep_idle = keep_idle
        self.in_use: dict[str, int] = {}
        self.idle: OrderedDict[str, None] = OrderedDict()
        self.registered: set[str] = set()
        self._wire: dict[tuple, tuple[str, str, dict]] = {}
        self._pending: dict[str, asyncio.Future] = {}
        self._order = asyncio.Lock()

    def key_of(self, plan: tuple) -> tuple[str, str, dict]:
        """``(key, salt, wire)`` of a plan; the key is its salt's prefix (the salt hashes every ``c·v`` exactly)."""
        ident = tuple(s.key() for s in plan)
        if ident not in self._wire:
            if len(self._wire) > 1024:
                self._wire.clear()
            wire = self.compile(plan)
            salt = steering_salt(wire)
            self._wire[ident] = (salt[:32], salt, wire)
        return self._wire[ident]

    async def acquire(self, plan: tuple) -> tuple[str, str]:
        """Register ``plan`` unless it is (returns its key and salt); pair with :meth:`release`.

        Raises:
            ValueError: the workers refused it (e.g. more distinct steerings at a layer than the engine holds).
        """
        key, salt, wire = self.key_of(plan)
        self.in_use[key] = self.in_use.get(key, 0) + 1
        self.idle.pop(key, None)
        try:
            if key not in self.registered:
                if key not in self._pending:
                    self._pending[key] = asyncio.ensure_future(self._call("lens_steer_add_plans", {key: wire},
                                                                          added=key))
                await asyncio.shield(self._pending[key])
        except BaseException:
            self.release(key)
            raise
        return key, salt

    def release(self, key: str) -> None:
        """One request done with ``key``'s plan; past ``keep_idle`` unused plans, the oldest is removed."""
        left = self.in_use.get(key, 0) - 1
        if left > 0:
            self.in_use[key] = left
            return
        self.in_use.pop(key, None)
        if key in self.registered:
            self.idle[key] = None
        stale = []
        while len(self.idle) > self.keep_idle:
            old, _ = self.idle.popitem(last=False)
            self.registered.discard(old)
            stale.append(old)
        if stale:
            task = asyncio.ensure_future(self._call("lens_steer_remove_plans", stale))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())  # a failed removal only wastes rows

    async def _call(self, method: str, arg, added: str | None = None) -> None:
        try:
            async with self._order:
                await self.rpc(method, arg)
            if added is not None:
                self.registered.add(added)
        finally:
            if added is not None:
                self._pending.pop(added, None)


@dataclass(frozen=True)
class GateSettings:
    """What the gate adds to a request: ``model_name`` (the served name), ``max_tokens`` / ``temperature`` /
    ``seed`` when it names none, and the API key (None: none required)."""

    model_name: str
    max_tokens: int = 256
    temperature: float = 0.0
    seed: int = 0
    api_key: str | None = None


class SteeringGate:
    """A completion request body in, the body vLLM gets out (steering resolved and registered).

    Args:
        settings: See :class:`GateSettings`.
        resolve: ``(entries or None, source) -> AppliedSteering`` (None: the server's default), as
            :class:`~lens_steer.serve.protocol.RequestContext` takes it.
        registry: The :class:`PlanRegistry` of the engine.
        vectors_body: The ``/v1/steering/vectors`` answer.
    """

    def __init__(self, settings: GateSettings, resolve, registry: PlanRegistry, vectors_body: dict) -> None:
        self.settings = settings
        self.resolve = resolve
        self.registry = registry
        self.vectors_body = vectors_body

    def authorised(self, headers: Mapping[bytes, bytes]) -> bool:
        if not self.settings.api_key:
            return True
        scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(),
                                                                  self.settings.api_key.encode())

    def read(self, body: Mapping, chat: bool) -> tuple[dict, AppliedSteering]:
        """The body for vLLM (without the plan's key yet) and the steering it asks for.

        Raises:
            RequestError: a field at fault (the steering's, or ``vllm_xargs``).
        """
        out = dict(body)
        xargs = out.get("vllm_xargs")
        if xargs is not None and not isinstance(xargs, Mapping):
            raise RequestError(400, "vllm_xargs must be an object", param="vllm_xargs")
        xargs = dict(xargs or {})
        if EXTRA_KEY in xargs:
            raise RequestError(400, f"vllm_xargs.{EXTRA_KEY} is lens_steer's own; name a steering in 'steering' or "
                               "vllm_xargs.steering", param=f"vllm_xargs.{EXTRA_KEY}")
        if "steering" in xargs:
            if out.get("steering") is not None:
                raise RequestError(400, "give the steering in 'steering' or in vllm_xargs.steering, not both",
                                   param="vllm_xargs.steering")
            out["steering"] = xargs.pop("steering")
        try:
            applied = request_steering(out, self.settings.model_name, self.resolve)
        except RequestError as exc:
            if "steering" in (body.get("vllm_xargs") or {}) and (exc.param or "").startswith("steering"):
                exc.param = "vllm_xargs." + exc.param
            raise
        out.pop("steering", None)
        out["model"] = self.settings.model_name
        if xargs:
            out["vllm_xargs"] = xargs
        else:
            out.pop("vllm_xargs", None)
        if out.get("temperature") is None:
            out["temperature"] = self.settings.temperature
        if out.get("max_tokens") is None and not (chat and out.get("max_completion_tokens") is not None):
            out["max_tokens"] = self.settings.max_tokens
        if out.get("seed") is None and isinstance(out["temperature"], (int, float)) and out["temperature"] > 0:
            out["seed"] = self.settings.seed
        for name, neutral in NEUTRAL_SAMPLING.items():  # not the checkpoint's generation_config sampling defaults
            if out.get(name) is None:
                out[name] = neutral
        return out, applied

    @staticmethod
    def with_plan(body: dict, key: str, salt: str) -> dict:
        """``body`` naming the plan ``key`` and keyed in the prefix cache by ``salt`` (a client's own
        ``cache_salt`` is hashed with it)."""
        out = dict(body)
        out["vllm_xargs"] = {**(out.get("vllm_xargs") or {}), EXTRA_KEY: key}
        own = out.get("cache_salt")
        out["cache_salt"] = salt if not own else hashlib.sha256(f"{own}:{salt}".encode()).hexdigest()
        return out


async def _send_json(send, status: int, body: dict, headers: list | None = None) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": data, "more_body": False})


async def _read_body(receive) -> bytes | None:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise RequestError(413, f"request body exceeds {MAX_BODY_BYTES} bytes", code="too_large")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


class SteeringMiddleware:
    """The ASGI middleware around vLLM's app (see the module docstring). Other paths pass through untouched, after
    the API key check on ``/v1`` (so a bad key is 401 before a steering is read)."""

    def __init__(self, app, gate: SteeringGate) -> None:
        self.app = app
        self.gate = gate

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, method = scope["path"], scope["method"]
        headers = dict(scope.get("headers") or [])
        if path.startswith("/v1") and method != "OPTIONS" and not self.gate.authorised(headers):
            err = RequestError(401, "missing or wrong API key (send 'Authorization: Bearer KEY')",
                               param="Authorization", code="invalid_api_key")
            return await _send_json(send, 401, err.body())
        if path == "/v1/steering/vectors" and method == "GET":
            return await _send_json(send, 200, self.gate.vectors_body)
        if method != "POST" or path not in COMPLETION_PATHS:
            return await self.app(scope, receive, send)
        await self._completion(scope, receive, send, COMPLETION_PATHS[path])

    async def _completion(self, scope, receive, send, chat: bool) -> None:
        try:
            raw = await _read_body(receive)
            if raw is None:
                return  # the client left before sending its request
            try:
                body = json.loads(raw)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise RequestError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from None
            if not isinstance(body, Mapping):
                raise RequestError(400, "the request body must be a JSON object", code="invalid_json")
            out, applied = self.gate.read(body, chat)
            key = None
            if applied.plan:
                try:
                    key, salt = await self.gate.registry.acquire(applied.plan)
                except ValueError as exc:
                    raise RequestError(503, f"the engine cannot hold this steering now: {exc}", param="steering",
                                       code="steering_capacity", type="server_error") from None
                out = self.gate.with_plan(out, key, salt)
        except RequestError as exc:
            return await _send_json(send, exc.status, exc.body())
        data = json.dumps(out).encode()
        try:
            await self.app(_with_body(scope, data), _replay(data, receive),
                           _annotating(send, applied, buffer=not out.get("stream")))
        finally:
            if key is not None:
                self.gate.registry.release(key)


_INSTALLED: list[SteeringGate] = []


class InstalledSteeringMiddleware(SteeringMiddleware):
    """:class:`SteeringMiddleware` with the gate :func:`install` set: what vLLM builds from an import path
    (its ``--middleware`` option passes the app alone). One server per process."""

    def __init__(self, app) -> None:
        if not _INSTALLED:
            raise RuntimeError("no steering gate installed: call lens_steer.serve.vllm_gate.install(gate) first")
        super().__init__(app, _INSTALLED[0])


def install(gate: SteeringGate) -> str:
    """Make ``gate`` the one :class:`InstalledSteeringMiddleware` uses; returns that class's import path."""
    _INSTALLED[:] = [gate]
    return f"{__name__}.{InstalledSteeringMiddleware.__name__}"


def _with_body(scope, data: bytes) -> dict:
    headers = [(k, v) for k, v in scope.get("headers") or [] if k.lower() != b"content-length"]
    return {**scope, "headers": [*headers, (b"content-length", str(len(data)).encode())]}


def _replay(data: bytes, receive):
    """The rewritten body once, then the client's own messages (so a disconnect still reaches vLLM)."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": data, "more_body": False}
        return await receive()

    return replay


def _annotating(send, applied: AppliedSteering, *, buffer: bool):
    """``send`` that adds the steering header to the response and, for a whole JSON body (``buffer``), the
    ``lens_steer`` field."""
    text = applied.text().encode()
    start: dict | None = None
    chunks: list[bytes] = []

    async def annotated(message) -> None:
        nonlocal start
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), (HEADER, text)]}
            json_ok = message["status"] == 200 and any(
                k.lower() == b"content-type" and v.startswith(b"application/json") for k, v in message["headers"])
            if buffer and json_ok:
                start = message
                return
            return await send(message)
        if start is None or message["type"] != "http.response.body":
            return await send(message)
        chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        data = b"".join(chunks)
        try:
            obj = json.loads(data)
            obj["lens_steer"] = applied.describe()
            data = json.dumps(obj).encode()
        except (ValueError, TypeError):  # not the JSON object expected: pass it on as it came
            pass
        headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
        await send({**start, "headers": [*headers, (b"content-length", str(len(data)).encode())]})
        await send({"type": "http.response.body", "body": data, "more_body": False})

    return annotated
