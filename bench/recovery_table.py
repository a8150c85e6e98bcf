"""The recovery table of steered conditions evaluated in separate directories (e.g. the paper's own cells run with
``lens-steer eval`` beside a reproduction's ``eval``): every directory's item rows are pooled, items paired by id
with the ``direct`` and ``cot`` rows, and each steered condition gets its accuracy (bootstrap 95 % interval), exact
McNemar p against direct and against CoT, the behaviour columns, and the share of the CoT prompt's gain it recovers
with a paired-bootstrap interval (``lens_steer.eval.results.recovery``); then, per condition, the accuracy of the
answers that reason (``is_cot_style``) and of those that do not. Used for docs/results-qwen2.5-coder-1.5b.md;
prints markdown.

Usage::

    python bench/recovery_table.py runs/paper-qwen1.5b/eval runs/paper-qwen1.5b/paper-cells-*
    python bench/recovery_table.py --common runs/...   # only the items every directory answered
"""

from __future__ import annotations

import sys

from lens_steer.eval.results import recovery, summarise
from lens_steer.eval.results_dir import read_items


def main(args: list[str]) -> int:
    common = args[:1] == ["--common"]
    dirs = args[1:] if common else args
    per_dir = [read_items(d) for d in dirs]
    rows = [r for items in per_dir for r in items]
    if common and per_dir:
        shared = set.intersection(*({r.id for r in items} for items in per_dir))
        rows = [r for r in rows if r.id in shared]
    if not rows:
        print(f"no item rows in {', '.join(dirs)}", file=sys.stderr)
        return 2
    summary = summarise(rows)
    recovered = {(g.benchmark, g.condition): g for g in recovery(rows)}
    print("| benchmark | condition | n paired | direct % / CoT % on these items | accuracy % [95% CI] | "
          "McNemar p vs direct | McNemar p vs cot | mean tokens | truncated % | CoT-style % | parse-fail % | "
          "recovered (steered − direct) / (CoT − direct) [95% CI] |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for s in summary:
        g = recovered.get((s.benchmark, s.condition))
        if g is None or s.benchmark == "all":
            continue
        share = ("no CoT gain" if g.gain is None or g.cot <= g.direct else
                 f"{100 * g.gain.fraction:.0f} % [{100 * g.gain.low:.0f}, {100 * g.gain.high:.0f}]")
        print(f"| {s.benchmark} | {s.name} (l={s.layer}, c={s.coeff:.3g}, scale {s.scale:.3g}) | {g.n} | "
              f"{100 * g.direct:.1f} / {100 * g.cot:.1f} | "
              f"{100 * s.accuracy:.1f} [{100 * s.ci_low:.1f}, {100 * s.ci_high:.1f}] | {g.p_direct:.3f} | "
              f"{g.p_cot:.3f} | {s.mean_tokens:.1f} | {100 * s.truncation_rate:.1f} | {100 * s.cot_style_rate:.1f} | "
              f"{100 * s.parse_fail_rate:.1f} | {share} |")
    print("\n| benchmark | condition | CoT-style answers: correct / n (%) | other answers: correct / n (%) |")
    print("|---|---|---:|---:|")
    for s in summary:
        if s.benchmark == "all":
            continue
        group = [r for r in rows if r.condition == s.condition and r.benchmark == s.benchmark]
        cells = []
        for style in (True, False):
            part = [r for r in group if r.cot_style == style]
            right = sum(r.correct for r in part)
            cells.append(f"{right} / {len(part)} ({100 * right / len(part):.1f})" if part else "0 / 0")
        label = s.name if s.mode is None else f"{s.name} (l={s.layer}, c={s.coeff:.3g})"
        print(f"| {s.benchmark} | {label} | {cells[0]} | {cells[1]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
