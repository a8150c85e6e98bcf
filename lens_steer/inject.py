"""Add c·v to (or project a direction out of) ``blocks.{l}.hook_resid_post`` inside a ``with`` block.

Modes of :func:`steer`:

* ``"continuous"``: every position of every forward pass (the prompt and each generated
  token).
* ``"single"``: only the positions of the prompt. The prompt is the first forward pass
  inside the context, or after :func:`new_sequence` (which :func:`lens_steer.generate.generate`
  calls at the start of each batch). With a KV cache the prompt's keys and values carry the
  steering and decode steps get nothing; without one, every re-run of the full sequence
  steers positions ``[0, prompt_len)`` again, so both give the same tokens.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

from lens_steer.hooks import attach, attach_forward_pre_hook
from lens_steer.models import check_layer, d_model, hf_model, resid_post_name

SteerMode = Literal["continuous", "single"]
STEER_MODES: tuple[str, ...] = ("continuous", "single")


def resolve_direction(model, vector, layer: int, *, allow_other_model: bool = False) -> Float[Tensor, "d_model"]:
    """The direction at ``layer`` of a ``SteeringVector`` or tensor, checked against ``model``.

    Args:
        model: The bridge.
        vector: A :class:`~lens_steer.vectors.SteeringVector`, a ``[d_model]`` tensor, or a
            ``[n_layers, d_model]`` tensor.
        layer: Block index.
        allow_other_model: Accept a ``SteeringVector`` derived on a different checkpoint of
            the same shape (otherwise a fingerprint mismatch raises).

    Raises:
        IndexError: ``layer`` out of range. ValueError: wrong width/depth, non-finite values,
        or a vector from another model.
    """
    from lens_steer.vectors import SteeringVector

    check_layer(model, layer)
    if isinstance(vector, SteeringVector):
        vector.check_compatible(model, allow_other_model=allow_other_model)
        direction = vector.directions[layer]
    elif isinstance(vector, Tensor):
        if vector.ndim == 1:
            direction = vector
        elif vector.ndim == 2:
            if vector.shape[0] != model.cfg.n_layers:
                raise ValueError(
                    f"vector has {vector.shape[0]} layers but the model has {model.cfg.n_layers}"
                )
            direction = vector[layer]
        else:
            raise ValueError(f"expected a [d_model] or [n_layers, d_model] tensor, got shape {tuple(vector.shape)}")
    else:
        raise TypeError(f"expected a SteeringVector or a tensor, got {type(vector).__name__}")
    if direction.shape[-1] != d_model(model):
        raise ValueError(f"vector width {direction.shape[-1]} does not match the model's d_model {d_model(model)}")
    if not torch.isfinite(direction).all():
        raise ValueError("vector contains NaN or infinite values")
    return direction


def _active(model) -> list:
    registry = model.__dict__.get("_lens_steer_single")
    if registry is None:
        registry = []
        model.__dict__["_lens_steer_single"] = registry
    return registry


def new_sequence(model) -> None:
    """Tell active single-mode steerers that the next forward pass is a new prompt."""
    for steerer in _active(model):
        steerer.prompt_len = None


class _SingleSteerer:
    """Adds ``delta`` to the prompt positions only; tracks the cache offset of each pass."""

    def __init__(self, delta: Tensor) -> None:
        self.delta = delta
        self.prompt_len: int | None = None
        self.offset = 0

    def pre_forward(self, module, args, kwargs):
        cache = kwargs.get("past_key_values")
        self.offset = int(cache.get_seq_length()) if cache is not None and hasattr(cache, "get_seq_length") else 0
        return None

    def __call__(self, x: Tensor, hook) -> Tensor:
        length = x.shape[1]
        if self.prompt_len is None:
            self.prompt_len = self.offset + length
        end = min(self.prompt_len - self.offset, length)
        if end <= 0:
            return x
        if end == length:
            return x + self.delta
        mask = (torch.arange(length, device=x.device) < end).to(x.dtype)
        return x + mask[None, :, None] * self.delta


@contextmanager
def steer(
    model,
    vector,
    layer: int,
    coeff: float,
    mode: SteerMode = "continuous",
    *,
    allow_other_model: bool = False,
) -> Iterator[Tensor]:
    """Add ``coeff * vector[layer]`` to ``blocks.{layer}.hook_resid_post`` inside the block.

    Args:
        model: A ``TransformerBridge``.
        vector: A ``SteeringVector`` or a ``[d_model]`` / ``[n_layers, d_model]`` tensor.
        layer: Block whose output is steered.
        coeff: Multiplier c (negative subtracts the direction).
        mode: ``"continuous"`` or ``"single"`` (see the module docstring).
        allow_other_model: See :func:`resolve_direction`.

    Yields:
        The added tensor ``coeff * v`` (in the model's dtype).

    Example:
        >>> with steer(model, vec, layer=16, coeff=20.0, mode="single"):
        ...     out = generate(model, prompts, cfg)
    """
    if mode not in STEER_MODES:
        raise ValueError(f"unknown steering mode {mode!r}; expected one of {STEER_MODES}")
    direction = resolve_direction(model, vector, layer, allow_other_model=allow_other_model)
    param = next(hf_model(model).parameters())
    delta = (float(coeff) * direction.detach().to(torch.float32)).to(device=param.device, dtype=param.dtype)
    name = resid_post_name(layer)
    if mode == "continuous":

        def add(x: Tensor, hook) -> Tensor:
            return x + delta

        with attach(model, [(name, add)]):
            yield delta
        return

    steerer = _SingleSteerer(delta)
    registry = _active(model)
    with ExitStack() as stack:
        stack.enter_context(attach_forward_pre_hook(hf_model(model), steerer.pre_forward))
        stack.enter_context(attach(model, [(name, steerer)]))
        registry.append(steerer)
        stack.callback(lambda: registry.remove(steerer))
        yield delta


@contextmanager
def ablate_direction(model, direction: Float[Tensor, "d_model"] | Tensor, layers: list[int] | int) -> Iterator[None]:
    """Project the unit direction out of ``hook_resid_post`` at ``layers``, every position.

    ``x <- x - (x·u) u`` with ``u = direction / ||direction||``; for a ``[n_layers, d_model]``
    tensor each layer uses its own row.
    """
    layer_list = [layers] if isinstance(layers, int) else list(layers)
    hooks = []
    param = next(hf_model(model).parameters())
    for layer in layer_list:
        check_layer(model, layer)
        d = direction[layer] if direction.ndim == 2 else direction
        if d.shape[-1] != d_model(model):
            raise ValueError(f"direction width {d.shape[-1]} does not match d_model {d_model(model)}")
        norm = d.float().norm()
        if not torch.isfinite(norm) or norm == 0:
            raise ValueError(f"cannot ablate a zero or non-finite direction at layer {layer}")
        unit = (d.float() / norm).to(device=param.device, dtype=param.dtype)

        def project_out(x: Tensor, hook, unit=unit) -> Tensor:
            return x - (x @ unit)[..., None] * unit

        hooks.append((resid_post_name(layer), project_out))
    with attach(model, hooks):
        yield
