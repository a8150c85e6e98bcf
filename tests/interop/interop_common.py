"""Fixtures of the interop tests (`make test-interop`): the embedded model as a lens_steer bridge and as a
plain Hugging Face model, a CoT vector derived on the packaged demo questions, and 8 prompts. The peer
programs come from the interop venv (tests/interop/setup.sh); a test whose program is missing skips with
the reason the set-up recorded.

The fixtures live here, not in a conftest.py: a second `conftest` module would shadow tests/conftest.py,
which the unit tests import by name. Test modules import the fixtures they use."""

from __future__ import annotations

import functools
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

VENV_MISSING = Path(sys.prefix) / "interop-missing.txt"
CLI_PATH_FILE = Path(sys.prefix) / "llama-completion-path.txt"
LAYER = 15
SCALE = 0.2  # ||c v|| = 0.2 x the layer's mean residual norm (c ~ 2 at layer 15)

if not hasattr(np, "float_"):  # repeng 0.4.0 names np.float_ (removed in NumPy 2) in annotations only
    np.float_ = np.float64


def need(module: str):
    """Import ``module`` or skip with the reason setup.sh recorded (or the import error)."""
    recorded = VENV_MISSING.read_text().strip() if VENV_MISSING.is_file() else ""
    try:
        return __import__(module)
    except ImportError as exc:
        pytest.skip(f"{module} is not importable here ({exc}); {recorded or 'run `make setup-interop`'}",
                    allow_module_level=True)


@pytest.fixture(scope="session")
def hf_dir() -> Path:
    from lens_steer.models import embedded_hf_dir

    return embedded_hf_dir()


@pytest.fixture(scope="session")
def peer_model(hf_dir):
    """A plain transformers copy of the embedded model (fp32), for the peers that hook HF modules."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()


@functools.cache
def _cot_vector(smol):
    from lens_steer.config import GenerationConfig
    from lens_steer.data.corpus import demo_questions_path, load_questions_jsonl
    from lens_steer.method.derive import derive_cot_vector
    from lens_steer.method.vectors import SteeringVector

    qs = load_questions_jsonl(demo_questions_path("derive"))
    vector = derive_cot_vector(smol, qs, generation=GenerationConfig(max_new_tokens=64, batch_size=24), progress=False)
    path = Path(tempfile.mkdtemp(prefix="lens-steer-interop-")) / "vector"
    vector.save(path)
    return SteeringVector.load(path)


@pytest.fixture(scope="session")
def cot_vector(smol):
    """A CoT vector of the embedded model from the 24 packaged demo questions (64 new tokens), saved and
    loaded so it carries its source checksum; derived once per process (each test module imports the fixture)."""
    return _cot_vector(smol)


@pytest.fixture(scope="session")
def prompts(smol) -> list[list[int]]:
    """8 chat-templated direct prompts (4 held-out demo questions, 4 derivation ones) as token ids."""
    from lens_steer.data.corpus import demo_questions_path, load_questions_jsonl
    from lens_steer.prompts import encode_prompt

    qs = load_questions_jsonl(demo_questions_path("heldout")) + load_questions_jsonl(demo_questions_path("derive"))[:4]
    return [encode_prompt(smol.tokenizer, q.question, "direct") for q in qs]


@pytest.fixture(scope="session")
def coeff(cot_vector) -> float:
    return cot_vector.coeff_for_scale(LAYER, SCALE)


def last_logits(model, ids: list[int]) -> torch.Tensor:
    """Float64 logits at the last position of one sequence (a bridge or an HF model)."""
    with torch.no_grad():
        out = model(torch.tensor([ids]))
    logits = out.logits if hasattr(out, "logits") else out
    return logits[0, -1].double()


def all_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        out = model(torch.tensor([ids]))
    return (out.logits if hasattr(out, "logits") else out)[0].double()
