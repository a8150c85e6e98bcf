"""The paper's method: v(q) = mean resid (CoT-prompted response) − mean resid (direct response); v = mean_q v(q)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timezone

import torch

from lens_steer._version import __version__
from lens_steer.config import GenerationConfig
from lens_steer.data.questions import Question, as_questions, questions_hash
from lens_steer.engines.api import as_engine
from lens_steer.method.collect import Method, Positions, collect_residual_means, concat_means
from lens_steer.method.metadata import DerivationStats, VectorMetadata
from lens_steer.method.vectors import SteeringVector
from lens_steer.prompts import DEFAULT_TEMPLATE, PromptTemplate, encode_prompt

__all__ = ["Question", "as_questions", "derive_cot_vector", "questions_hash"]

logger = logging.getLogger(__name__)


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
    chunk_questions: int | None = None,
    checkpoint=None,
) -> SteeringVector:
    """Derive a CoT steering vector at every layer in one generation pass.

    For each question the model generates a response to the CoT prompt and to the direct
    prompt; ``hook_resid_post`` is averaged over ``positions`` of each; v(q) is the
    difference and v the mean over questions. A question whose CoT or direct response has
    no position to average (an immediate stop token) is left out and listed in
    ``metadata.skipped_ids``.

    Args:
        model: A ``TransformerBridge`` or an engine (:mod:`lens_steer.engines`).
        questions: Strings, dicts with ``question`` (and ``id``, ``source``), or records
            with ``.question`` / ``.id`` / ``.source`` (e.g. benchmark ``Example``).
        template: Prompt templates.
        generation: Generation settings (greedy by default).
        positions: ``"generated"``, ``"prompt"`` or ``"all"``.
        method: ``"fused"`` or ``"two_pass"`` (see :mod:`lens_steer.method.collect`).
        keep_responses: Keep the generated responses in the vector.
        progress: Show progress bars.
        chunk_questions: Generate this many questions at a time (None: all at once). The chunking
            is part of the numerics (it decides the batches), so resuming needs the same value.
        checkpoint: Where finished chunks are stored and found again, e.g.
            :class:`~lens_steer.method.checkpoint.DeriveCheckpoint` (``open() -> done indices``,
            ``save(i, means)``, ``load(i, prompts)``); needs ``chunk_questions``.

    Returns:
        The :class:`SteeringVector`.
    """
    qs = as_questions(questions)
    if not qs:
        raise ValueError("no questions to derive from")
    engine = as_engine(model)
    tok = engine.tokenizer
    prompts = []
    for q in qs:
        prompts.append(encode_prompt(tok, q.text, "cot", template))
        prompts.append(encode_prompt(tok, q.text, "direct", template))
    if checkpoint is not None and not chunk_questions:
        raise ValueError("a checkpointed derivation needs chunk_questions")
    if chunk_questions is not None and chunk_questions < 1:
        raise ValueError(f"chunk_questions must be at least 1, got {chunk_questions}")
    step = 2 * (chunk_questions or len(qs))
    done = checkpoint.open() if checkpoint is not None else set()
    parts = []
    for i, start in enumerate(range(0, len(prompts), step)):
        chunk = prompts[start:start + step]
        if i in done:
            parts.append(checkpoint.load(i, chunk))
            continue
        part = collect_residual_means(engine, chunk, generation, positions=positions, method=method, progress=progress)
        if checkpoint is not None:
            checkpoint.save(i, part)
        parts.append(part)
    res = parts[0] if len(parts) == 1 else concat_means(parts)
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
    ident = engine.info
    metadata = VectorMetadata(
        model_id=ident.model_id,
        model_fingerprint=ident.fingerprint,
        n_layers=ident.n_layers,
        d_model=ident.d_model,
        positions=positions,
        method=method,
        templates=template,
        question_ids=[q.id for q in kept],
        question_sources=[q.source for q in kept],
        questions=[q.text for q in kept],
        corpus_hash=questions_hash(kept),
        generation=generation,
        attention=engine.attention_kernel(),
        engine=engine.name,
        chunk_questions=chunk_questions,
        package_version=__version__,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        skipped_ids=skipped,
        stats=DerivationStats(
            n_questions=len(kept),
            mean_tokens_cot=sum(lengths[0::2]) / len(qs),
            mean_tokens_direct=sum(lengths[1::2]) / len(qs),
            truncated_cot=sum(not g.stopped for g in res.generations[0::2]),
            truncated_direct=sum(not g.stopped for g in res.generations[1::2]),
        ),
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
