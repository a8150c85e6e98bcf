"""llama.cpp reads lens_steer's control-vector GGUF and steers the embedded model's own Q4_1 GGUF the way
lens_steer's continuous steering steers the de-quantised fp32 copy.

* Logits, through llama-cpp-python: the first generated token's logit shift (steered − unsteered) over the
  vocabulary correlates with lens_steer's at the same layer and c, and better than with lens_steer's at the
  neighbouring layers (so an off-by-one layer convention fails).
* The file, through llama.cpp's own loader (`llama-completion --control-vector`): its greedy text equals
  llama-cpp-python's with the same directions, differs from the unsteered text, and response lengths move
  as lens_steer's do.
"""

from __future__ import annotations

import ctypes
import subprocess

import numpy as np
import pytest
import torch

from interop_common import CLI_PATH_FILE, LAYER, SCALE, coeff, cot_vector, last_logits, need, prompts  # noqa: F401 (fixtures)
from lens_steer.config import GenerationConfig
from lens_steer.engines.api import steer
from lens_steer.engines.base import Steering
from lens_steer.engines.bridge import BridgeEngine
from lens_steer.interop import export_vector
from lens_steer.models import embedded_gguf_path

MAX_NEW = 96

pytestmark = pytest.mark.interop
need("llama_cpp")



@pytest.fixture(scope="module")
def llm():
    llama_cpp = need("llama_cpp")
    model = llama_cpp.Llama(model_path=str(embedded_gguf_path()), n_ctx=1024, n_threads=2, logits_all=True,
                            verbose=False, seed=0)
    yield model
    model.close()


@pytest.fixture(scope="module")
def gguf_file(cot_vector, coeff, tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "cot.gguf"
    export_vector(cot_vector, path, "gguf", layers=[LAYER], coeff=coeff)
    return path


def _cvec_buffer(path, n_embd: int, n_layer: int) -> np.ndarray:
    """The buffer llama.cpp's common loader builds from a control-vector file (`direction.k` at (k-1)*n_embd)."""
    import gguf

    data = np.zeros(n_embd * (n_layer - 1), np.float32)
    for t in gguf.GGUFReader(path).tensors:
        k = int(t.name.split(".")[1])
        data[(k - 1) * n_embd:k * n_embd] += t.data
    return data


def _set_cvec(llm, buf: np.ndarray | None) -> None:
    import llama_cpp

    n_embd, n_layer = llm.n_embd(), llama_cpp.llama_model_n_layer(llm.model)
    if buf is None:
        rc = llama_cpp.llama_set_adapter_cvec(llm._ctx.ctx, None, 0, n_embd, -1, -1)
    else:
        arr = (ctypes.c_float * len(buf)).from_buffer_copy(buf.astype(np.float32).tobytes())
        rc = llama_cpp.llama_set_adapter_cvec(llm._ctx.ctx, arr, len(buf), n_embd, 1, n_layer - 1)
    assert rc == 0
    llm.reset()  # no prefix of a differently steered run may be reused


def _lc_logits(llm, ids) -> torch.Tensor:
    llm.reset()
    llm.eval(ids)
    return torch.from_numpy(np.array(llm.scores[len(ids) - 1], dtype=np.float64))


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


def test_first_token_logit_shift_matches(llm, smol, cot_vector, coeff, prompts, gguf_file):
    import llama_cpp

    buf = _cvec_buffer(gguf_file, llm.n_embd(), llama_cpp.llama_model_n_layer(llm.model))
    base_lc = [_lc_logits(llm, p) for p in prompts]
    _set_cvec(llm, buf)
    steered_lc = [_lc_logits(llm, p) for p in prompts]
    _set_cvec(llm, None)
    base_ls = [last_logits(smol, p) for p in prompts]
    corr = {}
    for layer in (LAYER - 1, LAYER, LAYER + 1):
        with steer(smol, cot_vector, layer, coeff):
            steered_ls = [last_logits(smol, p) for p in prompts]
        corr[layer] = [_corr(s1 - b1, s2 - b2) for s1, b1, s2, b2 in zip(steered_lc, base_lc, steered_ls, base_ls)]
    plain = [_corr(a, b) for a, b in zip(base_lc, base_ls)]
    print(f"\nllama.cpp Q4_1 vs lens_steer fp32, layer {LAYER}, c={coeff:.3f} (scale {SCALE}), 8 prompts: "
          f"logit-shift correlation min {min(corr[LAYER]):.4f} mean {np.mean(corr[LAYER]):.4f}; "
          f"lens_steer at layer {LAYER - 1}: mean {np.mean(corr[LAYER - 1]):.4f}, at {LAYER + 1}: "
          f"mean {np.mean(corr[LAYER + 1]):.4f}; unsteered logits correlate min {min(plain):.5f}")
    assert min(corr[LAYER]) >= 0.95
    assert np.mean(corr[LAYER]) > max(np.mean(corr[LAYER - 1]), np.mean(corr[LAYER + 1]))


def _cli(prompt_text: str, gguf_path, max_new: int) -> str:
    if not CLI_PATH_FILE.is_file():
        pytest.skip("llama.cpp's llama-completion was not built here (see interop-missing.txt; `make setup-interop`)")
    # flash attention off, as in llama-cpp-python, so both run the same kernels
    cmd = [CLI_PATH_FILE.read_text().strip(), "-m", str(embedded_gguf_path()), "-p", prompt_text, "-n", str(max_new),
           "--temp", "0", "-fa", "off", "-no-cnv", "--no-display-prompt", "-t", "2", "--simple-io", "-s", "0", "-c", "1024"]
    if gguf_path is not None:
        cmd += ["--control-vector", str(gguf_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True)
    assert "invalid" not in out.stderr and "skipping" not in out.stderr, out.stderr[-2000:]
    return out.stdout.removesuffix("\n").removesuffix(" [end of text]").removesuffix("[end of text]")


def test_llama_cli_reads_the_file_and_lengths_move_alike(llm, smol, cot_vector, coeff, prompts, gguf_file):
    import llama_cpp

    tok = smol.tokenizer
    buf = _cvec_buffer(gguf_file, llm.n_embd(), llama_cpp.llama_model_n_layer(llm.model))
    texts = {}
    for name, path in (("plain", None), ("steered", gguf_file)):
        texts[name] = [_cli(tok.decode(p), path, MAX_NEW) for p in prompts]
    py_steered = []
    _set_cvec(llm, buf)
    for p in prompts:
        out = llm.create_completion(prompt=p, max_tokens=MAX_NEW, temperature=0.0)
        py_steered.append(out["choices"][0]["text"])
        llm.reset()
    _set_cvec(llm, None)
    same = sum(a.strip() == b.strip() for a, b in zip(texts["steered"], py_steered))
    changed = sum(a != b for a, b in zip(texts["plain"], texts["steered"]))
    engine = BridgeEngine(smol)
    cfg = GenerationConfig(max_new_tokens=MAX_NEW, batch_size=8)
    ls_plain = engine.generate(prompts, cfg)
    ls_steered = engine.generate(prompts, cfg, steering=Steering(cot_vector, LAYER, coeff, "continuous"))
    lc_len = {k: [len(tok(t, add_special_tokens=False).input_ids) for t in v] for k, v in texts.items()}
    ls_len = {"plain": [len(g.response_ids) for g in ls_plain], "steered": [len(g.response_ids) for g in ls_steered]}
    print(f"\nllama-completion --control-vector: steered text equal to llama-cpp-python's for {same}/8 prompts, "
          f"changed by steering for {changed}/8; mean response tokens (max {MAX_NEW}) plain -> steered: llama.cpp "
          f"{np.mean(lc_len['plain']):.1f} -> {np.mean(lc_len['steered']):.1f}, lens_steer "
          f"{np.mean(ls_len['plain']):.1f} -> {np.mean(ls_len['steered']):.1f}")
    assert same >= 7, list(zip(texts["steered"], py_steered))
    assert changed >= 6
    d_lc = np.mean(lc_len["steered"]) - np.mean(lc_len["plain"])
    d_ls = np.mean(ls_len["steered"]) - np.mean(ls_len["plain"])
    assert np.sign(d_lc) == np.sign(d_ls) and abs(d_ls) >= 5
