"""Integration on the embedded SmolLM2-135M-Instruct: load, logits vs HF, derive, steer, determinism."""


import pytest
import torch

from lens_steer.method.derive import derive_cot_vector
from lens_steer.config import GenerationConfig
from lens_steer.engines.api import generate
from lens_steer.engines.api import steer
from lens_steer.models import load_hf, n_layers
from lens_steer.prompts import encode_prompt

pytestmark = pytest.mark.integration

QUESTIONS = [
    {"id": "i0", "question": "Sara has 4 boxes with 6 pens in each. How many pens does she have?", "source": "arith"},
    {"id": "i1", "question": "A film starts at 7pm and lasts 95 minutes. When does it end?", "source": "arith"},
    {"id": "i2", "question": "Which is larger, 0.5 or 0.45?", "source": "arith"},
    {"id": "i3", "question": "Which animal is known for building dams?\nA. Beaver\nB. Cat\nC. Eagle\nD. Frog", "source": "mc"},
]
CFG = GenerationConfig(max_new_tokens=40, batch_size=8)


@pytest.fixture(scope="module")
def vector(smol):
    return derive_cot_vector(smol, QUESTIONS, generation=CFG, progress=False)


def test_shape_and_logits_match_hf(smol):
    """Bridge logits equal an eager-attention HF copy of the same GGUF weights exactly (max abs diff 0)."""
    assert n_layers(smol) == 30 and smol.cfg.d_model == 576
    ref, tok = load_hf()
    ref.set_attn_implementation("eager")
    ids = torch.tensor([encode_prompt(tok, "What is 2+3?", "direct")])
    with torch.inference_mode():
        diff = (smol(ids, prepend_bos=False) - ref(ids).logits).abs().max().item()
    assert diff == 0.0


def test_greedy_matches_hf_generate(smol):
    ref, tok = load_hf()
    ref.set_attn_implementation("eager")
    ids = encode_prompt(tok, "Name a primary colour.", "direct")
    with torch.inference_mode():
        hf_out = ref.generate(torch.tensor([ids]), max_new_tokens=20, do_sample=False)[0, len(ids):].tolist()
    ours = generate(smol, [ids], GenerationConfig(max_new_tokens=20), progress=False)[0]
    stop = set(ref.generation_config.eos_token_id if isinstance(ref.generation_config.eos_token_id, list)
               else [ref.generation_config.eos_token_id])
    expected = []
    for t in hf_out:
        if t in stop:
            break
        expected.append(t)
    assert ours.response_ids == expected


def test_vector_shapes_and_determinism(smol, vector):
    assert vector.directions.shape == (30, 576)
    assert vector.per_question.shape == (4, 30, 576)
    again = derive_cot_vector(smol, QUESTIONS, generation=CFG, progress=False)
    assert torch.equal(again.directions, vector.directions)
    rel = vector.relative_norms()
    assert torch.isfinite(rel).all() and (rel > 0).all() and (rel < 1).all()
    assert vector.metadata.stats.mean_tokens_cot > vector.metadata.stats.mean_tokens_direct


def test_steering_changes_direct_answers(smol, vector):
    prompts = [encode_prompt(smol.tokenizer, q["question"], "direct") for q in QUESTIONS]
    plain = generate(smol, prompts, CFG, progress=False)
    with steer(smol, vector, 15, vector.coeff_for_scale(15, 0.3)):
        steered = generate(smol, prompts, CFG, progress=False)
    assert [g.response_ids for g in steered] != [g.response_ids for g in plain]
    after = generate(smol, prompts, CFG, progress=False)
    assert [g.response_ids for g in after] == [g.response_ids for g in plain]


def test_a_step_boundary_trigger_matches_how_the_model_writes_it(smol):
    """SmolLM2's tokenizer encodes "\\n\\n" alone as one token (ĊĊ) but as Ċ, Ċ between sentences, which is how
    the model generates it: the trigger takes both, so a step-boundary spec fires on generated text (before the
    fix it held only ĊĊ and never fired on 191 of 192 direct answers)."""
    from lens_steer.engines.selection import resolve_spec, selected_positions

    tok = smol.tokenizer
    resolved = resolve_spec(r"at=trigger:\n\n", tok)
    nl, nn = tok.encode("\n", add_special_tokens=False), tok.encode("\n\n", add_special_tokens=False)
    assert set(resolved.triggers) == {tuple(nn), tuple(nl + nl)}
    ids = torch.tensor([tok.encode("Step one.\n\nStep two.\n\nDone", add_special_tokens=False)])
    chosen = selected_positions(resolved, ids, torch.ones_like(ids, dtype=torch.bool), n_prompt=0)
    ends = [i for i in range(ids.shape[1] - 1) if ids[0, i].item() == nl[0] and ids[0, i - 1].item() == nl[0]]
    assert chosen[0].nonzero().flatten().tolist() == ends and len(ends) == 2
