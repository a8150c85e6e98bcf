"""OpenAI request bodies (``/v1/completions``, ``/v1/chat/completions``) read into a typed
:class:`CompletionRequest`: prompts as token ids, generation settings, stop strings, streaming and the
steering, every field checked here so that a bad one is a :class:`~lens_steer.serve.errors.RequestError`
naming it before anything is queued."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from lens_steer.config import GenerationConfig
from lens_steer.engines.base import check_fits_context
from lens_steer.serve.errors import RequestError
from lens_steer.serve.steering_spec import AppliedSteering, SteeringEntry, SteeringSpecError, parse_steering

__all__ = ["MAX_PROMPTS", "CompletionRequest", "RequestContext", "parse_request", "request_steering"]

MAX_PROMPTS = 64
"""Prompts one ``/v1/completions`` request may carry."""

MAX_STOPS = 16


@dataclass(frozen=True)
class RequestContext:
    """What reading a request needs from the server.

    Attributes:
        model_name: The served model's name (``model`` must be it, or ``NAME@SPEC`` to steer by name).
        tokenizer: Encodes prompts and renders chat templates.
        context_length: Most positions the model attends over (None: unchecked).
        vocab_size: Token ids must be below it.
        max_tokens: Tokens generated when a request names no ``max_tokens`` (cut to the room left in the context).
        temperature: Used when a request names none (0: greedy).
        seed: Sampling seed when a request names none.
        resolve: ``(entries or None, source) -> AppliedSteering`` (None entries: the server's default).
    """

    model_name: str
    tokenizer: object
    context_length: int | None
    vocab_size: int
    max_tokens: int
    temperature: float
    seed: int
    resolve: Callable[[tuple[SteeringEntry, ...] | None, str], AppliedSteering]


@dataclass(frozen=True)
class CompletionRequest:
    """One request, checked.

    Attributes:
        chat: A chat completion (else a text completion).
        prompts: Token ids of each prompt (one choice each).
        config: Generation settings.
        stop: Strings that end a choice (cut before them).
        stream: Answer as server-sent events. include_usage: Send a usage chunk last when streaming.
        steering: The steering applied to every prompt.
    """

    chat: bool
    prompts: tuple[tuple[int, ...], ...]
    config: GenerationConfig
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool
    steering: AppliedSteering


def _bad(message: str, param: str | None, code: str = "invalid_value") -> RequestError:
    return RequestError(400, message, param=param, code=code)


def _int(body: Mapping, name: str, low: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise _bad(f"{name} must be an integer >= {low}, got {value!r}", name)
    return value


def _float(body: Mapping, name: str, ok: Callable[[float], bool], want: str) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or abs(value) > 2**1023 \
            or not math.isfinite(value) or not ok(value):
        raise _bad(f"{name} must be {want}, got {value!r}", name)
    return float(value)


def _unsupported(body: Mapping, chat: bool) -> None:
    """Refuse fields whose meaning this server cannot honour (rather than silently ignoring them)."""
    checks = [("n", lambda v: v in (None, 1), "only n=1 is supported"),
              ("best_of", lambda v: v in (None, 1), "only best_of=1 is supported"),
              ("echo", lambda v: v in (None, False), "echo is not supported"),
              ("logprobs", lambda v: v in (None, False) or (not chat and v == 0), "logprobs are not supported"),
              ("top_logprobs", lambda v: v in (None, 0), "logprobs are not supported"),
              ("presence_penalty", lambda v: v in (None, 0), "presence_penalty is not supported"),
              ("frequency_penalty", lambda v: v in (None, 0), "frequency_penalty is not supported"),
              ("logit_bias", lambda v: not v, "logit_bias is not supported"),
              ("tools", lambda v: not v, "tools are not supported"),
              ("functions", lambda v: not v, "functions are not supported"),
              ("suffix", lambda v: not v, "suffix is not supported"),
              ("response_format", lambda v: v is None or (isinstance(v, Mapping) and v.get("type") == "text"),
               "only response_format type 'text' is supported")]
    for name, ok, why in checks:
        if not ok(body.get(name)):
            raise _bad(f"{why} by this server", name, "unsupported_parameter")


def _stops(value) -> tuple[str, ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise _bad(f"stop must be a string or a list of strings, got {value!r}", "stop")
    if len(items) > MAX_STOPS:
        raise _bad(f"at most {MAX_STOPS} stop strings, got {len(items)}", "stop")
    return tuple(s for s in items if s)


def _message_text(content, i: int) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if not isinstance(part, Mapping) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise _bad("only text content parts ({'type': 'text', 'text': ...}) are supported",
                           f"messages[{i}].content[{j}]")
            parts.append(part["text"])
        return "".join(parts)
    raise _bad(f"content must be a string or a list of text parts, got {type(content).__name__}",
               f"messages[{i}].content")


def _chat_prompt(body: Mapping, tokenizer) -> list[list[int]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages must be a non-empty list of {role, content} objects", "messages")
    clean = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str):
            raise _bad("each message must be an object with a string 'role'", f"messages[{i}]")
        clean.append({"role": m["role"], "content": _message_text(m.get("content"), i)})
    if not getattr(tokenizer, "chat_template", None):
        raise _bad("this model's tokenizer has no chat template: use /v1/completions", "messages", "no_chat_template")
    try:
        text = tokenizer.apply_chat_template(clean, tokenize=False, add_generation_prompt=True)
    except Exception as exc:  # noqa: BLE001 - a template may refuse any message sequence (roles, order)
        raise _bad(f"the chat template refused these messages: {exc}", "messages") from None
    return [list(tokenizer(text, add_special_tokens=False)["input_ids"])]


def _completion_prompts(body: Mapping, tokenizer, vocab_size: int) -> list[list[int]]:
    prompt = body.get("prompt")
    if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and all(
            isinstance(t, int) and not isinstance(t, bool) for t in prompt)):
        items = [prompt]
    elif isinstance(prompt, list) and prompt:
        items = prompt
    else:
        raise _bad("prompt must be a string, a list of strings, a list of token ids or a list of such lists",
                   "prompt")
    if len(items) > MAX_PROMPTS:
        raise _bad(f"at most {MAX_PROMPTS} prompts per request, got {len(items)}", "prompt")
    out = []
    for i, item in enumerate(items):
        where = "prompt" if len(items) == 1 else f"prompt[{i}]"
        if isinstance(item, str):
            ids = list(tokenizer(item, add_special_tokens=True)["input_ids"])
        elif isinstance(item, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in item):
            bad = [t for t in item if not 0 <= t < vocab_size]
            if bad:
                raise _bad(f"token id {bad[0]} is outside the vocabulary (0..{vocab_size - 1})", where)
            ids = list(item)
        else:
            raise _bad("each prompt must be a string or a list of token ids", where)
        if not ids:
            raise _bad("empty prompt: every prompt needs at least one token", where)
        out.append(ids)
    return out


def request_steering(body: Mapping, model_name: str,
                     resolve: Callable[[tuple[SteeringEntry, ...] | None, str], AppliedSteering]) -> AppliedSteering:
    """The steering a request asks for: its ``steering`` field, or ``"model": "NAME@SPEC"``, or (neither) the
    server's default, resolved by ``resolve`` (see :class:`RequestContext`).

    Raises:
        RequestError: the model is not ``model_name`` (404) or the steering is at fault (400, ``param`` naming the
        field, e.g. ``steering[0].layer``).
    """
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise _bad("model must be a string", "model")
    by_name = None
    if model and model != model_name:
        name, at, spec = model.partition("@")
        if name != model_name or not at:
            raise RequestError(404, f"model {model!r} is not served here; this server serves {model_name!r} "
                               f"(or {model_name}@STEERING)", param="model", code="model_not_found")
        by_name = spec
    source = "model" if by_name is not None else "request"
    if by_name is not None and body.get("steering") is not None:
        raise _bad("give the steering in the model name or in 'steering', not both", "steering")
    try:
        entries = parse_steering(by_name if by_name is not None else body.get("steering"))
        return resolve(entries, source if entries is not None else "default")
    except SteeringSpecError as exc:
        where = "model" if by_name is not None else f"steering{exc.field}"
        raise RequestError(400, str(exc), param=where, code=exc.code) from None


def parse_request(body, *, chat: bool, ctx: RequestContext) -> CompletionRequest:
    """Check an OpenAI request body and read it.

    Raises:
        RequestError: the first field at fault (400; 404 for a model not served here).
    """
    if not isinstance(body, Mapping):
        raise _bad("the request body must be a JSON object", None, "invalid_json")
    _unsupported(body, chat)
    prompts = _chat_prompt(body, ctx.tokenizer) if chat else _completion_prompts(body, ctx.tokenizer, ctx.vocab_size)
    prompt_param = "messages" if chat else "prompt"
    names = ("max_completion_tokens", "max_tokens") if chat else ("max_tokens",)
    given = [(n, v) for n in names if (v := _int(body, n, 1)) is not None]
    longest = max(len(p) for p in prompts)
    if ctx.context_length is not None and longest >= ctx.context_length:
        try:
            check_fits_context(prompts, 1, ctx.context_length)
        except ValueError as exc:
            raise _bad(str(exc), prompt_param, "context_length_exceeded") from None
    if given:
        max_param, max_new = given[0]
        try:
            check_fits_context(prompts, max_new, ctx.context_length)
        except ValueError as exc:
            raise _bad(f"{exc}; lower {max_param}", max_param, "context_length_exceeded") from None
    else:
        room = ctx.context_length - longest if ctx.context_length is not None else ctx.max_tokens
        max_new = min(ctx.max_tokens, room)
    temperature = _float(body, "temperature", lambda v: v >= 0, "a finite number >= 0")
    temperature = ctx.temperature if temperature is None else temperature
    top_p = _float(body, "top_p", lambda v: 0 < v <= 1, "in (0, 1]")
    seed = _int(body, "seed", 0)
    if seed is not None and seed >= 2**63:
        raise _bad(f"seed must be below 2**63, got {seed}", "seed")
    stream = body.get("stream", False)
    if not isinstance(stream, bool) and stream is not None:
        raise _bad(f"stream must be true or false, got {stream!r}", "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, Mapping):
        raise _bad("stream_options must be an object", "stream_options")
    sample = temperature > 0
    config = GenerationConfig(max_new_tokens=max_new, do_sample=sample, temperature=temperature if sample else 1.0,
                              top_p=top_p if (sample and top_p is not None) else 1.0,
                              seed=(ctx.seed if seed is None else seed) if sample else 0)
    return CompletionRequest(chat=chat, prompts=tuple(tuple(p) for p in prompts), config=config,
                             stop=_stops(body.get("stop")), stream=bool(stream),
                             include_usage=bool(stream and options and options.get("include_usage")),
                             steering=request_steering(body, ctx.model_name, ctx.resolve))
