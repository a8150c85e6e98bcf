"""Finished generations as OpenAI responses: each choice's text cut at its stop strings and split at token
boundaries (:func:`finish_choice`), the JSON bodies of chat and text completions, and their streamed chunks
(server-sent events), each carrying which steering was applied (``lens_steer``)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from lens_steer.engines.base import Generation
from lens_steer.serve.protocol import CompletionRequest

__all__ = ["Choice", "completion_body", "finish_choice", "stream_chunks", "token_pieces"]


@dataclass(frozen=True)
class Choice:
    """One answer as sent.

    Attributes:
        text: The response text (cut before the first stop string).
        pieces: ``text`` split at token boundaries (``"".join(pieces) == text``); what a stream sends.
        completion_tokens: Generated tokens up to the cut. finish_reason: ``"stop"`` or ``"length"``.
    """

    text: str
    pieces: tuple[str, ...]
    completion_tokens: int
    finish_reason: str


def token_pieces(tokenizer, ids: Sequence[int], text: str) -> list[str]:
    """``text`` (the decoding of ``ids``) split into one piece per token, each the text that token adds.

    A token that ends inside a multi-byte character adds ``""`` and the character comes with the token that
    completes it. Where the tokenizer's decoding is not additive (rare), the pieces fall back to the whole
    text on the last token, so ``"".join(pieces) == text`` always holds.
    """
    pieces: list[str] = []
    prefix, read = 0, 0
    for i in range(len(ids)):
        before = tokenizer.decode(ids[prefix:read], skip_special_tokens=True)
        after = tokenizer.decode(ids[prefix:i + 1], skip_special_tokens=True)
        if len(after) > len(before) and not after.endswith("\ufffd") and after.startswith(before):
            pieces.append(after[len(before):])
            prefix, read = read, i + 1
        else:
            pieces.append("")
    if "".join(pieces) != text:
        pieces = [""] * (len(ids) - 1) + [text] if ids else []
    return pieces


def finish_choice(gen: Generation, stop: Sequence[str], tokenizer) -> Choice:
    """The choice a generation gives: cut before the earliest stop string (finish ``"stop"``), else whole
    (``"stop"`` when a stop token ended it, ``"length"`` when ``max_tokens`` did)."""
    pieces = token_pieces(tokenizer, gen.response_ids, gen.text)
    hits = [i for i in (gen.text.find(s) for s in stop) if i >= 0]
    if not hits:
        return Choice(gen.text, tuple(pieces), len(gen.response_ids), "stop" if gen.stopped else "length")
    cut = min(hits)
    kept, length = [], 0
    for piece in pieces:
        if length >= cut:
            break
        kept.append(piece[:cut - length])
        length += len(piece)
    return Choice(gen.text[:cut], tuple(kept), len(kept), "stop")


def _usage(request: CompletionRequest, choices: Sequence[Choice]) -> dict:
    prompt = sum(len(p) for p in request.prompts)
    completion = sum(c.completion_tokens for c in choices)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def completion_body(request: CompletionRequest, choices: Sequence[Choice], *, rid: str, created: int,
                    model: str) -> dict:
    """The JSON body of a (non-streamed) chat or text completion."""
    if request.chat:
        items = [{"index": i, "message": {"role": "assistant", "content": c.text}, "logprobs": None,
                  "finish_reason": c.finish_reason} for i, c in enumerate(choices)]
    else:
        items = [{"index": i, "text": c.text, "logprobs": None, "finish_reason": c.finish_reason}
                 for i, c in enumerate(choices)]
    return {"id": rid, "object": "chat.completion" if request.chat else "text_completion", "created": created,
            "model": model, "choices": items, "usage": _usage(request, choices),
            "lens_steer": request.steering.describe()}


def stream_chunks(request: CompletionRequest, choices: Sequence[Choice], *, rid: str, created: int,
                  model: str) -> Iterator[dict]:
    """The chunks of a streamed completion, in order: per choice, one per token piece (chat: a role chunk
    first) and one with its finish reason; then a usage chunk when asked for. The first chunk carries
    ``lens_steer`` (the steering applied)."""
    kind = "chat.completion.chunk" if request.chat else "text_completion"
    first = True

    def chunk(index: int, content: str | None, finish: str | None, role: bool = False) -> dict:
        nonlocal first
        if request.chat:
            delta = ({"role": "assistant", "content": ""} if role else {"content": content} if content is not None
                     else {})
            choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": index, "text": content or "", "logprobs": None, "finish_reason": finish}
        out = {"id": rid, "object": kind, "created": created, "model": model, "choices": [choice]}
        if first:
            out["lens_steer"] = request.steering.describe()
            first = False
        if request.include_usage:
            out["usage"] = None
        return out

    for i, c in enumerate(choices):
        if request.chat:
            yield chunk(i, None, None, role=True)
        for piece in c.pieces:
            if piece:
                yield chunk(i, piece, None)
        yield chunk(i, None if request.chat else "", c.finish_reason)
    if request.include_usage:
        yield {"id": rid, "object": kind, "created": created, "model": model, "choices": [],
               "usage": _usage(request, choices)}
