"""One prompt answered unsteered and steered at one layer and size, with the projection trace of both
answers: the logic behind the notebook's layer-probing widget (:func:`probe_request` answers one request of
its controls; :mod:`lens_steer.viz.probe_widget` only draws). Runs the model, writes nothing."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

from lens_steer.analysis.trace import TraceResult, projection_trace

__all__ = ["SIZE_KINDS", "ProbeAnswer", "ProbeInputError", "ProbeOutcome", "ProbeRequest", "PromptProbe",
           "probe_prompt", "probe_request"]

SIZE_KINDS: tuple[str, ...] = ("scale", "coeff")
"""How a request's size is read: a fraction of the layer's mean residual norm, or the raw coefficient c."""


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
        mode: ``"continuous"`` or ``"single"``. engine: Name of the engine that answered.
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


def _steering(info, vector, prompt: str, layer: int, coeff: float | None, scale: float | None, mode: str, style: str,
              trace_layer: int | None, allow_other_model: bool):
    """The checked :class:`~lens_steer.engines.base.Steering`; :class:`ProbeInputError` for bad input."""
    from lens_steer.engines.base import STEER_MODES, Steering
    from lens_steer.engines.steering import resolve_direction, steering_delta
    from lens_steer.prompts import PROMPT_STYLES

    if not isinstance(prompt, str) or not prompt.strip():
        raise ProbeInputError("enter a prompt: it is empty")
    if mode not in STEER_MODES:
        raise ProbeInputError(f"unknown steering mode {mode!r}; choose one of {', '.join(STEER_MODES)}")
    if style not in PROMPT_STYLES:
        raise ProbeInputError(f"unknown prompt style {style!r}; choose one of {', '.join(PROMPT_STYLES)}")
    if (coeff is None) == (scale is None):
        raise ProbeInputError("give either a coefficient or a scale, not " + ("neither" if coeff is None else "both"))
    size = coeff if coeff is not None else scale
    if isinstance(size, bool) or not isinstance(size, int | float) or not math.isfinite(size):
        raise ProbeInputError(f"the steering size must be a finite number, got {size!r}")
    try:
        if scale is not None:
            if getattr(vector, "resid_norm", None) is None:
                raise ProbeInputError("this vector has no residual norms recorded: give a coefficient, not a scale")
            direction = resolve_direction(info, vector, layer, allow_other_model=allow_other_model)
            coeff = vector.coeff_for_scale(layer, float(scale)) if float(direction.norm()) > 0 else 0.0
        spec = Steering(vector, layer, float(coeff), mode, allow_other_model)
        steering_delta(info, spec)  # every check the engines make, before anything runs
        if trace_layer is not None and trace_layer != layer:
            d = resolve_direction(info, vector, trace_layer, allow_other_model=allow_other_model)
            if float(d.norm()) == 0:
                raise ProbeInputError(f"the vector has no direction at trace layer {trace_layer} (its row is all zeros)")
    except ProbeInputError:
        raise
    except (IndexError, ValueError, TypeError) as exc:
        raise ProbeInputError(_one_line(exc)) from exc
    return spec


def probe_prompt(
    model,
    vector,
    prompt: str,
    layer: int,
    coeff: float | None = None,
    *,
    scale: float | None = None,
    mode: str = "continuous",
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
        mode: ``"continuous"`` or ``"single"``.
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
        ProbeInputError: an empty prompt, an unknown mode or style, a layer out of range or one the
            vector has no direction at, neither or both of ``coeff``/``scale``, a vector that does not
            fit the model.
    """
    from lens_steer.config import GenerationConfig
    from lens_steer.engines.api import bridge_engine, steer
    from lens_steer.prompts import DEFAULT_TEMPLATE, encode_prompt

    bridge = bridge_engine(model)
    answering = engine if engine is not None else bridge
    tl = bridge.model
    cfg = generation or GenerationConfig()
    tmpl = template or DEFAULT_TEMPLATE
    read_at = layer if trace_layer is None else trace_layer
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        spec = _steering(bridge.info, vector, prompt, layer, coeff, scale, mode, style, read_at, allow_other_model)

        def traced(steered: bool) -> TraceResult:
            args = (tl, prompt, vector, read_at, style, cfg)
            if not steered:
                return projection_trace(*args, template=tmpl, allow_other_model=allow_other_model)
            with steer(tl, vector, layer, spec.coeff, mode, allow_other_model=allow_other_model):
                return projection_trace(*args, template=tmpl, allow_other_model=allow_other_model)

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
        mode=mode, engine=answering.name, trace_layer=read_at if trace else None, max_new_tokens=cfg.max_new_tokens,
        unsteered=answers[0], steered=answers[1], notes=notes,
    )


@dataclass(frozen=True)
class ProbeRequest:
    """What the widget's controls ask for.

    Attributes:
        prompt: Question text. layer: Steered block. size: The slider's value, read as ``size_kind``.
        size_kind: ``"scale"`` or ``"coeff"`` (see :data:`SIZE_KINDS`). mode: ``"continuous"`` or
        ``"single"``. style: Prompt style. engine: Engine name in the menu. trace_layer: Block the
        traces read (None: the steered layer).
    """

    prompt: str
    layer: int
    size: float
    size_kind: str = "scale"
    mode: str = "continuous"
    style: str = "direct"
    engine: str = "bridge"
    trace_layer: int | None = None


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
        engine = engines.get(request.engine)
        return ProbeOutcome(probe_prompt(model, vector, request.prompt, request.layer, coeff, scale=scale,
                                         mode=request.mode, style=request.style, engine=engine,
                                         generation=generation, trace_layer=request.trace_layer))
    except (ProbeInputError, EngineUnavailableError) as exc:
        return ProbeOutcome(message=str(exc))
