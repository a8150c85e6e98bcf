"""The fast path on the embedded SmolLM2-135M-Instruct: with the eager kernel, derivation and
steered generation are bit-identical to the bridge path; the default SDPA kernel generates like an
unwrapped HF model and gives the bridge path's responses."""

import pytest
import torch

from lens_steer.method.derive import derive_cot_vector
from lens_steer.engines.api import fast_path_disabled, fast_path_options, fast_path_status
from lens_steer.config import GenerationConfig
from lens_steer.engines.api import generate
from lens_steer.engines.api import steer
from lens_steer.models import load_hf, stop_token_ids
from lens_steer.prompts import encode_prompt

pytestmark = pytest.mark.integration

QUESTIONS = ["Sara has 4 boxes with 6 pens in each. How many pens does she have?", "Which is larger, 0.5 or 0.45?"]
CFG = GenerationConfig(max_new_tokens=12, batch_size=4)


def test_derivation_bit_identical_to_bridge_path(smol):
    assert fast_path_status(smol) is None
    with fast_path_disabled(smol):
        slow = derive_cot_vector(smol, QUESTIONS, generation=CFG, progress=False)
    with fast_path_options(smol, attention="eager"):
        fast = derive_cot_vector(smol, QUESTIONS, generation=CFG, progress=False)
    default = derive_cot_vector(smol, QUESTIONS, generation=CFG, progress=False)  # SDPA
    assert [r["response"] for r in fast.responses] == [r["response"] for r in slow.responses]
    assert torch.equal(fast.directions, slow.directions)
    assert fast.metadata.attention == "eager"
    assert slow.metadata.attention == "eager (bridge path)"
    assert default.metadata.attention == "sdpa"
    assert [r["response"] for r in default.responses] == [r["response"] for r in slow.responses]
    rel = (default.directions - slow.directions).norm(dim=-1) / slow.directions.norm(dim=-1)
    assert float(rel.max()) < 1e-5  # float rounding (residual entries reach hundreds late in the stack)


@pytest.mark.parametrize("mode", ["continuous", "single"])
def test_steered_generation_bit_identical_to_bridge_path(smol, mode):
    prompts = [encode_prompt(smol.tokenizer, q, "direct") for q in QUESTIONS]
    v = torch.randn(smol.cfg.d_model, generator=torch.Generator().manual_seed(0))
    with steer(smol, v, layer=12, coeff=6.0, mode=mode), fast_path_options(smol, attention="eager"):
        fast = [g.response_ids for g in generate(smol, prompts, CFG, progress=False)]
        with fast_path_disabled(smol):
            slow = [g.response_ids for g in generate(smol, prompts, CFG, progress=False)]
    assert fast == slow


def test_sdpa_fast_path_generates_like_unwrapped_hf(smol):
    ref, tok = load_hf()
    prompts = [encode_prompt(tok, q, "cot") for q in QUESTIONS]
    ours = [g.response_ids for g in generate(smol, prompts[:1], CFG, progress=False)]  # default: SDPA
    ids = torch.tensor(prompts[:1])
    with torch.inference_mode():
        out = ref.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=CFG.max_new_tokens, do_sample=False)
    theirs = out[0, ids.shape[1]:].tolist()
    stop = set(stop_token_ids(smol))
    theirs = theirs[:next((i for i, t in enumerate(theirs) if t in stop), len(theirs))]
    assert ours[0] == theirs
