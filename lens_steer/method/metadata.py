"""The provenance of a steering vector, typed: :class:`VectorMetadata` with its generation settings
(:class:`~lens_steer.config.GenerationConfig`), prompt templates (:class:`~lens_steer.prompts.PromptTemplate`)
and :class:`DerivationStats`, each read from and written to the ``metadata`` object of a vector's
``config.json`` in the same JSON as before they were typed. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace

from lens_steer.config import GenerationConfig, known_fields
from lens_steer.prompts import PromptTemplate

__all__ = ["DerivationStats", "ImportOrigin", "MetadataError", "VectorMetadata"]


class MetadataError(ValueError):
    """The ``metadata`` object of a vector's config file is malformed (the message names the field)."""


@dataclass(frozen=True)
class ImportOrigin:
    """Where an imported vector came from (on disk: ``stats.imported``).

    Attributes:
        format: The foreign format (``gguf``, ``lm-eval``, ``steering-vectors``, ``repeng``, ...).
        layers: The layers that hold a direction.
        details: What the foreign file or object says about itself (path, model hint, lens_steer's own export
            fields, a note), as strings or numbers: free-form by nature, kept as read.
    """

    format: str
    layers: tuple[int, ...]
    details: Mapping[str, object] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-ready form (``details`` flattened beside ``format`` and ``layers``)."""
        return {"format": self.format, "layers": list(self.layers), **dict(self.details)}

    @classmethod
    def from_dict(cls, data: Mapping) -> ImportOrigin:
        """Read :meth:`to_dict`'s form back."""
        if not isinstance(data, Mapping) or not isinstance(data.get("format"), str):
            raise MetadataError("stats.imported: expected an object with a 'format' string")
        layers = data.get("layers") or []
        if not isinstance(layers, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in layers):
            raise MetadataError("stats.imported.layers: expected a list of layer indices")
        return cls(data["format"], tuple(layers), {k: v for k, v in data.items() if k not in ("format", "layers")})


@dataclass(frozen=True)
class DerivationStats:
    """Summary numbers of a derivation (on disk: the ``stats`` object; unset fields are left out).

    Attributes:
        n_questions: Questions averaged. mean_tokens_cot / mean_tokens_direct: Mean response lengths.
        truncated_cot / truncated_direct: Responses cut at ``max_new_tokens``.
        wall_seconds: Wall time of the derivation (of the invocation that finished it).
        imported: Set on a vector imported from another program instead of derived.
    """

    n_questions: int | None = None
    mean_tokens_cot: float | None = None
    mean_tokens_direct: float | None = None
    truncated_cot: int | None = None
    truncated_direct: int | None = None
    wall_seconds: float | None = None
    imported: ImportOrigin | None = None

    def to_dict(self) -> dict:
        """JSON-ready form, without the fields that are unset."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "imported"}
        out = {k: v for k, v in out.items() if v is not None}
        if self.imported is not None:
            out["imported"] = self.imported.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: Mapping) -> DerivationStats:
        """Read :meth:`to_dict`'s form back (unknown keys, from other versions, are ignored)."""
        kwargs = known_fields(cls, data, "stats")
        for name in ("n_questions", "truncated_cot", "truncated_direct"):
            _check(kwargs, name, int, "an integer", f"stats.{name}")
        for name in ("mean_tokens_cot", "mean_tokens_direct", "wall_seconds"):
            _check(kwargs, name, (int, float), "a number", f"stats.{name}")
        if kwargs.get("imported") is not None:
            kwargs["imported"] = ImportOrigin.from_dict(kwargs["imported"])
        return cls(**kwargs)


def _check(kwargs: dict, name: str, kind, what: str, where: str) -> None:
    value = kwargs.get(name)
    if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
        raise MetadataError(f"{where}: expected {what}, got {type(value).__name__}")


_DEFAULT_ENGINE = "bridge"
_GENERATION_EXTRAS = ("attention", "engine", "chunk_questions")
"""Keys of the on-disk ``generation`` object that say what ran the generation, not how it decoded."""


@dataclass
class VectorMetadata:
    """Provenance of a steering vector.

    Attributes:
        model_id: Name or path of the model it was derived on.
        model_fingerprint: Hash of that model's embedding weights (see ``models.model_fingerprint``).
        n_layers: Number of blocks.
        d_model: Residual width.
        hook_name: Hook name template, ``blocks.{layer}.hook_resid_post``.
        positions: Averaged positions (``generated``, ``prompt`` or ``all``).
        method: ``fused`` or ``two_pass`` (``imported:<format>`` for an imported vector).
        templates: The prompt templates used (None: not derived here, e.g. imported).
        question_ids / question_sources / questions: One entry per question, in order.
        corpus_hash: sha256 over ids and question texts.
        generation: Generation settings of the responses (None: not derived here).
        attention: Attention kernel that ran them. engine: Engine that ran them (``bridge``, ``vllm``).
        chunk_questions: Questions per derivation chunk (None: one chunk).
        package_version: lens_steer version.
        created: ISO timestamp.
        skipped_ids: Questions left out because a response had no token to average.
        stats: Summary numbers (mean response lengths, wall time, where an imported vector came from).
    """

    model_id: str
    model_fingerprint: str
    n_layers: int
    d_model: int
    hook_name: str = "blocks.{layer}.hook_resid_post"
    positions: str = "generated"
    method: str = "fused"
    templates: PromptTemplate | None = None
    question_ids: list[str] = field(default_factory=list)
    question_sources: list[str] = field(default_factory=list)
    questions: list[str] = field(default_factory=list)
    corpus_hash: str = ""
    generation: GenerationConfig | None = None
    attention: str | None = None
    engine: str = "bridge"
    chunk_questions: int | None = None
    package_version: str = ""
    created: str = ""
    skipped_ids: list[str] = field(default_factory=list)
    stats: DerivationStats = field(default_factory=DerivationStats)

    def __post_init__(self) -> None:  # the on-disk (dict) forms are accepted too, and typed here
        if isinstance(self.generation, Mapping):
            self.generation = GenerationConfig.from_dict(self.generation) if self.generation else None
        if isinstance(self.templates, Mapping):
            self.templates = PromptTemplate.from_dict(self.templates) if self.templates else None
        if isinstance(self.stats, Mapping):
            self.stats = DerivationStats.from_dict(self.stats)

    def with_stats(self, **changes) -> VectorMetadata:
        """A copy with some :class:`DerivationStats` fields replaced."""
        return replace(self, stats=replace(self.stats, **changes))

    def decoding(self) -> str:
        """``"greedy"``, or the sampling settings in words."""
        gen = self.generation
        if gen is None or not gen.do_sample:
            return "greedy"
        return f"sampled (temperature {gen.temperature}, top_p {gen.top_p}, seed {gen.seed})"

    def to_dict(self) -> dict:
        """The ``metadata`` object of ``config.json`` (the layout vectors have always had on disk)."""
        out: dict = {}
        for f in fields(self):
            if f.name in _GENERATION_EXTRAS:
                continue
            value = getattr(self, f.name)
            if f.name == "templates":
                value = value.to_dict() if value is not None else {}
            elif f.name == "generation":
                value = self._generation_dict()
            elif f.name == "stats":
                value = value.to_dict()
            elif isinstance(value, list):
                value = list(value)
            out[f.name] = value
        return out

    def _generation_dict(self) -> dict:
        if self.generation is None:
            return {}
        out = self.generation.to_dict()
        if self.attention is not None:
            out["attention"] = self.attention
        if self.engine != _DEFAULT_ENGINE:  # the default engine is not written (vectors of old versions have none)
            out["engine"] = self.engine
        if self.chunk_questions:
            out["chunk_questions"] = self.chunk_questions
        return out

    @classmethod
    def from_dict(cls, meta: object) -> VectorMetadata:
        """Read the ``metadata`` object of ``config.json``, each field checked against its type.

        Raises:
            MetadataError: a field of the wrong type, a required one missing, or not an object (named).
        """
        if not isinstance(meta, Mapping):
            raise MetadataError(f"'metadata' is {type(meta).__name__}, not an object")
        kwargs: dict = {}
        for f in fields(cls):
            if f.name not in meta or f.name in _GENERATION_EXTRAS:
                continue
            value = meta[f.name]
            kind = _JSON_TYPES.get(f.name, str)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise MetadataError(f"metadata field {f.name!r} is not {_JSON_NAMES[kind]} "
                                    f"(got {type(value).__name__})")
            if kind is list and not all(isinstance(v, str) for v in value):
                raise MetadataError(f"metadata field {f.name!r} is not a list of strings")
            kwargs[f.name] = value
        try:
            if "templates" in kwargs:
                kwargs["templates"] = PromptTemplate.from_dict(kwargs["templates"]) if kwargs["templates"] else None
            if "generation" in kwargs:
                gen = kwargs.pop("generation")
                if gen:
                    try:
                        kwargs["generation"] = GenerationConfig.from_dict(gen)
                    except ValueError as exc:
                        raise MetadataError(f"metadata field 'generation': {exc}") from None
                    kwargs["attention"] = _optional(gen, "attention", str)
                    kwargs["engine"] = _optional(gen, "engine", str) or _DEFAULT_ENGINE
                    kwargs["chunk_questions"] = _optional(gen, "chunk_questions", int)
            if "stats" in kwargs:
                kwargs["stats"] = DerivationStats.from_dict(kwargs["stats"])
            return cls(**kwargs)
        except MetadataError:
            raise
        except (TypeError, ValueError) as exc:  # a required field missing, a bad template or setting
            raise MetadataError(str(exc)) from None


def _optional(data: Mapping, key: str, kind):
    value = data.get(key)
    if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
        raise MetadataError(f"metadata field 'generation.{key}' is not {_JSON_NAMES[kind]}")
    return value


_JSON_TYPES = {"n_layers": int, "d_model": int, "templates": dict, "generation": dict, "stats": dict,
               "question_ids": list, "question_sources": list, "questions": list, "skipped_ids": list}
"""The JSON type of each on-disk metadata field (strings elsewhere)."""
_JSON_NAMES = {str: "str", int: "int", dict: "an object", list: "list[str]"}
