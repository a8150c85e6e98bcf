"""What ``run.json`` records about a results directory, typed: the settings rows depend on, each
invocation, and the conditions run; with to/from JSON. Pure (the run object does the I/O)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields

from lens_steer.method.vectors import VectorRef

__all__ = ["DataRecord", "Invocation", "RecordedSettings", "RunRecord", "VectorRef", "RUN_FORMAT_VERSION"]

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
    model: dict
    dtype: str
    vector: VectorRef | None
    allow_other_model: bool
    generation: dict
    template: dict
    chunk_size: int
    data: DataRecord

    def to_dict(self) -> dict:
        """JSON-ready form, the ``settings`` object of ``run.json``."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> RecordedSettings:
        """Read the ``settings`` object of ``run.json``."""
        vec = data.get("vector")
        return cls(**{**_known(cls, data),
                      "vector": VectorRef(**_known(VectorRef, vec)) if vec else None,
                      "data": DataRecord(**_known(DataRecord, data.get("data") or {}))})


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
    conditions: tuple[dict, ...] = ()
    format_version: int = RUN_FORMAT_VERSION

    @property
    def model_id(self) -> str:
        """The evaluated model's id."""
        return str(self.settings.model.get("model_id", "?"))

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
                "invocations": [i.to_dict() for i in self.invocations], "conditions": list(self.conditions)}

    @classmethod
    def from_dict(cls, data: Mapping) -> RunRecord:
        """Read the JSON object of ``run.json``."""
        return cls(settings=RecordedSettings.from_dict(data.get("settings") or {}),
                   invocations=tuple(Invocation(**_known(Invocation, i)) for i in data.get("invocations", [])),
                   conditions=tuple(data.get("conditions", [])),
                   format_version=int(data.get("format_version", RUN_FORMAT_VERSION)))
