"""Generate and score benchmark items under conditions, in fixed chunks (the unit a run resumes by)."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Collection, Sequence

from tqdm.auto import tqdm

from lens_steer.config import GenerationConfig, torch_dtype
from lens_steer.data.registry import Example, benchmark_key
from lens_steer.engines.api import as_engine
from lens_steer.engines.base import Steering
from lens_steer.engines.registry import capabilities_of, require_steering
from lens_steer.engines.selection import resolve_spec
from lens_steer.engines.steering import steering_delta
from lens_steer.eval.conditions import Condition
from lens_steer.eval.results import ItemRow
from lens_steer.eval.scoring import is_cot_style, score
from lens_steer.prompts import DEFAULT_TEMPLATE, PromptTemplate, encode_prompt

__all__ = ["check_conditions", "evaluate"]


def _chunks(prompts: Sequence[Sequence[int]], size: int) -> list[list[int]]:
    """Item indices grouped into generation chunks: sorted by prompt length, then cut every ``size``.

    The chunks depend only on the prompts, never on what is already done, so a resumed run
    puts every item in the same batch as an uninterrupted one (greedy decoding can depend on
    the padding of the batch).
    """
    order = sorted(range(len(prompts)), key=lambda i: (-len(prompts[i]), i))
    return [order[i:i + size] for i in range(0, len(order), size)]


def evaluate(
    model,
    examples: Sequence[Example],
    conditions: Sequence[Condition],
    generation: GenerationConfig,
    vector=None,
    *,
    template: PromptTemplate = DEFAULT_TEMPLATE,
    done: Collection[tuple[str, str]] = (),
    on_rows: Callable[[list[ItemRow]], None] | None = None,
    chunk_size: int | None = None,
    allow_other_model: bool = False,
    progress: bool = True,
) -> list[ItemRow]:
    """Generate and score every item under every condition, skipping those already done.

    Items of one condition are sorted by prompt length and generated in fixed chunks of
    ``chunk_size``; after each chunk ``on_rows`` receives its rows (write them there to make
    a run resumable). An engine with the ``mixed_steering`` capability (vLLM) gets chunk ``j`` of every condition in
    one call, each request with its own steering; others get one condition's chunk per call.

    Args:
        model: A ``TransformerBridge`` or an engine.
        examples: Benchmark items (ids must be unique).
        conditions: Conditions to run.
        generation: Generation settings (the same for every condition).
        vector: Steering vector; required when a condition is steered.
        template: Prompt templates.
        done: ``(item id, condition key)`` pairs to skip.
        on_rows: Called with the rows of each finished chunk.
        chunk_size: Items per chunk (default ``generation.batch_size``).
        allow_other_model: Steer with a vector derived on another checkpoint.
        progress: Show a progress bar.

    Returns:
        The new :class:`~lens_steer.eval.results.ItemRow` objects, one per (item, condition)
        not in ``done`` (``gen_seconds`` is the chunk's time shared equally).
    """
    ids = [ex.id for ex in examples]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:3]
        raise ValueError(f"item ids must be unique; repeated: {dup}")
    keys = [c.key for c in conditions]
    if len(set(keys)) != len(keys):
        raise ValueError(f"conditions repeat: {sorted({k for k in keys if keys.count(k) > 1})}")
    if any(c.steered for c in conditions) and vector is None:
        raise ValueError("steered conditions need a vector")
    size = chunk_size or generation.batch_size
    if size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {size}")
    done = set(done)
    engine = as_engine(model)
    check_conditions(engine, conditions, vector, allow_other_model)
    tok = engine.tokenizer
    prompts_by_style: dict[str, list[list[int]]] = {}
    plan = []
    for cond in conditions:
        if cond.style not in prompts_by_style:
            prompts_by_style[cond.style] = [encode_prompt(tok, ex.question, cond.style, template) for ex in examples]
        prompts = prompts_by_style[cond.style]
        for j, chunk in enumerate(_chunks(prompts, size)):
            todo = [i for i in chunk if (examples[i].id, cond.key) not in done]
            if todo:
                plan.append((j, cond, prompts, todo))
    # An engine that batches requests with different steering together (vLLM) gets every condition's
    # chunk j in one call; the bridge engine gets one condition's chunk per call.
    if capabilities_of(engine).mixed_steering:
        groups = [[p for p in plan if p[0] == j] for j in sorted({p[0] for p in plan})]
    else:
        groups = [[p] for p in plan]
    rows: list[ItemRow] = []
    total = sum(len(todo) for *_, todo in plan)
    with tqdm(total=total, desc="evaluating", disable=not progress, unit="item") as bar:
        for group in groups:
            bar.set_postfix_str(group[0][1].key if len(group) == 1 else f"chunk {group[0][0]}", refresh=False)
            batch, steering, owners = [], [], []
            for _, cond, prompts, todo in group:
                plan_steer = (Steering(vector, cond.layer, cond.coeff, cond.mode, allow_other_model)
                              if cond.steered else None)
                batch += [prompts[i] for i in todo]
                steering += [plan_steer] * len(todo)
                owners += [(cond, i) for i in todo]
            start = time.perf_counter()
            steer_arg = steering if len(group) > 1 else steering[0]  # one condition: one spec for the call
            gens = engine.generate(batch, generation, steering=steer_arg, progress=False)
            seconds = (time.perf_counter() - start) / len(batch)
            chunk_rows = [_row(examples[i], cond, g, seconds) for (cond, i), g in zip(owners, gens, strict=True)]
            if on_rows is not None:
                on_rows(chunk_rows)
            rows.extend(chunk_rows)
            bar.update(len(batch))
    return rows


def check_conditions(engine, conditions: Sequence[Condition], vector, allow_other_model: bool = False) -> None:
    """Refuse a steered condition this engine or model cannot take before anything is generated, not when its turn
    comes: a spec the engine does not declare, a layer out of range, another width or model's vector, c·v not
    finite in its dtype, a trigger or region marker that is not the model's tokens.

    Raises:
        ValueError: one line (a :class:`~lens_steer.engines.registry.CapabilityError`; a bad trigger or marker
            named with its condition and field; ...).
    """
    from lens_steer.engines.steer_spec import SpecError

    dtype = torch_dtype(engine.dtype_name)
    for cond in conditions:
        if cond.steered:
            steering = Steering(vector, cond.layer, cond.coeff, cond.mode, allow_other_model)
            require_steering(engine, steering, f"condition {cond.key}")
            try:
                resolve_spec(steering.spec, engine.tokenizer)
            except SpecError as exc:
                raise ValueError(f"condition {cond.key}: {exc}") from None
            with warnings.catch_warnings():  # the large-steering warning comes when the condition runs
                warnings.simplefilter("ignore", RuntimeWarning)
                steering_delta(engine.info, steering, dtype)


def _row(example: Example, cond: Condition, gen, seconds: float) -> ItemRow:
    result = score(example, gen.text)
    return ItemRow(
        id=example.id, benchmark=benchmark_key(example), source=example.source, subset=example.subset,
        condition=cond.key, name=cond.name, style=cond.style, layer=cond.layer, coeff=cond.coeff, scale=cond.scale,
        mode=cond.mode, answer=example.answer, predicted=result.predicted, parsed=result.parsed,
        correct=result.correct, cot_style=is_cot_style(gen.text), n_tokens=len(gen.response_ids),
        stopped=gen.stopped, prompt_tokens=len(gen.prompt_ids), gen_seconds=round(seconds, 4), response=gen.text,
    )
