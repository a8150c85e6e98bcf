"""The engines lens_steer runs on, by name: one :class:`EngineSpec` each, saying how to open it, which options it
takes and what it can do (:class:`Capabilities`). ``--engine`` choices, :func:`open_engine`, reproduce's settings,
the notebook's engine menu and every capability check of the pipeline read this table, so adding an engine is
one module plus one :func:`register` call (or one entry in :data:`_BUILTIN`)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, fields

from lens_steer.engines.steer_spec import OPERATORS, POSITION_KINDS, SCHEDULE_KINDS, SteerSpec, as_spec

__all__ = ["CAPABILITY_TEXT", "Capabilities", "CapabilityError", "EngineSpec", "capabilities_of", "engine_names",
           "engine_spec", "open_engine", "register", "require", "require_steering"]


@dataclass(frozen=True)
class Capabilities:
    """What an engine can do. Anything not declared is refused by :func:`require` in one line.

    Attributes:
        steer_modes: The paper's steering modes it applies (``continuous``: every position; ``single``: prompt
            positions).
        steer_positions: Position kinds of a :class:`~lens_steer.engines.steer_spec.SteerSpec` it applies
            (:data:`~lens_steer.engines.steer_spec.POSITION_KINDS`; the presets' are ``all`` and ``prompt``).
        steer_schedules: Strength schedules it applies (``constant``, ``linear``, ``step``).
        steer_operators: Operators it applies (``add``, ``add-norm``, ``clamp``, ``ablate``).
        residual_capture: Residual means read while generating (the fused derivation).
        reread_residuals: Residual means of given sequences in a second pass (the ``two_pass`` derivation).
        mixed_steering: Requests with different steering (or none) batched together in one call.
        first_token_logprobs: Log-probabilities of the first generated token.
        hooks: TransformerLens hooks on the model (figures, ablation, projection traces, probes).
        tensor_parallel / pipeline_parallel: Splits a model over several devices.
        prefix_cache: Reuses the computed prompt prefixes of earlier requests, keyed by their steering (the engine
            then reports ``last_cached_tokens``: prompt tokens served from the cache per request of its last call).
    """

    steer_modes: tuple[str, ...] = ("continuous", "single")
    steer_positions: tuple[str, ...] = ("all", "prompt")
    steer_schedules: tuple[str, ...] = ("constant",)
    steer_operators: tuple[str, ...] = ("add",)
    residual_capture: bool = False
    reread_residuals: bool = False
    mixed_steering: bool = False
    first_token_logprobs: bool = False
    hooks: bool = False
    tensor_parallel: bool = False
    pipeline_parallel: bool = False
    prefix_cache: bool = False

    def declared(self) -> list[str]:
        """The capabilities it declares, by name: steering modes as ``steer:<mode>``, the parts of a steering spec
        as ``steer:at=<kind>``, ``steer:strength=<kind>``, ``steer:op=<op>``, then the flags."""
        return ([f"steer:{m}" for m in self.steer_modes] + [f"steer:at={k}" for k in self.steer_positions]
                + [f"steer:strength={k}" for k in self.steer_schedules]
                + [f"steer:op={o}" for o in self.steer_operators]
                + [f.name for f in fields(self) if not f.name.startswith("steer_") and getattr(self, f.name)])


POSITION_TEXT: dict[str, str] = {
    "all": "every position", "prompt": "the prompt's positions", "last": "the last prompt token",
    "first": "the first k generated tokens", "window": "a window of generated tokens",
    "trigger": "the tokens after a trigger", "region": "the tokens inside a delimited region",
}
"""What each position kind steers, as capability errors say it."""

_SPEC_PARTS = {"at": "steer_positions", "strength": "steer_schedules", "op": "steer_operators"}
"""``steer:<part>=<kind>`` capability names and the :class:`Capabilities` field each reads."""

CAPABILITY_TEXT: dict[str, str] = {
    "residual_capture": "read residual means while generating (deriving a vector)",
    "reread_residuals": "re-read residuals of given sequences (the two_pass derivation)",
    "mixed_steering": "batch requests with different steering in one call",
    "first_token_logprobs": "return first-token log-probabilities",
    "hooks": "run TransformerLens hooks (figures, ablation, traces, probes)",
    "tensor_parallel": "split a model over several devices (tensor parallel)",
    "pipeline_parallel": "split a model over several devices (pipeline parallel)",
    "prefix_cache": "reuse cached prompt prefixes",
}
"""What each capability flag means, as error messages say it."""


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
        """Why the engine cannot run here, or None (a dependency outside its tested range is such a reason)."""
        from lens_steer.compat import UnsupportedVersion

        try:
            return _resolve(self.availability)() if self.availability else None
        except UnsupportedVersion as exc:
            return str(exc)

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


_BUILTIN = (
    EngineSpec("bridge", "TransformerLens TransformerBridge (default): KV-cached loop, every hook",
               Capabilities(steer_positions=POSITION_KINDS, steer_schedules=SCHEDULE_KINDS, steer_operators=OPERATORS,
                            residual_capture=True, reread_residuals=True, first_token_logprobs=True, hooks=True),
               opener=f"{__name__}:_open_bridge"),
    EngineSpec("vllm", "vLLM (`make setup-vllm`): steering inside the compiled model, continuous batching",
               Capabilities(steer_positions=POSITION_KINDS, steer_schedules=SCHEDULE_KINDS, steer_operators=OPERATORS,
                            residual_capture=True, mixed_steering=True, first_token_logprobs=True,
                            tensor_parallel=True, pipeline_parallel=True, prefix_cache=True),
               opener="lens_steer.engines.vllm:open_vllm",
               options=("tensor_parallel_size", "pipeline_parallel_size", "distributed_executor_backend",
                        "gpu_memory_utilization", "max_num_batched_tokens", "enforce_eager",
                        "enable_prefix_caching", "block_size", "kv_cache_memory_bytes", "max_model_len",
                        "steer_slots"),
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


def _declares(caps: Capabilities, capability: str) -> bool:
    """Whether ``caps`` declare ``capability`` (see :meth:`Capabilities.declared`)."""
    if capability.startswith("steer:"):
        what = capability.removeprefix("steer:")
        part, eq, kind = what.partition("=")
        if eq and part in _SPEC_PARTS:
            return kind in getattr(caps, _SPEC_PARTS[part])
        return what in caps.steer_modes
    return bool(getattr(caps, capability))


def _describe(capability: str) -> str:
    """What a capability lets an engine do, as error messages say it."""
    if not capability.startswith("steer:"):
        return CAPABILITY_TEXT[capability]
    part, eq, kind = capability.removeprefix("steer:").partition("=")
    if not eq:
        return f"apply {part} steering"
    if part == "at":
        return f"steer {POSITION_TEXT.get(kind, kind)} (at={kind})"
    if part == "strength":
        return f"vary the steering strength over tokens (strength={kind})"
    return f"apply the {kind} steering operator (op={kind})"


def _spec_capabilities(spec: SteerSpec) -> list[str]:
    """The capabilities a steering spec needs: its preset's mode, else each of its parts."""
    if spec.preset is not None:
        return [f"steer:{spec.preset}"]
    return [f"steer:at={spec.at.kind}", f"steer:strength={spec.strength.kind}", f"steer:op={spec.op}"]


def require(engine_or_name, capability: str, purpose: str | None = None) -> None:
    """Refuse, in one line naming the engine and the capability, what an engine does not declare.

    Args:
        engine_or_name: An engine or an engine's name.
        capability: A :class:`Capabilities` flag's name; ``steer:<mode>`` for a preset or any steering spec text
            (``steer:at=first:16,op=clamp``: every part it needs); or one part, ``steer:at=<kind>``,
            ``steer:strength=<kind>``, ``steer:op=<op>``.
        purpose: What it was needed for (added to the message).

    Raises:
        CapabilityError: not declared. ValueError: an unknown capability or a malformed steering spec.
    """
    name = engine_or_name if isinstance(engine_or_name, str) else engine_or_name.name
    caps = capabilities_of(name)
    if capability.startswith("steer:"):
        what = capability.removeprefix("steer:")
        part, eq, kind = what.partition("=")
        single_part = eq and part in _SPEC_PARTS and "," not in what and ":" not in kind
        if single_part:
            allowed = {"at": POSITION_KINDS, "strength": SCHEDULE_KINDS, "op": OPERATORS}[part]
            if kind not in allowed:
                raise ValueError(f"unknown capability {capability!r}; {part} is one of {', '.join(allowed)}")
            needed = [capability]
        else:
            needed = _spec_capabilities(as_spec(what))
    elif capability in CAPABILITY_TEXT:
        needed = [capability]
    else:
        raise ValueError(f"unknown capability {capability!r}; expected steer:<mode> or one of "
                         f"{', '.join(CAPABILITY_TEXT)}")
    for need in needed:
        if _declares(caps, need):
            continue
        able = [s.name for s in _REGISTRY.values() if _declares(s.capabilities, need)]
        hint = f"; use {' or '.join(f'--engine {n}' for n in able)}" if able else ""
        raise CapabilityError(f"the {name} engine cannot {_describe(need)}"
                              + (f", which {purpose} needs" if purpose else "") + hint)


def require_steering(engine_or_name, steering, purpose: str | None = None) -> None:
    """Refuse, in one line, a steering an engine does not declare it can apply (see :func:`require`).

    Args:
        engine_or_name: An engine or an engine's name.
        steering: A :class:`~lens_steer.engines.base.Steering` (anything with a ``spec``), a
            :class:`~lens_steer.engines.steer_spec.SteerSpec`, a mode text, or a sequence of these (a plan, or one
            entry per request; ``None`` entries are unsteered).
        purpose: What it was needed for (added to the message).

    Raises:
        CapabilityError: a part of a steering the engine does not declare.
    """
    if steering is None:
        return
    if isinstance(steering, list | tuple):
        for entry in steering:
            require_steering(engine_or_name, entry, purpose)
        return
    spec = steering if isinstance(steering, SteerSpec | str) else steering.spec
    for need in _spec_capabilities(as_spec(spec)):
        require(engine_or_name, need, purpose)
