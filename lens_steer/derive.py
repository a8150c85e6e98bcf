"""The paper's method: v(q) = mean resid (CoT-prompted response) − mean resid (direct response); v = mean_q v(q)."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

import torch

from lens_steer import __version__
from lens_steer.collect import Method, Positions, collect_residual_means
from lens_steer.fastpath import attention_kernel
from lens_steer.generate import GenerationConfig
from lens_steer.models import describe
from lens_steer.prompts import DEFAULT_TEMPLATE, PromptTemplate, encode_prompt
from lens_steer.vectors import SteeringVector, VectorMetadata

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Question:
    """A question to derive from: its id, source label and text."""

    id: str
    text: str
    source: str = "custom"


def as_questions(items: Sequence) -> list[Question]:
    """Normalise strings, dicts (``question``/``id``/``source``) or records with ``.question`` to :class:`Question`."""
    out = []
    for i, item in enumerate(items):
        if isinstance(item, Question):
            out.append(item)
        elif isinstance(item, str):
            out.append(Question(id=f"q{i}", text=item))
        elif isinstance(item, dict):
            if "question" not in item:
                raise ValueError(f"question {i} has no 'question' field: {item!r}")
            out.append(Question(id=str(item.get("id", f"q{i}")), text=str(item["question"]), source=str(item.get("source", "custom"))))
        elif hasattr(item, "question"):
            out.append(Question(id=str(getattr(item, "id", f"q{i}")), text=str(item.question), source=str(getattr(item, "source", "custom"))))
        else:
            raise TypeError(f"question {i}: expected str, dict or a record with .question, got {type(item).__name__}")
    ids = [q.id for q in out]
    if len(set(ids)) != len(ids):
        raise ValueError("question ids must be unique")
    return out


def questions_hash(questions: Sequence[Question]) -> str:
    """sha256 over ids and texts, in order."""
    h = hashlib.sha256()
    for q in questions:
        h.update(q.id.encode() + b"\0" + q.text.encode() + b"\0")
    return h.hexdigest()


def derive_cot_vector(
    model,
    questions: Sequence,
    *,
    template: PromptTemplate = DEFAULT_TEMPLATE,
    generation: GenerationConfig = GenerationConfig(),
    positions: Positions = "generated",
    method: Method = "fused",
    keep_responses: bool = True,
    progress: bool = True,
) -> SteeringVector:
    """Derive a CoT steering vector at every layer in one generation pass.

    For each question the model generates a response to the CoT prompt and to the direct
    prompt; ``hook_resid_post`` is averaged over ``positions`` of each; v(q) is the
    difference and v the mean over questions. A question whose CoT or direct response has
    no position to average (an immediate stop token) is left out and listed in
    ``metadata.skipped_ids``.

    Args:
        model: A ``TransformerBridge``.
        questions: Strings, dicts with ``question`` (and ``id``, ``source``), or records
            with ``.question`` / ``.id`` / ``.source`` (e.g. benchmark ``Example``).
        template: Prompt templates.
        generation: Generation settings (greedy by default).
        positions: ``"generated"``, ``"prompt"`` or ``"all"``.
        method: ``"fused"`` or ``"two_pass"`` (see :mod:`lens_steer.collect`).
        keep_responses: Keep the generated responses in the vector.
        progress: Show progress bars.

    Returns:
        The :class:`SteeringVector`.
    """
    qs = as_questions(questions)
    if not qs:
        raise ValueError("no questions to derive from")
    tok = model.tokenizer
    prompts = []
    for q in qs:
        prompts.append(encode_prompt(tok, q.text, "cot", template))
        prompts.append(encode_prompt(tok, q.text, "direct", template))
    res = collect_residual_means(model, prompts, generation, positions=positions, method=method, progress=progress)
    cot, direct = res.means[0::2], res.means[1::2]
    ok = (res.counts[0::2] > 0) & (res.counts[1::2] > 0)
    skipped = [q.id for q, good in zip(qs, ok.tolist()) if not good]
    if skipped:
        logger.warning("%d question(s) had an empty response and were left out: %s", len(skipped), skipped[:10])
    if not ok.any():
        raise ValueError("every question produced an empty response; nothing to average")
    per_question = (cot - direct)[ok]
    kept = [q for q, good in zip(qs, ok.tolist()) if good]
    counts = res.counts.to(torch.float64)
    weights = counts[:, None] * ok.repeat_interleave(2)[:, None]
    resid_norm = ((res.norms.double() * weights).sum(0) / weights.sum().clamp(min=1)).float()
    lengths = [len(g.response_ids) for g in res.generations]
    ident = describe(model)
    metadata = VectorMetadata(
        model_id=ident["model_id"],
        model_fingerprint=ident["fingerprint"],
        n_layers=ident["n_layers"],
        d_model=ident["d_model"],
        positions=positions,
        method=method,
        templates=template.to_dict(),
        question_ids=[q.id for q in kept],
        question_sources=[q.source for q in kept],
        questions=[q.text for q in kept],
        corpus_hash=questions_hash(kept),
        generation={**generation.to_dict(), "attention": attention_kernel(model)},
        package_version=__version__,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        skipped_ids=skipped,
        stats={
            "n_questions": len(kept),
            "mean_tokens_cot": sum(lengths[0::2]) / len(qs),
            "mean_tokens_direct": sum(lengths[1::2]) / len(qs),
            "truncated_cot": sum(not g.stopped for g in res.generations[0::2]),
            "truncated_direct": sum(not g.stopped for g in res.generations[1::2]),
        },
    )
    responses = None
    if keep_responses:
        responses = []
        for q, g_cot, g_dir in zip(qs, res.generations[0::2], res.generations[1::2]):
            for style, g in (("cot", g_cot), ("direct", g_dir)):
                responses.append({"id": q.id, "source": q.source, "style": style, "question": q.text,
                                  "response": g.text, "n_tokens": len(g.response_ids), "stopped": g.stopped})
    return SteeringVector(
        directions=per_question.mean(dim=0),
        metadata=metadata,
        per_question=per_question,
        resid_norm=resid_norm,
        responses=responses,
    )
