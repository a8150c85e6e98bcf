"""Probe steering over a small layer × coefficient grid: response length and CoT style per cell.

Runs the model (steered generation) and returns a dataclass; writes nothing. Meant for
interactive exploration (``notebooks/02_probe_layers.ipynb``), not for benchmark accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

__all__ = ["ProbeGrid", "probe_steering"]


@dataclass(frozen=True)
class ProbeGrid:
    """Steered responses over layers × steering sizes.

    Attributes:
        layers: Steered block of each row.
        scales: Steering size of each column, as a fraction of the mean residual norm at
            the row's layer (or the raw coefficient when ``relative`` is false).
        relative: Whether ``scales`` are fractions of the residual norm.
        coeffs: ``[layer, scale]`` coefficient c actually added (``c · v_layer``).
        mode: ``"continuous"``, ``"single"`` or a steering spec's canonical text
            (:mod:`lens_steer.engines.steer_spec`).
        prompt_style: Style of the steered prompts (``"direct"`` by default).
        question_ids: Id of each question.
        questions: Text of each question.
        n_tokens: ``[layer, scale, question]`` response lengths.
        cot_style: ``[layer, scale, question]`` :func:`lens_steer.eval.scoring.is_cot_style`.
        responses: ``responses[layer][scale][question]`` decoded text.
        max_new_tokens: Generation limit.
    """

    layers: list[int]
    scales: list[float]
    relative: bool
    coeffs: Float[Tensor, "layer scale"]
    mode: str
    prompt_style: str
    question_ids: list[str]
    questions: list[str]
    n_tokens: Int[Tensor, "layer scale question"]
    cot_style: Bool[Tensor, "layer scale question"]
    responses: list[list[list[str]]]
    max_new_tokens: int

    def mean_tokens(self) -> Float[Tensor, "layer scale"]:
        """Mean response length per cell."""
        return self.n_tokens.float().mean(-1)

    def cot_rate(self) -> Float[Tensor, "layer scale"]:
        """Fraction of CoT-style responses per cell."""
        return self.cot_style.float().mean(-1)


def probe_steering(
    model,
    vector,
    questions: Sequence,
    layers: Sequence[int],
    scales: Sequence[float],
    generation=None,
    *,
    relative: bool = True,
    mode: str = "continuous",
    prompt_style: str = "direct",
    template=None,
    allow_other_model: bool = False,
    progress: bool = False,
) -> ProbeGrid:
    """Generate steered answers for every (layer, scale) cell.

    A scale of 0 is run once per layer without hooks (the unsteered baseline of that row;
    identical across rows).

    Args:
        model: A ``TransformerBridge``.
        vector: A :class:`~lens_steer.method.vectors.SteeringVector` (needed for ``relative``).
        questions: Strings, dicts or records (see :func:`lens_steer.data.questions.as_questions`).
        layers: Blocks to steer at.
        scales: Steering sizes: fractions of the mean residual norm at each layer
            (``relative``), else raw coefficients.
        generation: A :class:`~lens_steer.config.GenerationConfig`.
        relative: Interpret ``scales`` relative to the residual norm
            (:meth:`~lens_steer.method.vectors.SteeringVector.coeff_for_scale`).
        mode: ``"continuous"`` or ``"single"``, or where, when and how to steer (a
            :class:`~lens_steer.engines.steer_spec.SteerSpec` or its text).
        prompt_style: Prompt style that is steered.
        template: Prompt templates.
        allow_other_model: Accept a vector derived on another checkpoint.
        progress: Show progress bars.

    Returns:
        A :class:`ProbeGrid`.
    """
    from lens_steer.config import GenerationConfig
    from lens_steer.data.questions import as_questions
    from lens_steer.engines.api import as_engine
    from lens_steer.engines.base import Steering
    from lens_steer.engines.steer_spec import mode_text
    from lens_steer.eval.scoring import is_cot_style
    from lens_steer.prompts import DEFAULT_TEMPLATE, encode_prompt

    mode = mode_text(mode)  # checked before anything runs
    qs = as_questions(questions)
    if not qs or not layers or not scales:
        raise ValueError("probe_steering needs at least one question, layer and scale")
    cfg = generation or GenerationConfig()
    engine = as_engine(model)
    prompts = [encode_prompt(engine.tokenizer, q.text, prompt_style, template or DEFAULT_TEMPLATE) for q in qs]
    coeffs = torch.zeros(len(layers), len(scales))
    n_tok = torch.zeros(len(layers), len(scales), len(qs), dtype=torch.long)
    cot = torch.zeros(len(layers), len(scales), len(qs), dtype=torch.bool)
    responses: list[list[list[str]]] = []
    baseline = None
    for i, layer in enumerate(layers):
        row = []
        for j, s in enumerate(scales):
            c = vector.coeff_for_scale(layer, s) if relative else float(s)
            coeffs[i, j] = c
            if c == 0:
                if baseline is None:
                    baseline = engine.generate(prompts, cfg, progress=progress, desc="unsteered")
                gens = baseline
            else:
                steering = Steering(vector, layer, float(c), mode, allow_other_model)
                gens = engine.generate(prompts, cfg, steering=steering, progress=progress,
                                       desc=f"layer {layer} scale {s:g}")
            n_tok[i, j] = torch.tensor([len(g.response_ids) for g in gens])
            cot[i, j] = torch.tensor([is_cot_style(g.text) for g in gens])
            row.append([g.text for g in gens])
        responses.append(row)
    return ProbeGrid(
        layers=list(layers), scales=[float(s) for s in scales], relative=relative, coeffs=coeffs, mode=mode,
        prompt_style=prompt_style, question_ids=[q.id for q in qs], questions=[q.text for q in qs],
        n_tokens=n_tok, cot_style=cot, responses=responses, max_new_tokens=cfg.max_new_tokens,
    )
