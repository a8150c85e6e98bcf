"""Text renderings of evaluation results: the console table and the markdown results document; pure."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

from lens_steer.eval.conditions import BASELINE
from lens_steer.eval.record import RunRecord
from lens_steer.eval.results import COT, RecoveryRow, SummaryRow
from lens_steer.eval.scoring import COT_MIN_SENTENCES, COT_MIN_WORDS_NO_ANSWER
from lens_steer.eval.sweep import sweep_grid
from lens_steer.method.vectors import VectorMetadata

__all__ = ["PAPER_MODELS", "format_table", "results_markdown", "text_table"]

PAPER_MODELS: tuple[dict, ...] = (
    {"model": "meta-llama/Meta-Llama-3-8B-Instruct", "single": (16, 20.0), "continuous": (13, 1.0),
     "bf16_gb": 16.1, "access": "gated: accept Meta's Llama 3 licence on the hub page, then `huggingface-cli login`"},
    {"model": "mistralai/Mistral-7B-Instruct-v0.2", "single": (15, 10.0), "continuous": (10, 0.5),
     "bf16_gb": 14.5, "access": "open (Apache-2.0); no login needed"},
)
"""The paper's models and its reported steering settings ``(layer, coefficient)`` per mode."""


def _pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f}"


def _p(p: float | None) -> str:
    if p is None:
        return "–"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _cond_label(s: SummaryRow | RecoveryRow) -> str:
    if s.mode is None:
        return s.name
    scale = f", {s.scale:.2g}×" if s.scale is not None else ""
    spec = f", {s.mode}" + (f", {s.style} prompt" if s.style != "direct" else "") if s.name == "steered" else ""
    return f"{s.name} (l={s.layer}, c={s.coeff:.3g}{scale}{spec})"


def _cells(s: SummaryRow) -> tuple[str, str, str, str, str]:
    return (f"{_pct(s.accuracy)} [{_pct(s.ci_low)}, {_pct(s.ci_high)}]", _pct(s.parse_fail_rate), _p(s.mcnemar_p),
            f"{s.mean_tokens:.1f}", _pct(s.truncation_rate))


def format_table(summary: Sequence[SummaryRow]) -> str:
    """A fixed-width console table of a summary (see :func:`lens_steer.eval.results.summarise`)."""
    head = ("benchmark", "condition", "n", "acc % [95% CI]", "parse-fail %", f"p vs {BASELINE}", "tokens",
            "trunc %", "CoT-style %")
    rows = [head]
    for s in summary:
        rows.append((s.benchmark, _cond_label(s), str(s.n), *_cells(s), _pct(s.cot_style_rate)))
    return text_table(rows, 2)


def text_table(rows: Sequence[Sequence[str]], left: int) -> str:
    """Fixed-width text of a header and rows: the first ``left`` columns left-aligned, the rest right-aligned."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None) -> list[str]:
    align = align or "l" * len(header)
    sep = ["---" if a == "l" else "---:" for a in align]
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out


def _results_table(summary: Sequence[SummaryRow]) -> list[str]:
    rows = []
    for s in summary:
        diff = "" if s.diff_vs_baseline is None else f" ({100 * s.diff_vs_baseline:+.1f})"
        acc, parse, p, tokens, trunc = _cells(s)
        rows.append((s.benchmark, _cond_label(s), s.n, acc, parse, p + diff, tokens, trunc, _pct(s.cot_style_rate)))
    header = ("benchmark", "condition", "n", "accuracy % [95% CI]", "parse-fail %",
              f"McNemar p vs {BASELINE} (Δ pts)", "mean tokens", "truncated %", "CoT-style %")
    if summary and all(s.repetition_rate is not None for s in summary):  # summaries written before it lack it
        rows = [(*r, _pct(s.repetition_rate)) for r, s in zip(rows, summary)]
        header = (*header, "repeated 4-grams %")
    return _md_table(header, rows, "l" * 2 + "r" * (len(header) - 2))


def _recovery_section(recovery: Sequence[RecoveryRow]) -> list[str]:
    rows = []
    for r in recovery:
        g = r.gain
        if r.cot <= r.direct:
            share = f"no CoT gain to recover ({_pct(r.cot - r.direct)} pts)"
        else:
            share = f"{100 * g.fraction:.0f} % [{_pct(g.low, 0)}, {_pct(g.high, 0)}]"
            if g.dropped:
                share += f" ({g.dropped}/{g.n_boot} replicates without a gain left out)"
        rows.append((r.benchmark, _cond_label(r), r.n, _pct(r.direct), _pct(r.cot), _pct(r.steered),
                     f"{100 * (r.cot - r.direct):+.1f}", f"{100 * (r.steered - r.direct):+.1f}", share))
    header = ("benchmark", "steered condition", "n", f"{BASELINE} %", f"{COT} %", "steered %", "CoT gain (pts)",
              "steered gain (pts)", "recovered (steered − direct) / (CoT − direct) [95% CI]")
    return ["", "## How much of the CoT prompt's gain steering recovers", "",
            "On the items answered under all three conditions; the interval is a paired bootstrap (items resampled "
            "jointly, 2000 replicates, `lens_steer.eval.stats.recovered_gain`). 100 % means the steered direct "
            "prompt is as accurate as the CoT prompt; 0 % that it is as accurate as the direct one.", "",
            *_md_table(header, rows, "llrrrrrrl")]


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h} h {m:02d} min {s:02d} s" if h else f"{m} min {s:02d} s"


def _wall(run: RunRecord, summary: Sequence[SummaryRow]) -> list[str]:
    inv = run.invocations
    total = run.total_seconds
    load = sum(float(i.load_seconds) for i in inv)
    rows = [s for s in summary if s.benchmark == _top(summary)]
    gen = sum(s.gen_seconds for s in rows)
    n_items = sum(s.n for s in rows)
    tokens = sum(s.mean_tokens * s.n for s in rows)
    stopped = sum(not i.completed for i in inv[:-1])
    devices = sorted({f"{i.device or '?'} ({i.torch_threads if i.torch_threads is not None else '?'} threads)"
                      for i in inv})
    lines = [
        f"- Wall time of the evaluation: **{_duration(total)}** over {len(inv)} invocation(s) "
        f"({'completed' if run.completed else 'NOT completed'}"
        f"{f'; {stopped} stopped early and resumed' if stopped else ''}), plus {_duration(load)} loading.",
        f"- Generation: {n_items} responses, {int(tokens)} generated tokens in {_duration(gen)} "
        f"({tokens / gen:.0f} tokens/s batched)" if gen > 0 else "- Generation time: not recorded.",
        f"- Hardware: {', '.join(devices) or 'unknown'}; the machine was shared with other jobs, so times are indicative.",
    ]
    return lines


def shown_path(path: str | os.PathLike[str], base: str | os.PathLike[str] | None = None) -> str:
    """``path`` as a committed document should show it: relative to ``base`` (default: the working
    directory, the repository when run from its root) when it lies inside ``base`` or beside it (one
    ``..``, e.g. ``../shared/data``); otherwise unchanged. Non-paths (``"hub"``) are returned as they are."""
    text = str(path)
    if not os.path.isabs(text):
        return text
    rel = os.path.relpath(text, os.fspath(base) if base is not None else os.getcwd())
    return rel if rel.split(os.sep).count("..") <= 1 else text  # relpath puts every ".." first


def _top(summary: Sequence[SummaryRow]) -> str:
    names = [s.benchmark for s in summary]
    return "all" if "all" in names else names[0]


def _settings(run: RunRecord) -> list[str]:
    st = run.settings
    gen, data, vec, model = st.generation, st.data, st.vector, st.model
    lines = [
        f"- Model: `{model.model_id}` ({model.n_layers} layers, d_model {model.d_model}, "
        f"fingerprint `{model.fingerprint}`), dtype {st.dtype}.",
    ]
    if vec:
        lines.append(f"- Steering vector: `{shown_path(vec.path)}` (corpus hash `{str(vec.corpus_hash)[:16]}`, "
                     f"{vec.n_questions} questions, tensors sha256 `{str(vec.tensors_sha256)[:16]}`).")
    lines += [
        f"- Benchmarks: {', '.join(f'`{b}`' for b in data.benchmarks)}; split `{data.split}`; "
        f"limit {data.limit} per benchmark"
        + (f", {data.task_limit} per AGIEval task" if data.task_limit else "")
        + f" (seeded subsample, seed {data.seed}); data from `{shown_path(data.source)}`.",
        f"- Generation: greedy={not gen.do_sample}, max_new_tokens {gen.max_new_tokens}, "
        f"batch size {gen.batch_size}, KV cache {gen.use_cache}, seed {gen.seed}; "
        f"chunks of {st.chunk_size} items.",
        f"- Prompts: direct suffix “{_suffix(st, 'direct')}”, CoT suffix “{_suffix(st, 'cot')}”, "
        f"inside the model's chat template; steered conditions use the direct prompt.",
    ]
    return lines


def _suffix(settings, style: str) -> str:
    text = getattr(settings.template, style, "")
    return text.replace("{question}\n", "").replace("{question}", "").strip()


def _sweep_section(run: RunRecord, summary: Sequence[SummaryRow], best: Mapping[str, SummaryRow | None],
                   heatmaps: Sequence[str]) -> list[str]:
    st = run.settings
    data = st.data
    conds = run.conditions
    top = _top(summary)
    lines = [
        "## Grid search (dev subset)",
        "",
        f"Benchmarks {', '.join(f'`{b}`' for b in data.benchmarks)} (limit {data.limit} each, "
        f"seed {data.seed}), max_new_tokens {st.generation.max_new_tokens}; "
        f"{len([c for c in conds if c.steered])} steered cells. Columns are the steering size as a fraction of the "
        "mean residual-stream norm at that layer (`scale`; the absolute coefficient differs per layer). "
        f"Cells: accuracy % / CoT-style % pooled over the dev benchmarks (`{top}`).",
        "",
    ]
    for mode in ("continuous", "single"):
        layers, cols, acc = sweep_grid(summary, mode, "accuracy", benchmark=top)
        if not layers:
            continue
        _, _, cot = sweep_grid(summary, mode, "cot_style_rate", benchmark=top)
        lines.append(f"**{mode}**")
        lines.append("")
        rows = [[str(layer)] + [f"{_pct(a, 0)} / {_pct(c, 0)}" for a, c in zip(acc[i], cot[i])]
                for i, layer in enumerate(layers)]
        lines += _md_table(["layer \\ scale"] + [f"{c:g}" for c in cols], rows, "l" + "r" * len(cols))
        lines.append("")
    base = [s for s in summary if s.benchmark == top and s.mode is None]
    if base:
        lines.append("Unsteered on the same items: " + "; ".join(
            f"{s.name} {_pct(s.accuracy, 0)} / {_pct(s.cot_style_rate, 0)}" for s in base) + ".")
        lines.append("")
    if best:
        lines.append("Selection rule (`lens_steer.eval.sweep.best_steered`): highest pooled dev accuracy, ties broken "
                     "by the higher CoT-style rate, then the smaller |coefficient|, then the lower layer. Chosen:")
        lines.append("")
        for mode, s in best.items():
            if s:
                size = f"scale {s.scale:.3g} (c = {s.coeff:.4g})" if s.scale is not None else f"c = {s.coeff:.4g}"
                lines.append(f"- {mode}: layer {s.layer}, {size}: "
                             f"dev accuracy {_pct(s.accuracy)} %, CoT-style {_pct(s.cot_style_rate)} %.")
        lines.append("")
    pngs = [h for h in heatmaps if h.endswith(".png")]
    pages = [h for h in heatmaps if not h.endswith(".png")]
    if pages:
        lines.append("Interactive heatmaps (layer × grid value, per mode; accuracy and CoT-style rate): "
                     + ", ".join(f"[{h.rsplit('/', 1)[-1]}]({h})" for h in pages) + ".")
        lines.append("")
    for h in pngs:
        lines += [f"![{h.rsplit('/', 1)[-1]}]({h})", ""]
    lines += _wall(run, summary)
    lines.append("")
    return lines


def _paper_models() -> list[str]:
    lines = [
        "## Running the paper's models",
        "",
        "The paper steers 7-8B instruction-tuned models. The same commands take `--model NAME --dtype bfloat16 "
        "--device cuda`; in bf16 the weights alone need about 15-16 GB, so one GPU with at least 24 GB "
        "(A10/L4/RTX 4090/A100/H100) holds the model, the KV cache of a batch of 16 and the residual means. "
        "The paper's settings (absolute coefficients on its own vectors):",
        "",
    ]
    rows = [(f"`{m['model']}`", f"layer {m['single'][0]}, c = {m['single'][1]:g}",
             f"layer {m['continuous'][0]}, c = {m['continuous'][1]:g}", f"~{m['bf16_gb']} GB", m["access"])
            for m in PAPER_MODELS]
    lines += _md_table(("model", "single (prompt only)", "continuous", "bf16 weights", "hub access"), rows)
    llama = PAPER_MODELS[0]
    lines += [
        "",
        "For example (Llama 3; swap the name and settings for Mistral):",
        "",
        "```bash",
        f"lens-steer derive --model {llama['model']} --dtype bfloat16 --device cuda \\",
        "    --corpus paper --data-dir ../shared/data --batch-size 16 --out runs/paper-llama3",
        f"lens-steer eval --model {llama['model']} --dtype bfloat16 --device cuda --vector runs/paper-llama3 \\",
        "    --benchmarks gsm8k,mmlu,arc,agieval --conditions direct,cot,steered-continuous,steered-single \\",
        f"    --layer-single {llama['single'][0]} --coeff-single {llama['single'][1]:g} "
        f"--layer-continuous {llama['continuous'][0]} --coeff-continuous {llama['continuous'][1]:g} \\",
        "    --limit 100 --task-limit 50 --max-new-tokens 512 --data-dir ../shared/data --out runs/eval-llama3",
        "```",
        "",
        "Our vector is the raw mean difference of residuals (CoT minus direct), so an absolute coefficient means the "
        "same thing only if the paper's vectors are built the same way; the `scale` recorded beside every "
        "coefficient (‖c·v_l‖ / mean ‖resid_l‖) makes settings comparable across models. Without hub access, a "
        "local copy works too (`--model /path/to/dir` or a `.gguf` file).",
        "",
    ]
    return lines


def _definitions() -> list[str]:
    return [
        "## Definitions",
        "",
        "- **Accuracy**: share of items whose extracted answer equals the gold answer (GSM8K: the final number, "
        "normalised; multiple choice: the letter, or a choice's text). A response with no extractable answer is a "
        "**parse failure** and is always counted wrong. The interval is a 95% percentile bootstrap "
        "(2,000 replicates, seed 0).",
        f"- **McNemar p**: exact two-sided McNemar test of paired correctness against `{BASELINE}` on the same "
        "items; Δ is the accuracy difference in points on those items.",
        "- **Mean tokens**: generated tokens before the end-of-turn token; **truncated** is the share that hit "
        "`max_new_tokens` (their answer may be missing, which shows up as a parse failure or a wrong answer).",
        "- **CoT-style rate** (`lens_steer.eval.scoring.is_cot_style`): share of responses that reason before they "
        "state the answer. The answer position is the first `####`, `\\boxed{`, or “answer is / answer:”, or the "
        "start when the response opens with the answer (a letter such as `B.` or a lone number). A response is "
        f"CoT style when the text before that position has at least {COT_MIN_SENTENCES} sentences of three or "
        "more words, or a step marker (`Step 1`, `First,`, `Let's think:`, an `= <number>` computation, a list of "
        f"two or more items); with no stated answer, when it has at least {COT_MIN_WORDS_NO_ANSWER} words.",
        "",
    ]


def results_markdown(
    eval_run: RunRecord,
    eval_summary: Sequence[SummaryRow],
    *,
    sweep_run: RunRecord | None = None,
    sweep_summary: Sequence[SummaryRow] | None = None,
    sweep_best: Mapping[str, SummaryRow | None] | None = None,
    heatmaps: Sequence[str] = (),
    sources: Sequence[str] = (),
    command: str = "",
    title: str | None = None,
    notes: Sequence[str] = (),
    vector_config: VectorMetadata | None = None,
    recovery: Sequence[RecoveryRow] = (),
) -> str:
    """The results document (markdown) from saved runs.

    Args:
        eval_run: ``run.json`` of the ``eval`` directory (:func:`lens_steer.eval.results_dir.read_run`).
        eval_summary: Its summary rows.
        sweep_run / sweep_summary / sweep_best: The same for a ``sweep`` directory, if any.
        heatmaps: Paths of saved sweep heatmaps to mention.
        sources: Paths of the summary files the numbers come from.
        command: The command line that generated the document.
        title: Heading (default from the model id).
        notes: Paragraphs for a "Notes" section (given on the command line, so they are part
            of the recorded command).
        vector_config: The steering vector's metadata (``SteeringVector.load(path).metadata``), to describe
            how it was derived.
        recovery: :func:`lens_steer.eval.results.recovery` of the eval's items (a section when given).

    Returns:
        The markdown text.
    """
    model = eval_run.model_id
    lines = [
        f"# {title or f'CoT steering results: {model}'}",
        "",
        "<!-- Generated by `lens-steer report`; do not edit by hand: re-run the command below. -->",
        "",
        f"Generated with `{command}`." if command else "Generated by `lens-steer report`.",
        "",
        "Conditions: `direct` (direct suffix), `cot` (CoT suffix), `steered-continuous` (direct prompt, vector added "
        "at every position of every forward pass) and `steered-single` (direct prompt, vector added to the prompt "
        "positions only). The question is whether the steered model, prompted for a direct answer, behaves like the "
        "CoT-prompted one (Zhang & Viteri 2024). The model is small, so accuracies near chance are expected; "
        "the behavioural columns (length, CoT-style rate) carry most of the signal.",
        "",
        "## Results (test subsets)",
        "",
    ]
    main = [s for s in eval_summary if ":" not in s.benchmark]
    tasks = [s for s in eval_summary if ":" in s.benchmark]
    lines += _results_table(main or eval_summary)
    if main and tasks:
        pooled = sorted({s.benchmark.partition(":")[0] for s in tasks})
        lines += ["", f"Rows `{'`, `'.join(pooled)}` pool their tasks (micro average); `all` pools every item. "
                  "Per task:", ""]
        lines += _results_table(tasks)
    if recovery:
        lines += _recovery_section(recovery)
    if notes:
        lines += ["", "## Notes", ""]
        for note in notes:
            lines += [note, ""]
        lines.pop()
    lines += ["", "## Settings", ""]
    lines += _settings(eval_run)
    if vector_config:
        gen = vector_config.generation
        stats = vector_config.stats
        lines.append(
            f"- The vector was derived on {len(vector_config.question_ids)} questions of the paper's corpus "
            f"mix (sources: {', '.join(sorted(set(vector_config.question_sources)))}), "
            f"max_new_tokens {gen.max_new_tokens if gen is not None else None}, averaging the residual stream over the "
            f"{vector_config.positions or '?'} tokens"
            + (f"; mean response length {stats.mean_tokens_cot:.0f} tokens (CoT) vs {stats.mean_tokens_direct:.0f} "
               "(direct)" if stats.mean_tokens_cot is not None and stats.mean_tokens_direct is not None else "") + ".")
    conds = [c for c in eval_run.conditions if c.steered]
    for c in conds:
        lines.append(f"- `{c.name}`: layer {c.layer}, c = {c.coeff:.4g}"
                     + (f" (scale {c.scale:.3g} × mean residual norm)" if c.scale is not None else "") + ".")
    lines += ["", "## Wall time", ""]
    lines += _wall(eval_run, eval_summary)
    lines.append("")
    if sweep_run is not None and sweep_summary is not None:
        lines += _sweep_section(sweep_run, sweep_summary, sweep_best or {}, heatmaps)
    lines += _definitions()
    lines += _paper_models()
    if sources:
        lines += ["## Sources", "", "The numbers above are read from (copies of) these files; `summary.json` is "
                  "recomputable from the run's `items.jsonl` with `lens_steer.eval.results.summarise`:", ""]
        lines += [f"- `{s}`" for s in sources]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
