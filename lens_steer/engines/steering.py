"""Steering on a TransformerBridge: the one direction resolver, the hooks that steer at
``blocks.{l}.hook_resid_post`` (the paper's two modes here, every other
:class:`~lens_steer.engines.steer_spec.SteerSpec` through :mod:`lens_steer.engines.selection`), and
:func:`ablate_direction` (:func:`lens_steer.engines.api.steer` is built on the same hooks).

The paper's modes:

* ``"continuous"``: every position of every forward pass (the prompt and each generated token).
* ``"single"``: only the positions of the prompt. The prompt is the first forward pass inside
  the context, or the first after the engine starts a new batch. With a KV cache the prompt's
  keys and values carry the steering and decode steps get nothing; without one, every re-run of
  the full sequence steers positions ``[0, prompt_len)`` again, so both give the same tokens.

Other specs follow the same rule for what "the prompt" is, and decide every other position from the
request's own tokens.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager

import torch
from jaxtyping import Float
from torch import Tensor

from lens_steer.engines.base import Steering
from lens_steer.engines.hooks import attach, attach_forward_pre_hook
from lens_steer.engines.selection import PositionSteerer, resolve_spec
from lens_steer.models import ModelInfo, hf_model, layer_span, model_info, resid_post_name

__all__ = ["LARGE_STEERING", "SingleSteerer", "ablate_direction", "check_delta_finite", "resolve_direction",
           "resolve_directions", "steering_delta", "steering_hooks"]


def resolve_directions(
    info: ModelInfo, vector, *, allow_other_model: bool = False
) -> Float[Tensor, "layer d_model"]:
    """``[n_layers, d_model]`` directions of a ``SteeringVector`` or tensor, checked against a model.

    Args:
        info: The model's identity (:func:`lens_steer.models.model_info` or an engine's ``info``).
        vector: A ``SteeringVector`` (anything with ``directions`` and ``check_compatible``), a
            ``[d_model]`` tensor (the same direction at every layer) or a ``[n_layers, d_model]`` tensor.
        allow_other_model: Accept a ``SteeringVector`` derived on another checkpoint of the same shape.

    Raises:
        ValueError: wrong width or depth, non-finite values. ModelMismatchError: a vector from
        another model. TypeError: not a vector.
    """
    if hasattr(vector, "directions") and hasattr(vector, "check_compatible"):
        vector.check_compatible(info, allow_other_model=allow_other_model)
        directions = vector.directions
    elif isinstance(vector, Tensor):
        if vector.ndim == 1:
            directions = vector[None].expand(info.n_layers, -1)
        elif vector.ndim == 2:
            if vector.shape[0] != info.n_layers:
                raise ValueError(f"directions of shape {tuple(vector.shape)} do not fit a model with "
                                 f"{info.n_layers} layers x d_model {info.d_model}")
            directions = vector
        else:
            raise ValueError(f"expected a [d_model] or [n_layers, d_model] tensor, got shape {tuple(vector.shape)}")
    else:
        raise TypeError(f"expected a SteeringVector or a tensor, got {type(vector).__name__}")
    if directions.shape[-1] != info.d_model:
        raise ValueError(f"vector width {directions.shape[-1]} does not match the model's d_model {info.d_model}")
    return directions.detach()


def resolve_direction(info: ModelInfo, vector, layer: int, *, allow_other_model: bool = False) -> Float[Tensor, "d_model"]:
    """The direction at ``layer`` (see :func:`resolve_directions`); ``IndexError`` for a layer out of
    range, ``ValueError`` for non-finite values."""
    info.check_layer(layer)
    direction = resolve_directions(info, vector, allow_other_model=allow_other_model)[layer]
    if not torch.isfinite(direction).all():
        raise ValueError("vector contains NaN or infinite values")
    return direction


LARGE_STEERING = 10.0
"""A steering whose ``‖c·v‖`` exceeds this multiple of the layer's mean residual norm is warned about."""


def check_delta_finite(delta: Tensor, s, dtype: torch.dtype) -> None:
    """Refuse a steering whose ``c·v`` is not finite in the model's ``dtype``.

    A finite coefficient can still overflow (``--coeff 1e39`` in float32, ``1e5`` in float16): the
    model then adds infinities, its logits turn NaN and every response comes out empty, so refuse
    it instead.

    Args:
        delta: ``c·v`` as computed (any float dtype).
        s: The :class:`~lens_steer.engines.base.Steering` it came from (named in the message).
        dtype: The dtype the model adds it in.

    Raises:
        ValueError: one line naming the coefficient, the layer and the dtype.
    """
    if not torch.isfinite(delta.to(dtype)).all():
        name = str(dtype).removeprefix("torch.")
        raise ValueError(f"steering coefficient {float(s.coeff):g} at layer {s.layer} is too large: c·v is not finite "
                         f"in {name} (largest finite value {torch.finfo(dtype).max:.3g})")


def steering_delta(info: ModelInfo, s, dtype: torch.dtype = torch.float32) -> Float[Tensor, "d_model"]:
    """``c·v`` (float32) of a :class:`~lens_steer.engines.base.Steering`, checked the same way for every
    engine and entry point.

    Args:
        info: The model's identity.
        s: The steering.
        dtype: The model's parameter dtype: ``c·v`` must be finite in it (:func:`check_delta_finite`).

    Raises:
        IndexError: layer out of range. ValueError: a non-finite vector, an all-zero direction (steering
        with it does nothing), wrong width, ``c·v`` not finite in ``dtype``. ModelMismatchError: another
        model's vector.

    Warns:
        RuntimeWarning: ``‖c·v‖`` above :data:`LARGE_STEERING` times the layer's mean residual norm
        (known for a ``SteeringVector``): allowed, since users explore, but outputs may degenerate.
    """
    coeff = float(s.coeff)  # finite: checked when the Steering was made
    direction = resolve_direction(info, s.vector, s.layer, allow_other_model=s.allow_other_model).to(torch.float32)
    norm = float(direction.norm())
    if norm == 0.0:
        others = (resolve_directions(info, s.vector, allow_other_model=s.allow_other_model).abs().sum(-1) > 0)
        have = others.nonzero().flatten().tolist()
        hint = f" (this vector has directions at layers {layer_span(have)})" if have else ""
        raise ValueError(f"the direction at layer {s.layer} is all zeros: steering with it would change nothing{hint}")
    delta = coeff * direction
    check_delta_finite(delta, s, dtype)
    resid = getattr(s.vector, "resid_norm", None)
    if s.spec.op == "ablate":  # its coefficient is the fraction of the component removed, not a size
        resid = None
    if resid is not None and 0 <= s.layer < len(resid) and float(resid[s.layer]) > 0:
        ratio = abs(coeff) * norm / float(resid[s.layer])
        if ratio > LARGE_STEERING:
            warnings.warn(f"steering at layer {s.layer} with c={coeff:g} adds a vector {ratio:.0f}x the layer's mean "
                          f"residual norm ({float(resid[s.layer]):.3g}); expect degenerate text", RuntimeWarning,
                          stacklevel=3)
    return delta


class SingleSteerer:
    """Adds ``delta`` to the prompt positions only; tracks the cache offset of each pass."""

    def __init__(self, delta: Tensor) -> None:
        self.delta = delta
        self.prompt_len: int | None = None
        self.offset = 0

    def new_sequence(self) -> None:
        """The next forward pass is a new prompt."""
        self.prompt_len = None

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
def steering_hooks(model, plan: Sequence[Steering], info: ModelInfo, registry: list) -> Iterator[list[Tensor]]:
    """Attach the hooks of every steering in ``plan`` to the bridge, in plan order; remove exactly them on exit.

    The paper's presets install their own hooks (continuous: ``x + c·v``; single: :class:`SingleSteerer`), so they
    compute exactly what they always did; any other spec installs a
    :class:`~lens_steer.engines.selection.PositionSteerer`. Every direction is resolved, and every trigger and
    region marker encoded with the model's tokenizer (and so checked), before anything is attached. Steerers that
    restart per prompt are added to ``registry`` (the engine's, which restarts them per batch) while active.

    Yields:
        The tensors ``coeff * v`` (in the model's dtype), one per steering.
    """
    param = next(hf_model(model).parameters())
    deltas, resolved = [], []
    for s in plan:
        deltas.append(steering_delta(info, s, param.dtype).to(device=param.device, dtype=param.dtype))
        resolved.append(None if s.spec.preset is not None else resolve_spec(s.spec, model.tokenizer))
    with ExitStack() as stack:
        for s, delta, spec in zip(plan, deltas, resolved):
            name = resid_post_name(s.layer)
            if s.spec.preset == "continuous":

                def add(x: Tensor, hook, delta=delta) -> Tensor:
                    return x + delta

                stack.enter_context(attach(model, [(name, add)]))
                continue
            if s.spec.preset == "single":
                steerer = SingleSteerer(delta)
            else:
                direction = resolve_direction(info, s.vector, s.layer, allow_other_model=s.allow_other_model)
                steerer = PositionSteerer(spec, s.coeff, direction.to(device=param.device, dtype=torch.float32))
            stack.enter_context(attach_forward_pre_hook(hf_model(model), steerer.pre_forward))
            stack.enter_context(attach(model, [(name, steerer)]))
            registry.append(steerer)
            stack.callback(registry.remove, steerer)
        yield deltas


@contextmanager
def ablate_direction(model, direction: Float[Tensor, "d_model"] | Tensor, layers: list[int] | int) -> Iterator[None]:
    """Project the unit direction out of ``hook_resid_post`` at ``layers``, every position.

    ``x <- x - (x·u) u`` with ``u = direction / ||direction||``; for a ``[n_layers, d_model]``
    tensor (or a ``SteeringVector``) each layer uses its own row.
    """
    layer_list = [layers] if isinstance(layers, int) else list(layers)
    info = model_info(model)
    param = next(hf_model(model).parameters())
    hooks = []
    for layer in layer_list:
        d = resolve_directions(info, direction)[info.check_layer(layer)]
        norm = d.float().norm()
        if not torch.isfinite(norm) or norm == 0:
            raise ValueError(f"cannot ablate a zero or non-finite direction at layer {layer}")
        unit = (d.float() / norm).to(device=param.device, dtype=param.dtype)

        def project_out(x: Tensor, hook, unit=unit) -> Tensor:
            return x - (x @ unit)[..., None] * unit

        hooks.append((resid_post_name(layer), project_out))
    with attach(model, hooks):
        yield
