"""Residual capture inside vLLM's compiled model (derivation): the opaque custom op ``lens_steer::capture`` the
steering hook calls with the stream after each block, and the running per-request sums it adds to.

Custom ops are not traced into the graph: the op's body runs eagerly at every step and, while a :class:`Capture` is
active, adds the stream at the step's counted tokens to per-request running sums; otherwise it returns at once.
Which tokens count is decided before each step (:meth:`Capture.fill`) from each request's positions, with a
high-water mark so a recomputed (preempted) token is never counted twice. Under CUDA graphs the op must run outside
the graphs: the engine adds it to vLLM's split points.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["CAPTURE_OP", "ROW_KEY", "Capture", "active", "register_capture_op"]

CAPTURE_OP = "lens_steer::capture"
ROW_KEY = "lens_steer_row"
"""``SamplingParams.extra_args`` key: the request's row in the capture's sums."""


@dataclass
class Capture:
    """Running residual sums for one ``generate`` call: rows are requests (``ROW_KEY`` in extra_args).

    A token at position ``p`` of a request with ``n_prompt`` prompt tokens counts when ``lo <= p < hi`` for
    the positions asked: ``generated`` ``[n_prompt, n_prompt + max_new)`` (the input at position
    ``n_prompt + k`` is response token ``k``; a stop token is never fed back), ``prompt`` ``[0, n_prompt)``,
    ``all`` both.
    """

    positions: str
    max_new: int
    sums: torch.Tensor  # [rows, layers, d_model] float32, on the model's device
    norms: torch.Tensor  # [rows, layers] float32
    counts: np.ndarray  # [rows] int64
    next_pos: np.ndarray  # [rows] first position not yet counted
    sel: torch.Tensor | None = None  # this step's counted token offsets
    rows: torch.Tensor | None = None  # their request rows

    @classmethod
    def empty(cls, n_rows: int, n_layers: int, d_model: int, positions: str, max_new: int, device) -> Capture:
        return cls(positions, max_new, torch.zeros(n_rows, n_layers, d_model, dtype=torch.float32, device=device),
                   torch.zeros(n_rows, n_layers, dtype=torch.float32, device=device),
                   np.zeros(n_rows, dtype=np.int64), np.zeros(n_rows, dtype=np.int64))

    def window(self, n_prompt: int) -> tuple[int, int]:
        lo = n_prompt if self.positions == "generated" else 0
        hi = n_prompt if self.positions == "prompt" else n_prompt + self.max_new
        return lo, hi

    def fill(self, step: Sequence) -> None:
        """Decide the step's counted tokens (``step``: its requests in token order, as for the steering fill)."""
        offsets, rows = [], []
        start = 0
        for r in step:
            row = r.extra.get(ROW_KEY) if r.extra else None
            if row is not None:
                lo, hi = self.window(r.n_prompt)
                a, b = max(lo, r.first, int(self.next_pos[row])), min(hi, r.first + r.n)
                if b > a:
                    offsets.append(np.arange(start + a - r.first, start + b - r.first))
                    rows.append(np.full(b - a, row))
                    self.counts[row] += b - a
                    self.next_pos[row] = b
            start += r.n
        if offsets:
            device = self.sums.device
            self.sel = torch.from_numpy(np.concatenate(offsets)).to(device)
            self.rows = torch.from_numpy(np.concatenate(rows)).to(device)
        else:
            self.sel = self.rows = None


active: list[Capture] = []
"""The capture of the running ``generate`` call in this process (empty: none)."""


def _capture(hidden: torch.Tensor, residual: torch.Tensor | None, flag: torch.Tensor, layer: int) -> None:
    """Body of ``lens_steer::capture``: add the stream after block ``layer`` at this step's counted tokens to
    the active capture (``flag``, a per-layer dummy declared mutated, keeps the call in the graph)."""
    cap = active[0] if active else None
    if cap is None or cap.sel is None:
        return
    d_model = hidden.shape[-1]
    stream = hidden.reshape(-1, d_model).index_select(0, cap.sel).float()
    if residual is not None:
        stream = stream + residual.reshape(-1, d_model).index_select(0, cap.sel).float()
    cap.sums[:, layer].index_add_(0, cap.rows, stream)
    cap.norms[:, layer].index_add_(0, cap.rows, stream.norm(dim=-1))


_LIBRARY: list = []  # keeps the torch.library registration alive


def register_capture_op() -> None:
    """Define ``lens_steer::capture`` once per process (torch.library; vLLM needs no part in it)."""
    if _LIBRARY:
        return
    lib = torch.library.Library("lens_steer", "FRAGMENT")
    lib.define("capture(Tensor hidden, Tensor? residual, Tensor(a!) flag, int layer) -> ()")
    lib.impl("capture", _capture, "CompositeExplicitAutograd")
    torch.library.register_fake("lens_steer::capture", lambda hidden, residual, flag, layer: None, lib=lib)
    _LIBRARY.append(lib)
