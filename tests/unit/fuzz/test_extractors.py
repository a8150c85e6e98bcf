"""Answer extractors on arbitrary text: they return a value or None and never raise."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from hypothesis import given
from hypothesis import strategies as st

from lens_steer.data.registry import LETTERS, Example
from lens_steer.eval.scoring import (
    canonical_number, extract_choice, extract_number, extract_text_answer, is_cot_style, score,
)

from ._mutations import FUZZ

_TOKENS = ["####", "#### ", "\\boxed{", "}", "{", "answer is", "Answer:", "The final answer is", "answer =",
           "option", "choice", " is correct", "(B)", "(c)", "**", "B.", "A)", "E:", "Z", "\n", " ", "\t", "$",
           "-", "−", ",", ".", "=", "1,234", "3.50", "007", "1" * 5000, "9" * 40 + ".5", "٣", "１２", "Step 1",
           "First,", "Let's think:", "1. ", "- ", "•", "\u2028", "\x00", "é"]
_pieces = st.lists(st.sampled_from(_TOKENS) | st.text(max_size=4), max_size=40).map("".join)
responses = st.one_of(
    st.text(max_size=300),
    _pieces,
    st.tuples(_pieces, st.sampled_from(["1" * 5000, "-" + "2" * 4400 + ".0", "\\boxed{" + "3" * 4500 + "}"]),
              _pieces).map("".join),  # numbers longer than int() converts to str
)
choices = st.lists(st.text(max_size=12), max_size=len(LETTERS))


@FUZZ
@given(response=responses, options=choices)
def test_extractors_return_a_value_or_none(response: str, options: list[str]) -> None:
    number = extract_number(response)
    assert number is None or canonical_number(number) == number
    letter = extract_choice(response, options)
    assert letter is None or letter in LETTERS[: len(options) or 5]
    text = extract_text_answer(response)
    assert text is None or (text and text in response)
    assert isinstance(is_cot_style(response), bool)


@FUZZ
@given(response=responses, options=choices, answer=st.text(max_size=20) | st.sampled_from(["A", "12", "3.5", "-0"]),
       source=st.sampled_from(["gsm8k", "mmlu", "bbl", "custom"]))
def test_score_never_raises(response: str, options: list[str], answer: str, source: str) -> None:
    result = score(Example("x/0", source, "q", answer, tuple(options)), response)
    assert result.parsed == (result.predicted is not None) and (not result.correct or result.parsed)


def _reference_canonical_number(text: str) -> str | None:
    """The Decimal-based canonical_number this library had before (it raised past 4300 digits)."""
    s = text.strip().replace("−", "-").replace("–", "-").replace(",", "").replace("$", "").replace(" ", "")
    s = s.rstrip(".")
    if s.startswith("+"):
        s = s[1:]
    if not re.fullmatch(r"-?(?:\d+(?:\.\d*)?|\.\d+)", s):
        return None
    try:
        d = Decimal(s)
    except InvalidOperation:
        return None
    if d == d.to_integral_value():
        return str(int(d))
    return format(d.normalize(), "f")


_number_text = st.lists(st.sampled_from(list("0123456789.,-+$ −٣") + ["00", "1,000"]), max_size=20).map("".join)


@FUZZ
@given(text=_number_text | st.text(max_size=10))
def test_canonical_number_agrees_with_the_decimal_reference(text: str) -> None:
    assert canonical_number(text) == _reference_canonical_number(text)


@FUZZ
@given(digits=st.integers(4000, 20000), sign=st.sampled_from(["", "-"]))
def test_canonical_number_of_a_very_long_number(digits: int, sign: str) -> None:
    assert canonical_number(f"{sign}00{'7' * digits}.50") == f"{sign}{'7' * digits}.5"
