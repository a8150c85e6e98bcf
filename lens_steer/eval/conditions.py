"""Evaluation conditions (plain, direct, cot, steered-continuous, steered-single, and ``steered`` with any other
steering spec or prompt style) and layer × size × spec grids of them."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields

from lens_steer.engines.steer_spec import SteerSpec, as_spec

__all__ = ["BASELINE", "CONDITION_NAMES", "Condition", "steered_condition", "sweep_conditions"]

CONDITION_NAMES: tuple[str, ...] = ("plain", "direct", "cot", "steered-continuous", "steered-single", "steered")
"""Condition names, in report order. ``steered-continuous`` / ``steered-single`` are the paper's modes on the direct
prompt (their keys are those of every earlier run); ``steered`` is any other steering spec, or a preset on another
prompt style."""
BASELINE = "direct"
"""The condition every other one is paired against (exact McNemar)."""
_STYLE = {"plain": "none", "direct": "direct", "cot": "cot", "steered-continuous": "direct", "steered-single": "direct"}
_STYLES = ("direct", "cot", "none")


@dataclass(frozen=True)
class Condition:
    """How one item is prompted (and steered).

    Attributes:
        name: One of :data:`CONDITION_NAMES`.
        style: Prompt style: ``"none"`` (plain), ``"direct"`` or ``"cot"``; ``steered-*`` use the direct
            prompt, ``steered`` any.
        layer: Steered block (steered conditions only).
        coeff: Absolute coefficient c (steered only): ``c * v[layer]`` added, or the operator's c.
        scale: The same size relative to the mean residual norm at ``layer``,
            ``|c| * ||v_l|| / mean ||resid_l||`` with c's sign, when known.
        mode: Where, when and how to steer (steered only): ``"continuous"`` or ``"single"``, or the canonical text
            of any other :class:`~lens_steer.engines.steer_spec.SteerSpec` (normalised on creation).
    """

    name: str
    style: str
    layer: int | None = None
    coeff: float | None = None
    scale: float | None = None
    mode: str | None = None

    def __post_init__(self) -> None:
        if self.name not in CONDITION_NAMES:
            raise ValueError(f"unknown condition {self.name!r}; expected one of {list(CONDITION_NAMES)}")
        if self.name == "steered":
            if self.style not in _STYLES:
                raise ValueError(f"unknown prompt style {self.style!r}; expected one of {list(_STYLES)}")
        elif self.style != _STYLE[self.name]:
            raise ValueError(f"condition {self.name!r} uses prompt style {_STYLE[self.name]!r}, not {self.style!r}")
        if self.name.startswith("steered"):
            if self.mode is None or self.layer is None or self.coeff is None:
                need = f"mode={self.name.removeprefix('steered-')!r}" if self.name != "steered" else "a mode"
                raise ValueError(f"condition {self.name!r} needs {need}, a layer and a coefficient")
            object.__setattr__(self, "mode", as_spec(self.mode).text)
            if self.name != "steered" and self.mode != self.name.removeprefix("steered-"):
                raise ValueError(f"condition {self.name!r} needs mode={self.name.removeprefix('steered-')!r}, a layer "
                                 "and a coefficient")
            if self.name == "steered" and self.mode in ("continuous", "single") and self.style == "direct":
                raise ValueError(f"the {self.mode} preset on the direct prompt is the condition "
                                 f"'steered-{self.mode}' (its key is that of earlier runs)")
            if not math.isfinite(self.coeff):
                raise ValueError(f"coefficient must be finite, got {self.coeff}")
        elif any(v is not None for v in (self.layer, self.coeff, self.scale, self.mode)):
            raise ValueError(f"condition {self.name!r} is not steered: it takes no layer, coefficient, scale or mode")

    @classmethod
    def baseline(cls, name: str) -> Condition:
        """An unsteered condition: ``"plain"``, ``"direct"`` or ``"cot"``."""
        if name not in _STYLE or name.startswith("steered"):
            raise ValueError(f"{name!r} is not an unsteered condition; expected plain, direct or cot")
        return cls(name, _STYLE[name])

    @property
    def steered(self) -> bool:
        """Whether a vector is added."""
        return self.mode is not None

    @property
    def spec(self) -> SteerSpec | None:
        """The parsed steering spec (None unsteered)."""
        return as_spec(self.mode) if self.mode is not None else None

    @property
    def key(self) -> str:
        """Identity in result tables, e.g. ``"cot"``, ``"steered-single[l=15,s=0.6,c=12.5]"`` or
        ``"steered[l=15,c=1;style=cot;at=first:16,op=ablate]"`` (the spec last, in its canonical text)."""
        if not self.steered:
            return self.name
        scale = f"s={self.scale:.6g}," if self.scale is not None else ""
        size = f"l={self.layer},{scale}c={self.coeff:.6g}"
        if self.name != "steered":
            return f"{self.name}[{size}]"
        style = f"style={self.style};" if self.style != "direct" else ""
        return f"{self.name}[{size};{style}{self.mode}]"

    def label(self) -> str:
        """Short human-readable description."""
        if not self.steered:
            return self.name
        scale = f", {self.scale:g}×|resid|" if self.scale is not None else ""
        spec = f", {self.mode}" + (f", {self.style} prompt" if self.style != "direct" else "") \
            if self.name == "steered" else ""
        return f"{self.name} (layer {self.layer}, c={self.coeff:.3g}{scale}{spec})"

    def to_dict(self) -> dict:
        """JSON-ready form (plus ``key``)."""
        return {**asdict(self), "key": self.key}

    @classmethod
    def from_dict(cls, data: Mapping) -> Condition:
        """Read :meth:`to_dict`'s form back (``key`` is derived, so it is not read).

        Raises:
            ValueError: not a condition.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"a condition is {type(data).__name__}, not an object")
        names = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in names})
        except TypeError as exc:
            raise ValueError(f"malformed condition {dict(data)!r}: {exc}") from None


def steered_condition(
    vector, mode, layer: int, *, coeff: float | None = None, scale: float | None = None, style: str = "direct"
) -> Condition:
    """A steered condition from an absolute coefficient or a scale relative to the residual norm.

    Args:
        vector: The :class:`~lens_steer.method.vectors.SteeringVector` (its per-layer norms convert
            between ``coeff`` and ``scale``; may be None when ``coeff`` is given).
        mode: ``"continuous"`` or ``"single"``, or any steering spec (a
            :class:`~lens_steer.engines.steer_spec.SteerSpec` or its text).
        layer: Steered block.
        coeff: Absolute coefficient c (exactly one of ``coeff`` / ``scale``).
        scale: ``||c * v_layer||`` as a fraction of the mean residual norm at ``layer`` (not for ``op=ablate``,
            whose c is the fraction of the component removed).
        style: The prompt style steered (the paper steers the direct prompt).

    Returns:
        The condition (``steered-continuous`` / ``steered-single`` for a preset on the direct prompt, else
        ``steered``), with both ``coeff`` and (when the vector records residual norms) ``scale``.
    """
    spec = as_spec(mode)
    if (coeff is None) == (scale is None):
        raise ValueError("give exactly one of coeff and scale")
    if vector is not None and not 0 <= layer < vector.n_layers:
        raise IndexError(f"layer {layer} is out of range: the vector has layers 0..{vector.n_layers - 1}")
    ablate = spec.op == "ablate"
    if scale is not None:
        if ablate:
            raise ValueError("op=ablate takes a coefficient (the fraction of the component removed; 1 removes it), "
                             "not a scale")
        if vector is None:
            raise ValueError("a scale needs the vector (its norms give the coefficient)")
        coeff = vector.coeff_for_scale(layer, scale)
    elif vector is not None and vector.resid_norm is not None and not ablate:
        scale = float(coeff * vector.directions[layer].norm() / vector.resid_norm[layer])
    name = f"steered-{spec.preset}" if spec.preset is not None and style == "direct" else "steered"
    return Condition(name, style, layer=layer, coeff=float(coeff), scale=scale, mode=spec.text)


def sweep_conditions(
    vector,
    layers: Sequence[int],
    modes: Sequence,
    *,
    coeffs: Mapping[str, Sequence[float]] | None = None,
    scales: Mapping[str, Sequence[float]] | None = None,
    style: str = "direct",
) -> list[Condition]:
    """Steered conditions on the grid modes × layers × (coefficients or scales).

    Args:
        vector: The steering vector.
        layers: Layers to steer.
        modes: Steering modes: presets or any steering specs (position kinds, schedules, operators).
        coeffs: Absolute coefficients per mode (e.g. ``{"continuous": [1, 2]}``; keyed by a mode's text).
        scales: Relative scales per mode; a mode takes its grid from exactly one of the two.
        style: The prompt style steered.

    Returns:
        Conditions in mode, layer, grid order.
    """
    coeffs = {as_spec(m).text: v for m, v in (coeffs or {}).items()}
    scales = {as_spec(m).text: v for m, v in (scales or {}).items()}
    out = []
    for given in modes:
        mode = as_spec(given).text
        if (mode in coeffs) == (mode in scales):
            raise ValueError(f"mode {mode!r} needs either coefficients or scales (exactly one)")
        for layer in layers:
            if mode in coeffs:
                out.extend(steered_condition(vector, mode, layer, coeff=c, style=style) for c in coeffs[mode])
            else:
                out.extend(steered_condition(vector, mode, layer, scale=s, style=style) for s in scales[mode])
    return out
