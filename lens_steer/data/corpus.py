"""The contrast corpus CoT vectors are derived from (the paper's mix, seeded), its hash, and user question files.

The paper (Zhang & Viteri 2024) builds its corpus from BIG-bench Lite, MMLU and GSM8K,
reporting about 125 MMLU questions. MMLU's dev split has 5 questions for each of 57
subjects, so no per-subject count gives exactly 125; we take 2 per subject
(57 x 2 = 114), which keeps every subject represented equally instead of favouring the
subjects that would fill an uneven quota. With 3 per BIG-bench Lite task (24 x 3 = 72)
and 100 GSM8K train questions the default corpus has 286 questions.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

from lens_steer.data._records import check_reachable, iter_jsonl
from lens_steer.data.bbl import BBL_TASKS, load_bbl
from lens_steer.data.example import DataFormatError, Example, SkippedRecordsWarning, subsample
from lens_steer.data.gsm8k import load_gsm8k
from lens_steer.data.mmlu import load_mmlu

__all__ = ["corpus_hash", "demo_questions_path", "load_corpus", "load_questions_jsonl", "paper_corpus"]


def demo_questions_path(split: str) -> Path:
    """Path of the packaged demo questions (``derive`` or ``heldout``)."""
    if split not in ("derive", "heldout"):
        raise ValueError(f"demo questions are 'derive' or 'heldout', got {split!r}")
    return Path(__file__).parent / f"demo_{split}.jsonl"


def _sub_seed(seed: int, key: str) -> int:
    """A per-source seed derived from ``seed`` and a name, stable across processes."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def paper_corpus(
    data_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    n_gsm8k: int = 100,
    per_bbl_task: int = 3,
    per_mmlu_subject: int = 2,
) -> list[Example]:
    """Build the paper's contrast corpus: BIG-bench Lite + MMLU dev + GSM8K train.

    Each BIG-bench Lite task contributes ``per_bbl_task`` examples drawn from all its
    subtasks pooled and of any type (generative ones too: the corpus needs only the
    question text; the few examples with tied top answers that :func:`load_bbl` leaves out
    are not in the pool); each MMLU subject contributes ``per_mmlu_subject`` dev questions;
    GSM8K contributes ``n_gsm8k`` train questions. Every draw is seeded from ``seed`` and
    the task/subject name, so the corpus is reproducible; items keep their benchmark ids.

    Args:
        data_dir: Offline data directory; see :func:`lens_steer.data.example.resolve_data_dir`.
        seed: Seed of all draws.
        n_gsm8k: GSM8K train questions.
        per_bbl_task: Examples per BIG-bench Lite task.
        per_mmlu_subject: MMLU dev questions per subject (at most 5).

    Returns:
        The examples: BBL (task order of :data:`BBL_TASKS`), then MMLU (subjects
        alphabetically), then GSM8K, each group in source order.
    """
    corpus: list[Example] = []
    for task in BBL_TASKS:
        with warnings.catch_warnings():  # tied-answer examples are simply not in the pool
            warnings.simplefilter("ignore", SkippedRecordsWarning)
            pool = load_bbl(task, data_dir, multiple_choice_only=False)
        corpus.extend(subsample(pool, per_bbl_task, _sub_seed(seed, f"bbl/{task}")))
    by_subject: dict[str, list[Example]] = {}
    for ex in load_mmlu("dev", data_dir):
        by_subject.setdefault(ex.subset, []).append(ex)
    for subject in sorted(by_subject):
        corpus.extend(subsample(by_subject[subject], per_mmlu_subject, _sub_seed(seed, f"mmlu/{subject}")))
    corpus.extend(subsample(load_gsm8k("train", data_dir), n_gsm8k, _sub_seed(seed, "gsm8k")))
    return corpus


def corpus_hash(examples: Sequence[Example]) -> str:
    """SHA-256 of the ids and question texts, in the given order (order matters).

    Args:
        examples: The corpus.

    Returns:
        Hex digest, to record alongside vectors derived from this corpus.
    """
    payload = json.dumps([[ex.id, ex.question] for ex in examples], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def load_questions_jsonl(path: str | os.PathLike[str]) -> list[Example]:
    """Read a user question file: one JSON object per line with a ``"question"`` key.

    Optional keys: ``"id"`` (default ``"<file stem>/<0-based line index>"``), ``"answer"``
    (default ``""``), ``"source"`` (default ``"custom"``). Other keys are ignored; blank
    lines are skipped.

    Args:
        path: The ``.jsonl`` file.

    Returns:
        One :class:`Example` per non-blank line (at least one).

    Raises:
        FileNotFoundError: If the file does not exist.
        StorageError: If it (or a folder on the way) cannot be read, e.g. no permission.
        DataFormatError: For bytes that are not UTF-8, bad JSON, a missing/empty ``"question"``,
            a non-string optional field or a duplicate id (message names file and 1-based line),
            and for a file with no questions at all.
    """
    path = Path(path)
    check_reachable(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"question file not found: {path} (expected JSON Lines, one {{\"question\": ...}} per line)"
        )
    out: list[Example] = []
    seen: dict[str, int] = {}
    for lineno, obj in iter_jsonl(path):
        index = lineno - 1
        question = obj.get("question")
        if not isinstance(question, str) or not question.strip():
            raise DataFormatError(path, "missing or empty 'question' (a non-empty string is required)", lineno)
        fields = {}
        for key, default in (("id", f"{path.stem}/{index}"), ("answer", ""), ("source", "custom")):
            value = obj.get(key, default)
            if isinstance(value, int) and not isinstance(value, bool) and key in ("id", "answer"):
                value = str(value)
            if not isinstance(value, str):
                raise DataFormatError(path, f"field {key!r} must be a string, got {type(value).__name__}", lineno)
            fields[key] = value
        if fields["id"] in seen:
            first = seen[fields["id"]]
            raise DataFormatError(path, f"duplicate id {fields['id']!r} (first on line {first})", lineno)
        seen[fields["id"]] = lineno
        out.append(Example(id=fields["id"], source=fields["source"], question=question, answer=fields["answer"]))
    if not out:
        raise DataFormatError(path, "no questions in the file (it is empty or holds only blank lines)")
    return out


def load_corpus(corpus: str | os.PathLike[str], *, data_dir: str | os.PathLike[str] | None = None, limit: int | None = None,
                seed: int = 0) -> list[Example]:
    """The questions a vector is derived from, as ``lens-steer derive`` and ``reproduce`` name them.

    Args:
        corpus: ``"paper"`` (:func:`paper_corpus`), ``"demo"`` (the packaged derivation questions) or the path of
            a JSONL question file (a ``Path`` is always a file).
        data_dir: Local benchmark copies for the paper corpus (None: ``$LENS_STEER_DATA_DIR``, else the hub).
        limit: A seeded subsample of this many questions (None: all).
        seed: Seed of the paper corpus's draws and of the subsample.
    """
    named = corpus if isinstance(corpus, str) else None
    if named == "paper":
        items = paper_corpus(data_dir=data_dir, seed=seed)
    else:
        items = load_questions_jsonl(demo_questions_path("derive") if named == "demo" else corpus)
    return subsample(items, limit, seed)
