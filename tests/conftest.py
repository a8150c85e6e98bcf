"""Shared fixtures: a seeded tiny random Llama bridge (unit) and the embedded model (integration)."""

from __future__ import annotations

import copy
import os
import string
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LENS_STEER_SHARED_DATA", REPO.parent / "shared" / "data"))

CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant: {% endif %}"
)


def make_tiny_tokenizer():
    """A character-level fast tokenizer with <pad>/<s>/</s> and a small chat template; offline."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    chars = list(string.ascii_letters + string.digits + string.punctuation + " \n")
    vocab = {t: i for i, t in enumerate(specials + chars)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tk.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    tok.chat_template = CHAT_TEMPLATE
    # TransformerLens re-loads a tokenizer by name to switch on BOS; this one has no name
    # on disk and we never rely on automatic BOS (prompts are token ids), so mark it done.
    tok.init_kwargs.update(name_or_path="tiny-char-tokenizer", add_bos_token=True)
    return tok


def make_tiny_hf(seed: int = 0, n_layers: int = 4, hidden: int = 64, vocab_size: int | None = None):
    """A seeded random LlamaForCausalLM small enough for exact unit tests."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = make_tiny_tokenizer()
    cfg = LlamaConfig(
        vocab_size=vocab_size or len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=n_layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    hf = LlamaForCausalLM(cfg).eval()
    # Random init gives near-uniform logits; scale the unembedding so greedy choices are not ties.
    with torch.no_grad():
        hf.lm_head.weight.mul_(8.0)
    return hf, tok


def make_tiny_bridge(seed: int = 0, **kwargs):
    """(bridge, unwrapped reference copy) of a tiny random Llama."""
    from lens_steer.models import wrap_model

    hf, tok = make_tiny_hf(seed, **kwargs)
    reference = copy.deepcopy(hf)
    bridge = wrap_model(hf, tok, f"tiny-llama-seed{seed}")
    return bridge, reference


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``): the tiny model's
    matmuls are too small to gain from threads, and on a busy machine OpenMP threads waiting for each other
    make such tests ~50x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny():
    """Session-wide tiny bridge. Tests must leave it unhooked (the steering contexts ensure that)."""
    bridge, _ = make_tiny_bridge(0)
    return bridge


@pytest.fixture(scope="session")
def tiny_pair():
    """(bridge, unwrapped HF copy) for logits comparisons."""
    return make_tiny_bridge(1)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """The tiny model saved as a local HF directory (for load_model and the CLI)."""
    hf, tok = make_tiny_hf(0)
    path = tmp_path_factory.mktemp("tiny-llama")
    hf.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def smol():
    """The embedded SmolLM2-135M-Instruct bridge, loaded once per session."""
    from lens_steer.models import ModelLoadError, load_model

    try:
        return load_model()
    except ModelLoadError as exc:
        pytest.skip(f"embedded model unavailable: {exc}")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"offline benchmark copies not found at {SHARED_DATA} (../shared/data)")
    return SHARED_DATA


@pytest.fixture
def unreachable_hub(monkeypatch):
    """Point huggingface_hub at a closed local port: every hub request fails at once, with or without network."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def pytest_collection_modifyitems(items):
    """Contract suite: a test parametrised (through a fixture) with an engine carries that engine's mark, so
    `make test` (``-m "not vllm"``) deselects vLLM's cases instead of collecting and skipping them. Kept here,
    not in tests/contract/conftest.py: a second module named ``conftest`` shadows this one for
    ``from conftest import ...``."""
    for item in items:
        if "contract" not in Path(str(item.fspath)).parts:
            continue
        params = getattr(getattr(item, "callspec", None), "params", {})
        engine = params.get("case", (None,))[0] if "case" in params else params.get("name")
        if getattr(engine, "values", None):  # a pytest.param
            engine = engine.values[0]
        if engine == "vllm":
            item.add_marker(pytest.mark.vllm)


@pytest.fixture
def presets_only():
    """A registered engine declaring only the paper's presets (``continuous``, ``single``), answering through the
    bridge: what a new engine declares before it applies steering specs. Yields its name."""
    from lens_steer.engines import registry

    registry.register(registry.EngineSpec("presets-only", "the bridge, declaring only the paper's modes",
                                          registry.Capabilities(), opener="lens_steer.engines.registry:_open_bridge"))
    try:
        yield "presets-only"
    finally:
        registry._REGISTRY.pop("presets-only", None)
