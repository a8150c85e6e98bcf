#!/usr/bin/env bash
# The GPU check as one call on this workplace's lent device (bench/RESULTS.md §7). The device image has
# torch, transformers and CUDA but not transformer-lens and a few pure-Python dependencies, and reaches
# no package index, so they travel as wheels. Prepare here, once, in the repository root:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform any -d .whl \
#     transformer-lens==4.3.0 beartype fancy-einsum typeguard datasets dill multiprocess plotly gguf
#   .venv/bin/python -c "from lens_steer.models import embedded_hf_dir as d; from transformers import \
#     AutoTokenizer as T; T.from_pretrained(str(d())).save_pretrained('.gpu/tok')"
#   mkdir -p .gpu/src && git archive HEAD lens_steer bench | tar -x -C .gpu/src   # the committed package
# (.whl and .gpu listed in .git/info/exclude), then run this with carry [".whl", ".gpu"].
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
export PYTHONPATH=/tmp/site:$PWD/.gpu/src PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-check}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers, transformer_lens, lens_steer; from lens_steer.engines.bridge import BridgeEngine; \
print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())" 2>&1 \
    | tail -5 | tee -a "$OUT/gpu.txt" || exit 4
timeout 480 python3 .gpu/src/bench/gpu_check.py --tokenizer .gpu/tok --n 64 --tokens 128 --batch 64 2>&1 \
    | grep -v -E "it/s\]|Loading weights" | tee "$OUT/gpu_check.txt"
