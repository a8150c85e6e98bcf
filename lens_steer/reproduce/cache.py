"""What a reproduction directory already holds, and whether it can be trusted: the derivation's definition
(requested, and as an existing vector records it), the fingerprints of finished outputs, moving superseded
outputs aside (never deleting them), and bringing a results directory in line with a changed stage while
keeping the rows that still apply."""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Sequence
from datetime import datetime, timezone
from pathlib import Path

from lens_steer.config import settings_diff
from lens_steer.data.questions import as_questions, questions_hash
from lens_steer.eval.record import comparable_settings
from lens_steer.eval.results_dir import ITEMS_FILE, RUN_FILE, SUMMARY_FILE, read_items
from lens_steer.method.vectors import SteeringVector, VectorFileError, VectorMetadata
from lens_steer.reproduce.record import fingerprint
from lens_steer.reproduce.settings import DeriveStage
from lens_steer.storage import atomic_write, json_text, storage_errors, write_json

__all__ = ["SUPERSEDED_DIR", "corpus_questions", "derive_definition", "legacy_results_output", "read_vector",
           "reconcile_results", "results_output", "set_aside", "superseded_path", "vector_definition", "vector_problem"]

SUPERSEDED_DIR = "superseded"
"""Where a reproduction moves outputs it no longer uses (``DIR/superseded/<name>-<UTC time>``)."""

_TIMING = ("gen_seconds", "tokens_per_second")


def corpus_questions(stage: DeriveStage, data_dir: str | None) -> list:
    """The questions the vector is derived from (``stage.corpus``, subsampled by ``corpus_limit``)."""
    from lens_steer.data.corpus import load_corpus

    return load_corpus(stage.corpus, data_dir=data_dir, limit=stage.corpus_limit, seed=stage.corpus_seed)


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
    return {"model": meta.model_id,
            "questions": _questions_text(len(qs), questions_hash(qs)) if same else _questions_text(n, meta.corpus_hash),
            "templates": meta.templates.to_dict() if meta.templates is not None else {},
            "positions": meta.positions, "method": meta.method,
            "max_new_tokens": meta.generation.max_new_tokens if meta.generation is not None else None,
            "decoding": meta.decoding()}


def read_vector(path: str | os.PathLike[str]) -> SteeringVector | None:
    """The complete vector at ``path``, or None (absent, still a checkpoint, or unreadable)."""
    try:
        return SteeringVector.load(path)
    except VectorFileError:
        return None


def vector_problem(path: str | os.PathLike[str]) -> str | None:
    """Why the vector directory at ``path`` cannot be used (None: it can, or there is none to speak of:
    absent, or only a derivation checkpoint)."""
    from lens_steer.method.vectors import CONFIG_FILE, TENSORS_FILE

    path = Path(path)
    if not any((path / name).exists() for name in (CONFIG_FILE, TENSORS_FILE)):
        return None
    try:
        SteeringVector.load(path)
    except VectorFileError as exc:
        return str(exc)
    return None


def _rows_without_timing(rows: Sequence[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in _TIMING} for row in rows]


def results_output(path: str | os.PathLike[str]) -> str | None:
    """Fingerprint of a complete results directory: its settings (paths aside, see
    :func:`~lens_steer.eval.record.comparable_settings`), every item row and the summary, timings left out;
    None when it is not complete or cannot be read. Any change to a row after the run finished changes it."""
    path = Path(path)
    try:
        summary = json.loads((path / SUMMARY_FILE).read_text())
        if not summary.get("complete"):
            return None
        run = json.loads((path / RUN_FILE).read_text())
        rows = sorted((r.to_dict() for r in read_items(path / ITEMS_FILE)), key=lambda r: (r["id"], r["condition"]))
        return fingerprint({"settings": comparable_settings(run["settings"]),
                            "conditions": sorted(c["key"] for c in run.get("conditions", [])),
                            "items": _rows_without_timing(rows),
                            "summary": _rows_without_timing(summary["summary"])})
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def legacy_results_output(path: str | os.PathLike[str]) -> str | None:
    """The output fingerprint ``reproduce.json`` format 1 recorded (the summary rows only), to recognise an
    output made before format 2 without redoing it."""
    try:
        data = json.loads((Path(path) / SUMMARY_FILE).read_text())
        rows = _rows_without_timing(data["summary"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return fingerprint(rows) if data.get("complete") else None


def superseded_path(out: str | os.PathLike[str], name: str) -> Path:
    """A new path ``out/superseded/<name>-<UTC time>`` (``-2``, ``-3`` ... when taken); not created."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    folder = Path(out) / SUPERSEDED_DIR
    target, n = folder / f"{name}-{stamp}", 1
    while target.exists():
        n += 1
        target = folder / f"{name}-{stamp}-{n}"
    return target


def set_aside(path: str | os.PathLike[str], out: str | os.PathLike[str]) -> Path | None:
    """Move ``path`` (a file or directory of the reproduction ``out``) into ``out/superseded/`` under its name
    and the time; the new place, or None when there was nothing to move."""
    path = Path(path)
    if not path.exists():
        return None
    target = superseded_path(out, path.name.lstrip("."))
    with storage_errors(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(path, target)
    return target


def _shown(path: Path, out: Path) -> str:
    try:
        return str(path.relative_to(out.parent))
    except ValueError:
        return str(path)


def reconcile_results(path: str | os.PathLike[str], settings: dict, keep: Collection[str], out: str | os.PathLike[str],
                      items: Collection[str]) -> str:
    """Make a results directory fit the run about to resume it, keeping every row that still applies.

    ``settings``: that run's ``run.json`` settings; ``keep``: its condition keys; ``items``: its item ids.
    Settings that differ only in where the vector lives (a moved or copied directory) are brought up to date;
    when only the item selection changed (``--limit``, ``--task-limit``) the rows of items still selected are
    kept; rows of conditions no longer asked for are dropped (the rest is kept). When anything else differs
    (another vector, model, length, templates ...) nothing in it applies and it is moved into
    ``out/superseded/``, never deleted.

    Returns:
        What was done, for the log (``""`` when nothing).
    """
    path, out = Path(path), Path(out)
    run_file = path / RUN_FILE
    if not path.exists():
        return ""
    try:
        run = json.loads(run_file.read_text())
        saved = run["settings"]
        now = json.loads(json_text(settings))
        diffs = settings_diff(comparable_settings(saved, items=False), comparable_settings(now, items=False))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        diffs = ["run.json unreadable"]
    if diffs:
        moved = set_aside(path, out)
        return f"moved {_shown(path, out)} to {_shown(moved, out)} (made with other settings: {'; '.join(diffs)[:300]})"
    notes = []
    if saved != now:
        if saved.get("data") != now.get("data"):
            notes.append("item selection changed")
        if (saved.get("vector") or {}).get("path") != (now.get("vector") or {}).get("path"):
            notes.append("vector path updated")
        run["settings"] = now
    rows = read_items(path / ITEMS_FILE)
    wanted = set(items)
    kept = [r for r in rows if r.condition in keep and r.id in wanted]
    if len(kept) < len(rows):
        atomic_write(path / ITEMS_FILE, "".join(json_text(r.to_dict(), indent=None) + "\n" for r in kept))
        notes.append(f"kept {len(kept)} of {len(rows)} rows")
    conditions = [c for c in run.get("conditions", []) if c.get("key") in keep]
    if not notes and len(conditions) == len(run.get("conditions", [])):
        return ""
    run["conditions"] = conditions
    write_json(run_file, run)
    (path / SUMMARY_FILE).unlink(missing_ok=True)
    return f"{_shown(path, out)}: " + ", ".join(notes or ["conditions changed"])
