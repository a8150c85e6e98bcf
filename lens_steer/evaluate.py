"""Conditions × benchmarks evaluation, layer × coefficient grids, and resumable result tables.

:func:`evaluate` generates and scores (pure apart from the model); :func:`summarise` turns
item rows into per (benchmark, condition) statistics. The only disk I/O is the small set
of results-directory functions at the end (``run.json``, ``items.jsonl``, ``summary.json``).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm

from lens_steer.benchmarks import Example
from lens_steer.generate import GenerationConfig, generate
from lens_steer.inject import STEER_MODES, steer
from lens_steer.prompts import DEFAULT_TEMPLATE, PromptTemplate, encode_prompt
from lens_steer.scoring import accuracy_ci, is_cot_style, mcnemar_exact, score

__all__ = [
    "BASELINE",
    "CONDITION_NAMES",
    "Condition",
    "ITEMS_FILE",
    "RUN_FILE",
    "RunSettingsMismatch",
    "SUMMARY_FILE",
    "append_items",
    "benchmark_key",
    "best_steered",
    "done_keys",
    "evaluate",
    "open_results_dir",
    "read_items",
    "record_invocation",
    "steered_condition",
    "summarise",
    "sweep_conditions",
    "sweep_grid",
    "write_summary",
]

CONDITION_NAMES: tuple[str, ...] = ("plain", "direct", "cot", "steered-continuous", "steered-single")
"""Condition names, in report order."""
BASELINE = "direct"
"""The condition every other one is paired against (exact McNemar)."""
_STYLE = {"plain": "none", "direct": "direct", "cot": "cot", "steered-continuous": "direct", "steered-single": "direct"}

ITEMS_FILE = "items.jsonl"
SUMMARY_FILE = "summary.json"
RUN_FILE = "run.json"
RUN_FORMAT_VERSION = 1


# ---------------------------------------------------------------------------
# conditions


@dataclass(frozen=True)
class Condition:
    """How one item is prompted (and steered).

    Attributes:
        name: One of :data:`CONDITION_NAMES`.
        style: Prompt style: ``"none"`` (plain), ``"direct"`` or ``"cot"``; the steered
            conditions use the direct prompt.
        layer: Steered block (steered conditions only).
        coeff: Absolute coefficient c added as ``c * v[layer]`` (steered only).
        scale: The same size relative to the mean residual norm at ``layer``,
            ``|c| * ||v_l|| / mean ||resid_l||`` with c's sign, when known.
        mode: ``"continuous"`` or ``"single"`` (steered only).
    """

    name: str
    style: str
    layer: int | None = None
    coeff: float | None = None
    scale: float | None = None
    mode: str | None = None

    def __post_init__(self) -> None:
        if self.name not in CONDITION_NAMES:
            raise ValueError(f"unknown condition {self.name!r}; expected one of {list(CONDITION_NAMES)}")
        if self.style != _STYLE[self.name]:
            raise ValueError(f"condition {self.name!r} uses prompt style {_STYLE[self.name]!r}, not {self.style!r}")
        if self.name.startswith("steered-"):
            mode = self.name.removeprefix("steered-")
            if self.mode != mode or self.layer is None or self.coeff is None:
                raise ValueError(f"condition {self.name!r} needs mode={mode!r}, a layer and a coefficient")
            if not math.isfinite(self.coeff):
                raise ValueError(f"coefficient must be finite, got {self.coeff}")
        elif any(v is not None for v in (self.layer, self.coeff, self.scale, self.mode)):
            raise ValueError(f"condition {self.name!r} is not steered: it takes no layer, coefficient, scale or mode")

    @classmethod
    def baseline(cls, name: str) -> Condition:
        """An unsteered condition: ``"plain"``, ``"direct"`` or ``"cot"``."""
        if name not in _STYLE or name.startswith("steered-"):
            raise ValueError(f"{name!r} is not an unsteered condition; expected plain, direct or cot")
        return cls(name, _STYLE[name])

    @property
    def steered(self) -> bool:
        """Whether a vector is added."""
        return self.mode is not None

    @property
    def key(self) -> str:
        """Identity in result tables, e.g. ``"cot"`` or ``"steered-single[l=15,s=0.6,c=12.5]"``."""
        if not self.steered:
            return self.name
        scale = f"s={self.scale:.6g}," if self.scale is not None else ""
        return f"{self.name}[l={self.layer},{scale}c={self.coeff:.6g}]"

    def label(self) -> str:
        """Short human-readable description."""
        if not self.steered:
            return self.name
        scale = f", {self.scale:g}×|resid|" if self.scale is not None else ""
        return f"{self.name} (layer {self.layer}, c={self.coeff:.3g}{scale})"

    def to_dict(self) -> dict:
        """JSON-ready form (plus ``key``)."""
        return {**asdict(self), "key": self.key}


def steered_condition(
    vector, mode: str, layer: int, *, coeff: float | None = None, scale: float | None = None
) -> Condition:
    """A steered condition from an absolute coefficient or a scale relative to the residual norm.

    Args:
        vector: The :class:`~lens_steer.vectors.SteeringVector` (its per-layer norms convert
            between ``coeff`` and ``scale``; may be None when ``coeff`` is given).
        mode: ``"continuous"`` or ``"single"``.
        layer: Steered block.
        coeff: Absolute coefficient c (exactly one of ``coeff`` / ``scale``).
        scale: ``||c * v_layer||`` as a fraction of the mean residual norm at ``layer``.

    Returns:
        The condition, with both ``coeff`` and (when the vector records residual norms) ``scale``.
    """
    if mode not in STEER_MODES:
        raise ValueError(f"unknown steering mode {mode!r}; expected one of {STEER_MODES}")
    if (coeff is None) == (scale is None):
        raise ValueError("give exactly one of coeff and scale")
    if vector is not None and not 0 <= layer < vector.n_layers:
        raise IndexError(f"layer {layer} is out of range: the vector has layers 0..{vector.n_layers - 1}")
    if scale is not None:
        if vector is None:
            raise ValueError("a scale needs the vector (its norms give the coefficient)")
        coeff = vector.coeff_for_scale(layer, scale)
    elif vector is not None and vector.resid_norm is not None:
        scale = float(coeff * vector.directions[layer].norm() / vector.resid_norm[layer])
    return Condition(f"steered-{mode}", "direct", layer=layer, coeff=float(coeff), scale=scale, mode=mode)


def sweep_conditions(
    vector,
    layers: Sequence[int],
    modes: Sequence[str],
    *,
    coeffs: Mapping[str, Sequence[float]] | None = None,
    scales: Mapping[str, Sequence[float]] | None = None,
) -> list[Condition]:
    """Steered conditions on the grid layers × (coefficients or scales) × modes.

    Args:
        vector: The steering vector.
        layers: Layers to steer.
        modes: Steering modes.
        coeffs: Absolute coefficients per mode (e.g. ``{"continuous": [1, 2]}``).
        scales: Relative scales per mode; a mode takes its grid from exactly one of the two.

    Returns:
        Conditions in mode, layer, grid order.
    """
    coeffs, scales = dict(coeffs or {}), dict(scales or {})
    out = []
    for mode in modes:
        if (mode in coeffs) == (mode in scales):
            raise ValueError(f"mode {mode!r} needs either coefficients or scales (exactly one)")
        for layer in layers:
            if mode in coeffs:
                out.extend(steered_condition(vector, mode, layer, coeff=c) for c in coeffs[mode])
            else:
                out.extend(steered_condition(vector, mode, layer, scale=s) for s in scales[mode])
    return out


def benchmark_key(example: Example) -> str:
    """The benchmark an item is reported under: ``gsm8k``, ``mmlu``, ``arc``, ``agieval:<task>``, ``bbl:<task>``."""
    if example.source in ("agieval", "bbl") and example.subset:
        return f"{example.source}:{example.subset.split('/')[0]}"
    return example.source


# ---------------------------------------------------------------------------
# generation and scoring


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
    on_rows: Callable[[list[dict]], None] | None = None,
    chunk_size: int | None = None,
    allow_other_model: bool = False,
    progress: bool = True,
) -> list[dict]:
    """Generate and score every item under every condition, skipping those already done.

    Items of one condition are sorted by prompt length and generated in fixed chunks of
    ``chunk_size``; after each chunk ``on_rows`` receives its rows (write them there to make
    a run resumable). A steered chunk runs inside one :func:`~lens_steer.inject.steer`
    context.

    Args:
        model: The bridge.
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
        The new item rows, one per (item, condition) not in ``done``: ``id``, ``benchmark``,
        ``source``, ``subset``, ``condition`` (the key), ``name``, ``style``, ``layer``,
        ``coeff``, ``scale``, ``mode``, ``answer``, ``predicted``, ``parsed``, ``correct``,
        ``cot_style``, ``n_tokens``, ``stopped``, ``prompt_tokens``, ``gen_seconds`` (the
        chunk's time shared equally), ``response``.
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
    tok = model.tokenizer
    prompts_by_style: dict[str, list[list[int]]] = {}
    plan = []
    for cond in conditions:
        if cond.style not in prompts_by_style:
            prompts_by_style[cond.style] = [encode_prompt(tok, ex.question, cond.style, template) for ex in examples]
        prompts = prompts_by_style[cond.style]
        for chunk in _chunks(prompts, size):
            todo = [i for i in chunk if (examples[i].id, cond.key) not in done]
            if todo:
                plan.append((cond, prompts, todo))
    rows: list[dict] = []
    total = sum(len(todo) for _, _, todo in plan)
    with tqdm(total=total, desc="evaluating", disable=not progress, unit="item") as bar:
        for cond, prompts, todo in plan:
            bar.set_postfix_str(cond.key, refresh=False)
            ctx = (steer(model, vector, cond.layer, cond.coeff, cond.mode, allow_other_model=allow_other_model)
                   if cond.steered else nullcontext())
            start = time.perf_counter()
            with ctx:
                gens = generate(model, [prompts[i] for i in todo], generation, progress=False)
            seconds = (time.perf_counter() - start) / len(todo)
            chunk_rows = [_row(examples[i], cond, g, seconds) for i, g in zip(todo, gens, strict=True)]
            if on_rows is not None:
                on_rows(chunk_rows)
            rows.extend(chunk_rows)
            bar.update(len(todo))
    return rows


def _row(example: Example, cond: Condition, gen, seconds: float) -> dict:
    result = score(example, gen.text)
    return {
        "id": example.id,
        "benchmark": benchmark_key(example),
        "source": example.source,
        "subset": example.subset,
        "condition": cond.key,
        "name": cond.name,
        "style": cond.style,
        "layer": cond.layer,
        "coeff": cond.coeff,
        "scale": cond.scale,
        "mode": cond.mode,
        "answer": example.answer,
        "predicted": result.predicted,
        "parsed": result.parsed,
        "correct": result.correct,
        "cot_style": is_cot_style(gen.text),
        "n_tokens": len(gen.response_ids),
        "stopped": gen.stopped,
        "prompt_tokens": len(gen.prompt_ids),
        "gen_seconds": round(seconds, 4),
        "response": gen.text,
    }


# ---------------------------------------------------------------------------
# summaries


_SOURCE_ORDER = ("gsm8k", "mmlu", "arc", "agieval", "bbl")


def _benchmark_order(name: str) -> tuple:
    if name == "all":
        return (len(_SOURCE_ORDER) + 1, 1, name)
    base, _, task = name.partition(":")
    rank = _SOURCE_ORDER.index(base) if base in _SOURCE_ORDER else len(_SOURCE_ORDER)
    return (rank, 0 if task else 1, name)  # tasks first, then the source's pooled row


def _condition_order(row: Mapping) -> tuple:
    name = row["name"]
    rank = CONDITION_NAMES.index(name) if name in CONDITION_NAMES else len(CONDITION_NAMES)
    return (rank, row.get("layer") if row.get("layer") is not None else -1,
            row.get("coeff") if row.get("coeff") is not None else 0.0, row["condition"])


def _groups(rows: Sequence[Mapping]) -> dict[str, list[Mapping]]:
    """Rows per benchmark, plus a pooled row per source with several tasks and ``all`` when there are several."""
    groups: dict[str, list[Mapping]] = {}
    for r in rows:
        groups.setdefault(r["benchmark"], []).append(r)
    by_source: dict[str, set[str]] = {}
    for name in groups:
        by_source.setdefault(name.partition(":")[0], set()).add(name)
    pooled = {source: [r for n in sorted(names) for r in groups[n]]
              for source, names in by_source.items() if len(names) > 1 and source not in groups}
    if len(groups) > 1 and "all" not in groups:
        pooled["all"] = list(rows)
    return {**groups, **pooled}


def summarise(
    rows: Iterable[Mapping], *, baseline: str = BASELINE, n_boot: int = 2000, seed: int = 0
) -> list[dict]:
    """Per (benchmark, condition) statistics of item rows (as :func:`evaluate` returns them).

    Benchmarks are each row's ``benchmark``; a source with several tasks (AGIEval) also gets a
    pooled row under its name, and several benchmarks get a pooled ``all``.

    Args:
        rows: Item rows (for example read back from ``items.jsonl``).
        baseline: Condition key items are paired against.
        n_boot: Bootstrap replicates of the accuracy interval.
        seed: Seed of the bootstrap.

    Returns:
        One dict per group, ordered by benchmark then condition: ``benchmark``, ``condition``,
        ``name``, ``style``, ``mode``, ``layer``, ``coeff``, ``scale``, ``n``, ``n_correct``,
        ``accuracy``, ``ci_low``, ``ci_high`` (95% bootstrap), ``parse_fail_rate``,
        ``n_paired`` (items also run under the baseline), ``diff_vs_baseline`` (accuracy
        minus the baseline's, on paired items), ``mcnemar_p`` (exact, paired; None for the
        baseline itself or without pairs), ``mean_tokens``, ``truncation_rate`` (share that
        hit ``max_new_tokens``), ``cot_style_rate``, ``gen_seconds``, ``tokens_per_second``.
    """
    rows = list(rows)
    out = []
    for bench, group in sorted(_groups(rows).items(), key=lambda kv: _benchmark_order(kv[0])):
        by_cond: dict[str, list[Mapping]] = {}
        for r in group:
            by_cond.setdefault(r["condition"], []).append(r)
        base = {r["id"]: bool(r["correct"]) for r in by_cond.get(baseline, [])}
        for key, rs in by_cond.items():
            ids = [r["id"] for r in rs]
            if len(set(ids)) != len(ids):
                raise ValueError(f"item rows repeat for {bench} / {key}: a results table must hold each item once")
            correct = [bool(r["correct"]) for r in rs]
            acc, lo, hi = accuracy_ci(correct, n_boot=n_boot, seed=seed)
            paired = [(bool(r["correct"]), base[r["id"]]) for r in rs if r["id"] in base]
            p = diff = None
            if paired and key != baseline:
                p = mcnemar_exact([a for a, _ in paired], [b for _, b in paired])
                diff = (sum(a for a, _ in paired) - sum(b for _, b in paired)) / len(paired)
            tokens = sum(int(r["n_tokens"]) for r in rs)
            seconds = sum(float(r.get("gen_seconds") or 0.0) for r in rs)
            first = rs[0]
            out.append({
                "benchmark": bench,
                "condition": key,
                "name": first["name"],
                "style": first["style"],
                "mode": first["mode"],
                "layer": first["layer"],
                "coeff": first["coeff"],
                "scale": first["scale"],
                "n": len(rs),
                "n_correct": sum(correct),
                "accuracy": acc,
                "ci_low": lo,
                "ci_high": hi,
                "parse_fail_rate": sum(not r["parsed"] for r in rs) / len(rs),
                "n_paired": len(paired),
                "diff_vs_baseline": diff,
                "mcnemar_p": p,
                "mean_tokens": tokens / len(rs),
                "truncation_rate": sum(not r["stopped"] for r in rs) / len(rs),
                "cot_style_rate": sum(bool(r["cot_style"]) for r in rs) / len(rs),
                "gen_seconds": round(seconds, 3),
                "tokens_per_second": tokens / seconds if seconds > 0 else None,
            })
    out.sort(key=lambda s: (_benchmark_order(s["benchmark"]), _condition_order(s)))
    return out


def sweep_grid(
    summary: Sequence[Mapping], mode: str, metric: str, *, benchmark: str = "all", axis: str = "scale"
) -> tuple[list[int], list[float], list[list[float]]]:
    """A layer × (scale or coefficient) matrix of ``metric`` for one steering mode.

    Args:
        summary: Output of :func:`summarise`.
        mode: ``"continuous"`` or ``"single"``.
        metric: A summary field, e.g. ``"accuracy"`` or ``"cot_style_rate"``.
        benchmark: Summary group (``"all"``, ``"gsm8k"``, ...); falls back to the only
            benchmark when there is just one.
        axis: ``"scale"`` or ``"coeff"``: which value labels the columns.

    Returns:
        ``(layers, column values, matrix)`` with NaN for cells not in the summary.
    """
    if axis not in ("scale", "coeff"):
        raise ValueError(f"axis must be 'scale' or 'coeff', got {axis!r}")
    names = {s["benchmark"] for s in summary}
    if benchmark not in names and benchmark == "all" and len(names) == 1:
        benchmark = next(iter(names))
    cells = [s for s in summary if s["benchmark"] == benchmark and s["mode"] == mode]
    layers = sorted({s["layer"] for s in cells})
    cols = sorted({round(s[axis], 9) for s in cells if s[axis] is not None})
    grid = [[math.nan] * len(cols) for _ in layers]
    for s in cells:
        if s[axis] is None:
            continue
        grid[layers.index(s["layer"])][cols.index(round(s[axis], 9))] = float(s[metric])
    return layers, cols, grid


def best_steered(summary: Sequence[Mapping], mode: str, *, benchmark: str = "all") -> dict | None:
    """The steered cell of ``mode`` to carry forward from a sweep.

    Rule: highest accuracy on ``benchmark``; ties broken by the higher CoT-style rate, then
    by the smaller ``|coeff|`` (the weaker intervention), then the lower layer.

    Returns:
        The summary row, or None when the mode was not swept.
    """
    names = {s["benchmark"] for s in summary}
    if benchmark not in names and benchmark == "all" and len(names) == 1:
        benchmark = next(iter(names))
    cells = [s for s in summary if s["benchmark"] == benchmark and s["mode"] == mode]
    if not cells:
        return None
    return dict(min(cells, key=lambda s: (-s["accuracy"], -s["cot_style_rate"], abs(s["coeff"]), s["layer"])))


# ---------------------------------------------------------------------------
# results directory: run.json (settings, invocations), items.jsonl, summary.json


class RunSettingsMismatch(ValueError):
    """A results directory holds rows made with other settings; resuming into it would mix them."""


def _diff(saved, now, prefix: str = "") -> list[str]:
    if isinstance(saved, dict) and isinstance(now, dict):
        out = []
        for k in sorted(set(saved) | set(now), key=str):
            out += _diff(saved.get(k, "<absent>"), now.get(k, "<absent>"), f"{prefix}{k}.")
        return out
    return [] if saved == now else [f"{prefix.rstrip('.')}: {saved!r} (saved) vs {now!r} (now)"]


def open_results_dir(
    out: str | os.PathLike[str], settings: Mapping, *, optional: Collection[str] = ("vector",)
) -> set[tuple[str, str]]:
    """Create or reopen a results directory; return the ``(item id, condition key)`` pairs done.

    A new directory gets ``run.json`` with ``settings``. An existing one must hold the same
    settings (compared as JSON): otherwise :class:`RunSettingsMismatch` names each difference.
    A last line of ``items.jsonl`` cut short by an interruption is removed.

    Args:
        out: The directory.
        settings: Everything that decides an item row's content (model, vector, generation,
            templates, data, limit, seed, chunking); conditions are not part of it, so a
            grid can be extended in place.
        optional: Top-level settings that only some rows depend on (the vector: only steered
            rows). Where one side has None there, the two are compatible: a run of the
            unsteered conditions can later be completed with steered ones, whose vector is then
            recorded; two different non-None values still mismatch.

    Returns:
        The done keys.
    """
    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    run_file = path / RUN_FILE
    settings = json.loads(json.dumps(settings))
    if run_file.is_file():
        try:
            saved = json.loads(run_file.read_text())
        except json.JSONDecodeError as exc:
            raise RunSettingsMismatch(f"{run_file} is unreadable ({exc}); use another --out") from exc
        old = dict(saved.get("settings") or {})
        now = dict(settings)
        filled = {}
        for key in optional:
            if old.get(key) is None and now.get(key) is not None:
                filled[key] = now[key]
            if old.get(key) is None or now.get(key) is None:
                old.pop(key, None)
                now.pop(key, None)
        diffs = _diff(old, now)
        if diffs:
            raise RunSettingsMismatch(
                f"{path} holds results made with other settings, so it cannot be resumed: "
                + "; ".join(diffs) + ". Use another output directory (or delete this one)."
            )
        if filled:
            saved["settings"] = {**saved["settings"], **filled}
            _write_json(run_file, saved)
    else:
        if (path / ITEMS_FILE).exists():
            raise RunSettingsMismatch(f"{path} has {ITEMS_FILE} but no {RUN_FILE}: cannot tell how it was made")
        _write_json(run_file, {"format_version": RUN_FORMAT_VERSION, "settings": settings, "invocations": []})
    _drop_partial_line(path / ITEMS_FILE)
    return done_keys(read_items(path / ITEMS_FILE))


def _drop_partial_line(path: Path) -> None:
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


def read_items(path: str | os.PathLike[str]) -> list[dict]:
    """Rows of an ``items.jsonl`` file ([] when it does not exist).

    Raises:
        ValueError: a line is not JSON (naming the file and line).
    """
    path = Path(path)
    if path.is_dir():
        path = path / ITEMS_FILE
    if not path.is_file():
        return []
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}, line {lineno}: not JSON ({exc.msg})") from exc
    return rows


def done_keys(rows: Iterable[Mapping]) -> set[tuple[str, str]]:
    """``(item id, condition key)`` of each row."""
    return {(r["id"], r["condition"]) for r in rows}


def append_items(path: str | os.PathLike[str], rows: Sequence[Mapping]) -> None:
    """Append rows to ``items.jsonl`` in one write, flushed and synced to disk."""
    if not rows:
        return
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def record_invocation(
    out: str | os.PathLike[str], invocation: Mapping, conditions: Sequence[Condition] = (), index: int | None = None
) -> int:
    """Append one invocation (start time, seconds, rows added, completed, ...) to ``run.json``, or update
    the one at ``index`` in place. Returns its index.

    The CLI records an invocation when it starts and updates it after every chunk, so a run killed
    outright (SIGKILL, a machine restart) still leaves its time and rows in ``run.json``.
    ``conditions`` are merged (by key) into the run's ``conditions`` list.
    """
    run_file = Path(out) / RUN_FILE
    run = json.loads(run_file.read_text())
    invocations = run.setdefault("invocations", [])
    if index is None:
        invocations.append(dict(invocation))
        index = len(invocations) - 1
    else:
        invocations[index] = {**invocations[index], **invocation}
    known = {c["key"] for c in run.setdefault("conditions", [])}
    run["conditions"] += [c.to_dict() for c in conditions if c.key not in known]
    _write_json(run_file, run)
    return index


def write_summary(out: str | os.PathLike[str], summary: Sequence[Mapping], **extra) -> Path:
    """Write ``summary.json``: ``{"summary": [...], **extra}``. Returns its path."""
    path = Path(out) / SUMMARY_FILE
    _write_json(path, {**extra, "summary": list(summary)})
    return path


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
