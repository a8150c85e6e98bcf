"""The engines lens_steer runs on, by name: one :class:`EngineSpec` each, saying how to open it, which options it
takes and what it can do (:class:`Capabilities`). ``--engine`` choices, :func:`open_engine`, reproduce's settings,
the notebook's engine menu and every capability check of the pipeline read this table, so adding an engine is
one module plus one :func:`register` call (or one entry in :data:`_BUILTIN`)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, fields

__all__ = ["CAPABILITY_TEXT", "Capabilities", "CapabilityError", "EngineSpec", "capabilities_of", "engine_names",
           "engine_spec", "open_engine", "register", "require"]


@dataclass(frozen=True)
class Capabilities:
    """What an engine can do. Anything not declared is refused by :func:`require` in one line.

    Attributes:
        steer_modes: Steering modes it applies (``continuous``: every position; ``single``: prompt positions).
        residual_capture: Residual means read while generating (the fused derivation).
        reread_residuals: Residual means of given sequences in a second pass (the ``two_pass`` derivation).
        mixed_steering: Requests with different steering (or none) batched together in one call.
        first_token_logprobs: Log-probabilities of the first generated token.
        hooks: TransformerLens hooks on the model (figures, ablation, projection traces, probes).
        tensor_parallel / pipeline_parallel: Splits a model over several devices.
    """

    steer_modes: tuple[str, ...] = ("continuous", "single")
    residual_capture: bool = False
    reread_residuals: bool = False
    mixed_steering: bool = False
    first_token_logprobs: bool = False
    hooks: bool = False
    tensor_parallel: bool = False
    pipeline_parallel: bool = False

    def declared(self) -> list[str]:
        """The capabilities it declares, by name (steering modes as ``steer:<mode>``)."""
        return [f"steer:{m}" for m in self.steer_modes] + [
            f.name for f in fields(self) if f.name != "steer_modes" and getattr(self, f.name)]


CAPABILITY_TEXT: dict[str, str] = {
    "residual_capture": "read residual means while generating (deriving a vector)",
    "reread_residuals": "re-read residuals of given sequences (the two_pass derivation)",
    "mixed_steering": "batch requests with different steering in one call",
    "first_token_logprobs": "return first-token log-probabilities",
    "hooks": "run TransformerLens hooks (figures, ablation, traces, probes)",
    "tensor_parallel": "split a model over several devices (tensor parallel)",
    "pipeline_parallel": "split a model over several devices (pipeline parallel)",
}
"""What each capability means, as error messages say it."""


class CapabilityError(ValueError):
    """An engine was asked for something it does not declare."""


@dataclass(frozen=True)
class EngineSpec:
    """A registered engine.

    Attributes:
        name: What ``--engine`` and :func:`open_engine` call it (also ``Engine.name``).
        description: One line for ``--help``.
        capabilities: What it can do.
        opener: ``"module:function"`` opening it: ``(model, *, device, dtype, capture_residuals, **options) ->
            Engine`` (imported only when used: an engine's own dependencies stay optional).
        options: The keyword options the opener takes beyond those.
        availability: ``"module:function"`` returning None when the engine can run here, else why not (one line).
        devices: The devices it places a model on.
    """

    name: str
    description: str
    capabilities: Capabilities
    opener: str
    options: tuple[str, ...] = ()
    availability: str | None = None
    devices: tuple[str, ...] | None = None

    def unavailable(self) -> str | None:
        """Why the engine cannot run here, or None."""
        return _resolve(self.availability)() if self.availability else None

    def open(self, model: str, *, device: str = "cpu", dtype: str = "float32", capture_residuals: bool = False,
             **options):
        """Load ``model`` on this engine.

        Raises:
            ValueError: an option it does not take, a device it cannot use. RuntimeError: it cannot run here.
        """
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            takers = sorted({s.name for s in _REGISTRY.values() if set(unknown) & set(s.options)})
            raise ValueError(f"{', '.join(unknown)} {'apply' if len(unknown) > 1 else 'applies'} to the "
                             f"{' / '.join(takers) or 'no'} engine{'s' if len(takers) > 1 else ''} only, not {self.name}")
        if self.devices is not None and device.split(":")[0] not in self.devices:
            raise ValueError(f"the {self.name} engine places the model itself on {' or '.join(self.devices)}; "
                             f"device {device!r} is not supported")
        return _resolve(self.opener)(model, device=device, dtype=dtype, capture_residuals=capture_residuals, **options)


def _resolve(target: str) -> Callable:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def _open_bridge(model: str, *, device: str, dtype: str, capture_residuals: bool):
    from lens_steer.config import torch_dtype
    from lens_steer.engines.bridge import engine_for
    from lens_steer.models import load_model

    return engine_for(load_model(model, device=device, dtype=torch_dtype(dtype)))


def _open_vllm(model: str, *, device: str, dtype: str, capture_residuals: bool, **options):
    from lens_steer.engines.vllm import VllmEngine

    return VllmEngine(model, dtype=dtype, capture_residuals=capture_residuals, **options)


_BUILTIN = (
    EngineSpec("bridge", "TransformerLens TransformerBridge (default): KV-cached loop, every hook",
               Capabilities(residual_capture=True, reread_residuals=True, first_token_logprobs=True, hooks=True),
               opener=f"{__name__}:_open_bridge"),
    EngineSpec("vllm", "vLLM (`make setup-vllm`): steering inside the compiled model, continuous batching",
               Capabilities(residual_capture=True, mixed_steering=True, first_token_logprobs=True,
                            tensor_parallel=True, pipeline_parallel=True),
               opener=f"{__name__}:_open_vllm",
               options=("tensor_parallel_size", "pipeline_parallel_size", "distributed_executor_backend",
                        "gpu_memory_utilization", "max_num_batched_tokens", "enforce_eager",
                        "enable_prefix_caching"),
               availability="lens_steer.engines.vllm:vllm_available", devices=("cpu", "cuda")),
)
_REGISTRY: dict[str, EngineSpec] = {spec.name: spec for spec in _BUILTIN}


def register(spec: EngineSpec, *, replace: bool = False) -> None:
    """Add an engine (``replace``: over one of the same name).

    Raises:
        ValueError: the name is taken.
    """
    if spec.name in _REGISTRY and not replace:
        raise ValueError(f"an engine called {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec


def engine_names() -> tuple[str, ...]:
    """The registered engines' names, the default (``bridge``) first."""
    return tuple(_REGISTRY)


def engine_spec(name: str) -> EngineSpec:
    """The engine called ``name``.

    Raises:
        ValueError: no such engine (the registered ones named).
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown engine {name!r}; expected one of {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def open_engine(name: str, model: str, *, device: str = "cpu", dtype: str = "float32", capture_residuals: bool = False,
                **options):
    """Load ``model`` on the engine called ``name`` (see :meth:`EngineSpec.open`)."""
    return engine_spec(name).open(model, device=device, dtype=dtype, capture_residuals=capture_residuals, **options)


def capabilities_of(engine_or_name) -> Capabilities:
    """The declared capabilities of an engine (an instance, by its ``name``, or a name)."""
    name = engine_or_name if isinstance(engine_or_name, str) else engine_or_name.name
    return engine_spec(name).capabilities


def require(engine_or_name, capability: str, purpose: str | None = None) -> None:
    """Refuse, in one line naming the engine and the capability, what an engine does not declare.

    Args:
        engine_or_name: An engine or an engine's name.
        capability: A :class:`Capabilities` field name, or ``steer:<mode>``.
        purpose: What it was needed for (added to the message).

    Raises:
        CapabilityError: not declared.
    """
    name = engine_or_name if isinstance(engine_or_name, str) else engine_or_name.name
    caps = capabilities_of(name)
    if capability.startswith("steer:"):
        mode = capability.removeprefix("steer:")
        if mode in caps.steer_modes:
            return
        what = f"apply {mode} steering"
    elif capability in CAPABILITY_TEXT:
        if getattr(caps, capability):
            return
        what = CAPABILITY_TEXT[capability]
    else:
        raise ValueError(f"unknown capability {capability!r}; expected steer:<mode> or one of "
                         f"{', '.join(CAPABILITY_TEXT)}")
    able = [s.name for s in _REGISTRY.values() if (mode in s.capabilities.steer_modes if capability.startswith(
        "steer:") else getattr(s.capabilities, capability))]
    hint = f"; use {' or '.join(f'--engine {n}' for n in able)}" if able else ""
    raise CapabilityError(f"the {name} engine cannot {what}" + (f", which {purpose} needs" if purpose else "") + hint)
