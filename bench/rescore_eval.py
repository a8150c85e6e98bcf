"""Re-score a stored eval directory's rows with the current lens_steer scorer (the responses are unchanged) and print
direct vs CoT per benchmark and pooled: accuracy with its bootstrap 95 % interval, the accuracy as first scored,
the parse-failure rate and the exact McNemar p, paired on the same items (docs/results-qwen-selection.md).

Usage::

    python bench/rescore_eval.py runs/select-1.5b-1024
"""

from __future__ import annotations

import json
import sys

from lens_steer.eval.run import DataSettings
from lens_steer.eval.scoring import score
from lens_steer.eval.stats import accuracy_ci, mcnemar_exact


def main(out: str) -> int:
    d = json.load(open(f"{out}/run.json"))["settings"]["data"]
    examples, _ = DataSettings(tuple(d["benchmarks"]), d["split"], d["limit"], d["task_limit"], d["seed"],
                               d["source"]).load()
    by_id = {e.id: e for e in examples}
    scored: dict[tuple[str, str], dict[str, tuple[bool, bool, bool]]] = {}
    for line in open(f"{out}/items.jsonl"):
        r = json.loads(line)
        s = score(by_id[r["id"]], r["response"])
        scored.setdefault((r["benchmark"], r["condition"]), {})[r["id"]] = (s.correct, s.parsed, r["correct"])
    print("| benchmark | condition | n | accuracy % [95% CI] (re-scored) | as first scored % | parse-fail % | "
          "McNemar p vs direct |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for bench in sorted({b for b, _ in scored}) + ["all"]:
        merged = {cond: {k: v for (b, c), rows in scored.items() if c == cond and bench in (b, "all")
                         for k, v in rows.items()} for cond in ("direct", "cot")}
        ids = sorted(merged["direct"])
        for cond in ("direct", "cot"):
            rows = merged[cond]
            correct = [rows[i][0] for i in ids]
            acc, lo, hi = accuracy_ci(correct)
            was = 100 * sum(rows[i][2] for i in ids) / len(ids)
            failed = 100 * sum(not rows[i][1] for i in ids) / len(ids)
            p = "–" if cond == "direct" else f"{mcnemar_exact([merged['direct'][i][0] for i in ids], correct):.3f}"
            print(f"| {bench} | {cond} | {len(ids)} | {100 * acc:.1f} [{100 * lo:.1f}, {100 * hi:.1f}] | {was:.1f} | "
                  f"{failed:.1f} | {p} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
