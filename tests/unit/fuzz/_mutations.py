"""Hypothesis strategies that break a valid file: byte mutations, and JSON documents with one value
replaced, removed or swapped for a literal ``json.dumps`` cannot write (huge numbers, lone surrogates)."""

from __future__ import annotations

import copy
import json
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

FUZZ = settings(max_examples=120, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
"""Seeded (``derandomize``) and sized so the whole fuzz folder runs in seconds."""

_RAW = "@@raw@@"
RAW_LITERALS = (
    "1" * 5000,  # over Python's int-to-str limit (4300 digits): json.loads raises ValueError
    "-" + "9" * 400,
    "1e400", "-1e400", "NaN", "Infinity", "-Infinity",
    '"\\ud800"', '"\\udc00x"', '"\\ud83d\\ude00"',
    "[" * 5000 + "]" * 5000,  # deeper than the recursion limit
    "{}", "[]", '""', "null", "true", "0", "-0.0",
)
"""JSON text spliced in where a value was."""

BAD_BYTES = (b"\xff", b"\xfe\xff", b"\xc3", b"\xed\xa0\x80", b"\x80", b"\xf4\x90\x80\x80", b"\x00", b"\r", b"\n")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path into a JSON value (``()`` is the value itself)."""
    out = [prefix]
    if isinstance(obj, dict):
        for key, value in obj.items():
            out += _paths(value, prefix + (key,))
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            out += _paths(value, prefix + (i,))
    return out


@st.composite
def json_mutated(draw, valid: Any) -> str:
    """``valid`` as JSON text with one value replaced (a random value or a raw literal) or removed."""
    obj = copy.deepcopy(valid)
    path = draw(st.sampled_from(_paths(obj)))
    action = draw(st.sampled_from(["replace", "raw", "delete"]))
    new = draw(json_values) if action == "replace" else _RAW
    if not path:
        obj = new if action != "delete" else {}
    else:
        parent = obj
        for key in path[:-1]:
            parent = parent[key]
        if action == "delete":
            del parent[path[-1]]
        else:
            parent[path[-1]] = new
    text = json.dumps(obj, ensure_ascii=draw(st.booleans()))
    return text.replace(json.dumps(_RAW), draw(st.sampled_from(RAW_LITERALS)))


@st.composite
def byte_mutated(draw, valid: bytes) -> bytes:
    """``valid`` after one to three of: truncation, a bit flip, inserted or deleted bytes, bytes that
    are not UTF-8; or a file of random bytes, or an empty one."""
    kind = draw(st.sampled_from(["edits", "edits", "edits", "random", "empty"]))
    if kind == "empty":
        return b""
    if kind == "random":
        return draw(st.binary(max_size=300))
    data = valid
    for edit in draw(st.lists(st.sampled_from(["truncate", "flip", "insert", "delete", "bad"]), min_size=1, max_size=3)):
        i = draw(st.integers(0, max(len(data) - 1, 0)))
        if edit == "truncate":
            data = data[:i]
        elif edit == "flip" and data:
            data = data[:i] + bytes([data[i] ^ (1 << draw(st.integers(0, 7)))]) + data[i + 1:]
        elif edit == "insert":
            data = data[:i] + draw(st.binary(min_size=1, max_size=12)) + data[i:]
        elif edit == "delete":
            data = data[:i] + data[draw(st.integers(i, len(data))):]
        elif edit == "bad":
            data = data[:i] + draw(st.sampled_from(BAD_BYTES)) + data[i:]
    return data


def jsonl_documents(records: list[dict]) -> st.SearchStrategy[bytes]:
    """JSON Lines files made from ``records``: one record mutated, or the whole file's bytes mutated."""
    valid = "".join(json.dumps(r) + "\n" for r in records)

    @st.composite
    def one_record_mutated(draw) -> bytes:
        i = draw(st.integers(0, len(records) - 1))
        lines = [json.dumps(r) for r in records]
        lines[i] = draw(json_mutated(records[i]))
        return ("\n".join(lines) + "\n").encode("utf-8", "surrogatepass")

    return st.one_of(one_record_mutated(), byte_mutated(valid.encode()))


def json_documents(document: dict) -> st.SearchStrategy[bytes]:
    """JSON files made from ``document``: one value mutated, or the file's bytes mutated."""
    return st.one_of(json_mutated(document).map(lambda t: t.encode("utf-8", "surrogatepass")),
                     byte_mutated(json.dumps(document, indent=1).encode()))
