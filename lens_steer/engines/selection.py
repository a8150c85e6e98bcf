"""A :class:`~lens_steer.engines.steer_spec.SteerSpec` applied to tokens and activations: trigger and region markers
resolved against a tokenizer (:func:`resolve_spec`), the positions and effective coefficients of a request decided
from its own tokens (:func:`coefficient_map`), the operators (:func:`apply_operator`), and the bridge's hook for
every spec that is not one of the paper's presets (:class:`PositionSteerer`).

Positions are columns of left-padded ``[batch, width]`` token ids whose prompts end at column ``n_prompt``: column
``n_prompt + t`` holds generated token t of every row, so one prompt width serves the whole batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from lens_steer.engines.steer_spec import SpecError, SteerSpec, Strength, as_spec

__all__ = ["PositionSteerer", "ResolvedSpec", "apply_operator", "coefficient_map", "effective_coefficients",
           "resolve_spec", "selected_positions", "strength_factors"]


@dataclass(frozen=True)
class ResolvedSpec:
    """A spec with its trigger texts and region markers as token ids of one tokenizer.

    Attributes:
        spec: The spec. triggers: Every token sequence of every trigger text (a text can take several: on its own
            and after other text, :func:`_trigger_sequences`). markers: The (open, close) marker token ids.
    """

    spec: SteerSpec
    triggers: tuple[tuple[int, ...], ...] = ()
    markers: tuple[int, int] | None = None


def _decode(tokenizer, ids: list[int]) -> str:
    try:
        return tokenizer.decode(ids, clean_up_tokenization_spaces=False)
    except TypeError:
        return tokenizer.decode(ids)


def _encode(tokenizer, text: str) -> list[int]:
    """``text``'s token ids on their own; a leading token the tokenizer adds (a prefix space) is dropped."""
    ids = list(tokenizer.encode(text, add_special_tokens=False))
    while len(ids) > 1 and _decode(tokenizer, ids[1:]) == text:
        ids = ids[1:]
    return ids


def _token_ids(tokenizer, text: str) -> list[int] | None:
    """``text`` as token ids, or None when it is not made of the model's tokens (an unknown token, or the ids do
    not decode back to it)."""
    ids = _encode(tokenizer, text)
    unk = getattr(tokenizer, "unk_token_id", None)
    if not ids or (unk is not None and unk in ids) or _decode(tokenizer, ids) != text:
        return None
    return ids


_CONTEXTS = ("", ".", "a", " a", "1", ":")
"""Text a trigger is tokenised between (as prefix and as suffix), besides on its own: what a model generates around
a step boundary."""


def _trigger_sequences(tokenizer, text: str) -> list[tuple[int, ...]]:
    """Every token sequence ``text`` takes in generated text: on its own and between each pair of
    :data:`_CONTEXTS` (a BPE tokenizer encodes ``"\n\n"`` alone as one token but ``".\n\nThe"`` as ``.``, ``\n``,
    ``\n``, ``The``); only sequences that decode back to ``text`` exactly. Empty when it is not made of the
    model's tokens."""
    own = _token_ids(tokenizer, text)
    if own is None:
        return []
    seqs = [tuple(own)]
    unk = getattr(tokenizer, "unk_token_id", None)
    for prefix in _CONTEXTS:
        head = _encode(tokenizer, prefix) if prefix else []
        for suffix in _CONTEXTS[1:]:
            tail = list(tokenizer.encode(suffix, add_special_tokens=False))
            whole = list(tokenizer.encode(prefix + text + suffix, add_special_tokens=False))
            if whole[:len(head)] != head or whole[len(whole) - len(tail):] != tail:
                continue  # the text merged with its neighbours' tokens: no boundary to match at
            middle = tuple(whole[len(head):len(whole) - len(tail)])
            if middle and middle not in seqs and unk not in middle and _decode(tokenizer, list(middle)) == text:
                seqs.append(middle)
    return seqs


def _marker_id(tokenizer, marker: str) -> int | None:
    """The one vocabulary token ``marker`` is, or None."""
    ids = _token_ids(tokenizer, marker)
    if ids is not None and len(ids) == 1:
        return ids[0]
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    return vocab.get(marker)


def resolve_spec(spec, tokenizer) -> ResolvedSpec:
    """Encode a spec's trigger texts and region markers with ``tokenizer``.

    Args:
        spec: A :class:`SteerSpec` or its text.
        tokenizer: The model's tokenizer.

    Raises:
        SpecError: a trigger text that is not made of the model's tokens, a region marker that is not one token of
            its vocabulary (one line naming the field).
    """
    spec = as_spec(spec)
    where = spec.at
    triggers: list[tuple[int, ...]] = []
    for text in where.triggers:
        seqs = _trigger_sequences(tokenizer, text)
        if not seqs:
            got = _encode(tokenizer, text)
            raise SpecError("at", f"trigger {text!r} is not made of the model's tokens (it encodes to {got}, which "
                                  f"decode to {_decode(tokenizer, got)!r})")
        triggers.extend(s for s in seqs if s not in triggers)
    markers = None
    if where.region is not None:
        found = [_marker_id(tokenizer, m) for m in where.region]
        for marker, token in zip(where.region, found):
            if token is None:
                raise SpecError("at", f"region marker {marker!r} is not in the model's vocabulary (it is "
                                      f"{len(_encode(tokenizer, marker))} tokens, not one)")
        markers = (found[0], found[1])
    return ResolvedSpec(spec, tuple(triggers), markers)


def selected_positions(
    resolved: ResolvedSpec, ids: Int[Tensor, "batch width"], valid: Bool[Tensor, "batch width"], n_prompt: int
) -> Bool[Tensor, "batch width"]:
    """Which columns a spec steers, per row, from the row's tokens (padding and unknown tokens never match).

    Args:
        resolved: The resolved spec. ids: Token ids (``-1``: unknown). valid: Real tokens (not padding).
        n_prompt: The column generated token 0 is at.
    """
    where = resolved.spec.at
    col = torch.arange(ids.shape[1])[None, :]
    gen = (col >= n_prompt) & valid
    if where.kind == "all":
        return valid.clone()
    if where.kind == "prompt":
        return valid & (col < n_prompt)
    if where.kind == "last":
        return valid & (col == n_prompt - 1)
    if where.kind in ("first", "window"):
        return gen & (col >= n_prompt + where.start) & (col < n_prompt + where.stop)
    tokens = torch.where(valid, ids, torch.full_like(ids, -1))
    if where.kind == "trigger":
        ends = torch.zeros_like(valid)
        for seq in resolved.triggers:
            m = len(seq)
            if m > tokens.shape[1]:
                continue
            windows = tokens.unfold(1, m, 1)  # [batch, width - m + 1, m]
            ends[:, m - 1:] |= (windows == torch.tensor(seq)).all(-1)
        counts = torch.nn.functional.pad(ends.long().cumsum(1), (where.span, 0))
        recent = counts[:, where.span:] - counts[:, :-where.span] > 0  # an occurrence ended in the last `span` columns
        return gen & recent
    open_id, close_id = resolved.markers
    none = torch.full_like(tokens, -1)
    last_open = torch.where(tokens == open_id, col.expand_as(tokens), none).cummax(1).values
    last_close = torch.where(tokens == close_id, col.expand_as(tokens), none).cummax(1).values
    inside_after = last_open > last_close
    inside_before = torch.nn.functional.pad(inside_after[:, :-1], (1, 0), value=False)
    return gen & inside_before & (tokens != close_id)


def strength_factors(strength: Strength, width: int, n_prompt: int) -> Float[Tensor, " width"]:
    """The schedule's factor at each column (prompt columns take its start value), float32."""
    if strength.kind == "constant":
        return torch.ones(width, dtype=torch.float32)
    t = torch.arange(width, dtype=torch.float64) - n_prompt
    if strength.kind == "step":
        f = torch.where(t < strength.n, strength.start, strength.end)
    else:
        f = (strength.end - strength.start) * t.clamp(min=0, max=strength.n) / strength.n + strength.start
    return torch.where(t < 0, strength.start, f).to(torch.float32)


def coefficient_map(
    resolved: ResolvedSpec, coeff: float, ids: Int[Tensor, "batch width"], valid: Bool[Tensor, "batch width"],
    n_prompt: int,
) -> tuple[Bool[Tensor, "batch width"], Float[Tensor, "batch width"]]:
    """``(selected, e)``: the columns steered and the effective coefficient e = coeff × factor there (0 elsewhere),
    float32 (see :func:`selected_positions`, :func:`strength_factors`)."""
    sel = selected_positions(resolved, ids, valid, n_prompt)
    e = torch.tensor(float(coeff), dtype=torch.float32) * strength_factors(resolved.spec.strength, ids.shape[1],
                                                                            n_prompt)
    return sel, torch.where(sel, e[None, :], torch.zeros((), dtype=torch.float32))


def apply_operator(op: str, x: Tensor, e: Float[Tensor, "..."], direction: Float[Tensor, " d_model"]) -> Tensor:
    """An operator's result at every position of ``x`` (``[..., d_model]``) with effective coefficients ``e``
    (``x.shape[:-1]``, float32) and a float32 ``direction`` v (u = v/|v|):

    * ``add``: ``x + (e·v)`` with ``e·v`` cast to x's dtype (the paper's presets add exactly this).
    * ``add-norm``: ``y = x + e·v``, then ``y · |x| / |y|`` (``y`` kept where ``|y| = 0``), in float32.
    * ``clamp``: ``x - (x·u)u + e·v``, in float32: the projection on u becomes ``e|v|``.
    * ``ablate``: ``x - e(x·u)u``, in float32 (e = 1 removes the component along u).
    """
    ev = e[..., None] * direction
    if op == "add":
        return x + ev.to(x.dtype)
    xf = x.float()
    if op == "add-norm":
        y = xf + ev
        yn = y.norm(dim=-1, keepdim=True)
        out = y * torch.where(yn > 0, xf.norm(dim=-1, keepdim=True) / yn, torch.ones_like(yn))
    else:
        unit = direction / direction.norm()
        proj = (xf @ unit)[..., None]
        out = xf - proj * unit + ev if op == "clamp" else xf - (e[..., None] * proj) * unit
    return out.to(x.dtype)


class PositionSteerer:
    """The bridge hook of a steering that is not a paper preset: a forward pre-hook on the HF model keeps each
    row's tokens (from ``input_ids``, the attention mask and the KV cache's length) and decides the pass's
    positions and coefficients; the hook at ``hook_resid_post`` applies the operator there and leaves every other
    position as it was, bit for bit.

    The first pass after :meth:`new_sequence` is the prompt. With a KV cache each later pass appends its tokens;
    without one, each pass re-runs the whole sequence and every position is decided again (the same way, since a
    position's selection depends only on the tokens up to it).
    """

    def __init__(self, resolved: ResolvedSpec, coeff: float, direction: Float[Tensor, " d_model"]) -> None:
        self.resolved = resolved
        self.coeff = float(coeff)
        self.direction = direction.float()
        self.prompt_len: int | None = None
        self.ids: Tensor | None = None
        self.valid: Tensor | None = None
        self.selected: Tensor | None = None
        self.coefficients: Tensor | None = None
        self.active = False

    def new_sequence(self) -> None:
        """The next forward pass is a new prompt."""
        self.prompt_len = None
        self.ids = self.valid = None

    def pre_forward(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            raise RuntimeError(f"steering at {self.resolved.spec.at.kind} positions reads the input token ids; "
                               "this forward passes none (inputs_embeds)")
        cache = kwargs.get("past_key_values")
        offset = int(cache.get_seq_length()) if cache is not None and hasattr(cache, "get_seq_length") else 0
        batch, length = ids.shape
        new_ids = ids.detach().to("cpu", torch.long)
        mask = kwargs.get("attention_mask")
        new_valid = (mask[:, -length:].detach().to("cpu") != 0 if mask is not None and mask.dim() == 2
                     else torch.ones(batch, length, dtype=torch.bool))
        if self.prompt_len is None:
            self.prompt_len = offset + length
        if self.ids is None or self.ids.shape[0] != batch:
            self.ids, self.valid = new_ids[:, :0], new_valid[:, :0]
        keep = min(offset, self.ids.shape[1])
        unknown = offset - keep
        self.ids = torch.cat([self.ids[:, :keep], torch.full((batch, unknown), -1), new_ids], 1)
        self.valid = torch.cat([self.valid[:, :keep], torch.zeros(batch, unknown, dtype=torch.bool), new_valid], 1)
        sel, e = coefficient_map(self.resolved, self.coeff, self.ids, self.valid, self.prompt_len)
        self.selected, self.coefficients = sel[:, offset:].to(ids.device), e[:, offset:].to(ids.device)
        self.active = bool(sel[:, offset:].any())
        return None

    def __call__(self, x: Tensor, hook) -> Tensor:
        if self.selected is None or tuple(self.selected.shape) != tuple(x.shape[:2]):
            raise RuntimeError(f"{hook.name}: the steering's positions were not decided for this pass (a forward "
                               "that bypassed the model's own forward?)")
        if not self.active:
            return x
        out = apply_operator(self.resolved.spec.op, x, self.coefficients, self.direction.to(x.device))
        return torch.where(self.selected[..., None], out, x)


def effective_coefficients(steering, token_ids, n_prompt: int, tokenizer) -> Float[Tensor, " pos"]:
    """The effective coefficient a :class:`~lens_steer.engines.base.Steering` applies at each position of one
    sequence (prompt then response), 0 where it does not steer: what the engines apply, for plotting.

    Args:
        steering: The steering. token_ids: The sequence. n_prompt: Its prompt's length.
        tokenizer: The model's tokenizer (triggers and region markers are its tokens).
    """
    ids = torch.as_tensor(list(token_ids), dtype=torch.long)[None]
    resolved = resolve_spec(steering.spec, tokenizer)
    return coefficient_map(resolved, steering.coeff, ids, torch.ones_like(ids, dtype=torch.bool), n_prompt)[1][0]
