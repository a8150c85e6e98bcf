"""What ``run.json`` records about a results directory, typed: the settings rows depend on, each
invocation, and the conditions run; with to/from JSON. Pure (the run object does the I/O)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields

from lens_steer.config import GenerationConfig
from lens_steer.eval.conditions import Condition
from lens_steer.method.vectors import VectorRef
from lens_steer.models import ModelInfo
from lens_steer.prompts import PromptTemplate

__all__ = ["DataRecord", "Invocation", "RecordedSettings", "RunRecord", "VectorRef", "RUN_FORMAT_VERSION",
           "comparable_settings"]

RUN_FORMAT_VERSION = 1


def _known(cls, data: Mapping) -> dict:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}


@dataclass(frozen=True)
class DataRecord:
    """Which items a run evaluates (``item_ids_sha256`` pins them exactly)."""

    benchmarks: list[str]
    split: str
    limit: int | None
    task_limit: int | None
    seed: int
    source: str
    n_items: int
    item_ids_sha256: str


@dataclass(frozen=True)
class RecordedSettings:
    """Everything that decides an item row's content; two invocations resume one directory only
    when these agree (conditions are not part of it, so a grid can be extended in place)."""

    command: str
    model: ModelInfo
    dtype: str
    vector: VectorRef | None
    allow_other_model: bool
    generation: GenerationConfig
    template: PromptTemplate
    chunk_size: int
    data: DataRecord

    def to_dict(self) -> dict:
        """JSON-ready form, the ``settings`` object of ``run.json``."""
        return {"command": self.command, "model": self.model.to_dict(), "dtype": self.dtype,
                "vector": asdict(self.vector) if self.vector is not None else None,
                "allow_other_model": self.allow_other_model, "generation": self.generation.to_dict(),
                "template": self.template.to_dict(), "chunk_size": self.chunk_size, "data": asdict(self.data)}

    @classmethod
    def from_dict(cls, data: Mapping) -> RecordedSettings:
        """Read the ``settings`` object of ``run.json``.

        Raises:
            ValueError: a part is missing or malformed.
        """
        try:
            vec = data.get("vector")
            return cls(**{**_known(cls, data),
                          "model": ModelInfo.from_dict(data.get("model")),
                          "generation": GenerationConfig.from_dict(data.get("generation") or {}),
                          "template": PromptTemplate.from_dict(data.get("template") or {}),
                          "vector": VectorRef(**_known(VectorRef, vec)) if vec else None,
                          "data": DataRecord(**_known(DataRecord, data.get("data") or {}))})
        except TypeError as exc:
            raise ValueError(f"run settings: {exc}") from None


_ITEM_SELECTION = ("benchmarks", "limit", "task_limit", "seed", "n_items", "item_ids_sha256")
"""Fields of :class:`DataRecord` that say which items were drawn (not what an item's row depends on)."""


def comparable_settings(settings: Mapping, *, items: bool = True) -> dict:
    """The ``settings`` object of ``run.json`` as two runs are compared for resuming: without where the vector
    lives (it is identified by its tensors' sha256, so a moved or copied directory still resumes) and, with
    ``items`` False, without which items were drawn (a row depends on its item, not on the others)."""
    out = copy.deepcopy(dict(settings))
    if isinstance(out.get("vector"), dict):
        out["vector"].pop("path", None)
    if not items and isinstance(out.get("data"), dict):
        for key in _ITEM_SELECTION:
            out["data"].pop(key, None)
    return out


@dataclass(frozen=True)
class Invocation:
    """One run of the command on the directory (recorded at start, updated after every chunk)."""

    started: str = ""
    argv: list[str] = field(default_factory=list)
    device: str = ""
    torch_threads: int | None = None
    attention: str = ""
    load_seconds: float = 0.0
    eval_seconds: float = 0.0
    new_rows: int = 0
    completed: bool = False
    engine: str | None = None

    def to_dict(self) -> dict:
        """JSON-ready form (``engine`` left out when unset, as older records have none)."""
        out = asdict(self)
        if out["engine"] is None:
            del out["engine"]
        return out


@dataclass(frozen=True)
class RunRecord:
    """The contents of ``run.json``."""

    settings: RecordedSettings
    invocations: tuple[Invocation, ...] = ()
    conditions: tuple[Condition, ...] = ()
    format_version: int = RUN_FORMAT_VERSION

    @property
    def model_id(self) -> str:
        """The evaluated model's id."""
        return self.settings.model.model_id

    @property
    def total_seconds(self) -> float:
        """Evaluation seconds over all invocations (loading excluded)."""
        return sum(i.eval_seconds for i in self.invocations)

    @property
    def completed(self) -> bool:
        """Whether the last invocation ran to the end."""
        return bool(self.invocations) and self.invocations[-1].completed

    def to_dict(self) -> dict:
        """The JSON object of ``run.json``."""
        return {"format_version": self.format_version, "settings": self.settings.to_dict(),
                "invocations": [i.to_dict() for i in self.invocations],
                "conditions": [c.to_dict() for c in self.conditions]}

    @classmethod
    def from_dict(cls, data: Mapping) -> RunRecord:
        """Read the JSON object of ``run.json``."""
        return cls(settings=RecordedSettings.from_dict(data.get("settings") or {}),
                   invocations=tuple(Invocation(**_known(Invocation, i)) for i in data.get("invocations", [])),
                   conditions=tuple(Condition.from_dict(c) for c in data.get("conditions", [])),
                   format_version=int(data.get("format_version", RUN_FORMAT_VERSION)))
