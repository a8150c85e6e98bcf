"""The server's state and its answers, without HTTP: the engine, the served vectors, the default steering
(checked at start) and the :class:`~lens_steer.serve.batcher.Batcher`; a checked request in, finished
choices out. :mod:`lens_steer.serve.http` carries these over the wire."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from lens_steer.serve.batcher import Batcher, ShuttingDown
from lens_steer.serve.errors import RequestError
from lens_steer.serve.protocol import CompletionRequest, RequestContext, parse_request
from lens_steer.serve.responses import Choice, finish_choice
from lens_steer.serve.steering_spec import (AppliedSteering, SteeringEntry, SteeringSpecError, parse_steering_text,
                                            resolve_steering)
from lens_steer.serve.vectors import ServedVector

__all__ = ["SERVED_ENGINES", "ServeApp", "ServeSettings"]

SERVED_ENGINES: dict[str, str] = {"bridge": "a standard-library HTTP server over the bridge engine",
                                  "vllm": "vLLM's OpenAI-compatible server and async engine, steering inside"}
"""The engines ``lens-steer serve`` has a server for, and what it is."""


@dataclass(frozen=True)
class ServeSettings:
    """How a server answers.

    Attributes:
        model_name: What ``/v1/models`` lists and requests name.
        default_steering: Applied to requests that name none (text grammar; ``"none"``: unsteered).
        max_tokens: Tokens generated when a request names no ``max_tokens`` (cut to the context left).
        temperature: Used when a request names none (0: greedy, unlike OpenAI's 1, so answers reproduce).
        seed: Sampling seed when a request names none.
        max_batch: Most prompts per engine call. batch_window_ms: How long a call waits for company.
        allow_other_model: Accept vectors derived on another checkpoint of the same shape.
    """

    model_name: str
    default_steering: str = "none"
    max_tokens: int = 256
    temperature: float = 0.0
    seed: int = 0
    max_batch: int = 32
    batch_window_ms: float = 5.0
    allow_other_model: bool = False

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if not (self.temperature >= 0 and self.temperature != float("inf")):
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")
        if not self.batch_window_ms >= 0:
            raise ValueError(f"the batching window must be >= 0 ms, got {self.batch_window_ms}")


class ServeApp:
    """A model served with steering vectors.

    Args:
        engine: The engine (e.g. the bridge's :func:`~lens_steer.engines.bridge.engine_for`).
        vectors: Served vectors by name (:func:`~lens_steer.serve.vectors.load_served_vectors`).
        settings: See :class:`ServeSettings`.

    Raises:
        ValueError: the default steering does not parse or does not fit the model or the vectors (one line).
    """

    def __init__(self, engine, vectors: Mapping[str, ServedVector], settings: ServeSettings) -> None:
        self.engine = engine
        self.settings = settings
        self.served = dict(vectors)
        self.vectors = {name: sv.vector for name, sv in self.served.items()}
        self.info = engine.info  # read once: the weights do not change while serving
        self.dtype = getattr(torch, engine.dtype_name)  # c·v must be finite in it
        self.created = int(time.time())
        try:
            self.default = self.resolve(parse_steering_text(settings.default_steering), "default")
        except SteeringSpecError as exc:
            raise ValueError(f"--default-steering {settings.default_steering!r}: {exc}") from None
        self.tokenizer = _SerialTokenizer(engine.tokenizer)
        self.context = RequestContext(
            model_name=settings.model_name, tokenizer=self.tokenizer, context_length=engine.context_length,
            vocab_size=_vocab_size(engine), max_tokens=settings.max_tokens, temperature=settings.temperature,
            seed=settings.seed, resolve=self._resolve_request)
        self.batcher = Batcher(engine, max_batch=settings.max_batch, window_s=settings.batch_window_ms / 1000)

    def resolve(self, entries: tuple[SteeringEntry, ...], source: str) -> AppliedSteering:
        """Entries checked against this server's vectors, model and engine (see
        :func:`~lens_steer.serve.steering_spec.resolve_steering`)."""
        return resolve_steering(entries, self.vectors, info=self.info, dtype=self.dtype, engine=self.engine,
                                allow_other_model=self.settings.allow_other_model, source=source)

    def _resolve_request(self, entries: tuple[SteeringEntry, ...] | None, source: str) -> AppliedSteering:
        return self.default if entries is None else self.resolve(entries, source)

    def parse(self, body, *, chat: bool) -> CompletionRequest:
        """A request body checked and read (:func:`~lens_steer.serve.protocol.parse_request`)."""
        return parse_request(body, chat=chat, ctx=self.context)

    def complete(self, request: CompletionRequest) -> list[Choice]:
        """Generate every prompt of ``request`` (through the batcher) and finish its choices.

        Raises:
            RequestError: generation failed for a reason of the request (e.g. a steering that turns the
            logits NaN: 400, param ``steering``). Other exceptions are server faults.
        """
        futures = [self.batcher.submit(p, request.config, request.steering.plan) for p in request.prompts]
        choices = []
        for future in futures:
            try:
                gen = future.result()
            except ShuttingDown as exc:
                raise RequestError(503, str(exc), code="shutting_down", type="server_error") from None
            except ValueError as exc:
                steered = bool(request.steering.plan)
                raise RequestError(400 if steered else 500, f"generation failed: {exc}",
                                   param="steering" if steered else None, code="generation_failed",
                                   type="invalid_request_error" if steered else "server_error") from None
            choices.append(finish_choice(gen, request.stop, self.tokenizer))
        return choices

    def models_body(self) -> dict:
        """``/v1/models``."""
        info = self.info
        return {"object": "list", "data": [{
            "id": self.settings.model_name, "object": "model", "created": self.created, "owned_by": "lens_steer",
            "root": info.model_id, "max_model_len": self.context.context_length,
            "lens_steer": {"engine": self.engine.name, "model": info.to_dict(), "dtype": self.engine.dtype_name,
                           "vectors": sorted(self.served), "default_steering": self.default.describe()}}]}

    def vectors_body(self) -> dict:
        """``/v1/steering/vectors``: each served vector's provenance, and the default steering."""
        return {"object": "list", "data": [sv.provenance() for sv in self.served.values()],
                "model": self.info.to_dict(), "default_steering": self.default.describe()}

    def close(self) -> None:
        """Stop the batcher (queued requests fail with 'shutting down')."""
        self.batcher.close()


class _SerialTokenizer:
    """The engine's tokenizer used from many request threads one call at a time (a fast tokenizer may raise
    "Already borrowed" when two threads use it while one changes its truncation or padding settings)."""

    def __init__(self, tokenizer) -> None:
        self._tokenizer = tokenizer
        self._lock = threading.Lock()
        self.chat_template = getattr(tokenizer, "chat_template", None)

    def __call__(self, *args, **kwargs):
        with self._lock:
            return self._tokenizer(*args, **kwargs)

    def apply_chat_template(self, *args, **kwargs):
        with self._lock:
            return self._tokenizer.apply_chat_template(*args, **kwargs)

    def decode(self, *args, **kwargs):
        with self._lock:
            return self._tokenizer.decode(*args, **kwargs)

    def __len__(self) -> int:
        return len(self._tokenizer)


def _vocab_size(engine) -> int:
    """Token ids a prompt may hold: the tokenizer's, capped by the unembedding of a TransformerLens model."""
    from lens_steer.engines.registry import capabilities_of

    size = len(engine.tokenizer)
    d_vocab = engine.model.cfg.d_vocab if capabilities_of(engine).hooks else None
    return min(size, d_vocab) if isinstance(d_vocab, int) and d_vocab > 0 else size
