#!/usr/bin/env bash
# Every measurement recorded in bench/RESULTS.md, in sequence (about 2 hours on the shared
# 2-core development machine; about half that on a quiet one). Logs and JSON go to
# runs/bench/ (git-ignored). bench_extract.py needs the bench venv: bash bench/setup_bench_venv.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-runs/bench}"
BENCH_VENV="${BENCH_VENV:-/tmp/lens-steer-bench-venv}"
PY=.venv/bin/python
mkdir -p "$OUT"
quiet() { grep --line-buffered -v -i -E "warning|it/s\]|Loading weights"; }
$PY bench/bench_limits.py --json "$OUT/limits.json" 2>&1 | quiet | tee "$OUT/limits.log"
$PY bench/bench_steer.py --json "$OUT/steer.json" 2>&1 | quiet | tee "$OUT/steer.log"
$PY bench/bench_derive.py --n 16 --tokens 64 --sweep "" --json "$OUT/derive_n16.json" 2>&1 | tee "$OUT/derive_n16.log"
$PY bench/bench_derive.py --n 64 256 --tokens 64 --tokens-256 16 --sweep "" --impls lens,lens_eager,plain \
    --json "$OUT/derive_n64_256.json" 2>&1 | tee "$OUT/derive_n64_256.log"
if [ -x "$BENCH_VENV/bin/python" ]; then
    PYTHONPATH=. "$BENCH_VENV/bin/python" bench/bench_extract.py --pairs 24 --json "$OUT/extract.json" 2>&1 \
        | quiet | tee "$OUT/extract.log"
else
    echo "bench venv $BENCH_VENV missing: run bench/setup_bench_venv.sh for bench_extract.py" | tee "$OUT/extract.log"
fi
$PY bench/bench_derive.py --n 16 --sweep 16,128 --skip-main --impls lens,lens_eager,plain \
    --json "$OUT/derive_sweep.json" 2>&1 | tee "$OUT/derive_sweep.log"
