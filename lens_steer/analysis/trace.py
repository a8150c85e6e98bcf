"""Projection of residual streams onto a CoT direction, and ablation of that direction.

:func:`projection_onto_direction` is a pure tensor helper. :func:`projection_trace`
(per-token projection through a generated response) and :func:`direction_ablation`
(answer CoT prompts with the direction projected out, against a random control) run the
model but write nothing and return dataclasses.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from lens_steer.analysis.repetition import distinct_ngram_ratio, is_repetitive

__all__ = [
    "ABLATION_CONDITIONS",
    "AblationCondition",
    "AblationResult",
    "TraceResult",
    "direction_ablation",
    "distinct_ngram_ratio",
    "is_repetitive",
    "projection_onto_direction",
    "projection_trace",
]

_EPS = 1e-12

ABLATION_CONDITIONS: tuple[str, ...] = ("baseline", "ablated", "random")
"""Conditions of :func:`direction_ablation`: no ablation, CoT direction projected out, and a
random direction of the same norm projected out at the same layers (the control)."""


def projection_onto_direction(
    resid: Float[Tensor, "pos d_model"], direction: Float[Tensor, " d_model"]
) -> Float[Tensor, " pos"]:
    """Scalar projection of each residual vector onto the unit direction.

    Args:
        resid: Residual stream vectors, one per position (leading batch dims
            are also accepted and preserved).
        direction: Direction to project onto; normalised internally.

    Returns:
        ``resid @ direction / ‖direction‖`` for each position.

    Raises:
        ValueError: If ``direction`` is (numerically) zero.
    """
    d = direction.to(device=resid.device, dtype=resid.dtype)
    norm = d.norm()
    if norm < _EPS:
        raise ValueError("direction has zero norm")
    return resid @ (d / norm)


# ---------------------------------------------------------------- projection trace


@dataclass(frozen=True)
class TraceResult:
    """Per-token projection of ``hook_resid_post`` onto a direction, over prompt + response.

    Attributes:
        question: The question text.
        style: Prompt style (``"cot"``, ``"direct"`` or ``"none"``).
        layer: Block whose ``hook_resid_post`` was read.
        token_ids: Prompt then response token ids (the stop token is not included).
        tokens: Each token decoded on its own (same length as ``token_ids``).
        projections: ``[pos]`` scalar projection onto the unit direction per position.
        n_prompt: Number of prompt tokens; response positions start here.
        response: The decoded response.
        stopped: Whether the response ended with a stop token (else it was cut at
            ``max_new_tokens``).
        coefficients: ``[pos]`` effective coefficient of the ``steering`` traced under at each position (0 where
            it does not steer; :func:`~lens_steer.engines.selection.effective_coefficients`), or None unsteered.
    """

    question: str
    style: str
    layer: int
    token_ids: list[int]
    tokens: list[str]
    projections: Float[Tensor, " pos"]
    n_prompt: int
    response: str
    stopped: bool
    coefficients: Float[Tensor, " pos"] | None = None

    @property
    def n_response(self) -> int:
        """Number of response tokens."""
        return len(self.token_ids) - self.n_prompt

    @property
    def response_tokens(self) -> list[str]:
        """Token strings of the response only."""
        return self.tokens[self.n_prompt:]

    @property
    def response_projections(self) -> Float[Tensor, " response"]:
        """Projections of the response positions only."""
        return self.projections[self.n_prompt:]

    @property
    def prompt_projections(self) -> Float[Tensor, " prompt"]:
        """Projections of the prompt positions only."""
        return self.projections[: self.n_prompt]


def projection_trace(
    model,
    question: str,
    direction_or_vector,
    layer: int,
    style: str = "cot",
    generation=None,
    *,
    template=None,
    allow_other_model: bool = False,
    steering=None,
) -> TraceResult:
    """Generate a response, then project each position's residual onto the direction.

    The response to the ``style`` prompt is generated (greedy by default), then one
    forward pass over prompt + response caches only ``blocks.{layer}.hook_resid_post``
    (``run_with_cache(..., names_filter=[name], prepend_bos=False)`` under
    ``torch.inference_mode()``), and each position's vector is projected onto the unit
    direction. Hooks active around the call (steering, ablation) apply to both passes.

    Args:
        model: A ``TransformerBridge``.
        question: Question text.
        direction_or_vector: A ``SteeringVector``, a ``[n_layers, d_model]`` tensor (row
            ``layer`` is used) or a ``[d_model]`` tensor.
        layer: Block index.
        style: Prompt style: ``"cot"``, ``"direct"`` or ``"none"``.
        generation: A :class:`~lens_steer.config.GenerationConfig` (default: greedy, 128
            new tokens).
        template: A :class:`~lens_steer.prompts.PromptTemplate` (default: the paper's).
        allow_other_model: Accept a ``SteeringVector`` derived on another checkpoint.
        steering: A :class:`~lens_steer.engines.base.Steering` to install for both passes; its effective
            coefficient per position is recorded in ``coefficients`` (for plotting).

    Returns:
        A :class:`TraceResult`.
    """
    from lens_steer.config import GenerationConfig
    from lens_steer.engines.api import bridge_engine, generate
    from lens_steer.engines.selection import effective_coefficients
    from lens_steer.engines.steering import resolve_direction
    from lens_steer.models import hf_model, model_info, resid_post_name
    from lens_steer.prompts import DEFAULT_TEMPLATE, encode_prompt

    direction = resolve_direction(model_info(model), direction_or_vector, layer, allow_other_model=allow_other_model)
    tok = model.tokenizer
    prompt = encode_prompt(tok, question, style, template or DEFAULT_TEMPLATE)
    device = next(hf_model(model).parameters()).device
    name = resid_post_name(layer)
    with bridge_engine(model).steering(steering) if steering is not None else nullcontext():
        gen = generate(model, [prompt], generation or GenerationConfig(), progress=False)[0]
        ids = list(prompt) + list(gen.response_ids)
        with torch.inference_mode():
            _, cache = model.run_with_cache(torch.tensor([ids], device=device), names_filter=[name], prepend_bos=False)
            resid = cache[name][0].float()
    proj = projection_onto_direction(resid, direction.detach().float()).cpu()
    return TraceResult(
        question=question,
        style=style,
        layer=layer,
        token_ids=ids,
        tokens=[tok.decode([i]) for i in ids],
        projections=proj,
        n_prompt=len(prompt),
        response=gen.text,
        stopped=gen.stopped,
        coefficients=None if steering is None else effective_coefficients(steering, ids, len(prompt), tok),
    )


# ---------------------------------------------------------------- direction ablation

@dataclass(frozen=True)
class AblationCondition:
    """Responses to the CoT prompts under one condition, one entry per question.

    Attributes:
        name: ``"baseline"``, ``"ablated"`` or ``"random"``.
        responses: Decoded responses.
        n_tokens: Response lengths in tokens (stop token excluded).
        cot_style: :func:`lens_steer.eval.scoring.is_cot_style` of each response.
        stopped: Whether each response ended with a stop token.
        repetitive: :func:`is_repetitive` of each response's tokens.
    """

    name: str
    responses: list[str]
    n_tokens: list[int]
    cot_style: list[bool]
    stopped: list[bool]
    repetitive: list[bool]

    @property
    def mean_tokens(self) -> float:
        """Mean response length in tokens."""
        return sum(self.n_tokens) / max(len(self.n_tokens), 1)

    @property
    def sem_tokens(self) -> float:
        """Standard error of the mean response length (0 for fewer than two questions)."""
        n = len(self.n_tokens)
        if n < 2:
            return 0.0
        return float(torch.tensor(self.n_tokens, dtype=torch.float64).std().item() / n**0.5)

    @property
    def cot_rate(self) -> float:
        """Fraction of responses in CoT style."""
        return sum(self.cot_style) / max(len(self.cot_style), 1)

    @property
    def repetitive_rate(self) -> float:
        """Fraction of responses stuck in a loop (see :func:`is_repetitive`)."""
        return sum(self.repetitive) / max(len(self.repetitive), 1)

    @property
    def truncated_rate(self) -> float:
        """Fraction of responses cut at ``max_new_tokens`` (their length is a lower bound)."""
        return sum(not s for s in self.stopped) / max(len(self.stopped), 1)


@dataclass(frozen=True)
class AblationResult:
    """Response length and CoT style with and without the direction projected out.

    Attributes:
        layers: Blocks whose ``hook_resid_post`` had the direction projected out.
        question_ids: Id of each question.
        questions: Text of each question.
        conditions: :class:`AblationCondition` per name in :data:`ABLATION_CONDITIONS`
            (``"random"`` absent when the control was switched off).
        max_new_tokens: Generation limit (lengths are censored there).
        control_seed: Seed of the random control direction, or None.
    """

    layers: list[int]
    question_ids: list[str]
    questions: list[str]
    conditions: dict[str, AblationCondition]
    max_new_tokens: int
    control_seed: int | None = None

    def summary(self) -> dict:
        """Per-condition means: ``{name: {mean_tokens, sem_tokens, cot_rate, repetitive_rate,
        truncated_rate, n}}``."""
        return {
            name: {
                "mean_tokens": c.mean_tokens,
                "sem_tokens": c.sem_tokens,
                "cot_rate": c.cot_rate,
                "repetitive_rate": c.repetitive_rate,
                "truncated_rate": c.truncated_rate,
                "n": len(c.n_tokens),
            }
            for name, c in self.conditions.items()
        }

    def per_question(self) -> list[dict]:
        """One row per question: id, question, and each condition's length, style and response."""
        rows = []
        for i, (qid, text) in enumerate(zip(self.question_ids, self.questions, strict=True)):
            row: dict = {"id": qid, "question": text}
            for name, c in self.conditions.items():
                row[f"{name}_n_tokens"] = c.n_tokens[i]
                row[f"{name}_cot_style"] = c.cot_style[i]
                row[f"{name}_stopped"] = c.stopped[i]
                row[f"{name}_repetitive"] = c.repetitive[i]
                row[f"{name}_response"] = c.responses[i]
            rows.append(row)
        return rows


def direction_ablation(
    model,
    questions: Sequence,
    vector,
    layers: Sequence[int] | int | None,
    generation=None,
    *,
    template=None,
    control: bool = True,
    control_seed: int = 0,
    allow_other_model: bool = False,
    progress: bool = False,
) -> AblationResult:
    """Answer CoT prompts with and without the CoT direction projected out.

    Three conditions, each a greedy (by default) generation over the CoT-styled prompts:
    ``baseline`` (no hooks), ``ablated`` (:func:`lens_steer.engines.ablate_direction` with
    each layer's own direction at ``layers``, every position and every decode step) and,
    with ``control``, ``random``: the same ablation with random directions of the same
    per-layer norm (:func:`~lens_steer.analysis.logit_lens.random_direction_control`), so an
    effect of removing *any* one dimension can be told from removing the CoT direction.
    Each response gets a length, :func:`lens_steer.eval.scoring.is_cot_style` and
    :func:`is_repetitive` (ablating at many layers can push the model into a loop, which
    ``is_cot_style`` alone would count as CoT).

    Args:
        model: A ``TransformerBridge``.
        questions: Strings, dicts with ``question`` (and ``id``), or records with
            ``.question`` / ``.id`` (as accepted by :func:`lens_steer.data.questions.as_questions`).
        vector: A ``SteeringVector``, a ``[n_layers, d_model]`` tensor, or a ``[d_model]``
            tensor used at every layer.
        layers: Block index or indices to ablate at; None means every layer.
        generation: A :class:`~lens_steer.config.GenerationConfig` (default: greedy,
            128 new tokens).
        template: A :class:`~lens_steer.prompts.PromptTemplate` (default: the paper's).
        control: Also run the random-direction control.
        control_seed: Seed of the random control directions.
        allow_other_model: Accept a ``SteeringVector`` derived on another checkpoint.
        progress: Show progress bars.

    Returns:
        An :class:`AblationResult`.
    """
    from lens_steer.analysis.logit_lens import random_direction_control
    from lens_steer.config import GenerationConfig
    from lens_steer.data.questions import as_questions
    from lens_steer.engines.api import generate
    from lens_steer.engines.steering import ablate_direction, resolve_directions
    from lens_steer.models import check_layer, model_info, n_layers
    from lens_steer.prompts import DEFAULT_TEMPLATE, encode_prompt
    from lens_steer.eval.scoring import is_cot_style

    qs = as_questions(questions)
    if not qs:
        raise ValueError("no questions to answer")
    if layers is None:
        layer_list = list(range(n_layers(model)))
    else:
        layer_list = [layers] if isinstance(layers, int) else list(layers)
    if not layer_list:
        raise ValueError("no layers to ablate at")
    for layer in layer_list:
        check_layer(model, layer)
    directions = resolve_directions(model_info(model), vector, allow_other_model=allow_other_model).float()
    cfg = generation or GenerationConfig()
    tok = model.tokenizer
    prompts = [encode_prompt(tok, q.text, "cot", template or DEFAULT_TEMPLATE) for q in qs]

    contexts = {"baseline": lambda: nullcontext(), "ablated": lambda: ablate_direction(model, directions, layer_list)}
    if control:
        random_dirs = random_direction_control(directions, control_seed)
        contexts["random"] = lambda: ablate_direction(model, random_dirs, layer_list)
    conditions = {}
    for name, make_ctx in contexts.items():
        with make_ctx():
            gens = generate(model, prompts, cfg, progress=progress, desc=name)
        conditions[name] = AblationCondition(
            name=name,
            responses=[g.text for g in gens],
            n_tokens=[len(g.response_ids) for g in gens],
            cot_style=[is_cot_style(g.text) for g in gens],
            stopped=[g.stopped for g in gens],
            repetitive=[is_repetitive(g.response_ids) for g in gens],
        )
    return AblationResult(
        layers=layer_list,
        question_ids=[q.id for q in qs],
        questions=[q.text for q in qs],
        conditions=conditions,
        max_new_tokens=cfg.max_new_tokens,
        control_seed=control_seed if control else None,
    )
