"""One prompt answered unsteered and steered at one layer and size, with the projection trace of both
answers: the logic behind the notebook's layer-probing widget (:func:`probe_request` answers one request of
its controls; :mod:`lens_steer.viz.probe_widget` only draws). Runs the model, writes nothing."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

from lens_steer.analysis.trace import TraceResult, projection_trace
from lens_steer.engines.steer_spec import OPERATORS

__all__ = ["OPERATOR_CHOICES", "POSITION_CHOICES", "SIZE_KINDS", "ProbeAnswer", "ProbeInputError", "ProbeOutcome", "ProbeRequest",
           "PromptProbe", "probe_prompt", "probe_request", "request_mode"]

SIZE_KINDS: tuple[str, ...] = ("scale", "coeff")
"""How a request's size is read: a fraction of the layer's mean residual norm, or the raw coefficient c."""
POSITION_CHOICES: tuple[str, ...] = ("continuous", "single", "last", "first", "window", "trigger", "region")
"""Where a request steers: the paper's presets, then the other position kinds
(:data:`~lens_steer.engines.steer_spec.POSITION_KINDS`); ``first``, ``window``, ``trigger`` and ``region`` read
their argument from :attr:`ProbeRequest.position_arg`."""
OPERATOR_CHOICES: tuple[str, ...] = OPERATORS
"""The operators a request may ask for (:data:`~lens_steer.engines.steer_spec.OPERATORS`)."""
_ARGUMENTS = {"first": "K (e.g. 16)", "window": "A-B (e.g. 4-20)", "trigger": "TEXT[|TEXT...] (e.g. \\n\\n|Step)",
              "region": "OPEN..CLOSE (e.g. <think>..</think>)"}


class ProbeInputError(ValueError):
    """Input :func:`probe_prompt` cannot run with; the message is one line meant for the user."""


@dataclass(frozen=True)
class ProbeAnswer:
    """One answer to the probed prompt.

    Attributes:
        text: The decoded response.
        response_ids: Its tokens (stop token excluded).
        stopped: Whether a stop token ended it (else it was cut at ``max_new_tokens``).
        trace: Projection of each position onto the direction
            (:func:`~lens_steer.analysis.trace.projection_trace`, run on the bridge under the same
            steering), or None when not asked for.
    """

    text: str
    response_ids: list[int]
    stopped: bool
    trace: TraceResult | None

    @property
    def n_tokens(self) -> int:
        """Response length in tokens."""
        return len(self.response_ids)

    @property
    def trace_matches(self) -> bool | None:
        """Whether the trace follows this answer's tokens (always on the bridge engine; another engine's
        answer can differ from the bridge's by float rounding); None without a trace."""
        if self.trace is None:
            return None
        return self.trace.token_ids[self.trace.n_prompt:] == self.response_ids


@dataclass(frozen=True)
class PromptProbe:
    """A prompt answered without and with steering.

    Attributes:
        prompt: The question text. style: Its prompt style (``"direct"``, ``"cot"``, ``"none"``).
        layer: Steered block. coeff: The c added (``c·v_layer``). scale: The size asked for as a
            fraction of the layer's mean residual norm, or None when a coefficient was given.
        mode: ``"continuous"``, ``"single"`` or a steering spec's canonical text. engine: Name of the engine
            that answered.
        trace_layer: Block whose ``hook_resid_post`` the traces project (None: no traces).
        max_new_tokens: Generation limit (lengths are censored there).
        unsteered / steered: The two answers.
        notes: Warnings raised on the way (e.g. a steering far larger than the residual stream).
    """

    prompt: str
    style: str
    layer: int
    coeff: float
    scale: float | None
    mode: str
    engine: str
    trace_layer: int | None
    max_new_tokens: int
    unsteered: ProbeAnswer
    steered: ProbeAnswer
    notes: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        """Whether steering changed the answer's tokens."""
        return self.steered.response_ids != self.unsteered.response_ids

    def describe(self) -> str:
        """A few lines: settings, then each answer with its length."""
        size = f"c={self.coeff:.4g}" + ("" if self.scale is None else f" (scale {self.scale:g})")
        lines = [f"layer {self.layer}, {size}, {self.mode}, {self.style} prompt, engine {self.engine}: "
                 f"{'answer changed' if self.changed else 'answer unchanged'}"]
        for name, answer in (("unsteered", self.unsteered), ("steered", self.steered)):
            cut = "" if answer.stopped else f", cut at {self.max_new_tokens}"
            lines.append(f"{name} ({answer.n_tokens} tokens{cut}): {answer.text!r}")
        return "\n".join(lines + [f"note: {n}" for n in self.notes])


def _one_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _steering(info, engine, vector, prompt: str, layer: int, coeff: float | None, scale: float | None, mode,
              style: str, trace_layer: int | None, allow_other_model: bool):
    """The checked :class:`~lens_steer.engines.base.Steering` for the model ``info`` and the answering ``engine``
    (a spec beyond the paper's presets must be declared by it; triggers and region markers must be its
    tokenizer's); :class:`ProbeInputError` for bad input."""
    from lens_steer.engines.base import Steering
    from lens_steer.engines.registry import require_steering
    from lens_steer.engines.selection import resolve_spec
    from lens_steer.engines.steer_spec import as_spec
    from lens_steer.engines.steering import resolve_direction, steering_delta
    from lens_steer.prompts import PROMPT_STYLES

    if not isinstance(prompt, str) or not prompt.strip():
        raise ProbeInputError("enter a prompt: it is empty")
    try:
        spec = as_spec(mode)
        if spec.preset is None:
            require_steering(engine, spec)
        resolve_spec(spec, engine.tokenizer)
    except ValueError as exc:
        raise ProbeInputError(_one_line(exc)) from exc
    if style not in PROMPT_STYLES:
        raise ProbeInputError(f"unknown prompt style {style!r}; choose one of {', '.join(PROMPT_STYLES)}")
    if (coeff is None) == (scale is None):
        raise ProbeInputError("give either a coefficient or a scale, not " + ("neither" if coeff is None else "both"))
    size = coeff if coeff is not None else scale
    if isinstance(size, bool) or not isinstance(size, int | float) or not math.isfinite(size):
        raise ProbeInputError(f"the steering size must be a finite number, got {size!r}")
    if scale is not None and spec.op == "ablate":
        raise ProbeInputError("op=ablate takes a coefficient (the fraction of the component removed; 1 removes it), "
                              "not a scale")
    try:
        if scale is not None:
            if getattr(vector, "resid_norm", None) is None:
                raise ProbeInputError("this vector has no residual norms recorded: give a coefficient, not a scale")
            direction = resolve_direction(info, vector, layer, allow_other_model=allow_other_model)
            coeff = vector.coeff_for_scale(layer, float(scale)) if float(direction.norm()) > 0 else 0.0
        steering = Steering(vector, layer, float(coeff), spec, allow_other_model)
        steering_delta(info, steering)  # every check the engines make, before anything runs
        if trace_layer is not None and trace_layer != layer:
            d = resolve_direction(info, vector, trace_layer, allow_other_model=allow_other_model)
            if float(d.norm()) == 0:
                raise ProbeInputError(f"the vector has no direction at trace layer {trace_layer} (its row is all zeros)")
    except ProbeInputError:
        raise
    except (IndexError, ValueError, TypeError) as exc:
        raise ProbeInputError(_one_line(exc)) from exc
    return steering


def probe_prompt(
    model,
    vector,
    prompt: str,
    layer: int,
    coeff: float | None = None,
    *,
    scale: float | None = None,
    mode="continuous",
    style: str = "direct",
    engine=None,
    generation=None,
    trace: bool = True,
    trace_layer: int | None = None,
    template=None,
    allow_other_model: bool = False,
) -> PromptProbe:
    """Answer ``prompt`` unsteered and steered with ``c·v_layer``, and trace both answers.

    On the bridge engine each answer comes from its :func:`~lens_steer.analysis.trace.projection_trace`
    (one generation, then one cached forward pass, under :func:`~lens_steer.engines.api.steer`). On
    another engine (vLLM) both answers are generated in one call, each with its own steering, and the
    traces are run on the bridge (``ProbeAnswer.trace_matches`` says whether they followed the same tokens).

    Args:
        model: A ``TransformerBridge`` (or its engine): traces and the default engine.
        vector: A ``SteeringVector`` (a ``[d_model]`` or ``[n_layers, d_model]`` tensor also works with ``coeff``).
        prompt: The question text, wrapped in the ``style`` prompt.
        layer: Block whose output is steered.
        coeff: The multiplier c; or give ``scale``.
        scale: The size as a fraction of the layer's mean residual norm
            (:meth:`~lens_steer.method.vectors.SteeringVector.coeff_for_scale`).
        mode: ``"continuous"`` or ``"single"``, or where, when and how to steer: a
            :class:`~lens_steer.engines.steer_spec.SteerSpec` or its text (``"at=first:16,op=clamp"``).
        style: Prompt style: ``"direct"`` (the paper steers these), ``"cot"`` or ``"none"``.
        engine: The engine that answers (default: the bridge's own).
        generation: A :class:`~lens_steer.config.GenerationConfig` (default: greedy, 128 new tokens).
        trace: Also compute the projection traces.
        trace_layer: Block the traces read (default: ``layer``).
        template: A :class:`~lens_steer.prompts.PromptTemplate` (default: the paper's).
        allow_other_model: Accept a vector derived on another checkpoint.

    Returns:
        A :class:`PromptProbe`.

    Raises:
        ProbeInputError: an empty prompt, an unknown or malformed mode, one the answering engine does not
            declare, a trigger or marker that is not the model's tokens, an unknown style, a layer out of range or
            one the vector has no direction at, neither or both of ``coeff``/``scale``, a vector that does not
            fit the model.
    """
    from lens_steer.config import GenerationConfig
    from lens_steer.engines.api import bridge_engine
    from lens_steer.prompts import DEFAULT_TEMPLATE, encode_prompt

    bridge = bridge_engine(model)
    answering = engine if engine is not None else bridge
    tl = bridge.model
    cfg = generation or GenerationConfig()
    tmpl = template or DEFAULT_TEMPLATE
    read_at = layer if trace_layer is None else trace_layer
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        spec = _steering(bridge.info, answering, vector, prompt, layer, coeff, scale, mode, style, read_at,
                         allow_other_model)

        def traced(steered: bool) -> TraceResult:
            return projection_trace(tl, prompt, vector, read_at, style, cfg, template=tmpl,
                                    allow_other_model=allow_other_model, steering=spec if steered else None)

        if answering is bridge and trace:
            traces = [traced(False), traced(True)]
            answers = [ProbeAnswer(t.response, t.token_ids[t.n_prompt:], t.stopped, t) for t in traces]
        else:
            ids = encode_prompt(answering.tokenizer, prompt, style, tmpl)
            gens = answering.generate([ids, ids], cfg, steering=[None, spec], progress=False)
            traces = [traced(False), traced(True)] if trace else [None, None]
            answers = [ProbeAnswer(g.text, list(g.response_ids), g.stopped, t) for g, t in zip(gens, traces)]
    for w in caught:  # only runtime warnings (e.g. a very large steering) become notes; the rest go on
        if not issubclass(w.category, RuntimeWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    notes = tuple(dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)))
    return PromptProbe(
        prompt=prompt, style=style, layer=layer, coeff=float(spec.coeff), scale=None if scale is None else float(scale),
        mode=spec.mode, engine=answering.name, trace_layer=read_at if trace else None,
        max_new_tokens=cfg.max_new_tokens,
        unsteered=answers[0], steered=answers[1], notes=notes,
    )


@dataclass(frozen=True)
class ProbeRequest:
    """What the widget's controls ask for.

    Attributes:
        prompt: Question text. layer: Steered block. size: The slider's value, read as ``size_kind``.
        size_kind: ``"scale"`` or ``"coeff"`` (see :data:`SIZE_KINDS`). mode: Where to steer: one of
        :data:`POSITION_CHOICES`, or a whole steering spec text. style: Prompt style. engine: Engine name in the
        menu. trace_layer: Block the traces read (None: the steered layer). position_arg: The argument of a
        ``first`` / ``window`` / ``trigger`` / ``region`` mode. op: The operator (``add``, ``add-norm``,
        ``clamp``, ``ablate``). strength: A schedule (``linear:1:0:32``; empty: constant).
    """

    prompt: str
    layer: int
    size: float
    size_kind: str = "scale"
    mode: str = "continuous"
    style: str = "direct"
    engine: str = "bridge"
    trace_layer: int | None = None
    position_arg: str = ""
    op: str = "add"
    strength: str = ""


def request_mode(request: ProbeRequest) -> str:
    """The steering spec text a request asks for: its position choice (with its argument), operator and strength.

    Raises:
        ProbeInputError: a position that needs an argument without one, or a spec that does not parse.
    """
    from lens_steer.engines.steer_spec import PRESETS, SpecError, mode_text

    mode, arg = request.mode.strip(), request.position_arg
    if mode in PRESETS:
        items = [f"at={PRESETS[mode].at.text}"]
    elif mode == "last":
        items = ["at=last"]
    elif mode in _ARGUMENTS:
        if not arg.strip():
            raise ProbeInputError(f"position {mode} needs an argument: {_ARGUMENTS[mode]}")
        items = [f"at={mode}:{arg}"]
    else:
        items = [mode]
    items += [f"op={request.op}"] if request.op and request.op != "add" else []
    items += [f"strength={request.strength.strip()}"] if request.strength.strip() else []
    try:
        return mode_text(",".join(items))
    except SpecError as exc:
        raise ProbeInputError(str(exc)) from None


@dataclass(frozen=True)
class ProbeOutcome:
    """A request answered (``result``), or the one-line reason it could not run (``message``; nothing ran)."""

    result: PromptProbe | None = None
    message: str = ""


def probe_request(model, vector, engines, request: ProbeRequest, generation=None) -> ProbeOutcome:
    """Answer one request of the widget's controls with :func:`probe_prompt`.

    Args:
        model: A ``TransformerBridge`` (traces; the ``bridge`` engine).
        vector: A ``SteeringVector``.
        engines: The engines offered (an :class:`~lens_steer.engines.menu.EngineMenu`).
        request: The controls' values.
        generation: A :class:`~lens_steer.config.GenerationConfig`.

    Returns:
        A :class:`ProbeOutcome`: the probe, or for bad input or an engine that cannot start, the message.
    """
    from lens_steer.engines.menu import EngineUnavailableError

    try:
        if request.size_kind not in SIZE_KINDS:
            raise ProbeInputError(f"unknown size kind {request.size_kind!r}; choose one of {', '.join(SIZE_KINDS)}")
        coeff = request.size if request.size_kind == "coeff" else None
        scale = request.size if request.size_kind == "scale" else None
        mode = request_mode(request)
        engine = engines.get(request.engine)
        return ProbeOutcome(probe_prompt(model, vector, request.prompt, request.layer, coeff, scale=scale,
                                         mode=mode, style=request.style, engine=engine,
                                         generation=generation, trace_layer=request.trace_layer))
    except (ProbeInputError, EngineUnavailableError) as exc:
        return ProbeOutcome(message=str(exc))
