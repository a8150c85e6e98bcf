"""What a reproduction directory already holds: the derivation's definition (requested, and as an
existing vector records it), the fingerprints of finished outputs, and bringing a results directory
in line with a changed stage."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Collection, Sequence
from pathlib import Path

from lens_steer.config import settings_diff
from lens_steer.data.questions import as_questions, questions_hash
from lens_steer.eval.results_dir import ITEMS_FILE, RUN_FILE, SUMMARY_FILE, read_items
from lens_steer.method.vectors import CHECKPOINT_DIR, SteeringVector, VectorFileError, VectorMetadata
from lens_steer.reproduce.record import fingerprint
from lens_steer.reproduce.settings import DeriveStage
from lens_steer.storage import atomic_write, json_text, write_json

__all__ = ["corpus_questions", "derive_definition", "read_vector", "reconcile_results", "results_output",
           "vector_definition"]

_TIMING = ("gen_seconds", "tokens_per_second")


def corpus_questions(stage: DeriveStage, data_dir: str | None) -> list:
    """The questions the vector is derived from (``stage.corpus``, subsampled by ``corpus_limit``)."""
    from lens_steer.data.corpus import demo_questions_path, load_questions_jsonl, paper_corpus
    from lens_steer.data.registry import subsample

    if stage.corpus == "paper":
        items = paper_corpus(data_dir=data_dir, seed=stage.corpus_seed)
    else:
        items = load_questions_jsonl(demo_questions_path("derive") if stage.corpus == "demo" else stage.corpus)
    return subsample(items, stage.corpus_limit, stage.corpus_seed)


def _questions_text(n: int, digest: str) -> str:
    return f"{n} questions, sha256 {digest[:12]}"


def derive_definition(model: str, stage: DeriveStage, template: dict, questions: Sequence) -> dict:
    """What decides a vector (whichever engine, batch size, chunking or attention kernel computes it, which
    change only float rounding): model, questions, templates, positions, method, response length, decoding."""
    qs = as_questions(questions)
    return {"model": model, "questions": _questions_text(len(qs), questions_hash(qs)), "templates": template,
            "positions": stage.positions, "method": stage.method, "max_new_tokens": stage.max_new_tokens,
            "decoding": "greedy"}


def vector_definition(meta: VectorMetadata, questions: Sequence) -> dict:
    """:func:`derive_definition` as an existing vector records it; its ``questions`` equal the requested
    ones' when the vector averaged exactly those (less the ones it lists as skipped, in order)."""
    qs = as_questions(questions)
    skipped = set(meta.skipped_ids)
    kept = [q for q in qs if q.id not in skipped]
    n = len(meta.question_ids) + len(meta.skipped_ids)
    same = (n == len(qs) and skipped <= {q.id for q in qs} and [q.id for q in kept] == list(meta.question_ids)
            and questions_hash(kept) == meta.corpus_hash)
    gen = meta.generation or {}
    decoding = "greedy" if not gen.get("do_sample") else (
        f"sampled (temperature {gen.get('temperature')}, top_p {gen.get('top_p')}, seed {gen.get('seed')})")
    return {"model": meta.model_id,
            "questions": _questions_text(len(qs), questions_hash(qs)) if same else _questions_text(n, meta.corpus_hash),
            "templates": meta.templates, "positions": meta.positions, "method": meta.method,
            "max_new_tokens": gen.get("max_new_tokens"), "decoding": decoding}


def read_vector(path: str | os.PathLike[str]) -> SteeringVector | None:
    """The complete vector at ``path``, or None (absent, still a checkpoint, or unreadable)."""
    try:
        return SteeringVector.load(path)
    except VectorFileError:
        return None


def checkpoint_matches(path: str | os.PathLike[str], settings: dict) -> bool | None:
    """Whether the derivation checkpoint in ``path`` was made with ``settings`` (None: there is none)."""
    file = Path(path) / CHECKPOINT_DIR / "settings.json"
    if not file.is_file():
        return None
    try:
        saved = json.loads(file.read_text())
    except (OSError, ValueError):
        return False
    return not settings_diff(saved, json.loads(json_text(settings)))


def results_output(path: str | os.PathLike[str]) -> str | None:
    """Fingerprint of a complete results directory's summary (timings left out), or None when it is not complete."""
    file = Path(path) / SUMMARY_FILE
    try:
        data = json.loads(file.read_text())
        rows = [{k: v for k, v in row.items() if k not in _TIMING} for row in data["summary"]]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return fingerprint(rows) if data.get("complete") else None


def reconcile_results(path: str | os.PathLike[str], settings: dict, keep: Collection[str]) -> str:
    """Make a results directory fit the run about to resume it (``settings``: that run's ``run.json`` settings).

    When its ``run.json`` holds other settings (another vector, model, length, items, a moved directory ...)
    nothing in it can be reused and it is removed; otherwise only the rows and conditions outside ``keep``
    (condition keys, e.g. cells of a changed grid) are dropped, so the rows that still apply are not
    generated again and the summary holds only the conditions asked for.

    Returns:
        What was done, for the log (``""`` when nothing).
    """
    path = Path(path)
    run_file = path / RUN_FILE
    if not path.exists():
        return ""
    try:
        run = json.loads(run_file.read_text())
        diffs = settings_diff(run.get("settings"), json.loads(json_text(settings)))
    except (OSError, ValueError, AttributeError):
        diffs = ["run.json unreadable"]
    if diffs:
        shutil.rmtree(path)
        return f"removed {path} (made with other settings)"
    rows = read_items(path / ITEMS_FILE)
    kept = [r for r in rows if r.condition in keep]
    if len(kept) < len(rows):
        atomic_write(path / ITEMS_FILE, "".join(json_text(r.to_dict(), indent=None) + "\n" for r in kept))
    if len(kept) == len(rows) and all(c.get("key") in keep for c in run.get("conditions", [])):
        return ""
    run["conditions"] = [c for c in run.get("conditions", []) if c.get("key") in keep]
    write_json(run_file, run)
    (path / SUMMARY_FILE).unlink(missing_ok=True)
    return f"kept {len(kept)} of {len(rows)} rows in {path}"
