"""Reading helpers the benchmark modules share: JSON Lines / JSON files with located errors,
typed field access, lettered option text, and the hub (``datasets``, imported lazily)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from lens_steer.data.example import DATA_DIR_ENV, LETTERS, DataFormatError
from lens_steer.storage import read_bytes, storage_errors

__all__ = [
    "check_n_choices",
    "check_reachable",
    "format_mc",
    "get_str",
    "glob_files",
    "hub_label",
    "hub_load",
    "iter_jsonl",
    "missing",
    "read_json",
    "read_text",
    "require_file",
]

_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
"""A JSON ``\\uD800``-``\\uDFFF`` escape: half of a pair, or a lone surrogate no UTF-8 text can hold."""


def missing(path: Path, what: str, layout: str) -> FileNotFoundError:
    """The error for a missing local file or folder, naming the layout a benchmark expects."""
    return FileNotFoundError(
        f"{what} not found: {path}. Expected layout: {layout} "
        f"(see the offline data README; set data_dir or ${DATA_DIR_ENV})."
    )


def check_reachable(path: Path) -> None:
    """Raise :class:`~lens_steer.storage.StorageError` (``cannot read PATH: Permission denied``) when a folder
    on the way to ``path`` cannot be searched (``Path.is_file`` would raise a bare ``PermissionError`` there);
    a missing path passes."""
    with storage_errors(path, "read"), contextlib.suppress(FileNotFoundError, NotADirectoryError):
        path.stat()


def require_file(path: Path, what: str, layout: str) -> None:
    """Raise :func:`missing` unless ``path`` is a file (:func:`check_reachable` first)."""
    check_reachable(path)
    if not path.is_file():
        raise missing(path, what, layout)


def glob_files(folder: Path, pattern: str) -> list[Path]:
    """``sorted(folder.glob(pattern))``, but a folder that cannot be listed raises
    :class:`~lens_steer.storage.StorageError` instead of looking empty."""
    with storage_errors(folder, "read"):
        os.scandir(folder).close()
    return sorted(folder.glob(pattern))


def read_text(path: Path) -> str:
    """The file's text as UTF-8 (a leading BOM dropped); bad bytes raise :class:`DataFormatError` with their line,
    a file that cannot be read :class:`~lens_steer.storage.StorageError` (``cannot read PATH: Permission denied``)."""
    data = read_bytes(path)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataFormatError(path, f"not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start})", line) from e


def _parse_json(text: str, path: Path, line: int | None) -> Any:
    """``json.loads`` whose every failure (syntax, a number too long, nesting too deep, a lone
    surrogate escape) is a :class:`DataFormatError` at ``line`` (None for a whole file: the error's own line)."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        at = e.lineno if line is None else line
        raise DataFormatError(path, f"invalid JSON ({e.msg} at column {e.colno})", at) from e
    except (ValueError, RecursionError) as e:  # ints over sys.get_int_max_str_digits(); very deep nesting
        raise DataFormatError(path, f"invalid JSON ({type(e).__name__}: {e})", line) from e
    if _SURROGATE_ESCAPE.search(text):
        try:
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as e:
            raise DataFormatError(path, "a \\u escape encodes a lone surrogate, which is not Unicode text", line) from e
    return obj


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(1-based line number, object)`` for each non-blank line."""
    for lineno, line in enumerate(io.StringIO(read_text(path), newline=None), start=1):
        if not line.strip():
            continue
        obj = _parse_json(line, path, lineno)
        if not isinstance(obj, dict):
            raise DataFormatError(path, f"expected a JSON object, got {type(obj).__name__}", lineno)
        yield lineno, obj


def read_json(path: Path) -> dict[str, Any]:
    """Read a JSON object file; errors name the file and line."""
    data = _parse_json(read_text(path), path, None)
    if not isinstance(data, dict):
        raise DataFormatError(path, "expected a JSON object", 1)
    return data


def get_str(obj: Mapping[str, Any], key: str, path: str | Path, line: int | None) -> str:
    """A non-empty string field, else :class:`DataFormatError`."""
    value = obj.get(key)
    if not isinstance(value, str):
        raise DataFormatError(path, f"field {key!r} missing or not a string (got {type(value).__name__})", line)
    if not value.strip():
        raise DataFormatError(path, f"field {key!r} is empty", line)
    return value


def format_mc(stem: str, choices: Sequence[str]) -> str:
    """The question shown to the model: the stem, then ``"A. ..."`` one option per line."""
    options = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))
    return f"{stem}\n{options}"


def check_n_choices(n: int, path: str | Path, line: int | None) -> None:
    """A multiple-choice item has 2 to 26 options."""
    if n < 2:
        raise DataFormatError(path, f"multiple-choice item needs at least 2 choices, got {n}", line)
    if n > len(LETTERS):
        raise DataFormatError(path, f"{n} choices exceed the {len(LETTERS)} available letters", line)


def hub_load(path: str, name: str | None, split: str) -> Any:
    """Load one split from the Hugging Face hub (``datasets`` imported lazily, it is slow)."""
    import datasets

    return datasets.load_dataset(path, name, split=split)


def hub_label(path: str, name: str | None, split: str) -> str:
    """How errors name a hub split, e.g. ``hub:cais/mmlu[anatomy]/test``."""
    return f"hub:{path}" + (f"[{name}]" if name else "") + f"/{split}"
