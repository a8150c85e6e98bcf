"""The positions and effective coefficients of a steering spec, decided per request and per engine step from the
request's own tokens, in numpy: what the vLLM engine writes into its per-step buffers. The definitions are
:mod:`lens_steer.engines.selection`'s (the bridge's reference), restated for a request whose tokens arrive a chunk at
a time: positions ``[first, first + n)`` of a request with ``n_prompt`` prompt tokens, generated token t at position
``n_prompt + t``. Pure: no torch, no vLLM.

Only regions keep state between steps (whether the request is inside a region after its last decided position);
it is recomputed from position 0 whenever a step does not start where the last one ended (a prefix served from the
prefix cache, a preempted request recomputed). Triggers look back at the tokens before the step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lens_steer.engines.steer_spec import SteerSpec, Strength, as_spec

__all__ = ["OP_FIELDS", "Selector", "operator_fields", "operator_fields_one"]

OP_FIELDS = 5
"""Per-token fields of an operator slot: bank row, a, b, add-norm flag, |v| (see :func:`operator_fields`)."""


_FIELDS = {"add": lambda e: (0.0, e, 0.0), "add-norm": lambda e: (0.0, e, 1.0), "clamp": lambda e: (1.0, e, 0.0),
           "ablate": lambda e: (e, 0.0, 0.0)}
"""Each operator's ``(a, b, m)`` as a function of the effective coefficient e (see :func:`operator_fields`)."""


def operator_fields_one(op: str, e: float) -> tuple[float, float, float]:
    """``(a, b, m)`` such that ``y = x - a(x·u)u + b·v``, rescaled to ``|x|`` where ``m`` is 1, is the operator's
    result with effective coefficient ``e``:

    * ``add``: a = 0, b = e; ``add-norm``: a = 0, b = e, m = 1; ``clamp``: a = 1, b = e; ``ablate``: a = e, b = 0.
    """
    if op not in _FIELDS:
        raise ValueError(f"unknown operator {op!r}")
    return _FIELDS[op](e)


def operator_fields(op: str, e: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`operator_fields_one` of every token: float32 arrays shaped like ``e``."""
    return tuple(np.broadcast_to(np.asarray(x, dtype=np.float32), e.shape) for x in operator_fields_one(op, e))


def _factor(strength: Strength, t: np.ndarray) -> np.ndarray:
    """:func:`lens_steer.engines.selection.strength_factors` at generated-token indices ``t`` (negative: prompt),
    computed the same way (float64, then float32)."""
    if strength.kind == "constant":
        return np.ones(t.shape, dtype=np.float32)
    t = t.astype(np.float64)
    if strength.kind == "step":
        f = np.where(t < strength.n, strength.start, strength.end)
    else:
        f = (strength.end - strength.start) * np.clip(t, 0, strength.n) / strength.n + strength.start
    return np.where(t < 0, strength.start, f).astype(np.float32)


@dataclass
class Selector:
    """One steering's spec and coefficient, resolved to token ids, deciding positions and coefficients per step.

    Attributes:
        spec: The spec (or its text). coeff: The coefficient c.
        triggers: ``trigger``: one token-id sequence per trigger text (:func:`~lens_steer.engines.selection.
            resolve_spec`). markers: ``region``: the (open, close) token ids.
    """

    spec: SteerSpec
    coeff: float
    triggers: tuple[tuple[int, ...], ...] = ()
    markers: tuple[int, int] | None = None
    _inside: dict = field(default_factory=dict, repr=False)  # request id -> (next position, inside after it)

    def __post_init__(self) -> None:
        self.spec = as_spec(self.spec)
        self.kind = self.spec.at.kind
        self._coeff32 = np.float32(self.coeff)
        self._seqs = [np.asarray(s, dtype=np.int64) for s in self.triggers]
        self._lists = [list(s) for s in self.triggers]
        self._lookback = max((len(s) for s in self.triggers), default=1) - 1 + self.spec.at.span - 1
        if self.kind == "trigger" and not self.triggers:
            raise ValueError("a trigger steering needs its token sequences (resolve_spec)")
        if self.kind == "region" and self.markers is None:
            raise ValueError("a region steering needs its marker token ids (resolve_spec)")

    @property
    def reads_tokens(self) -> bool:
        """Whether positions depend on the request's tokens (triggers, regions)."""
        return self.kind in ("trigger", "region")

    def forget(self) -> None:
        """Drop every request's region state (after a ``generate`` call)."""
        self._inside.clear()

    def decide_one(self, tokens, n_prompt: int, pos: int, req_id=None) -> float | None:
        """:meth:`decide` for one position (a decode step), without arrays: the effective coefficient there (a
        float32 value as a Python float), or None where it is not steered."""
        kind, where = self.kind, self.spec.at
        t = pos - n_prompt
        if kind == "all":
            hit = True
        elif kind == "prompt":
            hit = t < 0
        elif kind == "last":
            hit = t == -1
        elif kind in ("first", "window"):
            hit = where.start <= t < where.stop
        elif t < 0:
            hit = False
        elif tokens is None:
            raise ValueError(f"at={kind} reads the request's tokens, which this step did not provide")
        elif kind == "trigger":
            lo = max(0, pos - self._lookback)
            window = tokens[lo:pos + 1].tolist()
            ends = range(max(pos - where.span + 1, 0) - lo, pos + 1 - lo)  # an occurrence may end at these
            hit = any(q + 1 >= len(seq) and window[q + 1 - len(seq):q + 1] == seq for q in ends for seq in self._lists)
        else:
            state = self._inside.get(req_id)
            if state is None or state[0] != pos:  # decided from position 0
                sel, e = self.decide(tokens, n_prompt, pos, 1, req_id)
                return float(e[0]) if sel[0] else None
            token, (open_id, close_id) = int(tokens[pos]), self.markers
            hit = state[1] and token != close_id
            self._inside[req_id] = (pos + 1, token == open_id or hit)
        if not hit:
            return None
        if self.spec.strength.kind == "constant":
            return float(self._coeff32)
        strength = self.spec.strength  # its factor in float64 as the bridge computes it, then float32
        return float(self._coeff32 * np.float32(strength.start if t < 0 else strength.factor(t)))

    def decide(self, tokens, n_prompt: int, first: int, n: int, req_id=None) -> tuple[np.ndarray, np.ndarray]:
        """``(selected, e)`` at positions ``[first, first + n)`` of one request: which are steered (bool ``[n]``) and
        the effective coefficient ``coeff × factor(t)`` there (float32 ``[n]``, 0 elsewhere).

        Args:
            tokens: The request's token ids, at least positions ``[0, first + n)`` (read for triggers and regions
                only; may be None otherwise). n_prompt: Its prompt length. first / n: The step's positions.
            req_id: The request's id (keys its region state).
        """
        sel = self.selected(tokens, n_prompt, first, n, req_id)
        if not sel.any():
            return sel, np.zeros(n, dtype=np.float32)
        e = self._coeff32 * _factor(self.spec.strength, np.arange(first, first + n) - n_prompt)
        return sel, np.where(sel, e, np.float32(0)).astype(np.float32)

    def selected(self, tokens, n_prompt: int, first: int, n: int, req_id=None) -> np.ndarray:
        """Which positions of ``[first, first + n)`` the spec steers (bool ``[n]``); see :meth:`decide`."""
        where = self.spec.at
        kind = self.kind
        pos = np.arange(first, first + n)
        if kind == "all":
            return np.ones(n, dtype=bool)
        if kind == "prompt":
            return pos < n_prompt
        if kind == "last":
            return pos == n_prompt - 1
        t = pos - n_prompt
        if kind in ("first", "window"):
            return (t >= where.start) & (t < where.stop)
        gen = t >= 0
        if not gen.any():  # triggers and regions steer generated tokens only; a region is decided when they come
            return gen
        if tokens is None:
            raise ValueError(f"at={kind} reads the request's tokens, which this step did not provide")
        tokens = np.asarray(tokens)
        if kind == "trigger":
            return gen & self._recent_trigger(tokens, first, n)
        return gen & self._region(tokens, first, n, req_id)

    def _recent_trigger(self, tokens: np.ndarray, first: int, n: int) -> np.ndarray:
        """Whether an occurrence of a trigger ends within the last ``span`` positions of each position."""
        span = self.spec.at.span
        lo = max(0, first - self._lookback)  # the earliest token an occurrence ending in range may start at
        window = tokens[lo:first + n]
        ends = np.zeros(len(window), dtype=bool)  # ends[j]: an occurrence ends at position lo + j
        for seq in self._seqs:
            m = len(seq)
            if m <= len(window):
                ends[m - 1:] |= (np.lib.stride_tricks.sliding_window_view(window, m) == seq).all(-1)
        counts = np.concatenate([np.zeros(span, dtype=np.int64), np.cumsum(ends)])
        j = np.arange(first - lo, first - lo + n)
        return counts[j + span] - counts[j] > 0  # an occurrence ended in (p - span, p]

    def _region(self, tokens: np.ndarray, first: int, n: int, req_id) -> np.ndarray:
        """Inside a region before each position, and not its close marker; updates the request's state."""
        open_id, close_id = self.markers
        state = self._inside.get(req_id)
        if state is not None and state[0] == first:
            inside, start = state[1], first
        else:  # a first generated token, or a recomputation (preemption): decide from position 0
            inside, start = False, 0
        chunk = tokens[start:first + n]
        if n == 1 and start == first:  # a decode step
            token = int(chunk[0])
            self._inside[req_id] = (first + 1, token == open_id or (inside and token != close_id))
            return np.array([inside and token != close_id])
        event = np.where(chunk == open_id, 1, np.where(chunk == close_id, 0, -1))
        last = np.maximum.accumulate(np.where(event >= 0, np.arange(len(chunk)), -1))
        after = np.where(last >= 0, event[np.maximum(last, 0)] == 1, inside)  # inside after each position
        before = np.concatenate([[inside], after[:-1]])
        self._inside[req_id] = (first + n, bool(after[-1]))
        k = first - start
        return before[k:] & (chunk[k:] != close_id)
