"""The server's steering specs: one typed record per steering (:class:`SteeringEntry`), read from the
compact text grammar (``--default-steering``, a ``steering`` string in a request) or from JSON objects,
and resolved against the served vectors into the engine's :class:`~lens_steer.engines.base.Steering`
plan, every check done here so a bad spec is refused naming its field before anything runs.

Text grammar::

    SPEC  := "none" | ENTRY ("," ENTRY)*
    ENTRY := VECTOR ":" LAYER (":" FIELD)*
    FIELD := NUMBER             the coefficient c              (same as coeff=NUMBER)
           | MODE               continuous | single            (same as mode=MODE)
           | KEY "=" VALUE      KEY one of FIELDS: coeff, scale, mode

e.g. ``cot:15:scale=0.2:single``, ``cot:15:4.5``, ``cot:10:coeff=-2,cot:20:scale=0.1``. Each entry gives
exactly one of ``coeff`` (the c of ``c·v``) and ``scale`` (‖c·v_l‖ as a fraction of the mean residual norm at
layer l: :meth:`~lens_steer.method.vectors.SteeringVector.coeff_for_scale`); ``mode`` defaults to
``continuous``. JSON form: ``{"vector": "cot", "layer": 15, "scale": 0.2, "mode": "single"}`` (``coefficient``
is accepted for ``coeff``). New keys (positions, schedules, operators) are one entry in :data:`FIELDS` and
one field of :class:`SteeringEntry`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import torch

from lens_steer.engines.base import STEER_MODES, Steering, SteeringPlan
from lens_steer.engines.registry import CapabilityError, require
from lens_steer.engines.steering import resolve_direction, steering_delta
from lens_steer.method.vectors import ModelMismatchError
from lens_steer.models import ModelInfo

__all__ = ["FIELDS", "MAX_STEERINGS", "NAME_PATTERN", "AppliedSteering", "SteeringEntry", "SteeringSpecError",
           "parse_steering", "parse_steering_text", "resolve_steering"]

MAX_STEERINGS = 16
"""Steerings one request may combine."""

NAME_PATTERN = re.compile(r"[A-Za-z0-9_.\-]+")
"""What a served vector's name may hold (it appears in the text grammar and in a response header)."""


class SteeringSpecError(ValueError):
    """A steering spec that cannot be used.

    Attributes:
        field: Where, relative to the spec (``"[0].layer"``, ``".scale"``, ``""`` for the whole spec).
        code: A short machine-readable reason (OpenAI error ``code``).
    """

    def __init__(self, message: str, field: str = "", code: str = "invalid_steering") -> None:
        super().__init__(message)
        self.field = field
        self.code = code


@dataclass(frozen=True)
class SteeringEntry:
    """One steering as a request names it.

    Attributes:
        vector: The served vector's name.
        layer: Block whose output is steered.
        coeff: The coefficient c (None until resolved when ``scale`` is given).
        scale: ‖c·v_layer‖ as a fraction of the layer's mean residual norm, or None.
        mode: ``"continuous"`` or ``"single"``.
    """

    vector: str
    layer: int
    coeff: float | None = None
    scale: float | None = None
    mode: str = "continuous"

    def to_text(self) -> str:
        """The entry in the text grammar (parsing it gives the entry back)."""
        size = f"scale={self.scale!r}" if self.scale is not None else f"coeff={self.coeff!r}"
        return f"{self.vector}:{self.layer}:{size}:{self.mode}"

    def to_dict(self) -> dict:
        """JSON form (``coeff`` is the resolved coefficient also when ``scale`` was given)."""
        out = {"vector": self.vector, "layer": self.layer, "coeff": self.coeff, "mode": self.mode}
        if self.scale is not None:
            out["scale"] = self.scale
        return out


def _number(value, name: str) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise SteeringSpecError(f"{name} must be a number, got {value!r}", f".{name}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SteeringSpecError(f"{name} must be a number, got {value!r}", f".{name}")
    if isinstance(value, int) and abs(value) > 2**1023:  # float() of it overflows
        value = math.inf
    if not math.isfinite(float(value)):
        raise SteeringSpecError(f"{name} must be finite, got {value}", f".{name}", "invalid_coefficient")
    return float(value)


def _mode(value, name: str) -> str:
    if value not in STEER_MODES:
        raise SteeringSpecError(f"unknown steering mode {value!r}; expected one of {', '.join(STEER_MODES)}",
                                f".{name}")
    return value


def _layer(value, name: str) -> int:
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise SteeringSpecError(f"layer must be an integer block index, got {value!r}", ".layer")
    return value


def _vector(value, name: str) -> str:
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
        raise SteeringSpecError(f"vector must be the name of a served vector, got {value!r}", ".vector")
    return value


FIELDS: dict[str, Callable] = {"coeff": _number, "scale": _number, "mode": _mode}
"""Optional keys of an entry and their converters ``(value, key) -> typed value`` (text or JSON values)."""

_ALIASES = {"coefficient": "coeff"}


def _entry(vector: str, layer: int, fields: Mapping[str, object]) -> SteeringEntry:
    if "coeff" in fields and "scale" in fields:
        raise SteeringSpecError("give one of coeff and scale, not both", ".scale")
    if "coeff" not in fields and "scale" not in fields:
        raise SteeringSpecError("a steering needs coeff or scale", ".coeff")
    return SteeringEntry(vector=vector, layer=layer, **fields)


def _text_entry(text: str) -> SteeringEntry:
    parts = [p.strip() for p in text.split(":")]
    if len(parts) < 2 or not parts[0]:
        raise SteeringSpecError(f"steering {text!r} is not VECTOR:LAYER:SIZE[:MODE] (e.g. cot:15:scale=0.2:single)")
    vector, layer = _vector(parts[0], "vector"), _layer(parts[1], "layer")
    fields: dict[str, object] = {}
    for part in parts[2:]:
        key, eq, value = part.partition("=")
        if not eq:
            key, value = ("mode", part) if part in STEER_MODES else ("coeff", part)
        key = _ALIASES.get(key.strip(), key.strip())
        if key not in FIELDS:
            raise SteeringSpecError(f"unknown steering field {key!r} in {text!r}; expected one of "
                                    f"{', '.join(FIELDS)}", f".{key}")
        if key in fields:
            raise SteeringSpecError(f"{key} given twice in {text!r}", f".{key}")
        fields[key] = FIELDS[key](value.strip(), key)
    return _entry(vector, layer, fields)


def parse_steering_text(text: str) -> tuple[SteeringEntry, ...]:
    """Entries of a spec in the text grammar (``"none"`` or ``""``: no steering).

    Raises:
        SteeringSpecError: the spec does not follow the grammar (field with the entry's index, e.g. ``"[0].layer"``).
    """
    if not isinstance(text, str):
        raise SteeringSpecError(f"expected a steering spec string, got {type(text).__name__}")
    if text.strip().lower() in ("", "none"):
        return ()
    entries = []
    for i, part in enumerate(text.split(",")):
        try:
            entries.append(_text_entry(part.strip()))
        except SteeringSpecError as exc:
            raise SteeringSpecError(str(exc), f"[{i}]{exc.field}", exc.code) from None
    return _limited(tuple(entries))


def _json_entry(obj) -> SteeringEntry:
    if isinstance(obj, str):
        if "," in obj:
            raise SteeringSpecError(f"expected one steering in a list entry, got {obj!r}")
        return _text_entry(obj.strip())
    if not isinstance(obj, Mapping):
        raise SteeringSpecError(f"a steering must be an object (vector, layer, coeff or scale, mode) or a string, "
                                f"got {type(obj).__name__}")
    for alias, key in _ALIASES.items():
        if alias in obj and key in obj:
            raise SteeringSpecError(f"give {key} or {alias}, not both", f".{alias}")
    obj = {_ALIASES.get(k, k): v for k, v in obj.items()}
    for key in ("vector", "layer"):
        if key not in obj:
            raise SteeringSpecError(f"a steering needs {key!r}", f".{key}")
    unknown = sorted(set(obj) - set(FIELDS) - {"vector", "layer"})
    if unknown:
        raise SteeringSpecError(f"unknown steering field {unknown[0]!r}; expected vector, layer, "
                                f"{', '.join(FIELDS)}", f".{unknown[0]}")
    fields = {k: FIELDS[k](v, k) for k, v in obj.items() if k in FIELDS}
    return _entry(_vector(obj["vector"], "vector"), _layer(obj["layer"], "layer"), fields)


def parse_steering(value) -> tuple[SteeringEntry, ...] | None:
    """Entries of a request's ``steering`` value: ``None`` (absent: the server's default), a string in the text
    grammar, one object, or a list of objects / strings (``[]`` or ``"none"``: explicitly unsteered).

    Raises:
        SteeringSpecError: malformed (the field relative to ``steering``, e.g. ``"[1].layer"``; a string or a single
        object counts as a list, so its first entry is ``[0]``).
    """
    if value is None:
        return None
    if isinstance(value, str):
        return parse_steering_text(value)
    if isinstance(value, Mapping):
        value = [value]
    if not isinstance(value, list):
        raise SteeringSpecError(f"steering must be a list of steerings, an object or a string, got "
                                f"{type(value).__name__}")
    entries = []
    for i, item in enumerate(value):
        try:
            entries.append(_json_entry(item))
        except SteeringSpecError as exc:
            raise SteeringSpecError(str(exc), f"[{i}]{exc.field}", exc.code) from None
    return _limited(tuple(entries))


def _limited(entries: tuple[SteeringEntry, ...]) -> tuple[SteeringEntry, ...]:
    if len(entries) > MAX_STEERINGS:
        raise SteeringSpecError(f"{len(entries)} steerings in one request; at most {MAX_STEERINGS}")
    return entries


@dataclass(frozen=True)
class AppliedSteering:
    """What a request is steered with: the entries (coefficients resolved), the engine's plan, and where
    it came from (``"request"``, ``"model"``: named with the model, ``"default"``: the server's)."""

    entries: tuple[SteeringEntry, ...]
    plan: SteeringPlan
    source: str

    def text(self) -> str:
        """The entries in the text grammar (``"none"`` when unsteered)."""
        return ",".join(e.to_text() for e in self.entries) or "none"

    def describe(self) -> dict:
        """The ``lens_steer`` field of a response."""
        return {"steering": [e.to_dict() for e in self.entries], "source": self.source, "spec": self.text()}


def resolve_steering(entries: tuple[SteeringEntry, ...], vectors: Mapping, *, info: ModelInfo, dtype: torch.dtype,
                     engine, allow_other_model: bool = False, source: str = "request") -> AppliedSteering:
    """Check each entry against the served vectors, the model and the engine; build the plan.

    Args:
        entries: From :func:`parse_steering` / :func:`parse_steering_text`.
        vectors: Served vectors by name (``SteeringVector``; one object per name, so alike requests group).
        info: The model's identity. dtype: The model's parameter dtype (``c·v`` must be finite in it).
        engine: The engine or its registry name (a mode it does not declare is refused).
        allow_other_model: Accept vectors derived on another checkpoint of the same shape.
        source: Recorded in the result.

    Raises:
        SteeringSpecError: an unknown vector, a layer out of range or with a zero direction, a mode the engine
        cannot do, a scale on a vector without residual norms, a coefficient whose ``c·v`` is not finite in
        ``dtype`` (field relative to the entry's index, e.g. ``"[0].coeff"``).
    """
    resolved, plan = [], []
    for i, e in enumerate(entries):
        at = f"[{i}]"
        if e.vector not in vectors:
            raise SteeringSpecError(f"unknown vector {e.vector!r}; this server has {', '.join(sorted(vectors)) or 'none'}",
                                    f"{at}.vector", "unknown_vector")
        vector = vectors[e.vector]
        if not 0 <= e.layer < info.n_layers:
            raise SteeringSpecError(f"layer {e.layer} is out of range: this model has layers 0..{info.n_layers - 1}",
                                    f"{at}.layer", "layer_out_of_range")
        try:
            require(engine, f"steer:{e.mode}")
        except CapabilityError as exc:
            raise SteeringSpecError(str(exc), f"{at}.mode", "unsupported_mode") from None
        try:
            direction = resolve_direction(info, vector, e.layer, allow_other_model=allow_other_model)
        except ModelMismatchError as exc:
            raise SteeringSpecError(str(exc), f"{at}.vector", "vector_model_mismatch") from None
        if not bool(direction.abs().sum() > 0):
            raise SteeringSpecError(f"vector {e.vector!r} has an all-zero direction at layer {e.layer}: steering "
                                    "with it would change nothing", f"{at}.layer", "zero_direction")
        size = ".scale" if e.scale is not None else ".coeff"
        coeff = e.coeff
        if e.scale is not None:
            if getattr(vector, "resid_norm", None) is None:
                raise SteeringSpecError(f"vector {e.vector!r} has no residual norms recorded: give coeff, not scale",
                                        f"{at}.scale", "scale_unavailable")
            coeff = vector.coeff_for_scale(e.layer, e.scale)
        if not math.isfinite(coeff):
            raise SteeringSpecError(f"{size[1:]} {e.scale if e.scale is not None else e.coeff} gives no finite "
                                    f"coefficient at layer {e.layer}", f"{at}{size}", "invalid_coefficient")
        steering = Steering(vector, e.layer, coeff, e.mode, allow_other_model)
        try:
            steering_delta(info, steering, dtype)
        except (ValueError, IndexError) as exc:
            raise SteeringSpecError(str(exc), f"{at}{size}", "invalid_coefficient") from None
        resolved.append(replace(e, coeff=coeff))
        plan.append(steering)
    return AppliedSteering(tuple(resolved), tuple(plan), source)
