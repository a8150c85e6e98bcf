"""Model fingerprints: a short hash of the input embedding, the same whichever engine holds the weights."""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor

__all__ = ["embedding_fingerprint", "fingerprint_of_sample", "fingerprint_rows"]


def fingerprint_rows(vocab: int) -> range:
    """The embedding rows :func:`embedding_fingerprint` reads: a stride giving about 256 of them."""
    return range(0, vocab, max(1, vocab // 256))


def fingerprint_of_sample(shape: tuple[int, int], sample: Tensor) -> str:
    """The fingerprint of an embedding of ``shape`` from its :func:`fingerprint_rows` (``[n, d_model]``)."""
    h = hashlib.sha256(repr(tuple(shape)).encode())
    h.update(sample.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def embedding_fingerprint(weight: Tensor) -> str:
    """A short hash of an embedding matrix ``[vocab, d_model]``, shape included (a strided sample of
    256 rows, read in float32), so two checkpoints of one architecture differ. Any engine computes
    the same value from the same weights (a sharded one from :func:`fingerprint_rows` alone)."""
    rows = fingerprint_rows(weight.shape[0])
    return fingerprint_of_sample(tuple(weight.shape), weight.detach()[rows.start:rows.stop:rows.step])
