"""``reproduce.json``: the settings of a reproduction and, per stage, its inputs, their fingerprint, its
output's fingerprint, status and wall time; and the one-line account of what changed between two inputs."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lens_steer.storage import json_text, write_json
from lens_steer.viz.report import text_table

__all__ = ["RECORD_FILE", "Record", "StageRecord", "StageResult", "describe_changes", "fingerprint", "stage_table"]

RECORD_FILE = "reproduce.json"
FORMAT_VERSION = 2
"""2: a results stage's output fingerprint covers its settings, every item row and the summary (1: the summary
only); a stage may list the files it wrote."""


def fingerprint(obj) -> str:
    """sha256 of ``obj`` as canonical JSON (sorted keys)."""
    return hashlib.sha256(json.dumps(json.loads(json_text(obj, indent=None)), sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class StageRecord:
    """What ``reproduce.json`` keeps of a stage.

    Attributes:
        inputs: The settings and upstream fingerprints the stage's output depends on.
        fingerprint: :func:`fingerprint` of ``inputs``.
        output: Fingerprint of the output later stages read (None until complete).
        status: What the last run did (``ran``, ``resumed``, ``cached``, ``redone: <why>``, ``interrupted``).
        seconds: Wall time of the run that made the output (of the last run, when interrupted).
        complete: Whether the output is whole.
        files: The files the stage wrote into a directory others may share (the figures), when it lists them.
    """

    inputs: dict
    fingerprint: str
    output: str | None = None
    status: str = ""
    seconds: float = 0.0
    complete: bool = False
    files: tuple[str, ...] | None = None

    @classmethod
    def from_dict(cls, data) -> StageRecord:
        """Read one stage of ``reproduce.json``.

        Raises:
            ValueError: not an object of the expected fields.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"a stage is {type(data).__name__}, not an object")
        if not isinstance(data.get("inputs"), Mapping) or not isinstance(data.get("fingerprint"), str):
            raise ValueError("a stage has no 'inputs' object or 'fingerprint' string")
        files = data.get("files")
        if files is not None and not (isinstance(files, list) and all(isinstance(f, str) for f in files)):
            raise ValueError("a stage's 'files' is not a list of names")
        out = data.get("output")
        return cls(dict(data["inputs"]), data["fingerprint"], out if isinstance(out, str) else None,
                   str(data.get("status", "")), float(data.get("seconds") or 0.0), data.get("complete") is True,
                   tuple(files) if files is not None else None)

    def to_dict(self) -> dict:
        """JSON-ready form (``files`` left out when the stage lists none)."""
        out = asdict(self)
        if self.files is None:
            del out["files"]
        else:
            out["files"] = list(self.files)
        return out


@dataclass(frozen=True)
class StageResult:
    """What one stage did in this run: ``status`` as in :class:`StageRecord` (or ``skipped``) and wall seconds."""

    name: str
    status: str
    seconds: float = 0.0


@dataclass
class Record:
    """The contents of ``DIR/reproduce.json``, rewritten atomically after every stage."""

    path: Path
    settings: dict = field(default_factory=dict)
    stages: dict[str, StageRecord] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @classmethod
    def open(cls, out: str | os.PathLike[str]) -> Record:
        """The record of ``out`` (empty when there is none yet).

        Raises:
            ValueError: the file is unreadable (named, with what to do).
        """
        path = Path(out) / RECORD_FILE
        if not path.is_file():
            return cls(path)
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, Mapping):
                raise ValueError(f"it holds a JSON {type(data).__name__}, not an object")
            stages = data.get("stages", {})
            if not isinstance(stages, Mapping):
                raise ValueError(f"its 'stages' is a JSON {type(stages).__name__}, not an object")
            settings = data.get("settings") or {}
            if not isinstance(settings, Mapping):
                raise ValueError(f"its 'settings' is a JSON {type(settings).__name__}, not an object")
            version = data.get("format_version", 1)
            if not isinstance(version, int) or version > FORMAT_VERSION:
                raise ValueError(f"format version {version!r} is not one this lens_steer reads (<= {FORMAT_VERSION})")
            records = {str(name): StageRecord.from_dict(s) for name, s in stages.items()}
        except (OSError, ValueError, TypeError) as exc:
            raise ValueError(f"{path} is unreadable ({exc}); delete it to have every stage checked afresh") from None
        return cls(path, dict(settings), records, version)

    def save(self) -> None:
        """Write the file atomically (in the current format)."""
        self.format_version = FORMAT_VERSION
        write_json(self.path, {"format_version": FORMAT_VERSION, "settings": self.settings,
                               "stages": {name: s.to_dict() for name, s in self.stages.items()}})


def _flat(obj, prefix: str = "") -> dict[str, object]:
    if isinstance(obj, Mapping):
        out: dict[str, object] = {}
        for k, v in obj.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): obj}


def _show(value) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(_show(v) for v in value) or "(none)"
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12]  # a sha256
    if isinstance(value, float):
        return f"{value:g}"
    return "(none)" if value is None else str(value)


def describe_changes(old: Mapping, new: Mapping) -> str:
    """What differs between two stage inputs, e.g. ``layers 10,15,20 -> 8,12,16; max_new_tokens 96 -> 128``
    (lists of names show what was removed and added)."""
    a, b = _flat(old), _flat(new)
    parts = []
    for key in [*a, *(k for k in b if k not in a)]:
        before, after = a.get(key, "<absent>"), b.get(key, "<absent>")
        if before == after:
            continue
        if isinstance(before, list) and isinstance(after, list) and all(isinstance(x, str) for x in before + after):
            gone = [x for x in before if x not in after]
            added = [x for x in after if x not in before]
            if (gone or added) and len(gone) + len(added) < len(before) + len(after):
                parts.append(f"{key} " + " ".join([f"-{x}" for x in gone] + [f"+{x}" for x in added]))
                continue
        parts.append(f"{key} {_show(before)} -> {_show(after)}")
    return "; ".join(parts) or "inputs changed"


def stage_table(results) -> str:
    """The stages of a run as a fixed-width table: stage, status, wall seconds."""
    return text_table([("stage", "status", "seconds")] + [(r.name, r.status, f"{r.seconds:.1f}") for r in results], 2)
