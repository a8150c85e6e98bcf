"""Evaluation conditions (plain, direct, cot, steered-continuous, steered-single) and layer × size grids of them."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields

from lens_steer.engines.base import STEER_MODES

__all__ = ["BASELINE", "CONDITION_NAMES", "Condition", "steered_condition", "sweep_conditions"]

CONDITION_NAMES: tuple[str, ...] = ("plain", "direct", "cot", "steered-continuous", "steered-single")
"""Condition names, in report order."""
BASELINE = "direct"
"""The condition every other one is paired against (exact McNemar)."""
_STYLE = {"plain": "none", "direct": "direct", "cot": "cot", "steered-continuous": "direct", "steered-single": "direct"}


@dataclass(frozen=True)
class Condition:
    """How one item is prompted (and steered).

    Attributes:
        name: One of :data:`CONDITION_NAMES`.
        style: Prompt style: ``"none"`` (plain), ``"direct"`` or ``"cot"``; the steered
            conditions use the direct prompt.
        layer: Steered block (steered conditions only).
        coeff: Absolute coefficient c added as ``c * v[layer]`` (steered only).
        scale: The same size relative to the mean residual norm at ``layer``,
            ``|c| * ||v_l|| / mean ||resid_l||`` with c's sign, when known.
        mode: ``"continuous"`` or ``"single"`` (steered only).
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
        if self.style != _STYLE[self.name]:
            raise ValueError(f"condition {self.name!r} uses prompt style {_STYLE[self.name]!r}, not {self.style!r}")
        if self.name.startswith("steered-"):
            mode = self.name.removeprefix("steered-")
            if self.mode != mode or self.layer is None or self.coeff is None:
                raise ValueError(f"condition {self.name!r} needs mode={mode!r}, a layer and a coefficient")
            if not math.isfinite(self.coeff):
                raise ValueError(f"coefficient must be finite, got {self.coeff}")
        elif any(v is not None for v in (self.layer, self.coeff, self.scale, self.mode)):
            raise ValueError(f"condition {self.name!r} is not steered: it takes no layer, coefficient, scale or mode")

    @classmethod
    def baseline(cls, name: str) -> Condition:
        """An unsteered condition: ``"plain"``, ``"direct"`` or ``"cot"``."""
        if name not in _STYLE or name.startswith("steered-"):
            raise ValueError(f"{name!r} is not an unsteered condition; expected plain, direct or cot")
        return cls(name, _STYLE[name])

    @property
    def steered(self) -> bool:
        """Whether a vector is added."""
        return self.mode is not None

    @property
    def key(self) -> str:
        """Identity in result tables, e.g. ``"cot"`` or ``"steered-single[l=15,s=0.6,c=12.5]"``."""
        if not self.steered:
            return self.name
        scale = f"s={self.scale:.6g}," if self.scale is not None else ""
        return f"{self.name}[l={self.layer},{scale}c={self.coeff:.6g}]"

    def label(self) -> str:
        """Short human-readable description."""
        if not self.steered:
            return self.name
        scale = f", {self.scale:g}×|resid|" if self.scale is not None else ""
        return f"{self.name} (layer {self.layer}, c={self.coeff:.3g}{scale})"

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
    vector, mode: str, layer: int, *, coeff: float | None = None, scale: float | None = None
) -> Condition:
    """A steered condition from an absolute coefficient or a scale relative to the residual norm.

    Args:
        vector: The :class:`~lens_steer.method.vectors.SteeringVector` (its per-layer norms convert
            between ``coeff`` and ``scale``; may be None when ``coeff`` is given).
        mode: ``"continuous"`` or ``"single"``.
        layer: Steered block.
        coeff: Absolute coefficient c (exactly one of ``coeff`` / ``scale``).
        scale: ``||c * v_layer||`` as a fraction of the mean residual norm at ``layer``.

    Returns:
        The condition, with both ``coeff`` and (when the vector records residual norms) ``scale``.
    """
    if mode not in STEER_MODES:
        raise ValueError(f"unknown steering mode {mode!r}; expected one of {STEER_MODES}")
    if (coeff is None) == (scale is None):
        raise ValueError("give exactly one of coeff and scale")
    if vector is not None and not 0 <= layer < vector.n_layers:
        raise IndexError(f"layer {layer} is out of range: the vector has layers 0..{vector.n_layers - 1}")
    if scale is not None:
        if vector is None:
            raise ValueError("a scale needs the vector (its norms give the coefficient)")
        coeff = vector.coeff_for_scale(layer, scale)
    elif vector is not None and vector.resid_norm is not None:
        scale = float(coeff * vector.directions[layer].norm() / vector.resid_norm[layer])
    return Condition(f"steered-{mode}", "direct", layer=layer, coeff=float(coeff), scale=scale, mode=mode)


def sweep_conditions(
    vector,
    layers: Sequence[int],
    modes: Sequence[str],
    *,
    coeffs: Mapping[str, Sequence[float]] | None = None,
    scales: Mapping[str, Sequence[float]] | None = None,
) -> list[Condition]:
    """Steered conditions on the grid layers × (coefficients or scales) × modes.

    Args:
        vector: The steering vector.
        layers: Layers to steer.
        modes: Steering modes.
        coeffs: Absolute coefficients per mode (e.g. ``{"continuous": [1, 2]}``).
        scales: Relative scales per mode; a mode takes its grid from exactly one of the two.

    Returns:
        Conditions in mode, layer, grid order.
    """
    coeffs, scales = dict(coeffs or {}), dict(scales or {})
    out = []
    for mode in modes:
        if (mode in coeffs) == (mode in scales):
            raise ValueError(f"mode {mode!r} needs either coefficients or scales (exactly one)")
        for layer in layers:
            if mode in coeffs:
                out.extend(steered_condition(vector, mode, layer, coeff=c) for c in coeffs[mode])
            else:
                out.extend(steered_condition(vector, mode, layer, scale=s) for s in scales[mode])
    return out
