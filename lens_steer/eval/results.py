"""Typed result rows of an evaluation: one :class:`ItemRow` per item × condition, one :class:`SummaryRow`
per benchmark × condition, and :func:`summarise` from the first to the second; :func:`recovery` (one
:class:`RecoveryRow` per benchmark × steered condition: the share of the CoT prompt's gain it recovers); pure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, fields

from lens_steer.data.registry import benchmark_order
from lens_steer.eval.conditions import BASELINE, CONDITION_NAMES
from lens_steer.eval.stats import RecoveredGain, accuracy_ci, mcnemar_exact, recovered_gain
from lens_steer.eval.scoring import repetition

__all__ = ["COT", "ItemRow", "RecoveryRow", "SummaryRow", "recovery", "summarise"]

COT = "cot"
"""The condition key of the CoT prompt, the ceiling :func:`recovery` measures steering against."""


def _from_mapping(cls, data: Mapping):
    names = {f.name for f in fields(cls)}
    missing = [f.name for f in fields(cls) if f.name not in data and f.default is MISSING]
    if missing:
        raise ValueError(f"{cls.__name__} row lacks field(s) {missing}")
    return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class ItemRow:
    """One item answered under one condition, as a line of ``items.jsonl``.

    Attributes:
        id: Item id. benchmark: Reporting key (``gsm8k``, ``agieval:<task>``, ...).
        source / subset: The item's source and subset. condition: The condition key.
        name / style / layer / coeff / scale / mode: The condition's parts (``mode``: a preset's name or a steering
            spec's canonical text, see :mod:`lens_steer.engines.steer_spec`).
        answer: Gold answer. predicted: Extracted answer (None if unparsed). parsed / correct: Scoring.
        cot_style: :func:`lens_steer.eval.scoring.is_cot_style` of the response.
        n_tokens / stopped / prompt_tokens: Generation facts. gen_seconds: The chunk's time shared equally.
        response: The decoded response.
    """

    id: str
    benchmark: str
    source: str
    subset: str
    condition: str
    name: str
    style: str
    layer: int | None
    coeff: float | None
    scale: float | None
    mode: str | None
    answer: str
    predicted: str | None
    parsed: bool
    correct: bool
    cot_style: bool
    n_tokens: int
    stopped: bool
    prompt_tokens: int
    gen_seconds: float
    response: str

    def to_dict(self) -> dict:
        """The JSON line's object (field order kept)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> ItemRow:
        """Read a row back; extra keys are ignored, missing ones raise ``ValueError``."""
        return _from_mapping(cls, data)


@dataclass(frozen=True)
class SummaryRow:
    """Statistics of one condition on one benchmark group (see :func:`summarise`)."""

    benchmark: str
    condition: str
    name: str
    style: str
    mode: str | None
    layer: int | None
    coeff: float | None
    scale: float | None
    n: int
    n_correct: int
    accuracy: float
    ci_low: float
    ci_high: float
    parse_fail_rate: float
    n_paired: int
    diff_vs_baseline: float | None
    mcnemar_p: float | None
    mean_tokens: float
    truncation_rate: float
    cot_style_rate: float
    gen_seconds: float
    tokens_per_second: float | None
    repetition_rate: float | None = None
    """Mean :func:`lens_steer.eval.scoring.repetition` of the responses (None in summaries written before it)."""

    @property
    def steered(self) -> bool:
        """Whether the condition adds a vector."""
        return self.mode is not None

    def to_dict(self) -> dict:
        """JSON-ready form (the row of ``summary.json``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> SummaryRow:
        """Read a row of ``summary.json`` back."""
        return _from_mapping(cls, data)


def _condition_order(row: SummaryRow | RecoveryRow) -> tuple:
    rank = CONDITION_NAMES.index(row.name) if row.name in CONDITION_NAMES else len(CONDITION_NAMES)
    return (rank, row.layer if row.layer is not None else -1, row.coeff if row.coeff is not None else 0.0,
            row.condition)


def _groups(rows: Sequence[ItemRow]) -> dict[str, list[ItemRow]]:
    """Rows per benchmark, plus a pooled row per source with several tasks and ``all`` when there are several."""
    groups: dict[str, list[ItemRow]] = {}
    for r in rows:
        groups.setdefault(r.benchmark, []).append(r)
    by_source: dict[str, set[str]] = {}
    for name in groups:
        by_source.setdefault(name.partition(":")[0], set()).add(name)
    pooled = {source: [r for n in sorted(names) for r in groups[n]]
              for source, names in by_source.items() if len(names) > 1 and source not in groups}
    if len(groups) > 1 and "all" not in groups:
        pooled["all"] = list(rows)
    return {**groups, **pooled}


def _as_row(row) -> ItemRow:
    return row if isinstance(row, ItemRow) else ItemRow.from_dict(row)


def summarise(
    rows: Iterable[ItemRow | Mapping], *, baseline: str = BASELINE, n_boot: int = 2000, seed: int = 0
) -> list[SummaryRow]:
    """Per (benchmark, condition) statistics of item rows.

    Benchmarks are each row's ``benchmark``; a source with several tasks (AGIEval) also gets a
    pooled row under its name, and several benchmarks get a pooled ``all``.

    Args:
        rows: :class:`ItemRow` objects (or their dicts, e.g. read back from ``items.jsonl``).
        baseline: Condition key items are paired against.
        n_boot: Bootstrap replicates of the accuracy interval.
        seed: Seed of the bootstrap.

    Returns:
        One :class:`SummaryRow` per group, ordered by benchmark then condition: accuracy with a
        95% bootstrap interval, parse-failure rate, paired difference and exact McNemar p against
        the baseline (None for the baseline itself or without pairs), mean tokens, truncation
        and CoT-style rates, generation seconds and tokens per second, and the mean repetition
        (repeated word 4-grams).

    Raises:
        ValueError: an item appears twice under one condition.
    """
    rows = [_as_row(r) for r in rows]
    out = []
    for bench, group in _groups(rows).items():
        by_cond: dict[str, list[ItemRow]] = {}
        for r in group:
            by_cond.setdefault(r.condition, []).append(r)
        base = {r.id: bool(r.correct) for r in by_cond.get(baseline, [])}
        for key, rs in by_cond.items():
            ids = [r.id for r in rs]
            if len(set(ids)) != len(ids):
                raise ValueError(f"item rows repeat for {bench} / {key}: a results table must hold each item once")
            correct = [bool(r.correct) for r in rs]
            acc, lo, hi = accuracy_ci(correct, n_boot=n_boot, seed=seed)
            paired = [(bool(r.correct), base[r.id]) for r in rs if r.id in base]
            p = diff = None
            if paired and key != baseline:
                p = mcnemar_exact([a for a, _ in paired], [b for _, b in paired])
                diff = (sum(a for a, _ in paired) - sum(b for _, b in paired)) / len(paired)
            tokens = sum(int(r.n_tokens) for r in rs)
            seconds = sum(float(r.gen_seconds or 0.0) for r in rs)
            first = rs[0]
            out.append(SummaryRow(
                benchmark=bench, condition=key, name=first.name, style=first.style, mode=first.mode,
                layer=first.layer, coeff=first.coeff, scale=first.scale, n=len(rs), n_correct=sum(correct),
                accuracy=acc, ci_low=lo, ci_high=hi, parse_fail_rate=sum(not r.parsed for r in rs) / len(rs),
                n_paired=len(paired), diff_vs_baseline=diff, mcnemar_p=p, mean_tokens=tokens / len(rs),
                truncation_rate=sum(not r.stopped for r in rs) / len(rs),
                cot_style_rate=sum(bool(r.cot_style) for r in rs) / len(rs), gen_seconds=round(seconds, 3),
                tokens_per_second=tokens / seconds if seconds > 0 else None,
                repetition_rate=sum(repetition(r.response) for r in rs) / len(rs),
            ))
    out.sort(key=lambda s: (benchmark_order(s.benchmark), _condition_order(s)))
    return out


@dataclass(frozen=True)
class RecoveryRow:
    """One steered condition against the direct and CoT prompts on one benchmark group (see :func:`recovery`).

    Attributes:
        benchmark / condition / name / style / mode / layer / coeff / scale: As in :class:`SummaryRow`.
        n: Items answered under all three conditions. direct / cot / steered: Their accuracies on those items.
        gain: The share of the CoT gain recovered, (steered − direct) / (CoT − direct), with its interval;
            None when CoT − direct is 0 on these items.
        p_direct / p_cot: Exact McNemar p of the steered condition against each prompt on those items.
    """

    benchmark: str
    condition: str
    name: str
    style: str
    mode: str
    layer: int | None
    coeff: float | None
    scale: float | None
    n: int
    direct: float
    cot: float
    steered: float
    gain: RecoveredGain | None
    p_direct: float
    p_cot: float


def recovery(rows: Iterable[ItemRow | Mapping], *, baseline: str = BASELINE, cot: str = COT, n_boot: int = 2000,
             seed: int = 0) -> list[RecoveryRow]:
    """Per benchmark group (as :func:`summarise` groups them) and steered condition: the share of the CoT
    prompt's gain over the direct prompt that steering the direct prompt recovers, on the items all three
    answered, with a paired-bootstrap interval (:func:`~lens_steer.eval.stats.recovered_gain`).

    Returns:
        The rows in :func:`summarise`'s order; [] when the rows lack the direct or the CoT condition.
    """
    rows = [_as_row(r) for r in rows]
    out = []
    for bench, group in _groups(rows).items():
        by_cond: dict[str, dict[str, ItemRow]] = {}
        for r in group:
            by_cond.setdefault(r.condition, {})[r.id] = r
        if baseline not in by_cond or cot not in by_cond:
            continue
        for key, items in by_cond.items():
            first = next(iter(items.values()))
            if first.mode is None:
                continue
            ids = sorted(i for i in items if i in by_cond[baseline] and i in by_cond[cot])  # order-free draws
            if not ids:
                continue
            d, c, st = ([bool(by[i].correct) for i in ids] for by in (by_cond[baseline], by_cond[cot], items))
            out.append(RecoveryRow(bench, key, first.name, first.style, first.mode, first.layer, first.coeff,
                                   first.scale, len(ids), sum(d) / len(ids), sum(c) / len(ids), sum(st) / len(ids),
                                   recovered_gain(d, c, st, n_boot=n_boot, seed=seed), mcnemar_exact(d, st),
                                   mcnemar_exact(c, st)))
    out.sort(key=lambda r: (benchmark_order(r.benchmark), _condition_order(r)))
    return out
