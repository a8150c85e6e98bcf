"""steering-vectors 0.12.2 and repeng 0.4.0 apply lens_steer's exports exactly as lens_steer's `steer` does,
and vectors they trained themselves on the embedded model import into lens_steer and steer the same.
All three add to the output of HF decoder block l (`model.layers[l]`) at every position, which is
lens_steer's `blocks.l.hook_resid_post`; repeng's mask (left padding only) is all ones here."""

from __future__ import annotations

import copy

import pytest
import torch

from interop_common import LAYER, all_logits, coeff, cot_vector, hf_dir, need, peer_model, prompts  # noqa: F401 (fixtures)
from lens_steer.engines.api import steer
from lens_steer.interop import export_vector, import_vector, to_repeng, to_steering_vectors
from lens_steer.prompts import render_prompt

ATOL = 2e-4  # the bridge and plain transformers run the same weights through different module paths

pytestmark = pytest.mark.interop
need("steering_vectors")
need("repeng")



def _compare(smol, lens_vector, layer, coeff, prompts, peer_logits) -> tuple[float, float]:
    """Largest |lens_steer − peer| and largest steering effect over every position of the prompts."""
    worst = moved = 0.0
    for ids in prompts:
        with steer(smol, lens_vector, layer, coeff):
            ours = all_logits(smol, ids)
        theirs = peer_logits(ids)
        torch.testing.assert_close(theirs, ours, atol=ATOL, rtol=1e-5)
        worst = max(worst, float((theirs - ours).abs().max()))
        moved = max(moved, float((ours - all_logits(smol, ids)).abs().max()))
    assert moved > 0.5, "steering must change the logits for the comparison to mean anything"
    return worst, moved


@pytest.fixture(scope="module")
def pairs(smol):
    """(CoT prompt, direct prompt) texts for the peers' own training."""
    from lens_steer.data.corpus import demo_questions_path, load_questions_jsonl

    qs = load_questions_jsonl(demo_questions_path("derive"))[4:12]
    return [(render_prompt(smol.tokenizer, q.question, "cot"), render_prompt(smol.tokenizer, q.question, "direct"))
            for q in qs]


def test_steering_vectors_applies_our_export(smol, peer_model, cot_vector, coeff, prompts, tmp_path):
    need("steering_vectors")
    from steering_vectors import SteeringVector as PeerVector

    export_vector(cot_vector, tmp_path / "sv.pt", "steering-vectors", layers=[LAYER], coeff=coeff)
    data = torch.load(tmp_path / "sv.pt", weights_only=True)
    for peer in (PeerVector(data["layer_activations"], data["layer_type"]),
                 to_steering_vectors(cot_vector, layers=[LAYER], coeff=coeff)):
        def logits(ids, peer=peer):
            with peer.apply(peer_model):
                return all_logits(peer_model, ids)

        worst, moved = _compare(smol, cot_vector, LAYER, coeff, prompts, logits)
    print(f"\nsteering-vectors apply() of the export vs lens_steer steer: max |diff| {worst:.2e} (moved {moved:.2f})")


def test_steering_vectors_trained_vector_imports(smol, peer_model, pairs, prompts):
    need("steering_vectors")
    from steering_vectors import train_steering_vector

    trained = train_steering_vector(peer_model, smol.tokenizer, pairs, layers=[LAYER - 3, LAYER])
    imported = import_vector(trained, smol)
    assert list(imported.metadata.stats.imported.layers) == [LAYER - 3, LAYER]

    def logits(ids):
        with trained.apply(peer_model, multiplier=3.0):
            return all_logits(peer_model, ids)

    worst = 0.0
    for ids in prompts:  # both layers at once: lens_steer stacks two steer contexts
        with steer(smol, imported, LAYER - 3, 3.0), steer(smol, imported, LAYER, 3.0):
            ours = all_logits(smol, ids)
        theirs = logits(ids)
        torch.testing.assert_close(theirs, ours, atol=ATOL, rtol=1e-5)
        worst = max(worst, float((theirs - ours).abs().max()))
    assert float((ours - all_logits(smol, prompts[-1])).abs().max()) > 0.5
    print(f"\nsteering-vectors-trained vector (layers {LAYER - 3},{LAYER}) imported: max |diff| {worst:.2e}")


def test_repeng_reads_our_gguf(smol, peer_model, cot_vector, coeff, prompts, tmp_path):
    need("repeng")
    from repeng import ControlModel, ControlVector

    export_vector(cot_vector, tmp_path / "cot.gguf", "gguf", layers=[LAYER], coeff=coeff)
    model = ControlModel(copy.deepcopy(peer_model), [LAYER])
    for cv in (ControlVector.import_gguf(str(tmp_path / "cot.gguf")), to_repeng(cot_vector, layers=[LAYER], coeff=coeff)):
        model.set_control(cv, 1.0)

        def logits(ids):
            return all_logits(model, ids)

        worst, moved = _compare(smol, cot_vector, LAYER, coeff, prompts, logits)
        model.reset()
    print(f"\nrepeng ControlModel with the GGUF vs lens_steer steer: max |diff| {worst:.2e} (moved {moved:.2f})")


def test_repeng_trained_vector_imports(smol, peer_model, pairs, prompts, tmp_path):
    need("repeng")
    need("sklearn")
    from repeng import ControlModel, ControlVector, DatasetEntry

    base = copy.deepcopy(peer_model)
    tok = copy.deepcopy(smol.tokenizer)
    tok.pad_token = tok.pad_token or tok.eos_token
    trained = ControlVector.train(base, tok, [DatasetEntry(p, n) for p, n in pairs], hidden_layers=[LAYER],
                                  batch_size=4)
    trained.export_gguf(str(tmp_path / "repeng.gguf"))
    imported = import_vector(tmp_path / "repeng.gguf", smol)
    assert imported.metadata.stats.imported.details["model_hint"] == "llama"
    model = ControlModel(base, [LAYER])
    model.set_control(trained, 4.0)
    worst, moved = _compare(smol, imported, LAYER, 4.0, prompts, lambda ids: all_logits(model, ids))
    print(f"\nrepeng-trained vector via its export_gguf, imported: max |diff| {worst:.2e} (moved {moved:.2f})")
