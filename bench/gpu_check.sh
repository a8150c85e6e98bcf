#!/usr/bin/env bash
# GPU check (see bench/gpu_check.py): one run, under 10 minutes, on a lent device.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec python3 bench/gpu_check.py --n "${N:-64}" --tokens "${TOKENS:-128}" ${TOKENIZER:+--tokenizer "$TOKENIZER"} "$@"
