"""Questions to derive from: the :class:`Question` record, normalising user input to it, and its hash."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Question", "as_questions", "questions_hash"]


@dataclass(frozen=True)
class Question:
    """A question to derive from: its id, source label and text."""

    id: str
    text: str
    source: str = "custom"


def as_questions(items: Sequence) -> list[Question]:
    """Normalise strings, dicts (``question``/``id``/``source``) or records with ``.question`` to :class:`Question`."""
    out = []
    for i, item in enumerate(items):
        if isinstance(item, Question):
            out.append(item)
        elif isinstance(item, str):
            out.append(Question(id=f"q{i}", text=item))
        elif isinstance(item, dict):
            if "question" not in item:
                raise ValueError(f"question {i} has no 'question' field: {item!r}")
            out.append(Question(id=str(item.get("id", f"q{i}")), text=str(item["question"]), source=str(item.get("source", "custom"))))
        elif hasattr(item, "question"):
            out.append(Question(id=str(getattr(item, "id", f"q{i}")), text=str(item.question), source=str(getattr(item, "source", "custom"))))
        else:
            raise TypeError(f"question {i}: expected str, dict or a record with .question, got {type(item).__name__}")
    ids = [q.id for q in out]
    if len(set(ids)) != len(ids):
        raise ValueError("question ids must be unique")
    return out


def questions_hash(questions: Sequence[Question]) -> str:
    """sha256 over ids and texts, in order."""
    h = hashlib.sha256()
    for q in questions:
        h.update(q.id.encode() + b"\0" + q.text.encode() + b"\0")
    return h.hexdigest()
