"""Checkpoints of a derivation, so a killed ``derive`` resumes where it stopped: the only derivation
code that touches disk.

A derivation in chunks of questions (:func:`lens_steer.method.derive.derive_cot_vector` with a
``checkpoint``) stores each finished chunk's residual means, counts, norms and responses in
``OUT/.derive-partial/chunk-NNNNN.safetensors`` (+ ``.json``), each written atomically, and the
settings that decide them in ``settings.json``. A rerun with the same settings loads the finished
chunks and computes the rest, so its vector is bit-identical to an uninterrupted run's; a rerun
with other settings is refused, naming each difference. Saving the final vector over ``OUT``
replaces the whole directory, checkpoint included.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from lens_steer.config import GenerationConfig, settings_diff
from lens_steer.engines.base import Generation
from lens_steer.method.collect import ResidualMeans
from lens_steer.method.vectors import CHECKPOINT_DIR, _is_vector_dir
from lens_steer.models import ModelInfo
from lens_steer.prompts import PromptTemplate
from lens_steer.storage import atomic_write, json_text, storage_errors, write_json

__all__ = ["CheckpointMismatch", "CheckpointSettings", "DeriveCheckpoint", "derive_checkpoint"]

SETTINGS_FILE = "settings.json"


class CheckpointMismatch(ValueError):
    """The output directory holds a derivation checkpoint made with other settings."""


@dataclass(frozen=True)
class CheckpointSettings:
    """Everything that decides a derivation's chunks: resuming needs all of it unchanged.

    Attributes:
        model: The model's identity. engine: The engine's name (engines round differently).
        questions / n_questions: sha256 of the questions (ids and texts) and their number.
        template / generation / positions / method: As given to the derivation.
        chunk_questions: Questions per chunk (it decides the batches, so the numerics).
    """

    model: ModelInfo
    engine: str
    questions: str
    n_questions: int
    template: PromptTemplate
    generation: GenerationConfig
    positions: str
    method: str
    chunk_questions: int

    def to_dict(self) -> dict:
        """The JSON of ``settings.json`` (the layout checkpoints have always had)."""
        return {"model": self.model.to_dict(), "engine": self.engine, "questions": self.questions,
                "n_questions": self.n_questions, "template": self.template.to_dict(),
                "generation": self.generation.to_dict(), "positions": self.positions, "method": self.method,
                "chunk_questions": self.chunk_questions}


class DeriveCheckpoint:
    """The checkpoint of a derivation into ``out`` (a vector directory, existing or not).

    Args:
        out: The derivation's output directory.
        settings: Everything that decides the chunks' contents.
    """

    def __init__(self, out: str | os.PathLike[str], settings: CheckpointSettings) -> None:
        self.out = Path(out)
        self.dir = self.out / CHECKPOINT_DIR
        self.settings = settings

    def matches(self) -> bool | None:
        """Whether the checkpoint on disk was made with these settings (None: there is none; False also when
        its settings file is unreadable)."""
        path = self.dir / SETTINGS_FILE
        if not path.is_file():
            return None
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError):
            return False
        return not settings_diff(saved, json.loads(json_text(self.settings.to_dict())))

    def open(self) -> set[int]:
        """Create or reopen the checkpoint; the indices of the finished chunks.

        Raises:
            CheckpointMismatch: it was made with other settings (each difference named).
        """
        if self.out.exists() and not _is_vector_dir(self.out):
            raise CheckpointMismatch(f"{self.out} exists and is not a steering vector directory; choose another --out")
        path = self.dir / SETTINGS_FILE
        if path.is_file():
            try:
                saved = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise CheckpointMismatch(f"{path} is unreadable ({exc}); delete {self.dir} to start afresh") from exc
            diffs = settings_diff(saved, json.loads(json_text(self.settings.to_dict())))
            if diffs:
                raise CheckpointMismatch(
                    f"{self.out} holds a derivation checkpoint made with other settings, so it cannot be resumed: "
                    + "; ".join(diffs) + f". Use another --out, or delete {self.dir} to start afresh.")
        else:
            with storage_errors(self.dir):
                self.dir.mkdir(parents=True, exist_ok=True)
            write_json(path, self.settings.to_dict())
        done = set()
        for f in self.dir.glob("chunk-*.safetensors"):
            stem = f.name[len("chunk-"):-len(".safetensors")]
            if stem.isdigit() and self._responses(int(stem)).is_file():
                done.add(int(stem))
        return done

    def _tensors(self, i: int) -> Path:
        return self.dir / f"chunk-{i:05d}.safetensors"

    def _responses(self, i: int) -> Path:
        return self.dir / f"chunk-{i:05d}.json"

    def save(self, i: int, res: ResidualMeans) -> None:
        """Store chunk ``i`` (responses first, tensors last: a chunk counts as done once both exist)."""
        from safetensors.torch import save

        gens = [{"response_ids": g.response_ids, "stopped": g.stopped, "text": g.text} for g in res.generations]
        atomic_write(self._responses(i), json_text(gens, indent=None))
        blob = save({"means": res.means.contiguous(), "counts": res.counts.contiguous(),
                     "norms": res.norms.contiguous()})
        atomic_write(self._tensors(i), blob)

    def load(self, i: int, prompts) -> ResidualMeans:
        """Chunk ``i`` as stored (``prompts``: its prompt ids, which are not stored)."""
        from safetensors.torch import load

        try:
            t = load(self._tensors(i).read_bytes())
            gens = json.loads(self._responses(i).read_text())
            generations = [Generation(list(p), list(g["response_ids"]), bool(g["stopped"]), g["text"])
                           for p, g in zip(prompts, gens, strict=True)]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointMismatch(f"chunk {i} of {self.dir} is unreadable ({exc}); delete {self.dir} to start "
                                     "afresh") from exc
        if t["means"].shape[0] != len(prompts):
            raise CheckpointMismatch(f"chunk {i} of {self.dir} holds {t['means'].shape[0]} prompts, expected "
                                     f"{len(prompts)}; delete {self.dir} to start afresh")
        return ResidualMeans(means=t["means"], counts=t["counts"], norms=t["norms"], generations=generations)


def derive_checkpoint(out: str | os.PathLike[str], engine, questions, *, template, generation, positions: str,
                      method: str, chunk_questions: int) -> DeriveCheckpoint:
    """The checkpoint of ``derive_cot_vector(engine, questions, ...)`` into ``out``, its settings being everything
    that decides the chunks (the engine and its model, the questions, templates, generation, positions, method,
    chunk size)."""
    from lens_steer.data.questions import as_questions, questions_hash

    qs = as_questions(questions)
    return DeriveCheckpoint(out, CheckpointSettings(
        model=engine.info, engine=engine.name, questions=questions_hash(qs), n_questions=len(qs), template=template,
        generation=generation, positions=positions, method=method, chunk_questions=chunk_questions))
