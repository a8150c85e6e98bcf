"""The results directory of an eval or sweep: ``run.json`` (settings, invocations, conditions),
``items.jsonl`` (one row per item × condition, appended per chunk) and ``summary.json``; the only
evaluation code that touches disk."""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path

from lens_steer.config import settings_diff
from lens_steer.eval.conditions import Condition
from lens_steer.eval.record import RUN_FORMAT_VERSION, Invocation, RunRecord, comparable_settings
from lens_steer.eval.results import ItemRow, SummaryRow, summarise
from lens_steer.storage import atomic_write, json_text, storage_errors, write_json

__all__ = [
    "ITEMS_FILE",
    "RUN_FILE",
    "SUMMARY_FILE",
    "RunSettingsMismatch",
    "append_items",
    "done_keys",
    "open_results_dir",
    "read_items",
    "read_run",
    "read_summary",
    "record_invocation",
    "write_summary",
]

ITEMS_FILE = "items.jsonl"
SUMMARY_FILE = "summary.json"
RUN_FILE = "run.json"


class RunSettingsMismatch(ValueError):
    """A results directory holds rows made with other settings; resuming into it would mix them."""


def open_results_dir(
    out: str | os.PathLike[str], settings: Mapping, *, optional: Collection[str] = ("vector",), log=None,
) -> set[tuple[str, str]]:
    """Create or reopen a results directory; return the ``(item id, condition key)`` pairs done.

    A new directory gets ``run.json`` with ``settings``. An existing one must hold the same
    settings (compared as JSON): otherwise :class:`RunSettingsMismatch` names each difference.
    A last line of ``items.jsonl`` cut short by an interruption is removed, and rows written twice
    (two writers at once, before directories were locked) are repaired: identical duplicates
    (timing aside) are dropped, conflicting ones keep their first row and are named on ``log``.

    Args:
        out: The directory.
        settings: Everything that decides an item row's content (model, vector, generation,
            templates, data, limit, seed, chunking); conditions are not part of it, so a
            grid can be extended in place.
        optional: Top-level settings that only some rows depend on (the vector: only steered
            rows). Where one side has None there, the two are compatible: a run of the
            unsteered conditions can later be completed with steered ones, whose vector is then
            recorded; two different non-None values still mismatch.

    Returns:
        The done keys.
    """
    path = Path(out)
    with storage_errors(path):
        path.mkdir(parents=True, exist_ok=True)
    run_file = path / RUN_FILE
    settings = json.loads(json.dumps(settings))
    if run_file.is_file():
        try:
            saved = json.loads(run_file.read_text())
        except json.JSONDecodeError as exc:
            raise RunSettingsMismatch(f"{run_file} is unreadable ({exc}); use another --out") from exc
        old = dict(saved.get("settings") or {})
        now = dict(settings)
        filled = {}
        for key in optional:
            if old.get(key) is None and now.get(key) is not None:
                filled[key] = now[key]
            if old.get(key) is None or now.get(key) is None:
                old.pop(key, None)
                now.pop(key, None)
        diffs = settings_diff(comparable_settings(old), comparable_settings(now))
        if diffs:
            raise RunSettingsMismatch(
                f"{path} holds results made with other settings, so it cannot be resumed: "
                + "; ".join(diffs) + ". Use another output directory (or delete this one)."
            )
        moved = (old.get("vector") or {}).get("path") != (now.get("vector") or {}).get("path")
        if filled or moved:  # a vector recorded for the first time, or the same vector found at another path
            saved["settings"] = {**saved["settings"], **filled,
                                 **({"vector": now["vector"]} if moved and now.get("vector") else {})}
            write_json(run_file, saved)
    else:
        if (path / ITEMS_FILE).exists():
            raise RunSettingsMismatch(f"{path} has {ITEMS_FILE} but no {RUN_FILE}: cannot tell how it was made")
        write_json(run_file, {"format_version": RUN_FORMAT_VERSION, "settings": settings, "invocations": []})
    _drop_partial_line(path / ITEMS_FILE)
    rows = read_items(path / ITEMS_FILE)
    message = _repair_duplicates(path / ITEMS_FILE, rows)
    if message and log:
        print(message, file=log)
    return done_keys(rows)  # the repair drops repeats only: the same keys


def _repair_duplicates(path: Path, rows: Sequence[ItemRow]) -> str | None:
    """Rewrite ``items.jsonl`` with each ``(id, condition)`` once; a message when anything was repaired."""
    first: dict[tuple[str, str], dict] = {}
    kept, dropped, conflicts = [], 0, []
    for r in rows:
        d = r.to_dict()
        key = (r.id, r.condition)
        if key not in first:
            first[key] = d
            kept.append(d)
            continue
        dropped += 1
        same = {k: v for k, v in d.items() if k != "gen_seconds"} == {
            k: v for k, v in first[key].items() if k != "gen_seconds"}
        if not same:
            conflicts.append(f"{key[0]} / {key[1]}")
    if not dropped:
        return None
    atomic_write(path, "".join(json_text(d, indent=None) + "\n" for d in kept))
    msg = f"{path}: removed {dropped} repeated item rows"
    if conflicts:
        shown = ", ".join(conflicts[:5]) + (f" and {len(conflicts) - 5} more" if len(conflicts) > 5 else "")
        msg += f"; {len(conflicts)} of them differed from the first row, which was kept: {shown}"
    return msg


def _drop_partial_line(path: Path) -> None:
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with storage_errors(path), open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


def read_items(path: str | os.PathLike[str]) -> list[ItemRow]:
    """Rows of an ``items.jsonl`` file (or of a results directory; [] when it does not exist).

    Raises:
        ValueError: a line is not JSON (naming the file and line).
    """
    path = Path(path)
    if path.is_dir():
        path = path / ITEMS_FILE
    if not path.is_file():
        return []
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rows.append(ItemRow.from_dict(json.loads(line)))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}, line {lineno}: not JSON ({exc.msg})") from exc
            except (ValueError, TypeError, AttributeError) as exc:
                raise ValueError(f"{path}, line {lineno}: not an item row ({exc})") from exc
    return rows


def done_keys(rows: Iterable[ItemRow]) -> set[tuple[str, str]]:
    """``(item id, condition key)`` of each row."""
    return {(r.id, r.condition) for r in rows}


def append_items(path: str | os.PathLike[str], rows: Sequence[ItemRow]) -> None:
    """Append rows to ``items.jsonl`` in one write, flushed and synced to disk."""
    if not rows:
        return
    text = "".join(json_text(r.to_dict(), indent=None) + "\n" for r in rows)
    with storage_errors(path), open(path, "a", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def record_invocation(
    out: str | os.PathLike[str], invocation: Invocation | Mapping, conditions: Sequence[Condition] = (),
    index: int | None = None,
) -> int:
    """Append one invocation (start time, seconds, rows added, completed, ...) to ``run.json``, or update
    the one at ``index`` in place. Returns its index.

    A run records an invocation when it starts and updates it after every chunk, so a run killed
    outright (SIGKILL, a machine restart) still leaves its time and rows in ``run.json``.
    ``conditions`` are merged (by key) into the run's ``conditions`` list.
    """
    if isinstance(invocation, Invocation):
        invocation = invocation.to_dict()
    run_file = Path(out) / RUN_FILE
    run = json.loads(run_file.read_text())
    invocations = run.setdefault("invocations", [])
    if index is None:
        invocations.append(dict(invocation))
        index = len(invocations) - 1
    else:
        invocations[index] = {**invocations[index], **invocation}
    known = {c["key"] for c in run.setdefault("conditions", [])}
    run["conditions"] += [c.to_dict() for c in conditions if c.key not in known]
    write_json(run_file, run)
    return index


def write_summary(out: str | os.PathLike[str], summary: Sequence[SummaryRow], **extra) -> Path:
    """Write ``summary.json``: ``{**extra, "summary": [...]}``. Returns its path."""
    path = Path(out) / SUMMARY_FILE
    write_json(path, {**extra, "summary": [s.to_dict() for s in summary]})
    return path


def read_summary(out: str | os.PathLike[str]) -> tuple[list[SummaryRow], dict]:
    """``(summary rows, the other keys)`` of a directory's ``summary.json``; computed from ``items.jsonl``
    when the run never wrote one."""
    path = Path(out) / SUMMARY_FILE
    if not path.is_file():
        return summarise(read_items(out)), {}
    try:
        data = json.loads(path.read_text())
        rows = [SummaryRow.from_dict(s) for s in data.pop("summary")]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path} is unreadable: {exc}") from exc
    return rows, data


def read_run(out: str | os.PathLike[str]) -> RunRecord:
    """The :class:`RunRecord` of a results directory.

    Raises:
        FileNotFoundError: no ``run.json`` (not a results directory). ValueError: unreadable.
    """
    path = Path(out) / RUN_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{Path(out)} is not a results directory: {RUN_FILE} is missing")
    try:
        return RunRecord.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError, ValueError) as exc:
        raise ValueError(f"{path} is unreadable: {exc}") from exc
