"""Where, when and how a steering acts, as data: the positions it selects (:class:`Where`), its strength over
generated tokens (:class:`Strength`) and its operator, together a :class:`SteerSpec`; the paper's two modes are the
presets ``continuous`` and ``single``. Also the compact text form the CLI and saved results use
(:func:`parse_spec`, :attr:`SteerSpec.text`). Pure: no torch, no tokenizer (:mod:`lens_steer.engines.selection`
resolves token sets and applies a spec).

Grammar (items separated by commas, any order; a preset name may come first in place of ``at=``)::

    spec      := PRESET | item ("," item)*
    PRESET    := continuous | single
    item      := "at=" where | "span=" N | "strength=" strength | "op=" op
    where     := all | prompt | last | first:K | window:A-B | trigger:TEXT("|"TEXT)* | region:OPEN..CLOSE
    strength  := constant | linear:FROM:TO:N | step:BEFORE:AFTER:K
    op        := add | add-norm | clamp | ablate

In TEXT, OPEN and CLOSE, ``\\n`` ``\\t`` ``\\r`` are a newline, tab and carriage return and a backslash makes the
next character literal (``\\,`` ``\\|`` ``\\.`` ``\\\\``).
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field

__all__ = ["OPERATORS", "POSITION_KINDS", "PRESETS", "SCHEDULE_KINDS", "SpecError", "SteerSpec", "Strength", "Where",
           "as_spec", "mode_text", "parse_spec"]

POSITION_KINDS: tuple[str, ...] = ("all", "prompt", "last", "first", "window", "trigger", "region")
"""Position kinds: every position; the prompt's; the prompt's last token; the first K generated tokens; generated
tokens [A, B); the last token of each occurrence of a trigger (and ``span - 1`` after it); inside a region."""
SCHEDULE_KINDS: tuple[str, ...] = ("constant", "linear", "step")
"""Strength schedules over generated tokens."""
OPERATORS: tuple[str, ...] = ("add", "add-norm", "clamp", "ablate")
"""Operators, with e the effective coefficient at a position, v the direction and u = v/|v|: ``add`` x + e·v (the
paper's); ``add-norm`` x + e·v rescaled to |x|; ``clamp`` x - (x·u)u + e·v (the projection on u set to e|v|);
``ablate`` x - e(x·u)u (e = 1 removes the component along u)."""


class SpecError(ValueError):
    """A steering spec that cannot be right; the message names the field (``at``, ``strength``, ``op``...)."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


def _int(value, field_name: str, what: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise SpecError(field_name, f"{what} must be an integer >= {low}, got {value!r}")
    return value


@dataclass(frozen=True)
class Where:
    """Which positions of a request are steered (decided per request from its own tokens).

    Positions are counted in the request's sequence: the prompt, then generated token t (0-based) at the position
    that holds it. Triggers and regions select generated tokens only; they read the prompt too (a match may begin
    there, a region may open there).

    Attributes:
        kind: One of :data:`POSITION_KINDS`.
        start / stop: ``first``: generated tokens [0, stop); ``window``: [start, stop).
        triggers: ``trigger``: texts, each encoded to a token sequence; the last token of every occurrence is steered.
        span: ``trigger``: positions steered from an occurrence's last token on (1: that token only).
        region: ``region``: the (open, close) marker tokens; generated tokens after an open marker and before the
            next close marker are steered (the markers themselves are not).
    """

    kind: str = "all"
    start: int = 0
    stop: int | None = None
    triggers: tuple[str, ...] = ()
    span: int = 1
    region: tuple[str, str] | None = None

    def __post_init__(self) -> None:
        kind = self.kind
        if kind not in POSITION_KINDS:
            raise SpecError("at", f"unknown position kind {kind!r}; expected one of {', '.join(POSITION_KINDS)}")
        triggers = (self.triggers,) if isinstance(self.triggers, str) else tuple(self.triggers)
        object.__setattr__(self, "triggers", triggers)
        for name, owners, unset in (("start", ("first", "window"), 0), ("stop", ("first", "window"), None),
                                    ("triggers", ("trigger",), ()), ("region", ("region",), None)):
            if kind not in owners and getattr(self, name) != unset:
                raise SpecError("at", f"at={kind} takes no {name}")
        if kind in ("first", "window"):
            _int(self.start, "at", f"{kind}'s start", 0)
            stop = _int(self.stop, "at", "first's k" if kind == "first" else "window's end", 1)
            if kind == "first" and self.start != 0:
                raise SpecError("at", "first:K starts at generated token 0; use window:A-B for another start")
            if stop <= self.start:
                raise SpecError("at", f"window {self.start}-{stop} is empty: its end ({stop}) must be greater than its "
                                      f"start ({self.start})")
        if kind == "trigger" and (not self.triggers or any(not isinstance(t, str) or not t for t in self.triggers)):
            raise SpecError("at", f"trigger needs one or more non-empty texts, got {self.triggers!r}")
        _int(self.span, "span", "span", 1)
        if self.span != 1 and kind != "trigger":
            raise SpecError("span", f"span applies to at=trigger only, not at={kind}")
        r = self.region
        if kind == "region" and not (isinstance(r, tuple) and len(r) == 2 and all(isinstance(m, str) and m for m in r)):
            raise SpecError("at", f"region needs an (open, close) pair of marker texts, got {r!r}")
        if kind == "region" and r[0] == r[1]:
            raise SpecError("at", f"region markers must differ, got {r[0]!r} twice")

    @classmethod
    def prompt(cls) -> Where:
        """The prompt's positions (the paper's single mode)."""
        return cls("prompt")

    @classmethod
    def last(cls) -> Where:
        """The prompt's last token (the stream the first generated token is read from)."""
        return cls("last")

    @classmethod
    def first(cls, k: int) -> Where:
        """The first ``k`` generated tokens."""
        return cls("first", 0, k)

    @classmethod
    def window(cls, start: int, stop: int) -> Where:
        """Generated tokens ``[start, stop)``."""
        return cls("window", start, stop)

    @classmethod
    def trigger(cls, *texts: str, span: int = 1) -> Where:
        """The last token of every occurrence of any of ``texts`` (and ``span - 1`` tokens after it)."""
        return cls("trigger", triggers=tuple(texts), span=span)

    @classmethod
    def between(cls, open_marker: str, close_marker: str) -> Where:
        """Generated tokens inside ``open_marker ... close_marker`` (e.g. ``<think>`` and ``</think>``)."""
        return cls("region", region=(open_marker, close_marker))

    @property
    def text(self) -> str:
        """The ``at=`` value of the compact form."""
        if self.kind == "first":
            return f"first:{self.stop}"
        if self.kind == "window":
            return f"window:{self.start}-{self.stop}"
        if self.kind == "trigger":
            return "trigger:" + "|".join(_escape(t) for t in self.triggers)
        if self.kind == "region":
            return "region:" + "..".join(_escape(m, ".") for m in self.region)
        return self.kind


@dataclass(frozen=True)
class Strength:
    """How the coefficient varies over generated tokens: a factor f(t) the coefficient is multiplied by.

    Attributes:
        kind: ``constant`` (f = 1), ``linear`` (``start`` at generated token 0 to ``end`` at token ``n``, then
            ``end``) or ``step`` (``start`` before generated token ``n``, ``end`` from it on).
        start / end / n: As above. Prompt positions take ``start``.
    """

    kind: str = "constant"
    start: float = 1.0
    end: float = 1.0
    n: int = 0

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULE_KINDS:
            raise SpecError("strength", f"unknown schedule {self.kind!r}; expected one of {', '.join(SCHEDULE_KINDS)}")
        for name in ("start", "end"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise SpecError("strength", f"{self.kind}'s {name} value must be a finite number, got {value!r}")
            object.__setattr__(self, name, float(value))
        if self.kind == "constant":
            if (self.start, self.end, self.n) != (1.0, 1.0, 0):
                raise SpecError("strength", "constant takes no values (the coefficient is the strength)")
        else:
            _int(self.n, "strength", f"{self.kind}'s token count", 1 if self.kind == "linear" else 0)

    @classmethod
    def linear(cls, start: float, end: float, n: int) -> Strength:
        """Factor ``start`` at generated token 0 to ``end`` at token ``n`` (a ramp or a decay), then ``end``."""
        return cls("linear", start, end, n)

    @classmethod
    def step(cls, before: float, after: float, k: int) -> Strength:
        """Factor ``before`` for generated tokens ``< k``, ``after`` from token ``k`` on."""
        return cls("step", before, after, k)

    def factor(self, t: int | None) -> float:
        """The factor at generated token ``t`` (None: a prompt position)."""
        if self.kind == "constant":
            return 1.0
        if t is None:
            return self.start
        if self.kind == "step":
            return self.start if t < self.n else self.end
        return self.start + (self.end - self.start) * min(t, self.n) / self.n

    @property
    def text(self) -> str:
        """The ``strength=`` value of the compact form."""
        if self.kind == "constant":
            return "constant"
        return f"{self.kind}:{_num(self.start)}:{_num(self.end)}:{self.n}"


@dataclass(frozen=True)
class SteerSpec:
    """Where, when and how a :class:`~lens_steer.engines.base.Steering` acts.

    Attributes:
        at: The positions (:class:`Where`). strength: The schedule over generated tokens (:class:`Strength`).
        op: The operator (:data:`OPERATORS`). Several steerings of one request apply in their plan's order at each
            layer, each to the stream the one before left; layers in forward order.
    """

    at: Where = field(default_factory=Where)
    strength: Strength = field(default_factory=Strength)
    op: str = "add"

    def __post_init__(self) -> None:
        if not isinstance(self.at, Where) or not isinstance(self.strength, Strength):
            raise SpecError("at", "a SteerSpec takes a Where and a Strength")
        if self.op not in OPERATORS:
            raise SpecError("op", f"unknown operator {self.op!r}; expected one of {', '.join(OPERATORS)}")

    @property
    def preset(self) -> str | None:
        """``"continuous"`` or ``"single"`` when this is one of the paper's modes (applied exactly as the paper's
        code does), else None."""
        if self.op != "add" or self.strength.kind != "constant":
            return None
        return {"all": "continuous", "prompt": "single"}.get(self.at.kind)

    @property
    def text(self) -> str:
        """The compact form, canonical (a preset's name; defaults left out): what ``mode`` records."""
        if self.preset is not None:
            return self.preset
        items = [] if self.at.kind == "all" else [f"at={self.at.text}"]
        items += [f"span={self.at.span}"] if self.at.span != 1 else []
        items += [f"strength={self.strength.text}"] if self.strength.kind != "constant" else []
        items += [f"op={self.op}"] if self.op != "add" else []
        return ",".join(items)

    def slug(self) -> str:
        """A file-name-safe name: the text with other characters replaced, plus a short hash when it changed."""
        text = self.text
        safe = re.sub(r"[^A-Za-z0-9._=+-]", "_", text)[:60]
        return safe if safe == text else f"{safe}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"

    def __str__(self) -> str:
        return self.text


PRESETS: dict[str, SteerSpec] = {"continuous": SteerSpec(), "single": SteerSpec(Where("prompt"))}
"""The paper's modes: add c·v at every position / at the prompt's positions, constant strength."""


def _num(x: float) -> str:
    text = repr(float(x))
    return text[:-2] if text.endswith(".0") else text


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r"}
_WRITTEN = {v: "\\" + k for k, v in _ESCAPES.items()}


def _escape(text: str, extra: str = "") -> str:
    return "".join("\\" + ch if ch in "\\,|" + extra else _WRITTEN.get(ch, ch) for ch in text)


def _split(text: str, sep: str) -> list[str]:
    """``text`` split at every ``sep`` not escaped by a backslash (escapes kept)."""
    parts, cur, i = [], [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            cur.append(text[i:i + 2])
            i += 2
        elif text.startswith(sep, i):
            parts.append("".join(cur))
            cur, i = [], i + len(sep)
        else:
            cur.append(text[i])
            i += 1
    parts.append("".join(cur))
    return parts


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), text, flags=re.S)


def _parse_where(value: str, span: int) -> Where:
    kind, _, arg = value.partition(":")
    kind = kind.strip()
    if kind in ("all", "prompt", "last") and not arg.strip():
        return Where(kind)
    if kind in ("first", "window"):
        a, sep, b = ("0", "-", arg) if kind == "first" else arg.partition("-")
        try:
            start, stop = int(a), int(b)
        except ValueError:
            sep = ""
        if not sep:
            raise SpecError("at", f"{value!r} is not {kind}:{'K' if kind == 'first' else 'A-B'} with integers")
        return Where(kind, start, stop)
    if kind == "trigger" and arg:
        return Where("trigger", triggers=tuple(_unescape(t) for t in _split(arg, "|")), span=span)
    if kind == "region":
        markers = _split(arg, "..")
        if len(markers) != 2:
            raise SpecError("at", f"{value!r} is not region:OPEN..CLOSE (escape a literal '.' as '\\.')")
        return Where("region", region=(_unescape(markers[0]), _unescape(markers[1])))
    raise SpecError("at", f"unknown position {value!r}; expected all, prompt, last, first:K, window:A-B, "
                          "trigger:TEXT[|TEXT...] or region:OPEN..CLOSE")


def _parse_strength(value: str) -> Strength:
    kind, _, arg = value.partition(":")
    kind = kind.strip()
    if kind == "constant" and not arg.strip():
        return Strength()
    if kind not in ("linear", "step"):
        raise SpecError("strength", f"unknown schedule {value!r}; expected constant, linear:FROM:TO:N or "
                                    "step:BEFORE:AFTER:K")
    form = "linear:FROM:TO:N" if kind == "linear" else "step:BEFORE:AFTER:K"
    parts = arg.split(":")
    if len(parts) != 3:
        raise SpecError("strength", f"{arg!r} is not {form}")
    a, b, n = parts
    try:
        start, end, count = float(a), float(b), int(n)
    except ValueError:
        raise SpecError("strength", f"{value!r} is not {form} (two numbers and a token count)") from None
    return Strength(kind, start, end, count)


def parse_spec(text: str) -> SteerSpec:
    """The :class:`SteerSpec` of a compact form (see the module's grammar) or a preset name.

    Examples: ``single``; ``at=first:16``; ``at=window:4-20,strength=linear:1:0:16``; ``at=trigger:\\n\\n|Step``;
    ``at=region:<think>..</think>,op=add-norm``; ``single,op=ablate``; ``op=clamp``.

    Raises:
        SpecError: one line naming the field that is wrong.
    """
    if not isinstance(text, str) or not text.strip():
        raise SpecError("mode", "an empty steering spec; expected continuous, single or items such as at=first:16")
    values: dict[str, str] = {}
    preset = None
    for i, item in enumerate(_split(text, ",")):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq:
            if i == 0 and key in PRESETS:
                preset = key
                continue
            raise SpecError("mode", f"unknown steering mode {item.strip()!r}; expected continuous, single or items "
                                    "at=..., strength=..., op=..., span=...")
        if key not in ("at", "strength", "op", "span"):
            raise SpecError(key or "mode", f"unknown field {key!r}; expected at, strength, op or span")
        if key in values:
            raise SpecError(key, "given twice")
        values[key] = value
    if preset is not None and "at" in values:
        raise SpecError("at", f"give the preset {preset!r} or at=..., not both")
    try:
        span = int(values.get("span", "1"))
    except ValueError:
        raise SpecError("span", f"span must be an integer >= 1, got {values['span']!r}") from None
    where = PRESETS[preset].at if preset is not None else _parse_where(values.get("at", "all"), span)
    if span != 1 and where.kind != "trigger":
        raise SpecError("span", f"span applies to at=trigger only, not at={where.kind}")
    strength = _parse_strength(values["strength"].strip()) if "strength" in values else Strength()
    return SteerSpec(where, strength, values.get("op", "add").strip())


def as_spec(mode) -> SteerSpec:
    """A :class:`SteerSpec` from a preset name, a compact form or a spec (returned as it is)."""
    if isinstance(mode, SteerSpec):
        return mode
    if isinstance(mode, str):
        return PRESETS[mode] if mode in PRESETS else parse_spec(mode)
    raise SpecError("mode", f"a steering mode is a preset name, a spec string or a SteerSpec, not "
                            f"{type(mode).__name__}")


def mode_text(mode) -> str:
    """The canonical text of a mode (a preset name stays itself)."""
    return as_spec(mode).text
